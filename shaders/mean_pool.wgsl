alias Act = f32; // The storage type of activations: f16 with --dtype f16 (see src/backend/gpu/mod.rs).

// Mean pooling, and with `normalize` the L2 normalisation after it in the same dispatch:
//
//   out[s, c] = mean of x[t, c] over the tokens t of sequence s
//   normalize: out[s, :] /= max(||out[s, :]||_2, 1e-12)
//
// Layout: x [tokens, cols] row-major Act (sums in f32), sequence s owning rows
// offsets[s]..offsets[s+1]; out [sequences, cols]. One workgroup of 256 invocations per
// sequence (sequences beyond 65535 go to the y dimension); invocation i owns columns i, i + 256,
// ...: it writes their means, then, to normalise, reads back only what it wrote itself. The
// means are rounded to Act before the norm is taken, and the norm is summed as
// l2_normalize.wgsl sums it, so the fused result has the bits of the two kernels in a row.
// Rust twin: src/backend/gpu/rows.rs.

struct Params {
    sequences: u32,
    cols: u32,
    normalize: u32,
}

@group(0) @binding(0) var<uniform> p: Params;
@group(0) @binding(1) var<storage, read> offsets: array<u32>;
@group(0) @binding(2) var<storage, read> x: array<Act>;
@group(0) @binding(3) var<storage, read_write> out: array<Act>;

const THREADS: u32 = 256u;
var<workgroup> partial: array<f32, 256>;

@compute @workgroup_size(256)
fn main(
    @builtin(workgroup_id) group: vec3<u32>,
    @builtin(num_workgroups) groups: vec3<u32>,
    @builtin(local_invocation_index) tid: u32,
) {
    let s = group.x + group.y * groups.x;
    // `s` is uniform across the workgroup, so the early return keeps barriers uniform.
    if (s >= p.sequences) {
        return;
    }
    let start = offsets[s];
    let end = offsets[s + 1u];
    let n = f32(end - start);
    let base = s * p.cols;
    var squares = 0.0;
    for (var c = tid; c < p.cols; c += THREADS) {
        var sum = 0.0;
        for (var t = start; t < end; t++) {
            sum += f32(x[t * p.cols + c]);
        }
        let mean = Act(sum / n);
        out[base + c] = mean;
        let v = f32(mean);
        squares += v * v;
    }
    if (p.normalize == 0u) {
        return;
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
        out[base + c] = Act(f32(out[base + c]) * scale);
    }
}
