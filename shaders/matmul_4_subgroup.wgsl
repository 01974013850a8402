alias Act = f32; // The storage type of activations and weights: f16 with --dtype f16.

// Matmul ladder, version 4: subgroup operations. Version 3 with the operand a shared through
// registers instead of workgroup memory.
//
//   out[m, n] = act(sum_k a[m, k] * w[n, k] + bias[n])
//
// Version 3 stages both a and w in workgroup memory: per slice of 8 k every invocation writes
// 8 values there and, per step of k, reads 4 vec4 (8 values of a, 8 of w) for 64 FMAs. But the
// 8 values of a it reads are the same for every invocation that owns the same rows, and four
// such invocations can sit next to each other in one subgroup. Here they share a in registers:
// 1. Tiles, outputs per invocation and their placement are version 3's (128x128 per workgroup,
//    256 invocations of 8x8, rows 4 aq + {0..3, 16..19}, columns 4 wq + {0..3, 32..35}), with
//    invocation t numbered by subgroup, t = subgroup_id * subgroup_size + subgroup_invocation_id,
//    so that each group of four lanes 4j .. 4j + 3 of a subgroup is four invocations with the
//    same 8 rows and different columns.
// 2. a bypasses workgroup memory: for each 4-wide step of K, lane j of a group loads
//    a[4 aq + j, k .. k + 3] and a[4 aq + 16 + j, k .. k + 3] (two vec4; the next step's are
//    in flight while this one is used), and subgroupShuffleXor(x, 1, 2, 3) hands every lane the
//    values its three partners loaded. Per k an invocation now reads 2 vec4 of w from workgroup
//    memory and receives 6 values of a from its partners (2 of its own) for its 64 FMAs.
// 3. Only w is staged (double-buffered, slices of 8, one barrier per slice, as in version 3),
//    in 8 KiB instead of 16: half the workgroup-memory writes and reads, no bank traffic for a.
// Why groups of four, exchanged by xor: subgroups are 4 to 128 invocations, always a multiple
// of 4, and lane ^ m for m < 4 stays inside the aligned four, so nothing here depends on the
// subgroup size (lavapipe has 8, NVIDIA 32, AMD 32 or 64). An xor shuffle by a constant below 4
// is the cheapest exchange there is: AMD's compilers can make it a DPP operand (quad_perm) and
// Intel's a register region; on NVIDIA and Apple it is a shuffle instruction, which moves
// one value where a vec4 read of workgroup memory moves four, so there version 3 may stay
// ahead (untested: pick per adapter by measurement). quadBroadcast would read more plainly, but
// D3D12 before shader model 6.6 leaves the quads of a compute shader implementation-defined;
// xor shuffles are defined by subgroup_invocation_id everywhere. The price is order: a lane at
// position q receives row q ^ m as component m, so its accumulators hold its rows permuted,
// and the stores undo the permutation.
// Assumes full subgroups (256 is a multiple of every subgroup size; drivers fill them), so that
// t runs over 0..255 exactly once. Every subgroup operation sits in uniform control flow: the
// loop bounds come from the uniform p and the loads' guards end before the shuffles.
// Needs Features::SUBGROUP (no `enable` directive in naga 30) and a 1-D workgroup (naga allows
// subgroup_id only there).
//
// Requires K % 4 == 0: a and w are read as vec4 (every BGE layer: K in {384, 768, 1024, 1536,
// 3072, 4096}). Any M and N: loads outside the matrices read zeros, stores are guarded.
// Dispatch [ceil(N / 128), ceil(M / 128), 1]; the shapes that suit it are version 3's.
//
// Layout as in version 1: a [M, K], w [N, K] (Hugging Face [out, in]), out [M, N], all
// row-major Act; bias [N] f32; the w tile, the shared a values and the sums f32 (an f16 build
// converts once, when loading). Rust twin: src/backend/gpu/matmul.rs.

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
const SLICE: u32 = 8u;      // K per stage of w
const QUADS: u32 = 32u;     // vec4 per k in the w tile: 128 rows / 4
const STAGE: u32 = 256u;    // vec4 per tile buffer: SLICE * QUADS

// The staged w tile, K-major, two buffers: the vec4 w_quad(b * STAGE + k * QUADS + q) holds
// w[n0 + 4q .. n0 + 4q + 3, k0 + k] of buffer b. Scalars, as in version 3: four invocations
// stage the four components of one vec4 at once, which on a vec4 array would race.
var<workgroup> w_tile: array<f32, 2048>;

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

// Stores the vec4 an invocation loaded (row `row` of the tile, k = 4 part .. 4 part + 3 of the
// slice) into the buffer at `base`, transposed: one component of four K-major vec4.
fn stage(base: u32, row: u32, part: u32, wv: vec4<f32>) {
    let at = base + 4u * part * QUADS + row / 4u;
    let c = row % 4u;
    for (var i = 0u; i < 4u; i++) {
        w_tile[4u * (at + i * QUADS) + c] = wv[i];
    }
}

