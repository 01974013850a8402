enable f16;
enable wgpu_cooperative_matrix;

// Attention ladder, version 3: version 1's online softmax (attention_1_online.wgsl) with both
// matrix products on tensor cores (cooperative matrices, 16x16x16 f16 -> f32). Multi-head
// self-attention inside each packed sequence:
//
//   out[t, head] = sum_u softmax_u(q_t . k_u * scale) v_u     over the tokens u of t's sequence
//
// What it improves: version 1 computes each score and each P.V term as scalar f32 FMAs, one
// query per invocation. Here a workgroup's 64 queries meet 32 keys at a time as matrix products:
// S = Q K^T and O += P V run as 16x16x16 multiply-adds on the tensor cores (the design of
// llama.cpp's flash_attn_cm1.comp). Semantics are version 1's: softmax over the keys of the
// query's own sequence only, keys past its end weigh exactly 0, online softmax over key tiles,
// no [seq, seq] buffer; any sequence length (8192 for bge-m3).
// Requires: subgroup size 32 (checked on the Rust side), Features::EXPERIMENTAL_COOPERATIVE_MATRIX
// with an f16 x f16 -> f32 16x16x16 configuration, and HEAD_DIM (d) a multiple of 16, at most 128.
//
// Layout as in version 1: qkv [tokens, 3 * hidden] (Q columns 0..h, K h..2h, V 2h..3h; head
// j owns columns j*d..(j+1)*d of each), out [tokens, hidden], both Act read as vec4.
// blocks[b] = (sequence start, sequence length, first query of the block, 0).
// Dispatch: x = query blocks (64 queries of one sequence each), y = heads; 4 subgroups of 32
// (128 invocations); subgroup s owns the block's queries 16s .. 16s + 15.
// Two builds: Act = f32 as written (validated, never run: the matrices are f16 in both builds);
// the f16 build, the one that runs, prepends `enable f16;` (naga accepts the repeated
// directive) and makes Act f16. Scores, softmax statistics and O are f32 in both.
//
// Per workgroup:
// 1. Q is staged once in workgroup memory as f16 (unscaled, so exact in the f16 build; the scale
//    multiplies the f32 scores instead); each subgroup loads its 16 rows as d/16 A matrices
//    (row-major) and keeps them in registers for the whole key loop.
// 2. For each tile of 32 keys: K and V are staged as f16 (keys past the sequence end as zeros).
//    Each subgroup computes its 16x32 scores S = Q K^T as two C matrices (K^T is read as a
//    column-major B matrix from K's rows) and stores them to workgroup memory key-major.
// 3. One invocation per query reads its 32 scores, updates the running max m and denominator l
//    (f32, m starts at -3e38: finite, so exp(m_old - m_new) is 0, never NaN), writes the weights
//    P = exp(s - m_new) as f16 and the correction exp(m_old - m_new). Keys past the end get
//    weight 0 directly. l sums the f16-rounded weights, the ones the P V product uses.
// 4. Each subgroup computes its 16 x d part of P V into fresh C matrices (P column-major A, V
//    row-major B), 32 output columns at a time.
// Rescaling: the element layout of a cooperative matrix is opaque and naga has no per-element or
// per-row operation on one (only + and * by a scalar), so O cannot be rescaled by exp(m_old - m)
// while it is a C matrix, and 64 x d f32 (32 KiB at d = 128) does not fit in workgroup memory
// next to the tiles. So O lives in registers spread over the invocations, as in version 1: per
// 32-column chunk each subgroup stores its fresh P V values row-major to workgroup memory and
// each invocation updates its 4 rows x 4 columns, o = o * correction[row] + staged. Invocation
// (subgroup s, lane i) owns rows 16s + i/8 + 4r (r < 4) and columns 32c + 4(i % 8) .. +4 of each
// chunk c, so the output is written as vec4, divided by l.
//
// Workgroup memory, 31760 bytes: Q, then K | V, f16 [64][136] 17408; scores, then the P V
// staging, f32 [32][68] | [4][16][36] 9216; P f16 [32][72] 4608; corrections 256; l 256; the
// block's entry 16; every array is a multiple of 16 bytes long, so packed back to back each
// starts 16-byte aligned. Row strides are multiples of 16 bytes (Vulkan requires 16-byte aligned
// cooperative-matrix pointers and strides), padded so that the 8 rows of a 16-byte-per-row
// load phase fall on different banks (136 and 72 halves), and so that the key-major score
// store and the per-query score reads avoid conflicts (68 floats).
// Barriers: after staging Q; after loading the Q matrices (K/V overwrite Q); per key tile after
// staging K/V, after storing S, after writing P, and around each chunk's staging. Every
// cooperative operation and barrier runs in uniform control flow: the key loop bound comes
// through workgroupUniformLoad, the other bounds from HEAD_DIM.
// Pitfalls avoided: coopStore's arguments are bound with `let` first (naga 30.0.2's SPIR-V
// writer panics on inline-computed ones); no globals named A, B or C; no subgroup arithmetic in
// this module (an NVIDIA driver crashes on coop + subgroup ops in one module); f32 sums.
// Rust twin: src/backend/gpu/attention.rs.

