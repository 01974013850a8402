alias Act = f32; // The storage type of activations and weights: f16 with --dtype f16.

// Matmul ladder, version 3: large register blocking. What version 2 computes, with each
// invocation doing four times the work per value it reads.
//
//   out[m, n] = act(sum_k a[m, k] * w[n, k] + bias[n])
//
// Version 2 computes a 64x64 block per workgroup, 4x4 outputs per invocation: per step of k an
// invocation makes 8 scalar reads of workgroup memory (4 values of a, 4 of w) for 16 FMAs, and
// every value fetched from global memory serves 64 outputs. These two ratios, not the ALUs,
// bound it. This version has the shape of CUTLASS's default SIMT SGEMM (128x128x8, two stages,
// 256 threads of 8x8):
// 1. Larger tiles, more outputs per invocation: a workgroup computes a 128x128 block of out and
//    each of its 256 invocations accumulates an 8x8 grid (64 f32 registers). Per step of k it
//    reads 8 values of a and 8 of w, as four vec4 reads, for 64 FMAs: 4 FMAs per value read and
//    16 per read instruction. A value fetched from global memory serves 128 outputs, which halves
//    global traffic: (128 + 128) K loads per 128 * 128 * K FMAs, 1/64 of a load per FMA (1/32 in
//    version 2).
// 2. Double buffering: slices are 8 deep and each tile exists twice, 2 x (128x8 + 128x8) f32 =
//    16 KiB, the most WebGPU guarantees. While the workgroup computes slice s from one buffer,
//    each invocation's loads of slice s + 1 (one vec4 of a, one of w) are already in flight; it
//    stores them to the other buffer afterwards, so there is one barrier per slice and the
//    global-memory latency hides behind 512 FMAs.
// 3. Vectorised loads: the 128x8 slice of a is 256 vec4, one per invocation; two neighbouring
//    invocations read one 32-byte run of a row (likewise for w).
// 4. Placement by groups of 32 (a warp on NVIDIA): invocation t = 32 g + 8 y + x owns rows
//    32 (g / 2) + 4 y + {0..3, 16..19} and columns 64 (g % 2) + 4 x + {0..3, 32..35}. A group of
//    32 then computes a 32x64 patch, and each of its vec4 reads of workgroup memory touches 4
//    distinct vec4 of a (broadcast) and 8 of w (128 contiguous bytes): no bank conflicts. The
//    split into 4-row and 4-column quads 16 and 32 apart keeps the reads vec4 and contiguous.
//    The grouping only affects speed: the kernel is correct for any subgroup size.
//
// Requires K % 4 == 0: a and w are read as vec4 (every BGE layer: K in {384, 768, 1024, 1536,
// 3072, 4096}). Any M and N: tile loads outside the matrices read zeros, stores are guarded.
// Dispatch [ceil(N / 128), ceil(M / 128), 1]. Best when M and N are both several times 128: a
// 128x128 tile of a matrix with few rows (M < 64) is mostly padding, where version 2 wastes
// less, and a GPU needs a few workgroups per multiprocessor (M N / 16384 tiles) to be busy.
//
// Layout as in version 1: a [M, K], w [N, K] (Hugging Face [out, in]), out [M, N], all
// row-major Act; bias [N] f32; tiles and sums f32 (an f16 build converts once, when staging).
// Rust twin: src/backend/gpu/matmul.rs.

struct Params {
    m: u32,
    n: u32,
    k: u32,
    // 0 none, 1 exact GELU, 2 tanh, 3 relu (backend::Activation)
    activation: u32,
}

@group(0) @binding(0) var<uniform> p: Params;
@group(0) @binding(1) var<storage, read> a: array<vec4<Act>>;
@group(0) @binding(2) var<storage, read> w: array<vec4<Act>>;
@group(0) @binding(3) var<storage, read> bias: array<f32>;
@group(0) @binding(4) var<storage, read_write> out: array<Act>;

