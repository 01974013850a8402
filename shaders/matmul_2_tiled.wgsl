alias Act = f32; // The storage type of activations and weights: f16 with --dtype f16.

// Matmul ladder, version 2: what version 1 computes, with two improvements.
//
//   out[m, n] = act(sum_k a[m, k] * w[n, k] + bias[n])
//
// 1. Shared-memory tiles: a workgroup computes a 64x64 block of out. For each 16-wide slice of
//    K it stages a 64x16 tile of a and of w in workgroup memory, so every value read from
//    global memory is used 64 times instead of once.
// 2. Register blocking: each of the 16x16 invocations accumulates a 4x4 grid of outputs (rows
//    ty + 16i, columns tx + 16j), reading 4 + 4 values from workgroup memory per 16 FMAs.
// Any M, N, K work: tile loads outside the matrices read zeros and stores are guarded.
//
// Layout as in version 1: a [M, K], w [N, K] (Hugging Face [out, in]), out [M, N], all
// row-major Act; bias [N] f32; tiles and sums f32. Rust twin: src/backend/gpu/matmul.rs.

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

const TILE: u32 = 64u;    // rows of a / rows of w per workgroup
const SLICE: u32 = 16u;   // K per stage
const THREADS: u32 = 256u;

// Staged tiles, K-major so the inner loop reads consecutive rows/columns:
// a_tile[k * TILE + i] = a[m0 + i, k0 + k], w_tile[k * TILE + j] = w[n0 + j, k0 + k].
var<workgroup> a_tile: array<f32, 1024>;
var<workgroup> w_tile: array<f32, 1024>;

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
fn main(
    @builtin(workgroup_id) group: vec3<u32>,
    @builtin(local_invocation_id) local: vec3<u32>,
    @builtin(local_invocation_index) tid: u32,
) {
    let m0 = group.y * TILE;
    let n0 = group.x * TILE;
    let tx = local.x;
    let ty = local.y;

    var acc: array<array<f32, 4>, 4>;
    for (var k0 = 0u; k0 < p.k; k0 += SLICE) {
        // Each invocation stages 4 elements of each tile; consecutive invocations read
        // consecutive k of one row, so global reads come in 16-element runs.
        for (var r = 0u; r < 4u; r++) {
            let e = tid + r * THREADS;
            let row = e / SLICE;
            let k = e % SLICE;
            let gk = k0 + k;
            var av = 0.0;
            if (m0 + row < p.m && gk < p.k) {
                av = f32(a[(m0 + row) * p.k + gk]);
            }
            a_tile[k * TILE + row] = av;
            var wv = 0.0;
            if (n0 + row < p.n && gk < p.k) {
                wv = f32(w[(n0 + row) * p.k + gk]);
            }
            w_tile[k * TILE + row] = wv;
        }
        workgroupBarrier();
        for (var k = 0u; k < SLICE; k++) {
            var av: array<f32, 4>;
            var wv: array<f32, 4>;
            for (var i = 0u; i < 4u; i++) {
                av[i] = a_tile[k * TILE + ty + 16u * i];
                wv[i] = w_tile[k * TILE + tx + 16u * i];
            }
            for (var i = 0u; i < 4u; i++) {
                for (var j = 0u; j < 4u; j++) {
                    acc[i][j] = fma(av[i], wv[j], acc[i][j]);
                }
            }
        }
        workgroupBarrier();
    }

    for (var i = 0u; i < 4u; i++) {
        let m = m0 + ty + 16u * i;
        for (var j = 0u; j < 4u; j++) {
            let n = n0 + tx + 16u * j;
            if (m < p.m && n < p.n) {
                out[m * p.n + n] = Act(activate(acc[i][j] + bias[n], p.activation));
            }
        }
    }
}
