alias Act = f32; // The storage type of activations: f16 with --dtype f16.

// Attention ladder, version 2: 4 queries x 4 keys per invocation. Same maths, layout, block
// table and dispatch as version 1 (attention_1_online.wgsl): multi-head self-attention inside
// each packed sequence, with the softmax computed online over tiles of keys, so no [seq, seq]
// matrix is ever written.
//
//   out[t, head] = sum_u softmax_u(q_t . k_u * scale) v_u     over the tokens u of t's sequence
//
// Layout: qkv [tokens, 3 * hidden] (Q columns 0..h, K h..2h, V 2h..3h; head j owns columns
// j*d..(j+1)*d of each), out [tokens, hidden], both read as vec4 of Act (d is a multiple of 4,
// at most 128). blocks[b] = (sequence start, sequence length, first query of the block, 0).
// Dispatch: x = query blocks (64 queries of one sequence each), y = heads; workgroups of 128
// invocations (v1: 64).
// Two builds: Act = f32 as written; the f16 build prepends `enable f16;` and makes Act f16.
// Scores, softmax weights, the running max, the denominator and the accumulator are f32 in both.
//
// What version 1 spends its time on: each invocation owns one query, so every score costs one
// workgroup-memory read of a key vec4 per dot4 and every weighted value one read of a value
// vec4 per vec4 FMA, and q plus the accumulator take 256 registers at d = 128.
// Version 2 blocks the work in registers, as a tiled matmul does:
//   - 128 invocations form 16 query groups of 4 queries x 8 lanes. For the scores S = Q K^T of
//     a 32-key tile, an invocation computes 4 queries x 4 keys (keys lane + 8c): per vec4 of
//     the head it reads 4 q and 4 k and does 16 dot4, twice v1's arithmetic per read.
//   - For O += P V, the same invocation owns 4 queries x 4 vec4 columns (lane + 8c) of the
//     output: per key it reads 4 weights and 4 v and does 16 vec4 FMAs (at d = 128). The
//     accumulator is 16 vec4 at d = 128 instead of 32, and q is not held at all.
//   - Key tiles are 32 keys instead of 16, and Q, K and V are staged as vec4<Act>: f16 in the
//     f16 build, half the workgroup memory and traffic of f32.
// The price: Q is staged again for every key tile (64 queries x d of f32 do not fit in 16 KiB
// of workgroup memory next to anything else, nor 4 query rows in one invocation's registers),
// and a 32-key tile takes 12 barriers at d = 64 (24 at d = 128) where v1 takes 4.
//
// One key tile:
//   1. scores: for each 4-vec4 chunk of the head, stage Q [64 x 4] and K [4 x 32] (transposed:
//      the 8 lanes read 8 consecutive vec4s, no bank conflicts) and accumulate s[4][4].
//   2. row max: each invocation writes the max of its 4 keys for its 4 queries (one vec4);
//      after a barrier every lane of a query group takes the max of its group's 8 vec4s, so all
//      8 lanes hold the same running max m without a second exchange.
//   3. weights: e^(s - m') goes to workgroup memory as a vec4 per (query, lane); each lane keeps
//      a partial denominator over its own keys, summed over the lanes once at the end.
//   4. P V: stage whole V rows, 8 to 32 keys at a time (256 vec4s), and accumulate. Chunking
//      by keys rather than columns keeps the accumulator's index a function of the innermost,
//      fixed-count loops only, so it stays in registers even where the chunk loop (which holds
//      barriers) is not unrolled.
// Online softmax (Milakov & Gimelshein 2018): with running max m and denominator l, a tile of
// scores s_j updates m' = max(m, max_j s_j), l' = l e^(m-m') + sum_j e^(s_j-m'), and the
// accumulator acc' = acc e^(m-m') + sum_j e^(s_j-m') v_j; the output is acc / l.
// Workgroup memory: 8 KiB of weights and 2 KiB of row maxima (f32), plus 384 vec4<Act> of
// staging: 16 KiB in the f32 build, 13 KiB in the f16 build.
// Loops: the head size d is a pipeline constant (HEAD_DIM), so every loop except the one over
// key tiles counts from 0 to a constant in steps of 1, which compilers unroll; the accumulator
// stays in registers. It also keeps llvmpipe correct: one counter per invocation, shared by
// every loop it did not unroll, silently ends all loops after 65535 iterations in total
// (gallivm's loop_limiter). At 8192 tokens the key loop runs 256 times, so the loops inside it
// may add at most ~250 iterations per tile; written as `for (k1 = 0; k1 < KEYS; k1 += v_keys)`
// and `for (key = k1; ...)`, the V loops were not unrolled and dropped keys at d = 128.
// Rust twin: src/backend/gpu/attention.rs.

