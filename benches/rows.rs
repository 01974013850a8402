//! `cargo bench --bench rows`: the CPU backend's row-wise operations at the shapes of the BGE
//! encoders, on 2 threads, as memory bandwidth against the machine's own ceiling.
//!
//! These operations do a few flops per value, so bytes are what they cost. For each shape the
//! bench first times a copy of a buffer as large as the operation's operands, on one thread for
//! one short text (the row operations do not split so little work) and on the pool otherwise
//! (the ceiling at that footprint: L1/L2 for one short text, L3 for a bge-small batch, memory
//! for the larger ones), then:
//! * `layer_norm`: LayerNorm of `x + residual` (what follows attention and the FFN), in the
//!   vectors of the best instruction set; it reads `x` and `residual` and writes `out`,
//!   `3 T h` floats;
//! * `embed`: the sum of the word, position and token-type rows (random ids over bge-base's
//!   vocabulary); it reads three rows and writes one, `4 T h` floats.
//!
//! GB/s count those bytes once (the copy: read + write), whatever the caches do. Run it on an
//! idle machine: the load average is printed before and after.

mod common;

use std::mem::MaybeUninit;

use bge::backend::PackedBatch;
use bge::backend::cpu::rows::{embed, layer_norm};
use bge::backend::cpu::simd::Isa;
use common::{loadavg, median_ms, pool, random};
use rayon::prelude::*;

/// (model, tokens T, hidden size h): one short text (below the size that is split among the
/// threads: one thread's speed, in L1 / L2), then large batches.
const SHAPES: [(&str, usize, usize); 6] = [
    ("small", 32, 384),
    ("base", 32, 768),
    ("small", 4096, 384),
    ("base", 4096, 768),
    ("m3", 4096, 1024),
    ("m3", 8192, 1024),
];

const THREADS: usize = 2;

/// Tokens of the short-text shapes, whose row operations run on the calling thread.
const SHORT_TEXT: usize = 32;
const VOCAB: usize = 30522;
const POSITIONS: usize = 512;

fn main() {
    let pool = pool(THREADS);
    let isa = Isa::best();
    println!("rows bench: {THREADS} threads, load average {}", loadavg());
    println!(
        "{:<6} {:>5} {:>5} {:>10} {:>10} {:>10} {:>8}",
        "model", "T", "h", "op", "median ms", "GB/s", "% copy"
    );
    for (model, t, h) in SHAPES {
        let x = random(t * h, 1);
        let residual = random(t * h, 2);
        let gamma = random(h, 3);
        let beta = random(h, 4);
        let mut out = vec![MaybeUninit::new(0f32); t * h];

        // The ceiling: copying 1.5 T h floats into another 1.5 T h (3 T h moved, as LayerNorm
        // moves), on the calling thread for one short text (where the row operations stay on
        // it), else on the pool.
        let src = random(3 * t * h / 2, 5);
        let mut dst = vec![0f32; src.len()];
        let chunk = src.len().div_ceil(THREADS * 8).max(1);
        let copy_ms = median_ms(&mut || match t <= SHORT_TEXT {
            true => dst.copy_from_slice(&src),
            false => pool.install(|| {
                dst.par_chunks_mut(chunk)
                    .zip(src.par_chunks(chunk))
                    .for_each(|(d, s)| d.copy_from_slice(s))
            }),
        });
        let copy_gbs = gbs(3 * t * h, copy_ms);
        line(model, t, h, "copy", copy_ms, copy_gbs, copy_gbs);

        let ms = median_ms(&mut || {
            layer_norm(
                &pool,
                isa,
                &x,
                Some(&residual),
                &gamma,
                &beta,
                1e-12,
                &mut out,
            )
        });
        line(model, t, h, "layer_norm", ms, gbs(3 * t * h, ms), copy_gbs);

        let word = random(VOCAB * h, 6);
        let position = random(POSITIONS * h, 7);
        let token_type = random(2 * h, 8);
        let batch = batch(t);
        let mut emb = vec![0f32; t * h];
        let ms =
            median_ms(&mut || embed(&pool, &batch, &word, &position, &token_type, &mut emb, h));
        line(model, t, h, "embed", ms, gbs(4 * t * h, ms), copy_gbs);
    }
    println!("load average after: {}", loadavg());
}

/// GB/s of moving `floats` f32 values in `ms` milliseconds.
fn gbs(floats: usize, ms: f64) -> f64 {
    (floats * size_of::<f32>()) as f64 / ms / 1e6
}

fn line(model: &str, t: usize, h: usize, op: &str, ms: f64, gbs: f64, ceiling: f64) {
    println!(
        "{model:<6} {t:>5} {h:>5} {op:>10} {ms:>10.4} {gbs:>10.1} {:>8.0}",
        100.0 * gbs / ceiling
    );
}

/// `t` tokens in sequences of at most 512, with random word ids.
fn batch(t: usize) -> PackedBatch {
    let ids = random(t, 9)
        .iter()
        .map(|u| ((u + 1.0) / 2.0 * (VOCAB - 1) as f32) as u32)
        .collect();
    let mut offsets: Vec<u32> = (0..t).step_by(POSITIONS).map(|o| o as u32).collect();
    offsets.push(t as u32);
    PackedBatch {
        ids,
        type_ids: vec![0; t],
        position_ids: (0..t).map(|i| (i % POSITIONS) as u32).collect(),
        offsets,
    }
}
