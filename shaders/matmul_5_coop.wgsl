enable f16;
enable wgpu_cooperative_matrix;

// Matmul ladder, version 5: the tiled matmul on tensor cores (cooperative matrices).
//
//   out[m, n] = act(sum_k a[m, k] * w[n, k] + bias[n])
//
// What it improves: the earlier versions do every multiply-add on the ALUs (about 23 TFLOP/s
// at best on an H100); here each subgroup issues 16x16x16 f16 matrix multiply-adds with f32
// accumulators (NVIDIA's M16N16K16), the shape the tensor cores execute.
// Requires: subgroup size 32 (checked on the Rust side), Features::EXPERIMENTAL_COOPERATIVE_MATRIX
// with an f16 x f16 -> f32 16x16x16 configuration, and K % 4 == 0 (rows are read as vec4; every
// BGE layer has K in {384, 768, 1024, 1536, 3072, 4096}). Any M and N.
//
// Tiling: a workgroup of 4 subgroups (128 invocations) computes a 128x64 block of out;
// dispatch [ceil(N / 64), ceil(M / 128), 1]. Subgroup s owns rows 64 (s / 2) .. +64 and columns
// 32 (s % 2) .. +32 of the block: 4x2 accumulators of 16x16 f32 (acc_ij: rows +16i, cols +16j).
// Staging: for each 32-wide slice of K the workgroup copies a 128x32 tile of a and a 64x32 tile
// of w to workgroup memory as f16 (vec4 global loads, 8 + 4 per invocation; rows and k outside
// the matrices stage zeros), then each subgroup runs two k16 steps of 4 A loads, 2 B loads and
// 8 multiply-adds. Both tiles keep the global row layout, so a is loaded row-major (coopLoadT)
// and w, read as B[k][n] = w[n][k], column-major (coopLoad), both with stride TILE_STRIDE.
// Padding: rows are 32 + 8 halves (80 bytes). Cooperative loads on Vulkan need 16-byte aligned
// pointers and strides (+4 halves would break that), and with 80-byte rows the 8 rows of a
// 16-byte-per-row load phase land on 8 distinct groups of 4 banks.
// Epilogue: the element layout of a cooperative matrix is opaque, so bias and activation cannot
// be applied in registers. Each subgroup stores one accumulator at a time row-major to its own
// 16x16 f32 area of workgroup memory; after a barrier each of its 32 invocations reads 8
// values, adds the bias, applies the activation, converts to Act and writes out (guarded).
// Workgroup memory: 10240 (a tile) + 5120 (w tile) + 4096 (epilogue) = 19456 bytes; each array
// is a multiple of 16 bytes long, so packed back to back every one starts 16-byte aligned.
// Pitfalls avoided: coopStore's arguments are bound with `let` first (naga 30.0.2's SPIR-V
// writer panics on inline-computed ones); no globals named A, B or C (they clash with the
// roles); no subgroup arithmetic in this module (an NVIDIA driver crashes on coop + subgroup
// ops in one module); every cooperative operation runs in uniform control flow (the loop
// bounds come from the uniform p); accumulators are f32 (f16 ones overflow).
//
// Layout as in version 1 (matmul_1_naive.wgsl): a [M, K], w [N, K] (Hugging Face [out, in]),
// bias [N], out [M, N], row-major; a, w and out are Act, f32 accumulation. Two builds: Act = f32
// as written (validated, never run: the matrices are f16 in both builds); the f16 build, the
// one that runs, prepends `enable f16;` (naga accepts the repeated directive), Act = f16.
// Rust twin: src/backend/gpu/matmul.rs.

alias Act = f32; // The storage type of activations and weights: f16 with --dtype f16.

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

const TILE_M: u32 = 128u;       // rows of a per workgroup
const TILE_N: u32 = 64u;        // rows of w (columns of out) per workgroup
const SLICE: u32 = 32u;         // K per stage
const TILE_STRIDE: u32 = 40u;   // SLICE + 8 halves of padding per staged row
const THREADS: u32 = 128u;      // 4 subgroups of 32
const FRAG: u32 = 16u;          // cooperative matrix side

// The three roles of M16N16K16: out (16x16) += a (16x16 of m x k) * w^T (16x16 of k x n).
alias FragA = coop_mat16x16<f16, A>;
alias FragB = coop_mat16x16<f16, B>;
alias Acc = coop_mat16x16<f32, C>;

// a_tile[i * TILE_STRIDE + k] = a[m0 + i, k0 + k], w_tile[j * TILE_STRIDE + k] = w[n0 + j, k0 + k].
var<workgroup> a_tile: array<f16, 5120>;   // TILE_M * TILE_STRIDE
var<workgroup> w_tile: array<f16, 2560>;   // TILE_N * TILE_STRIDE
// Epilogue: 16x16 f32 per subgroup, row-major.
var<workgroup> c_stage: array<f32, 1024>;

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