struct Params {
    heads: u32,
    hidden: u32,
    scale: f32,
}

override HEAD_DIM: u32 = 64u;

@group(0) @binding(0) var<uniform> p: Params;
@group(0) @binding(1) var<storage, read> blocks: array<vec4<u32>>;
@group(0) @binding(2) var<storage, read> qkv: array<vec4<Act>>;
@group(0) @binding(3) var<storage, read_write> out: array<vec4<Act>>;

const BLOCK: u32 = 64u;                    // queries per workgroup
const KEYS: u32 = 32u;                     // keys per tile
const ROWS: u32 = 4u;                      // queries per invocation
const LANES: u32 = 8u;                     // invocations per group of ROWS queries
const THREADS: u32 = 128u;                 // BLOCK / ROWS * LANES
const MAX_D4: u32 = 32u;                   // head_dim / 4 at most
const COLS: u32 = 4u;                      // MAX_D4 / LANES: vec4 columns per invocation
const QK_CHUNK: u32 = 4u;                  // vec4 columns of Q and K staged at once
const K_AT: u32 = BLOCK * QK_CHUNK;        // the K chunk follows the Q chunk in `stage`
const V_STAGE: u32 = 256u;                 // vec4s of V staged at once: whole rows of keys
// WGSL has no infinity literal; any score is far above this.
const NEG_BIG: f32 = -3.0e38;

// Q chunk [BLOCK][QK_CHUNK] then K chunk [QK_CHUNK][KEYS] (256 + 128); or V rows
// [v_keys][v_width].
var<workgroup> stage: array<vec4<Act>, 384>;
// [BLOCK][LANES]: the weights of one query for the keys lane, lane + 8, lane + 16, lane + 24.
var<workgroup> weights: array<vec4<f32>, 512>;
// [BLOCK / ROWS][LANES]: each invocation's tile max for its 4 queries; at the end its partial
// denominators.
var<workgroup> partial: array<vec4<f32>, 128>;

