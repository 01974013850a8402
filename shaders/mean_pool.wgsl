alias Act = f32; // The storage type of activations: f16 with --dtype f16 (see src/backend/gpu/mod.rs).

// Mean pooling: out[s, c] = mean of x[t, c] over the tokens t of sequence s.
//
// Layout: x [tokens, cols] row-major Act (sums in f32), sequence s owning rows offsets[s]..offsets[s+1];
// out [sequences, cols]. One invocation per output element; consecutive invocations read
// consecutive columns of a row. Rust twin: src/backend/gpu/rows.rs.

struct Params {
    sequences: u32,
    cols: u32,
}

@group(0) @binding(0) var<uniform> p: Params;
@group(0) @binding(1) var<storage, read> offsets: array<u32>;
@group(0) @binding(2) var<storage, read> x: array<Act>;
@group(0) @binding(3) var<storage, read_write> out: array<Act>;

@compute @workgroup_size(256)
fn main(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(num_workgroups) groups: vec3<u32>) {
    let i = gid.x + gid.y * groups.x * 256u;
    if (i >= p.sequences * p.cols) {
        return;
    }
    let s = i / p.cols;
    let c = i % p.cols;
    let start = offsets[s];
    let end = offsets[s + 1u];
    var sum = 0.0;
    for (var t = start; t < end; t++) {
        sum += f32(x[t * p.cols + c]);
    }
    out[i] = Act(sum / f32(end - start));
}