// Writes the 16x16 accumulator `tile` to out[row0.., col0..] through the subgroup's staging
// area. Called by every invocation in uniform control flow: it holds two workgroup barriers.
fn store_tile(tile: Acc, row0: u32, col0: u32, subgroup: u32, lane: u32) {
    let stage_base = subgroup * FRAG * FRAG;
    let stage = &c_stage[stage_base];
    coopStoreT(tile, stage, FRAG);
    workgroupBarrier();
    for (var r = 0u; r < 8u; r++) {
        let e = lane + 32u * r;
        let m = row0 + e / FRAG;
        let n = col0 + e % FRAG;
        if (m < p.m && n < p.n) {
            let x = c_stage[stage_base + e] + bias[n];
            out[m * p.n + n] = Act(activate(x, p.activation));
        }
    }
    // The next store_tile overwrites the area.
    workgroupBarrier();
}

@compute @workgroup_size(128)
fn main(
    @builtin(workgroup_id) group: vec3<u32>,
    @builtin(local_invocation_index) tid: u32,
) {
    let m0 = group.y * TILE_M;
    let n0 = group.x * TILE_N;
    let subgroup = tid / 32u;
    let lane = tid % 32u;
    // Offsets of the subgroup's 64x32 part of the block.
    let sub_m = (subgroup / 2u) * 64u;
    let sub_n = (subgroup % 2u) * 32u;
    let k4 = p.k / 4u;

    var acc00 = Acc();
    var acc01 = Acc();
    var acc10 = Acc();
    var acc11 = Acc();
    var acc20 = Acc();
    var acc21 = Acc();
    var acc30 = Acc();
    var acc31 = Acc();

    for (var k0 = 0u; k0 < p.k; k0 += SLICE) {
        // 8 vec4 per staged row; consecutive invocations read consecutive vec4 of one row.
        // K % 4 == 0, so a vec4 is either wholly inside K or wholly past it.
        for (var r = 0u; r < 8u; r++) {
            let e = tid + r * THREADS;
            let row = e / 8u;
            let kk = (e % 8u) * 4u;
            var v = vec4<f16>(0.0);
            if (m0 + row < p.m && k0 + kk < p.k) {
                v = vec4<f16>(a[(m0 + row) * k4 + (k0 + kk) / 4u]);
            }
            let t = row * TILE_STRIDE + kk;
            a_tile[t] = v.x;
            a_tile[t + 1u] = v.y;
            a_tile[t + 2u] = v.z;
            a_tile[t + 3u] = v.w;
        }
        for (var r = 0u; r < 4u; r++) {
            let e = tid + r * THREADS;
            let row = e / 8u;
            let kk = (e % 8u) * 4u;
            var v = vec4<f16>(0.0);
            if (n0 + row < p.n && k0 + kk < p.k) {
                v = vec4<f16>(w[(n0 + row) * k4 + (k0 + kk) / 4u]);
            }
            let t = row * TILE_STRIDE + kk;
            w_tile[t] = v.x;
            w_tile[t + 1u] = v.y;
            w_tile[t + 2u] = v.z;
            w_tile[t + 3u] = v.w;
        }
        workgroupBarrier();

        for (var kk = 0u; kk < SLICE; kk += FRAG) {
            // A: rows of a (m) x k, row-major. B: k x n with B[k][n] = w_tile[n][k], column-major.
            let ta = sub_m * TILE_STRIDE + kk;
            let tw = sub_n * TILE_STRIDE + kk;
            let a0 = coopLoadT<FragA>(&a_tile[ta], TILE_STRIDE);
            let a1 = coopLoadT<FragA>(&a_tile[ta + 16u * TILE_STRIDE], TILE_STRIDE);
            let a2 = coopLoadT<FragA>(&a_tile[ta + 32u * TILE_STRIDE], TILE_STRIDE);
            let a3 = coopLoadT<FragA>(&a_tile[ta + 48u * TILE_STRIDE], TILE_STRIDE);
            let b0 = coopLoad<FragB>(&w_tile[tw], TILE_STRIDE);
            let b1 = coopLoad<FragB>(&w_tile[tw + 16u * TILE_STRIDE], TILE_STRIDE);
            acc00 = coopMultiplyAdd(a0, b0, acc00);
            acc01 = coopMultiplyAdd(a0, b1, acc01);
            acc10 = coopMultiplyAdd(a1, b0, acc10);
            acc11 = coopMultiplyAdd(a1, b1, acc11);
            acc20 = coopMultiplyAdd(a2, b0, acc20);
            acc21 = coopMultiplyAdd(a2, b1, acc21);
            acc30 = coopMultiplyAdd(a3, b0, acc30);
            acc31 = coopMultiplyAdd(a3, b1, acc31);
        }
        // The next slice overwrites the tiles.
        workgroupBarrier();
    }

    let row0 = m0 + sub_m;
    let col0 = n0 + sub_n;
    store_tile(acc00, row0, col0, subgroup, lane);
    store_tile(acc01, row0, col0 + 16u, subgroup, lane);
    store_tile(acc10, row0 + 16u, col0, subgroup, lane);
    store_tile(acc11, row0 + 16u, col0 + 16u, subgroup, lane);
    store_tile(acc20, row0 + 32u, col0, subgroup, lane);
    store_tile(acc21, row0 + 32u, col0 + 16u, subgroup, lane);
    store_tile(acc30, row0 + 48u, col0, subgroup, lane);
    store_tile(acc31, row0 + 48u, col0 + 16u, subgroup, lane);
}
