alias Act = f32; // The storage type of activations: f16 with --dtype f16 (see src/backend/gpu/mod.rs).

// Embedding lookup: the sum of the word, position and token-type embeddings of every token.
//
//   out[t, c] = word[ids[t], c] + position[positions[t], c] + token_type[types[t], c]
//
// Layout: tables are row-major [rows, hidden] f32; out is [tokens, hidden] Act. One invocation per
// output element; the dispatch may be two-dimensional when tokens * hidden / 256 exceeds the
// 65535-workgroup limit, so the flat index folds in the y coordinate.
// Rust twin: src/backend/gpu/embed.rs.

struct Params {
    tokens: u32,
    hidden: u32,
}

@group(0) @binding(0) var<uniform> p: Params;
@group(0) @binding(1) var<storage, read> ids: array<u32>;
@group(0) @binding(2) var<storage, read> positions: array<u32>;
@group(0) @binding(3) var<storage, read> types: array<u32>;
@group(0) @binding(4) var<storage, read> word: array<f32>;
@group(0) @binding(5) var<storage, read> position: array<f32>;
@group(0) @binding(6) var<storage, read> token_type: array<f32>;
@group(0) @binding(7) var<storage, read_write> out: array<Act>;

@compute @workgroup_size(256)
fn main(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(num_workgroups) groups: vec3<u32>) {
    let i = gid.x + gid.y * groups.x * 256u;
    if (i >= p.tokens * p.hidden) {
        return;
    }
    let t = i / p.hidden;
    let c = i % p.hidden;
    out[i] = Act(word[ids[t] * p.hidden + c]
        + position[positions[t] * p.hidden + c]
        + token_type[types[t] * p.hidden + c]);
}