alias Act = f32; // The storage type of activations: f16 with --dtype f16.

struct Params {
    heads: u32,
    hidden: u32,
    scale: f32,
}

// d: a multiple of 16, at most 128.
override HEAD_DIM: u32 = 64u;

@group(0) @binding(0) var<uniform> p: Params;
@group(0) @binding(1) var<storage, read> blocks: array<vec4<u32>>;
@group(0) @binding(2) var<storage, read> qkv: array<vec4<Act>>;
@group(0) @binding(3) var<storage, read_write> out: array<vec4<Act>>;

const BLOCK: u32 = 64u;          // queries per workgroup
const THREADS: u32 = 128u;       // 4 subgroups of 32
const KEYS: u32 = 32u;           // keys per tile
const FRAG: u32 = 16u;           // cooperative matrix side
const KV_STRIDE: u32 = 136u;     // 128 + 8 halves
const S_STRIDE: u32 = 68u;       // 64 queries + 4 floats
const P_STRIDE: u32 = 72u;       // 64 queries + 8 halves
const STAGE_STRIDE: u32 = 36u;   // 32 columns + 4 floats
const STAGE_SIZE: u32 = 576u;    // 16 rows * STAGE_STRIDE, per subgroup
// WGSL has no infinity literal; any score is far above this.
const NEG_BIG: f32 = -3.0e38;

// The three roles of M16N16K16: (16x16 of m x n) += (16x16 of m x k) * (16x16 of k x n).
alias FragA = coop_mat16x16<f16, A>;
alias FragB = coop_mat16x16<f16, B>;
alias Acc = coop_mat16x16<f32, C>;

// Q: kv[i * KV_STRIDE + x] = q[query i, x]. Then per tile: K at kv[j * KV_STRIDE + x],
// V at kv[(KEYS + j) * KV_STRIDE + x] for key j.
var<workgroup> kv: array<f16, 8704>;
// Scores key-major, scores[j * S_STRIDE + i] = q_i . k_j (unscaled); then the P V staging,
// scores[s * STAGE_SIZE + r * STAGE_STRIDE + x] = (P V)[query 16s + r, column 32c + x].
var<workgroup> scores: array<f32, 2304>;
// Weights key-major, probs[j * P_STRIDE + i] = P[query i, key j].
var<workgroup> probs: array<f16, 2304>;
var<workgroup> correction: array<f32, 64>;
var<workgroup> denominator: array<f32, 64>;
var<workgroup> block_info: vec4<u32>;