const TILE_M: u32 = 128u;   // rows of out (and of a) per workgroup
const TILE_N: u32 = 128u;   // columns of out (rows of w) per workgroup
const SLICE: u32 = 8u;      // K per stage
const QUADS: u32 = 32u;     // vec4 per k in a tile: 128 rows / 4
const STAGE: u32 = 256u;    // vec4 per tile buffer: SLICE * QUADS

// Staged tiles, K-major, two buffers each: the vec4 a_quad(b * STAGE + k * QUADS + q) holds
// a[m0 + 4q .. m0 + 4q + 3, k0 + k] of buffer b (w_tile likewise, rows of w). They are declared
// as scalars because four invocations stage the four components of one such vec4 at once:
// WGSL lets a write to one component of a vector access the whole vector (and Metal and HLSL
// compile it as a read-modify-write), so writing components of a vec4 array would race.
// Reading four consecutive, 16-byte-aligned scalars is one vector load on the GPUs we know.
var<workgroup> a_tile: array<f32, 2048>;
var<workgroup> w_tile: array<f32, 2048>;

// The vec4 at vec4 index `i` of a_tile (four scalars: see the note on the tiles).
fn a_quad(i: u32) -> vec4<f32> {
    let e = 4u * i;
    return vec4<f32>(a_tile[e], a_tile[e + 1u], a_tile[e + 2u], a_tile[e + 3u]);
}

// The vec4 at vec4 index `i` of w_tile (four scalars: see the note on the tiles).
fn w_quad(i: u32) -> vec4<f32> {
    let e = 4u * i;
    return vec4<f32>(w_tile[e], w_tile[e + 1u], w_tile[e + 2u], w_tile[e + 3u]);
}

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

// a[row, 4 kq .. 4 kq + 3] as f32; zeros outside the matrix.
fn load_a(row: u32, kq: u32) -> vec4<f32> {
    let k4 = p.k / 4u;
    if (row < p.m && kq < k4) {
        return vec4<f32>(a[row * k4 + kq]);
    }
    return vec4<f32>();
}

// w[row, 4 kq .. 4 kq + 3] as f32; zeros outside the matrix.
fn load_w(row: u32, kq: u32) -> vec4<f32> {
    let k4 = p.k / 4u;
    if (row < p.n && kq < k4) {
        return vec4<f32>(w[row * k4 + kq]);
    }
    return vec4<f32>();
}

// Stores the vec4s an invocation loaded (row `row` of the tiles, k = 4 part .. 4 part + 3 of the
// slice) into the buffers at `base`, transposed: one component of four K-major vec4.
fn stage(base: u32, row: u32, part: u32, av: vec4<f32>, wv: vec4<f32>) {
    let at = base + 4u * part * QUADS + row / 4u;
    let c = row % 4u;
    for (var i = 0u; i < 4u; i++) {
        a_tile[4u * (at + i * QUADS) + c] = av[i];
        w_tile[4u * (at + i * QUADS) + c] = wv[i];
    }
}

// acc += x w^T on the invocation's 8x8 grid at one k: x0 and x1 hold a at its rows 4 aq + 0..3
// and 4 aq + 16..19, w0 and w1 hold w at its columns 4 wq + 0..3 and 4 wq + 32..35;
// acc[2 i + h] is row i (of those 8) and column quad h.
fn outer(
    acc: ptr<function, array<vec4<f32>, 16>>,
    x0: vec4<f32>,
    x1: vec4<f32>,
    w0: vec4<f32>,
    w1: vec4<f32>,
) {
    (*acc)[0] = fma(vec4<f32>(x0.x), w0, (*acc)[0]);
    (*acc)[1] = fma(vec4<f32>(x0.x), w1, (*acc)[1]);
    (*acc)[2] = fma(vec4<f32>(x0.y), w0, (*acc)[2]);
    (*acc)[3] = fma(vec4<f32>(x0.y), w1, (*acc)[3]);
    (*acc)[4] = fma(vec4<f32>(x0.z), w0, (*acc)[4]);
    (*acc)[5] = fma(vec4<f32>(x0.z), w1, (*acc)[5]);
    (*acc)[6] = fma(vec4<f32>(x0.w), w0, (*acc)[6]);
    (*acc)[7] = fma(vec4<f32>(x0.w), w1, (*acc)[7]);
    (*acc)[8] = fma(vec4<f32>(x1.x), w0, (*acc)[8]);
    (*acc)[9] = fma(vec4<f32>(x1.x), w1, (*acc)[9]);
    (*acc)[10] = fma(vec4<f32>(x1.y), w0, (*acc)[10]);
    (*acc)[11] = fma(vec4<f32>(x1.y), w1, (*acc)[11]);
    (*acc)[12] = fma(vec4<f32>(x1.z), w0, (*acc)[12]);
    (*acc)[13] = fma(vec4<f32>(x1.z), w1, (*acc)[13]);
    (*acc)[14] = fma(vec4<f32>(x1.w), w0, (*acc)[14]);
    (*acc)[15] = fma(vec4<f32>(x1.w), w1, (*acc)[15]);
}

