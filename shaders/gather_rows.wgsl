alias Act = f32; // The storage type of activations: f16 with --dtype f16 (see src/backend/gpu/mod.rs).

// Row gather: out[i, :] = x[rows[i], :] (CLS pooling takes each sequence's first row; the
// ColBERT head takes every row but the first).
//
// Layout: x [*, cols] and out [count, cols] row-major Act; rows [count] u32. One invocation
// per output element, flat index folded over a 2-D dispatch. Rust twin: src/backend/gpu/rows.rs.

struct Params {
    count: u32,
    cols: u32,
}

@group(0) @binding(0) var<uniform> p: Params;
@group(0) @binding(1) var<storage, read> rows: array<u32>;
@group(0) @binding(2) var<storage, read> x: array<Act>;
@group(0) @binding(3) var<storage, read_write> out: array<Act>;

@compute @workgroup_size(256)
fn main(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(num_workgroups) groups: vec3<u32>) {
    let i = gid.x + gid.y * groups.x * 256u;
    if (i >= p.count * p.cols) {
        return;
    }
    let r = i / p.cols;
    let c = i % p.cols;
    out[i] = x[rows[r] * p.cols + c];
}