@compute @workgroup_size(128)
fn main(@builtin(workgroup_id) group: vec3<u32>, @builtin(local_invocation_index) tid: u32) {
    // A read-only storage load at a uniform index is uniform: the key loop's barriers are in
    // uniform control flow.
    let info = blocks[group.x];
    let seq_start = info.x;
    let seq_len = info.y;
    let head = group.y;
    let d4 = HEAD_DIM / 4u;
    let h4 = p.hidden / 4u;
    let row4 = 3u * h4;
    let q_col = head * d4;

    let query_group = tid / LANES;
    let lane = tid % LANES;
    let first_row = query_group * ROWS; // of the block
    // V rows padded to a power of two of vec4s (at least LANES), as many as `stage` holds.
    let v_width = select(select(32u, 16u, d4 <= 16u), 8u, d4 <= 8u);
    let v_keys = V_STAGE / v_width;
    let v_cols = (d4 + LANES - 1u) / LANES; // vec4 columns this lane accumulates
    let qk_chunks = (d4 + QK_CHUNK - 1u) / QK_CHUNK;

    var acc: array<vec4<f32>, 16>; // [ROWS][COLS]: queries first_row + r, columns lane + 8c
    var m = vec4(NEG_BIG);         // running max, one component per query
    var l = vec4(0.0);             // this lane's share of the denominator

    for (var k0 = 0u; k0 < seq_len; k0 += KEYS) {
        // 1. Scores s[r][c] = q_(first_row + r) . k_(k0 + lane + 8c).
        var s: array<vec4<f32>, 4>;
        for (var chunk = 0u; chunk < qk_chunks; chunk++) {
            let c0 = chunk * QK_CHUNK;
            for (var j = 0u; j < BLOCK * QK_CHUNK / THREADS; j++) {
                let e = tid + j * THREADS;
                let query = info.z + e / QK_CHUNK;
                let col = c0 + e % QK_CHUNK;
                var q = vec4<Act>(0.0);
                if (query < seq_len && col < d4) {
                    q = qkv[(seq_start + query) * row4 + q_col + col];
                }
                stage[e] = q;
            }
            {
                let key = k0 + tid / QK_CHUNK;
                let i = tid % QK_CHUNK;
                var k = vec4<Act>(0.0);
                if (key < seq_len && c0 + i < d4) {
                    k = qkv[(seq_start + key) * row4 + h4 + q_col + c0 + i];
                }
                stage[K_AT + i * KEYS + tid / QK_CHUNK] = k;
            }
            workgroupBarrier();
            for (var i = 0u; i < QK_CHUNK; i++) {
                var k: array<vec4<f32>, 4>;
                for (var c = 0u; c < COLS; c++) {
                    k[c] = vec4<f32>(stage[K_AT + i * KEYS + lane + c * LANES]);
                }
                for (var r = 0u; r < ROWS; r++) {
                    let q = vec4<f32>(stage[(first_row + r) * QK_CHUNK + i]);
                    s[r] += vec4(dot(q, k[0]), dot(q, k[1]), dot(q, k[2]), dot(q, k[3]));
                }
            }
            // After the last chunk, the barrier of step 2 keeps step 4 from overwriting `stage`.
            if (chunk + 1u < qk_chunks) {
                workgroupBarrier();
            }
        }

        // 2. Row max. Keys past the sequence end score NEG_BIG: their weight is exactly 0. Key
        // k0 (lane 0) is always in the sequence, so m' is a real score.
        var tile_max: vec4<f32>;
        for (var r = 0u; r < ROWS; r++) {
            let in_seq = vec4(k0 + lane) + vec4(0u, 1u, 2u, 3u) * LANES < vec4(seq_len);
            s[r] = select(vec4(NEG_BIG), s[r] * p.scale, in_seq);
            tile_max[r] = max(max(s[r].x, s[r].y), max(s[r].z, s[r].w));
        }
        partial[tid] = tile_max;
        workgroupBarrier();
        var m_new = m;
        for (var g = 0u; g < LANES; g++) {
            m_new = max(m_new, partial[query_group * LANES + g]);
        }
        let correction = exp(m - m_new);
        m = m_new;

        // 3. Weights, and this lane's share of the denominator.
        var lane_sum: vec4<f32>;
        for (var r = 0u; r < ROWS; r++) {
            let w = exp(s[r] - m_new[r]);
            weights[(first_row + r) * LANES + lane] = w;
            lane_sum[r] = (w.x + w.y) + (w.z + w.w);
        }
        l = l * correction + lane_sum;
        for (var i = 0u; i < ROWS * COLS; i++) {
            acc[i] *= correction[i / COLS];
        }

        // 4. acc[r][c] += sum_j w[r][j] v_j[lane + 8c], over chunks of whole V rows.
        for (var chunk = 0u; chunk < KEYS / v_keys; chunk++) {
            let k1 = chunk * v_keys;
            for (var j = 0u; j < V_STAGE / THREADS; j++) {
                let e = tid + j * THREADS;
                let key = k1 + e / v_width;
                let col = e % v_width;
                var v = vec4<Act>(0.0);
                if (k0 + key < seq_len && col < d4) {
                    v = qkv[(seq_start + k0 + key) * row4 + 2u * h4 + q_col + col];
                }
                stage[e] = v;
            }
            workgroupBarrier();
            for (var kk = 0u; kk < v_keys; kk++) {
                let key = k1 + kk;
                var w: vec4<f32>;
                for (var r = 0u; r < ROWS; r++) {
                    w[r] = weights[(first_row + r) * LANES + key % LANES][key / LANES];
                }
                for (var c = 0u; c < v_cols; c++) {
                    let v = vec4<f32>(stage[kk * v_width + lane + c * LANES]);
                    for (var r = 0u; r < ROWS; r++) {
                        acc[r * COLS + c] += w[r] * v;
                    }
                }
            }
            workgroupBarrier();
        }
    }

    // The denominator: the sum of the 8 lanes' shares, in the same order on every lane.
    partial[tid] = l;
    workgroupBarrier();
    var denominator = vec4(0.0);
    for (var g = 0u; g < LANES; g++) {
        denominator += partial[query_group * LANES + g];
    }

    for (var r = 0u; r < ROWS; r++) {
        let query = info.z + first_row + r;
        if (query < seq_len) {
            let row = (seq_start + query) * h4 + q_col;
            for (var c = 0u; c < COLS; c++) {
                let col = lane + c * LANES;
                if (col < d4) {
                    out[row + col] = vec4<Act>(acc[r * COLS + c] / denominator[r]);
                }
            }
        }
    }
}
