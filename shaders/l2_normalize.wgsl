alias Act = f32; // The storage type of activations: f16 with --dtype f16 (see src/backend/gpu/mod.rs).

// L2 normalisation of each row, as torch.nn.functional.normalize:
//
//   out[r, :] = x[r, :] / max(||x[r, :]||_2, 1e-12)
//
// Layout: x, out [rows, cols] row-major Act; the sum of squares is f32. One workgroup of 256 invocations per row.
// Rust twin: src/backend/gpu/rows.rs.

struct Params {
    rows: u32,
    cols: u32,
}

@group(0) @binding(0) var<uniform> p: Params;
@group(0) @binding(1) var<storage, read> x: array<Act>;
@group(0) @binding(2) var<storage, read_write> out: array<Act>;

const THREADS: u32 = 256u;
var<workgroup> partial: array<f32, 256>;

@compute @workgroup_size(256)
fn main(
    @builtin(workgroup_id) group: vec3<u32>,
    @builtin(num_workgroups) groups: vec3<u32>,
    @builtin(local_invocation_index) tid: u32,
) {
    let row = group.x + group.y * groups.x;
    if (row >= p.rows) {
        return;
    }
    let base = row * p.cols;
    var squares = 0.0;
    for (var c = tid; c < p.cols; c += THREADS) {
        let v = f32(x[base + c]);
        squares += v * v;
    }
    partial[tid] = squares;
    workgroupBarrier();
    for (var stride = THREADS / 2u; stride > 0u; stride /= 2u) {
        if (tid < stride) {
            partial[tid] += partial[tid + stride];
        }
        workgroupBarrier();
    }
    let scale = 1.0 / max(sqrt(partial[0]), 1e-12);
    for (var c = tid; c < p.cols; c += THREADS) {
        out[base + c] = Act(f32(x[base + c]) * scale);
    }
}
