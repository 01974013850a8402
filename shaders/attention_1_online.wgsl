alias Act = f32; // The storage type of activations: f16 with --dtype f16.

// Attention ladder, version 1: one query per invocation.
//
// Multi-head self-attention inside each packed sequence, flash-style: the softmax is computed
// online over tiles of keys, so no [seq, seq] matrix is ever written to memory (bge-m3 takes
// 8192 tokens: 256 MiB per head in f32 otherwise). Memory is O(tokens * hidden).
//
//   out[t, head] = sum_u softmax_u(q_t . k_u * scale) v_u     over the tokens u of t's sequence
//
// Layout: qkv [tokens, 3 * hidden] Act (Q columns 0..h, K h..2h, V 2h..3h; head j owns columns
// j*d..(j+1)*d of each), out [tokens, hidden], both read as vec4 (d is a multiple of 4, at most
// 128). blocks[b] = (sequence start, sequence length, first query of the block, 0).
// The head size d is a pipeline constant (HEAD_DIM), so every loop over it has a fixed trip
// count: compilers unroll them and keep q and the accumulator in registers. (It also keeps
// llvmpipe correct: it silently stops a loop after 65535 iterations summed over the loop's
// entries, which a data-dependent inner loop reaches at 8192 tokens.)
// Dispatch: x = query blocks (64 queries of one sequence each), y = heads. Each invocation owns
// one query row: q and its output accumulator live in registers; the workgroup stages 16 keys
// and values at a time in workgroup memory and every invocation uses them.
// Online softmax (Milakov & Gimelshein 2018): with running max m and denominator l, a tile of
// scores s_j updates m' = max(m, max_j s_j), l' = l e^(m-m') + sum_j e^(s_j-m'), and the
// accumulator acc' = acc e^(m-m') + sum_j e^(s_j-m') v_j; the output is acc / l.
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

const BLOCK: u32 = 64u;   // queries per workgroup
const KEYS: u32 = 16u;    // keys per staged tile
const MAX_D4: u32 = 32u;  // head_dim / 4 at most
// WGSL has no infinity literal; any score is far above this.
const NEG_BIG: f32 = -3.0e38;

var<workgroup> k_tile: array<vec4<f32>, 512>; // [KEYS][MAX_D4]
var<workgroup> v_tile: array<vec4<f32>, 512>;

@compute @workgroup_size(64)
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

    let query = info.z + tid;
    let live = query < seq_len;
    let token = seq_start + query;

    var q: array<vec4<f32>, 32>;
    var acc: array<vec4<f32>, 32>;
    if (live) {
        for (var i = 0u; i < d4; i++) {
            q[i] = vec4<f32>(qkv[token * row4 + head * d4 + i]) * p.scale;
        }
    }
    var m = NEG_BIG;
    var l = 0.0;

    for (var k0 = 0u; k0 < seq_len; k0 += KEYS) {
        for (var e = tid; e < KEYS * d4; e += BLOCK) {
            let j = e / d4;
            let i = e % d4;
            var k = vec4<f32>(0.0);
            var v = vec4<f32>(0.0);
            if (k0 + j < seq_len) {
                let base = (seq_start + k0 + j) * row4 + head * d4 + i;
                k = vec4<f32>(qkv[base + h4]);
                v = vec4<f32>(qkv[base + 2u * h4]);
            }
            k_tile[j * MAX_D4 + i] = k;
            v_tile[j * MAX_D4 + i] = v;
        }
        workgroupBarrier();

        if (live) {
            let keys = min(KEYS, seq_len - k0);
            var s: array<f32, 16>;
            var tile_max = NEG_BIG;
            for (var j = 0u; j < KEYS; j++) {
                var score = NEG_BIG;
                if (j < keys) {
                    score = 0.0;
                    for (var i = 0u; i < d4; i++) {
                        score += dot(q[i], k_tile[j * MAX_D4 + i]);
                    }
                }
                s[j] = score;
                tile_max = max(tile_max, score);
            }
            let m_new = max(m, tile_max);
            let correction = exp(m - m_new);
            l *= correction;
            for (var i = 0u; i < d4; i++) {
                acc[i] *= correction;
            }
            for (var j = 0u; j < KEYS; j++) {
                // Keys past the sequence end score NEG_BIG: their weight is exactly 0.
                let weight = exp(s[j] - m_new);
                l += weight;
                for (var i = 0u; i < d4; i++) {
                    acc[i] += weight * v_tile[j * MAX_D4 + i];
                }
            }
            m = m_new;
        }
        workgroupBarrier();
    }

    if (live) {
        for (var i = 0u; i < d4; i++) {
            out[token * h4 + head * d4 + i] = vec4<Act>(acc[i] / l);
        }
    }
}
