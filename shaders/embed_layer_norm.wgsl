alias Act = f32; // The storage type of activations: f16 with --dtype f16 (see src/backend/gpu/mod.rs).

// The embedding sum and the first LayerNorm in one pass: embed.wgsl and layer_norm.wgsl
// (without a residual) fused, so the sum never goes through memory and the encoder's first
// two dispatches are one.
//
//   v[c] = word[ids[t], c] + position[positions[t], c] + token_type[types[t], c]
//   out[t, c] = (v[c] - mean(v)) / sqrt(var(v) + eps) * gamma[c] + beta[c]
//
// The sum is formed in f32 in the same order as embed.wgsl, and the statistics as in
// layer_norm.wgsl (a second pass over (v - mean)^2), so in f32 the result has the bits of the
// two kernels run one after the other; with f16 activations it skips the sum's rounding to f16.
// Layout: tables row-major [rows, hidden] f32; gamma, beta [hidden] Act; out [tokens, hidden]
// Act. One workgroup of 256 invocations per token (tokens beyond 65535 go to the y dimension).
// Nine storage buffers: the Rust twin (src/backend/gpu/embed.rs) runs the two kernels instead
// on an adapter that binds fewer per stage.

struct Params {
    tokens: u32,
    hidden: u32,
    eps: f32,
}

@group(0) @binding(0) var<uniform> p: Params;
@group(0) @binding(1) var<storage, read> ids: array<u32>;
@group(0) @binding(2) var<storage, read> positions: array<u32>;
@group(0) @binding(3) var<storage, read> types: array<u32>;
@group(0) @binding(4) var<storage, read> word: array<f32>;
@group(0) @binding(5) var<storage, read> position: array<f32>;
@group(0) @binding(6) var<storage, read> token_type: array<f32>;
@group(0) @binding(7) var<storage, read> gamma: array<Act>;
@group(0) @binding(8) var<storage, read> beta: array<Act>;
@group(0) @binding(9) var<storage, read_write> out: array<Act>;

const THREADS: u32 = 256u;
var<workgroup> partial: array<f32, 256>;

// Sum of `own` over the workgroup (tree reduction); every invocation gets the total.
fn workgroup_sum(tid: u32, own: f32) -> f32 {
    partial[tid] = own;
    workgroupBarrier();
    for (var stride = THREADS / 2u; stride > 0u; stride /= 2u) {
        if (tid < stride) {
            partial[tid] += partial[tid + stride];
        }
        workgroupBarrier();
    }
    let total = partial[0];
    workgroupBarrier();
    return total;
}

@compute @workgroup_size(256)
fn main(
    @builtin(workgroup_id) group: vec3<u32>,
    @builtin(num_workgroups) groups: vec3<u32>,
    @builtin(local_invocation_index) tid: u32,
) {
    let t = group.x + group.y * groups.x;
    // `t` is uniform across the workgroup, so the early return keeps barriers uniform.
    if (t >= p.tokens) {
        return;
    }
    let h = p.hidden;
    let w0 = ids[t] * h;
    let p0 = positions[t] * h;
    let y0 = types[t] * h;
    let n = f32(h);

    var sum = 0.0;
    for (var c = tid; c < h; c += THREADS) {
        sum += word[w0 + c] + position[p0 + c] + token_type[y0 + c];
    }
    let mean = workgroup_sum(tid, sum) / n;

    var squares = 0.0;
    for (var c = tid; c < h; c += THREADS) {
        let d = word[w0 + c] + position[p0 + c] + token_type[y0 + c] - mean;
        squares += d * d;
    }
    let inv_std = inverseSqrt(workgroup_sum(tid, squares) / n + p.eps);

    for (var c = tid; c < h; c += THREADS) {
        let v = word[w0 + c] + position[p0 + c] + token_type[y0 + c];
        out[t * h + c] = Act((v - mean) * inv_std * f32(gamma[c]) + f32(beta[c]));
    }
}
