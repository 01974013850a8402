//! Attention on the CPU: per (sequence, head), two matrix multiplies through the packed GEMM
//! with a softmax between them.
//!
//! ```text
//! K   [n, d]  the head's keys, packed as a linear layer:   scores = (Q / sqrt d) K^T
//! V^T [d, n]  its values, transposed and packed likewise:  out    = softmax(scores) V
//! ```
//!
//! * Queries go in blocks of at most [`QUERY_BLOCK`], so only `QUERY_BLOCK x n` scores exist at
//!   a time: memory stays linear in the sequence length (bge-m3 takes 8192 tokens).
//! * Batches are packed (no padding), so a sequence attends to exactly its own tokens and a
//!   ragged batch costs what its real tokens cost.
//! * The (sequence, head) pairs are the parallel tasks; each runs its GEMMs on its own thread
//!   ([`gemm::linear_here`]).
//! * Arithmetic: f32 dot products (FMA) and f32 softmax sums; the exponential is the SIMD
//!   [`simd::exp`] (within 2 ulps).

use rayon::prelude::*;

use super::gemm::{self, PackedLinear};
#[cfg(target_arch = "aarch64")]
use super::simd::aarch64::Neon;
#[cfg(target_arch = "x86_64")]
use super::simd::x86::{Avx2, Avx512};
use super::simd::{self, Isa, Scalar, Simd};
use crate::backend::{Activation, PackedBatch};
use crate::error::Result;

/// Queries whose scores are held at once.
const QUERY_BLOCK: usize = 64;

/// `out` `[T, h]` from `qkv` `[T, 3h]` (Q, K, V column blocks; head `j` owns columns
/// `j*d..(j+1)*d` of each).
pub fn attention(
    pool: &rayon::ThreadPool,
    isa: Isa,
    qkv: &[f32],
    batch: &PackedBatch,
    heads: usize,
    out: &mut [f32],
) -> Result<()> {
    let h = out.len() / batch.tokens().max(1);
    let d = h / heads;
    let tasks: Vec<(usize, usize)> = (0..batch.sequences())
        .flat_map(|s| (0..heads).map(move |j| (s, j)))
        .collect();
    // Each task returns its head's `[len, d]` block; copying the blocks into `out` afterwards
    // keeps the tasks free of shared mutable state (the copy is T x h floats, next to
    // T x T x h multiply-adds).
    let blocks: Vec<Vec<f32>> = pool.install(|| {
        tasks
            .par_iter()
            .map(|&(s, j)| head(isa, qkv, batch.range(s), h, d, j))
            .collect::<Result<_>>()
    })?;
    for (&(s, j), block) in tasks.iter().zip(&blocks) {
        for (row, t) in block.chunks_exact(d).zip(batch.range(s)) {
            out[t * h + j * d..][..d].copy_from_slice(row);
        }
    }
    Ok(())
}

/// Head `j` of the sequence `tokens`: `[len, d]`.
fn head(
    isa: Isa,
    qkv: &[f32],
    tokens: std::ops::Range<usize>,
    h: usize,
    d: usize,
    j: usize,
) -> Result<Vec<f32>> {
    let n = tokens.len();
    // Q, K or V (`part` 0, 1, 2) of token `t`, this head's columns.
    let column = |part: usize, t: usize| &qkv[t * 3 * h + part * h + j * d..][..d];
    let keys = PackedLinear::from_rows(tokens.clone().map(|t| column(1, t)), n, d, isa); // [n, d]
    let values = PackedLinear::from_columns(tokens.clone().map(|t| column(2, t)), d, n, isa); // [d, n]
    let scale = 1.0 / (d as f32).sqrt();
    let mut out = vec![0f32; n * d]; // [n, d]
    let mut q = vec![0f32; QUERY_BLOCK.min(n) * d]; // [block, d]
    let mut scores = vec![0f32; QUERY_BLOCK.min(n) * n]; // [block, n]
    for first in (0..n).step_by(QUERY_BLOCK) {
        let rows = QUERY_BLOCK.min(n - first);
        for (i, qi) in q.chunks_exact_mut(d).take(rows).enumerate() {
            for (x, &v) in qi.iter_mut().zip(column(0, tokens.start + first + i)) {
                *x = v * scale;
            }
        }
        let s = &mut scores[..rows * n];
        gemm::linear_here(&q[..rows * d], rows, &keys, Activation::None, s)?;
        s.chunks_exact_mut(n).for_each(|row| softmax(isa, row));
        let o = &mut out[first * d..(first + rows) * d];
        gemm::linear_here(s, rows, &values, Activation::None, o)?;
    }
    Ok(out)
}

/// In place: `row[i] = exp(row[i] - max) / sum_i exp(row[i] - max)`, with the vectors of `isa`.
pub fn softmax(isa: Isa, row: &mut [f32]) {
    match isa {
        // SAFETY: `isa` came from a PackedLinear, which is only made for an available ISA.
        #[cfg(target_arch = "x86_64")]
        Isa::Avx512 => unsafe { softmax_avx512(row) },
        #[cfg(target_arch = "x86_64")]
        Isa::Avx2 => unsafe { softmax_avx2(row) },
        #[cfg(target_arch = "aarch64")]
        Isa::Neon => unsafe { softmax_neon(row) },
        _ => softmax_with(Scalar, row),
    }
}

/// # Safety
/// The CPU supports AVX-512F.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f")]
unsafe fn softmax_avx512(row: &mut [f32]) {
    // SAFETY: the caller's guarantee.
    softmax_with(unsafe { Avx512::new_unchecked() }, row)
}

/// # Safety
/// The CPU supports AVX2 and FMA.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
unsafe fn softmax_avx2(row: &mut [f32]) {
    // SAFETY: the caller's guarantee.
    softmax_with(unsafe { Avx2::new_unchecked() }, row)
}

/// # Safety
/// The CPU supports NEON.
#[cfg(target_arch = "aarch64")]
#[target_feature(enable = "neon")]
unsafe fn softmax_neon(row: &mut [f32]) {
    // SAFETY: the caller's guarantee.
    softmax_with(unsafe { Neon::new_unchecked() }, row)
}

/// The softmax in vectors of `S` (whole vectors first, then the tail one lane at a time).
#[inline(always)]
fn softmax_with<S: Simd>(s: S, row: &mut [f32]) {
    let max = row.iter().copied().fold(f32::NEG_INFINITY, f32::max);
    let vmax = s.splat(max);
    let split = row.len() - row.len() % S::LANES;
    let (body, tail) = row.split_at_mut(split);
    let mut vsum = s.splat(0.0);
    for chunk in body.chunks_exact_mut(S::LANES) {
        // SAFETY: the chunk holds LANES floats.
        let e = simd::exp(s, s.sub(unsafe { s.load(chunk.as_ptr()) }, vmax));
        vsum = s.add(vsum, e);
        // SAFETY: as above.
        unsafe { s.store(chunk.as_mut_ptr(), e) };
    }
    let mut lanes = [0f32; 16];
    // SAFETY: `lanes` holds 16 >= LANES floats.
    unsafe { s.store(lanes.as_mut_ptr(), vsum) };
    let mut sum: f32 = lanes[..S::LANES].iter().sum();
    for x in tail.iter_mut() {
        *x = simd::exp(Scalar, *x - max);
        sum += *x;
    }
    let inv = 1.0 / sum;
    row.iter_mut().for_each(|x| *x *= inv);
}
