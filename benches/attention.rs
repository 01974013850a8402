//! `cargo bench --bench attention`: the CPU attention (`bge::backend::cpu::attention`) at the
//! shapes of the BGE encoders, on 2 threads.
//!
//! One line per workload: hidden size, heads, sequences x tokens (ragged: lengths uniform in
//! `[n/4, n]`), the median time of a call and GFLOP/s (`4 h sum(n_s^2)` per call: the two
//! matrix products; the softmax is not counted). Run it on an idle machine: the load average
//! is printed before and after.

mod common;

use std::mem::MaybeUninit;

use bge::backend::PackedBatch;
use bge::backend::cpu::attention::attention;
use bge::backend::cpu::simd::Isa;
use common::{loadavg, median_ms, pool, random};

/// (model, hidden size, heads, sequences, tokens per sequence, ragged).
const WORKLOADS: [(&str, usize, usize, usize, usize, bool); 8] = [
    ("small", 384, 12, 32, 128, false),
    ("small", 384, 12, 32, 128, true),
    ("small", 384, 12, 1, 32, false),
    ("base", 768, 12, 32, 128, false),
    ("base", 768, 12, 32, 128, true),
    ("base", 768, 12, 1, 32, false),
    ("m3", 1024, 16, 1, 2048, false),
    ("m3", 1024, 16, 1, 8192, false),
];

const THREADS: usize = 2;

fn main() {
    let pool = pool(THREADS);
    let isa = Isa::best();
    println!(
        "attention bench: isa {}, {THREADS} threads, load average {}",
        isa.name(),
        loadavg()
    );
    println!(
        "{:<6} {:>5} {:>5} {:>6} {:>5} {:<6} {:>10} {:>8}",
        "model", "h", "heads", "seqs", "n", "ragged", "median ms", "GFLOP/s"
    );
    for (model, h, heads, seqs, n, ragged) in WORKLOADS {
        let lens: Vec<usize> = match ragged {
            true => random(seqs, 7)
                .iter()
                .map(|u| n / 4 + ((u + 1.0) / 2.0 * (n - n / 4) as f32) as usize)
                .collect(),
            false => vec![n; seqs],
        };
        let batch = packed(&lens);
        let t = batch.tokens();
        let qkv = random(t * 3 * h, 1);
        let mut out = vec![MaybeUninit::new(0f32); t * h];
        let ms = median_ms(&mut || {
            attention(&pool, isa, &qkv, &batch, heads, &mut out).expect("consistent shapes")
        });
        let flops: f64 = lens.iter().map(|&l| 4.0 * (l * l * h) as f64).sum();
        println!(
            "{model:<6} {h:>5} {heads:>5} {seqs:>6} {n:>5} {:<6} {ms:>10.3} {:>8.1}",
            if ragged { "yes" } else { "no" },
            flops / ms / 1e6
        );
    }
    println!("load average after: {}", loadavg());
}

/// A batch of sequences of these lengths (token ids do not matter to attention).
fn packed(lens: &[usize]) -> PackedBatch {
    let t: usize = lens.iter().sum();
    let mut offsets = vec![0u32];
    for &l in lens {
        offsets.push(offsets.last().unwrap() + l as u32);
    }
    PackedBatch {
        ids: vec![0; t],
        type_ids: vec![0; t],
        position_ids: vec![0; t],
        offsets,
    }
}