// The values of x in this invocation's group of four lanes, in xor order: component m comes
// from lane `lane ^ m` (m = 0 is this lane's own value). Lane j of a group holds a at row
// 4 aq + j (or 4 aq + 16 + j), so for the lane at position q component m is a at row
// 4 aq + (q ^ m): the rows come permuted, and the stores undo it.
fn group4(x: f32) -> vec4<f32> {
    return vec4<f32>(
        x,
        subgroupShuffleXor(x, 1u),
        subgroupShuffleXor(x, 2u),
        subgroupShuffleXor(x, 3u),
    );
}

// acc += x w^T on the invocation's 8x8 grid at one k: x0 and x1 hold a at its rows 4 aq + 0..3
// and 4 aq + 16..19 in group4's order, w0 and w1 hold w at its columns 4 wq + 0..3 and
// 4 wq + 32..35; acc[2 i + h] is row i (of those 8, in that order) and column quad h.
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
    @builtin(subgroup_id) subgroup: u32,
    @builtin(subgroup_size) lanes: u32,
    @builtin(subgroup_invocation_id) lane: u32,
) {
    let m0 = group.y * TILE_M;
    let n0 = group.x * TILE_N;
    let t = subgroup * lanes + lane;

    // Compute role (point 1): quads of rows aq, aq + 4 and of columns wq, wq + 8 of the tile.
    let g = t / 32u;
    let aq = 8u * (g / 2u) + (t % 32u) / 8u;
    let wq = 16u * (g % 2u) + t % 8u;
    // The rows of a this lane loads for its group of four (point 2); t % 4 is its position.
    let a_row0 = m0 + 4u * aq + t % 4u;
    let a_row1 = a_row0 + 16u;

    // Staging role: row t / 2 of the w tile, k = 4 (t % 2) .. + 3 of each slice.
    let row = t / 2u;
    let part = t % 2u;

    let slices = (p.k + SLICE - 1u) / SLICE;
    stage(0u, row, part, load_w(n0 + row, part));
    var a0 = load_a(a_row0, 0u);
    var a1 = load_a(a_row1, 0u);
    workgroupBarrier();

    var acc: array<vec4<f32>, 16>;
    for (var s = 0u; s < slices; s++) {
        let cur = (s % 2u) * STAGE;
        let more = s + 1u < slices;
        var wv = vec4<f32>();
        if (more) {
            wv = load_w(n0 + row, 2u * (s + 1u) + part);
        }
        for (var h = 0u; h < 2u; h++) {
            let next = 2u * s + h + 1u;
            let next0 = load_a(a_row0, next);
            let next1 = load_a(a_row1, next);
            // w of this invocation's columns at k = 4 h + c of the slice: w_quad(at_c).
            let at0 = cur + 4u * h * QUADS + wq;
            let at1 = at0 + QUADS;
            let at2 = at1 + QUADS;
            let at3 = at2 + QUADS;
            outer(&acc, group4(a0.x), group4(a1.x), w_quad(at0), w_quad(at0 + 8u));
            outer(&acc, group4(a0.y), group4(a1.y), w_quad(at1), w_quad(at1 + 8u));
            outer(&acc, group4(a0.z), group4(a1.z), w_quad(at2), w_quad(at2 + 8u));
            outer(&acc, group4(a0.w), group4(a1.w), w_quad(at3), w_quad(at3 + 8u));
            a0 = next0;
            a1 = next1;
        }
        // The other buffer was last read in iteration s - 1, before its closing barrier.
        if (more) {
            stage(STAGE - cur, row, part, wv);
        }
        workgroupBarrier();
    }

    // Constant indices only: a dynamically indexed acc could be demoted to local memory.
    // acc[2 i + h] holds row 4 aq + (q ^ i) (i < 4) or 4 aq + 16 + (q ^ (i - 4)) (see group4).
    let m = m0 + 4u * aq;
    let n = n0 + 4u * wq;
    let q = t % 4u;
    store(m + q, n, acc[0]);
    store(m + q, n + 32u, acc[1]);
    store(m + (q ^ 1u), n, acc[2]);
    store(m + (q ^ 1u), n + 32u, acc[3]);
    store(m + (q ^ 2u), n, acc[4]);
    store(m + (q ^ 2u), n + 32u, acc[5]);
    store(m + (q ^ 3u), n, acc[6]);
    store(m + (q ^ 3u), n + 32u, acc[7]);
    store(m + 16u + q, n, acc[8]);
    store(m + 16u + q, n + 32u, acc[9]);
    store(m + 16u + (q ^ 1u), n, acc[10]);
    store(m + 16u + (q ^ 1u), n + 32u, acc[11]);
    store(m + 16u + (q ^ 2u), n, acc[12]);
    store(m + 16u + (q ^ 2u), n + 32u, acc[13]);
    store(m + 16u + (q ^ 3u), n, acc[14]);
    store(m + 16u + (q ^ 3u), n + 32u, acc[15]);
}
