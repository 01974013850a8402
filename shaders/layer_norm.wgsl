alias Act = f32; // The storage type of activations: f16 with --dtype f16 (see src/backend/gpu/mod.rs).

// LayerNorm over each row, with the residual add fused in.
//
//   v = x[r, :] + residual[r, :]            (residual only when has_residual = 1)
//   out[r, c] = (v[c] - mean(v)) / sqrt(var(v) + eps) * gamma[c] + beta[c]
//
// Layout: x, residual, out [rows, cols] row-major Act; gamma, beta [cols] Act. The mean and
// variance are f32 whatever Act is. One workgroup of
// 256 invocations per row (rows beyond 65535 go to the y dimension of the dispatch). The
// variance is computed in a second pass over (v - mean)^2, as the reference does, rather than
// as E[v^2] - mean^2, which cancels badly when |mean| >> std.
// Rust twin: src/backend/gpu/layer_norm.rs.

struct Params {
    rows: u32,
    cols: u32,
    eps: f32,
    has_residual: u32,
}

@group(0) @binding(0) var<uniform> p: Params;
@group(0) @binding(1) var<storage, read> x: array<Act>;
@group(0) @binding(2) var<storage, read> residual: array<Act>;
@group(0) @binding(3) var<storage, read> gamma: array<Act>;
@group(0) @binding(4) var<storage, read> beta: array<Act>;
@group(0) @binding(5) var<storage, read_write> out: array<Act>;

const THREADS: u32 = 256u;
var<workgroup> partial: array<f32, 256>;

fn value(i: u32) -> f32 {
    if (p.has_residual == 1u) {
        return f32(x[i]) + f32(residual[i]);
    }
    return f32(x[i]);
}

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
    let row = group.x + group.y * groups.x;
    // `row` is uniform across the workgroup, so the early return keeps barriers uniform.
    if (row >= p.rows) {
        return;
    }
    let base = row * p.cols;
    let n = f32(p.cols);

    var sum = 0.0;
    for (var c = tid; c < p.cols; c += THREADS) {
        sum += value(base + c);
    }
    let mean = workgroup_sum(tid, sum) / n;

    var squares = 0.0;
    for (var c = tid; c < p.cols; c += THREADS) {
        let d = value(base + c) - mean;
        squares += d * d;
    }
    let inv_std = inverseSqrt(workgroup_sum(tid, squares) / n + p.eps);

    for (var c = tid; c < p.cols; c += THREADS) {
        out[base + c] = Act((value(base + c) - mean) * inv_std * f32(gamma[c]) + f32(beta[c]));
    }
}
