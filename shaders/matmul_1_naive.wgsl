alias Act = f32; // The storage type of activations and weights: f16 with --dtype f16.

// Matmul ladder, version 1: the readable one. One invocation per output element.
//
//   out[m, n] = act(sum_k a[m, k] * w[n, k] + bias[n])
//
// Layout: a is [M, K] row-major (one row per token), w is [N, K] row-major (Hugging Face's
// [out, in]), bias [N] f32, out [M, N]. a, w and out are Act (f32, or f16 with --dtype f16);
// the sum is f32 either way.
// Every other version is checked against this one on the user's GPU before it is used (the
// self-check in src/backend/gpu/tune.rs). Rust twin: src/backend/gpu/matmul.rs.

struct Params {
    m: u32,
    n: u32,
    k: u32,
    // 0 none, 1 exact GELU, 2 tanh, 3 relu (backend::Activation)
    activation: u32,
}

@group(0) @binding(0) var<uniform> p: Params;
@group(0) @binding(1) var<storage, read> a: array<Act>;
@group(0) @binding(2) var<storage, read> w: array<Act>;
@group(0) @binding(3) var<storage, read> bias: array<f32>;
@group(0) @binding(4) var<storage, read_write> out: array<Act>;

// Exact GELU, x * Phi(x). WGSL has no erf: Phi comes from erfc (Numerical Recipes' erfcc,
// relative error < 1.2e-7 for all z >= 0), evaluated at |x| so that the tail for negative x
// keeps its relative precision instead of cancelling in 1 + erf(x).
fn gelu(x: f32) -> f32 {
    let z = abs(x) * 0.70710678118654752;
    let t = 1.0 / (1.0 + 0.5 * z);
    let poly = -1.26551223 + t * (1.00002368 + t * (0.37409196 + t * (0.09678418
        + t * (-0.18628806 + t * (0.27886807 + t * (-1.13520398 + t * (1.48851587
        + t * (-0.82215223 + t * 0.17087277))))))));
    let tail = 0.5 * t * exp(-z * z + poly); // P(N(0,1) > |x|)
    return x * select(1.0 - tail, tail, x < 0.0);
}

fn activate(x: f32, activation: u32) -> f32 {
    switch activation {
        case 1u: { return gelu(x); }
        // tanh saturates to +-1 in f32 beyond 9; clamping keeps exp-based tanh finite.
        case 2u: { return tanh(clamp(x, -15.0, 15.0)); }
        case 3u: { return max(x, 0.0); }
        default: { return x; }
    }
}

@compute @workgroup_size(16, 16)
fn main(@builtin(global_invocation_id) gid: vec3<u32>) {
    let n = gid.x;
    let m = gid.y;
    if (m >= p.m || n >= p.n) {
        return;
    }
    var acc = 0.0;
    for (var k = 0u; k < p.k; k++) {
        acc += f32(a[m * p.k + k]) * f32(w[n * p.k + k]);
    }
    out[m * p.n + n] = Act(activate(acc + bias[n], p.activation));
}