@compute @workgroup_size(128)
fn main(@builtin(workgroup_id) group: vec3<u32>, @builtin(local_invocation_index) tid: u32) {
    if (tid == 0u) {
        block_info = blocks[group.x];
    }
    // Read through workgroupUniformLoad so the key loop below is uniform control flow.
    let info = workgroupUniformLoad(&block_info);
    let seq_start = info.x;
    let seq_len = info.y;
    let first_query = info.z;
    let head = group.y;
    let d4 = HEAD_DIM / 4u;
    let frags = HEAD_DIM / FRAG;
    let chunks = (HEAD_DIM + 31u) / 32u;
    let h4 = p.hidden / 4u;
    let row4 = 3u * h4;
    let subgroup = tid / 32u;
    let lane = tid % 32u;
    let sub_row = subgroup * FRAG;

    // Queries past the sequence end stage zeros; their rows are computed but never written.
    for (var e = tid; e < BLOCK * d4; e += THREADS) {
        let i = e / d4;
        let x4 = e % d4;
        var q = vec4<f16>(0.0);
        if (first_query + i < seq_len) {
            let token = seq_start + first_query + i;
            q = vec4<f16>(qkv[token * row4 + head * d4 + x4]);
        }
        let t = i * KV_STRIDE + 4u * x4;
        kv[t] = q.x;
        kv[t + 1u] = q.y;
        kv[t + 2u] = q.z;
        kv[t + 3u] = q.w;
    }
    workgroupBarrier();
    var q_frag: array<FragA, 8>;
    for (var f = 0u; f < frags; f++) {
        q_frag[f] = coopLoadT<FragA>(&kv[sub_row * KV_STRIDE + f * FRAG], KV_STRIDE);
    }
    // The first K/V tile overwrites Q.
    workgroupBarrier();

    // Running max and denominator of query tid (invocations tid < BLOCK).
    var m = NEG_BIG;
    var l = 0.0;
    // o[4c + r] = unnormalised out[query sub_row + lane / 8 + 4r, columns 32c + 4 (lane % 8) ..].
    var o: array<vec4<f32>, 16>;

    for (var k0 = 0u; k0 < seq_len; k0 += KEYS) {
        for (var e = tid; e < KEYS * d4; e += THREADS) {
            let j = e / d4;
            let x4 = e % d4;
            var k = vec4<f16>(0.0);
            var v = vec4<f16>(0.0);
            if (k0 + j < seq_len) {
                let base = (seq_start + k0 + j) * row4 + head * d4 + x4;
                k = vec4<f16>(qkv[base + h4]);
                v = vec4<f16>(qkv[base + 2u * h4]);
            }
            let tk = j * KV_STRIDE + 4u * x4;
            kv[tk] = k.x;
            kv[tk + 1u] = k.y;
            kv[tk + 2u] = k.z;
            kv[tk + 3u] = k.w;
            let tv = (KEYS + j) * KV_STRIDE + 4u * x4;
            kv[tv] = v.x;
            kv[tv + 1u] = v.y;
            kv[tv + 2u] = v.z;
            kv[tv + 3u] = v.w;
        }
        workgroupBarrier();

        // S = Q K^T, keys 0..15 (lo) and 16..31 (hi). B[x][j] = K[j][x]: column-major.
        var s_lo = Acc();
        var s_hi = Acc();
        for (var f = 0u; f < frags; f++) {
            let k_lo = coopLoad<FragB>(&kv[f * FRAG], KV_STRIDE);
            let k_hi = coopLoad<FragB>(&kv[FRAG * KV_STRIDE + f * FRAG], KV_STRIDE);
            s_lo = coopMultiplyAdd(q_frag[f], k_lo, s_lo);
            s_hi = coopMultiplyAdd(q_frag[f], k_hi, s_hi);
        }
        // Column-major store: element (query r, key j) lands at scores[j * S_STRIDE + sub_row + r].
        let s_lo_value = s_lo;
        let s_lo_dst = &scores[sub_row];
        coopStore(s_lo_value, s_lo_dst, S_STRIDE);
        let s_hi_value = s_hi;
        let s_hi_offset = FRAG * S_STRIDE + sub_row;
        let s_hi_dst = &scores[s_hi_offset];
        coopStore(s_hi_value, s_hi_dst, S_STRIDE);
        workgroupBarrier();

        if (tid < BLOCK) {
            let keys = min(KEYS, seq_len - k0);
            var tile_max = NEG_BIG;
            for (var j = 0u; j < KEYS; j++) {
                let score = scores[j * S_STRIDE + tid] * p.scale;
                tile_max = max(tile_max, select(NEG_BIG, score, j < keys));
            }
            let m_new = max(m, tile_max);
            let c = exp(m - m_new);
            l *= c;
            for (var j = 0u; j < KEYS; j++) {
                var weight = f16(0.0);
                if (j < keys) {
                    weight = f16(exp(scores[j * S_STRIDE + tid] * p.scale - m_new));
                }
                probs[j * P_STRIDE + tid] = weight;
                l += f32(weight);
            }
            correction[tid] = c;
            m = m_new;
        }
        workgroupBarrier();

        // O += P V. P (query x key) is key-major in probs: column-major A.
        let p_lo = coopLoad<FragA>(&probs[sub_row], P_STRIDE);
        let p_hi = coopLoad<FragA>(&probs[FRAG * P_STRIDE + sub_row], P_STRIDE);
        for (var ch = 0u; ch < chunks; ch++) {
            // Fragments 2ch and 2ch + 1 (only 2ch when d % 32 == 16). A loop, not an if: naga's
            // uniformity analysis rejects cooperative operations under an if on a loop counter.
            for (var f = 2u * ch; f < min(2u * ch + 2u, frags); f++) {
                let v_lo = coopLoadT<FragB>(&kv[KEYS * KV_STRIDE + f * FRAG], KV_STRIDE);
                let v_hi = coopLoadT<FragB>(&kv[(KEYS + FRAG) * KV_STRIDE + f * FRAG], KV_STRIDE);
                let pv_lo = coopMultiplyAdd(p_lo, v_lo, Acc());
                let pv = coopMultiplyAdd(p_hi, v_hi, pv_lo);
                let stage_offset = subgroup * STAGE_SIZE + (f - 2u * ch) * FRAG;
                let stage_dst = &scores[stage_offset];
                coopStoreT(pv, stage_dst, STAGE_STRIDE);
            }
            workgroupBarrier();
            for (var r = 0u; r < 4u; r++) {
                let row = lane / 8u + 4u * r;
                let x = 4u * (lane % 8u);
                if (ch * 32u + x < HEAD_DIM) {
                    let t = subgroup * STAGE_SIZE + row * STAGE_STRIDE + x;
                    let staged =
                        vec4<f32>(scores[t], scores[t + 1u], scores[t + 2u], scores[t + 3u]);
                    o[4u * ch + r] = o[4u * ch + r] * correction[sub_row + row] + staged;
                }
            }
            // The next chunk overwrites the staging area.
            workgroupBarrier();
        }
    }

    if (tid < BLOCK) {
        denominator[tid] = l;
    }
    workgroupBarrier();
    for (var ch = 0u; ch < chunks; ch++) {
        for (var r = 0u; r < 4u; r++) {
            let row = lane / 8u + 4u * r;
            let col = 32u * ch + 4u * (lane % 8u);
            let query = first_query + sub_row + row;
            if (query < seq_len && col < HEAD_DIM) {
                let value = o[4u * ch + r] / denominator[sub_row + row];
                out[(seq_start + query) * h4 + head * d4 + col / 4u] = vec4<Act>(value);
            }
        }
    }
}