// out[m, n .. n + 3] = act(v + bias), for the columns inside the matrix.
fn store(m: u32, n: u32, v: vec4<f32>) {
    if (m >= p.m) {
        return;
    }
    for (var j = 0u; j < 4u; j++) {
        if (n + j < p.n) {
            out[m * p.n + n + j] = Act(activate(v[j] + bias[n + j], p.activation));
        }
    }
}

@compute @workgroup_size(256)
fn main(
    @builtin(workgroup_id) group: vec3<u32>,
    @builtin(local_invocation_index) t: u32,
) {
    let m0 = group.y * TILE_M;
    let n0 = group.x * TILE_N;

    // Compute role (point 4): quads of rows aq, aq + 4 and of columns wq, wq + 8 of the tiles.
    let g = t / 32u;
    let aq = 8u * (g / 2u) + (t % 32u) / 8u;
    let wq = 16u * (g % 2u) + t % 8u;

    // Staging role (point 3): row t / 2 of both tiles, k = 4 (t % 2) .. + 3 of each slice.
    let row = t / 2u;
    let part = t % 2u;

    let slices = (p.k + SLICE - 1u) / SLICE;
    stage(0u, row, part, load_a(m0 + row, part), load_w(n0 + row, part));
    workgroupBarrier();

    var acc: array<vec4<f32>, 16>;
    for (var s = 0u; s < slices; s++) {
        let cur = (s % 2u) * STAGE;
        let more = s + 1u < slices;
        var av = vec4<f32>();
        var wv = vec4<f32>();
        if (more) {
            let kq = 2u * (s + 1u) + part;
            av = load_a(m0 + row, kq);
            wv = load_w(n0 + row, kq);
        }
        for (var k = 0u; k < SLICE; k++) {
            let ak = cur + k * QUADS + aq;
            let wk = cur + k * QUADS + wq;
            outer(&acc, a_quad(ak), a_quad(ak + 4u), w_quad(wk), w_quad(wk + 8u));
        }
        // The other buffer was last read in iteration s - 1, before its closing barrier.
        if (more) {
            stage(STAGE - cur, row, part, av, wv);
        }
        workgroupBarrier();
    }

    // Constant indices only: a dynamically indexed acc could be demoted to local memory.
    let m = m0 + 4u * aq;
    let n = n0 + 4u * wq;
    store(m, n, acc[0]);
    store(m, n + 32u, acc[1]);
    store(m + 1u, n, acc[2]);
    store(m + 1u, n + 32u, acc[3]);
    store(m + 2u, n, acc[4]);
    store(m + 2u, n + 32u, acc[5]);
    store(m + 3u, n, acc[6]);
    store(m + 3u, n + 32u, acc[7]);
    store(m + 16u, n, acc[8]);
    store(m + 16u, n + 32u, acc[9]);
    store(m + 17u, n, acc[10]);
    store(m + 17u, n + 32u, acc[11]);
    store(m + 18u, n, acc[12]);
    store(m + 18u, n + 32u, acc[13]);
    store(m + 19u, n, acc[14]);
    store(m + 19u, n + 32u, acc[15]);
}
