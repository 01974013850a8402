//! Attention on the CPU: per (sequence, head), two matrix multiplies through the packed GEMM
//! with a softmax between them.
//!
//! ```text
//! K   [n, d]  the head's keys, packed as a linear layer:   scores = Q K^T
//! V^T [d, n]  its values, transposed and packed likewise:  out    = softmax(scores / sqrt d) V
//! ```
//!
//! * The parallel tasks are (sequence, group of heads): all heads of a sequence when the batch
//!   has enough sequences to share out, fewer otherwise. A task first reads its sequence's rows
//!   of `qkv` once, in order, into per-head Q, packed K and packed V^T (the rows of `qkv` are
//!   `3h` floats apart, and one head's 32 or 64 of them make a stride the prefetchers do not
//!   follow), then runs each head on those, in cache.
//! * Queries go in blocks of at most `QUERY_BLOCK` rows (a sequence of up to
//!   `WHOLE_SEQUENCE` tokens is one block), so only `block x n` scores exist at a time:
//!   memory stays linear in the sequence length (bge-m3 takes 8192 tokens).
//! * Batches are packed (no padding), so a sequence attends to exactly its own tokens and a
//!   ragged batch costs what its real tokens cost.
//! * The softmax leaves its rows unnormalised (`exp((s - max) / sqrt d)`); the GEMM writes the
//!   head's output straight into its columns of `out`, whose rows are then divided by their
//!   sums: `n x d` divisions instead of `n x n`.
//! * Arithmetic: f32 dot products (FMA) and f32 softmax sums; the exponential is the SIMD
//!   [`simd::exp`] (within 2 ulps).

use std::cell::RefCell;
use std::mem::MaybeUninit;
use std::ops::Range;

use rayon::prelude::*;

use super::gemm::{self, PackedLinear};
use super::simd::{self, Isa, Scalar, Simd, SimdFn};
use crate::backend::{Activation, PackedBatch};
use crate::error::{Error, Result};

/// Query rows whose scores are held at once in a long sequence: a multiple of every kernel's
/// `MR` (12, 6, 8, 4), so no row panel is cut short.
const QUERY_BLOCK: usize = 72;

/// Sequences up to this long are one block of queries (at most 144 KiB of scores, inside the
/// L2 cache), so their row panels are cut short at most once.
const WHOLE_SEQUENCE: usize = 192;

/// Rows of `qkv` read per block while packing a sequence's keys (`ROW_BLOCK x 3h` floats).
const ROW_BLOCK: usize = 32;

/// Tasks per thread to aim for when a batch has few sequences, so that a busy core does not
/// hold the others up.
const TASKS_PER_THREAD: usize = 4;

/// `out` `[T, h]` from `qkv` `[T, 3h]` (Q, K, V column blocks; head `j` owns columns
/// `j*d..(j+1)*d` of each).
pub fn attention(
    pool: &rayon::ThreadPool,
    isa: Isa,
    qkv: &[f32],
    batch: &PackedBatch,
    heads: usize,
    out: &mut [MaybeUninit<f32>],
) -> Result<()> {
    if !isa.is_available() {
        return Err(Error::InvalidArgument(format!(
            "this CPU cannot run the {} kernels",
            isa.name()
        )));
    }
    // Every element of `out` is written: each token's row by its sequence's tasks, all heads.
    let t = batch.tokens();
    let h = out.len() / t.max(1);
    let offsets_ok = batch.offsets.first().is_none_or(|&o| o == 0)
        && batch.offsets.windows(2).all(|w| w[0] <= w[1])
        && batch.offsets.last().is_none_or(|&o| o as usize == t);
    let fits = heads > 0
        && h.is_multiple_of(heads)
        && out.len() == t * h
        && qkv.len() == 3 * out.len()
        && offsets_ok;
    if !fits {
        return Err(Error::InvalidArgument(format!(
            "attention over {t} tokens and {heads} heads: {} inputs, {} outputs, or the \
             sequence offsets, do not fit",
            qkv.len(),
            out.len()
        )));
    }
    let d = h / heads;
    let want = TASKS_PER_THREAD * pool.current_num_threads();
    let groups = want.div_ceil(batch.sequences().max(1)).clamp(1, heads);
    let per_group = heads.div_ceil(groups);
    let tasks: Vec<(usize, Range<usize>)> = (0..batch.sequences())
        .flat_map(|s| {
            (0..heads)
                .step_by(per_group)
                .map(move |j| (s, j..(j + per_group).min(heads)))
        })
        .collect();
    let out = SharedOut(out.as_mut_ptr().cast());
    let dims = Dims { h, d };
    pool.install(|| {
        tasks.par_iter().try_for_each(|(s, group)| {
            // SAFETY: task (s, group) writes exactly rows `range(s)` x the columns of the heads
            // in `group` of `out`, which no other task touches, and `out` stays borrowed until
            // all tasks finish.
            unsafe { sequence(isa, qkv, batch.range(*s), dims, group.clone(), &out) }
        })
    })
}

/// The hidden size `h` and the head size `d`.
#[derive(Clone, Copy)]
struct Dims {
    h: usize,
    d: usize,
}

/// The `[T, h]` output, shared by tasks that each write some heads' columns of one sequence.
struct SharedOut(*mut f32);
// SAFETY: see `attention`: the tasks write disjoint elements.
unsafe impl Sync for SharedOut {}

/// The heads `group` of the sequence `tokens`, written to `out[tokens, group's columns]`.
///
/// # Safety
/// `out` is the `[T, h]` output, and nothing else touches that part of it during the call.
unsafe fn sequence(
    isa: Isa,
    qkv: &[f32],
    tokens: Range<usize>,
    dims: Dims,
    group: Range<usize>,
    out: &SharedOut,
) -> Result<()> {
    SCRATCH.with_borrow_mut(|scratch| {
        // SAFETY: the caller's guarantee.
        unsafe { sequence_in(scratch, isa, qkv, tokens, dims, group, out) }
    })
}

/// A task's working memory: per head of its group, the queries and the packed keys and
/// values; the scores of one block of queries and their sums.
#[derive(Default)]
struct Scratch {
    queries: Vec<f32>,
    keys: Vec<PackedLinear>,
    values: Vec<PackedLinear>,
    scores: Vec<f32>,
    sums: Vec<f32>,
}

thread_local! {
    /// Each thread's [`Scratch`], kept between tasks and calls (its memory grows to the
    /// largest task and is never given back), so that the parallel tasks allocate nothing:
    /// for one short sequence the allocations cost as much as the arithmetic.
    static SCRATCH: RefCell<Scratch> = RefCell::default();
}

/// [`sequence`] in `scratch`.
///
/// # Safety
/// As for [`sequence`].
unsafe fn sequence_in(
    scratch: &mut Scratch,
    isa: Isa,
    qkv: &[f32],
    tokens: Range<usize>,
    Dims { h, d }: Dims,
    group: Range<usize>,
    out: &SharedOut,
) -> Result<()> {
    let (n, g) = (tokens.len(), group.len());
    let scale = 1.0 / (d as f32).sqrt();
    let block = if n <= WHOLE_SEQUENCE { n } else { QUERY_BLOCK };
    let Scratch {
        queries,
        keys,
        values,
        scores,
        sums,
    } = scratch;
    queries.resize(g * n * d, 0.0); // [g][n, d], every element written below
    scores.resize(block * n, 0.0); // [block, n]
    sums.resize(block, 0.0);
    while keys.len() < g {
        keys.push(PackedLinear::zeros(0, 0, isa));
        values.push(PackedLinear::zeros(0, 0, isa));
    }
    let (keys, values) = (&mut keys[..g], &mut values[..g]);
    for (key, value) in keys.iter_mut().zip(values.iter_mut()) {
        key.reset(n, d, isa); // [n, d]
        value.reset(d, n, isa); // [d, n]
    }
    // The sequence's rows of qkv, read once in order, in blocks of rows that stay in L2 for the
    // keys' transposition, done one head at a time so that its panel stays in L1.
    for rows in (0..n).step_by(ROW_BLOCK).map(|i| i..(i + ROW_BLOCK).min(n)) {
        let row = |i: usize| &qkv[(tokens.start + i) * 3 * h..][..3 * h];
        for i in rows.clone() {
            for (jj, j) in group.clone().enumerate() {
                queries[(jj * n + i) * d..][..d].copy_from_slice(&row(i)[j * d..][..d]);
                values[jj].set_column(i, &row(i)[2 * h + j * d..][..d]);
            }
        }
        for (jj, j) in group.clone().enumerate() {
            for i in rows.clone() {
                keys[jj].set_row(i, &row(i)[h + j * d..][..d]);
            }
        }
    }
    for (jj, j) in group.enumerate() {
        let q = &queries[jj * n * d..][..n * d]; // [n, d]
        for first in (0..n).step_by(block) {
            let rows = block.min(n - first);
            let s = &mut scores[..rows * n];
            let q = &q[first * d..(first + rows) * d];
            // SAFETY: `s` is a `[rows, n]` buffer of our own.
            unsafe {
                gemm::linear_strided_here(
                    q,
                    d,
                    rows,
                    &keys[jj],
                    Activation::None,
                    s.as_mut_ptr(),
                    n,
                )?
            };
            for (row, sum) in s.chunks_exact_mut(n).zip(sums.iter_mut()) {
                *sum = softmax_unnormalised(isa, row, scale);
            }
            // SAFETY: rows `first..first + rows` of the sequence, columns `j*d..(j+1)*d` of
            // `out`: this call's (the caller's guarantee).
            let o = unsafe { out.0.add((tokens.start + first) * h + j * d) };
            unsafe { gemm::linear_strided_here(s, n, rows, &values[jj], Activation::None, o, h)? };
            for (i, &sum) in sums[..rows].iter().enumerate() {
                // SAFETY: as above.
                let row = unsafe { std::slice::from_raw_parts_mut(o.add(i * h), d) };
                let inv = 1.0 / sum;
                row.iter_mut().for_each(|x| *x *= inv);
            }
        }
    }
    Ok(())
}

/// In place: `row[i] = exp((row[i] - max) * scale)`, with the vectors of `isa`; returns the
/// sum of the new values (`scale > 0`).
pub fn softmax_unnormalised(isa: Isa, row: &mut [f32], scale: f32) -> f32 {
    isa.dispatch(Softmax { row, scale })
}

/// One row of [`softmax_unnormalised`].
struct Softmax<'a> {
    row: &'a mut [f32],
    scale: f32,
}

impl SimdFn for Softmax<'_> {
    type Output = f32;

    #[inline(always)]
    fn call<S: Simd>(self, s: S) -> f32 {
        softmax_with(s, self.row, self.scale)
    }
}

/// [`softmax_unnormalised`] in vectors of `S` (whole vectors first, then the tail one lane at
/// a time).
#[inline(always)]
fn softmax_with<S: Simd>(s: S, row: &mut [f32], scale: f32) -> f32 {
    let split = row.len() - row.len() % S::LANES;
    let (body, tail) = row.split_at_mut(split);
    let mut vmax = s.splat(f32::NEG_INFINITY);
    for chunk in body.chunks_exact(S::LANES) {
        // SAFETY: the chunk holds LANES floats.
        vmax = s.max(vmax, unsafe { s.load(chunk.as_ptr()) });
    }
    let max = tail.iter().fold(s.reduce_max(vmax), |m, &x| m.max(x));
    // (x - max) * scale as one multiply-add: x * scale - max * scale.
    let (vscale, vshift) = (s.splat(scale), s.splat(-max * scale));
    let mut vsum = s.splat(0.0);
    for chunk in body.chunks_exact_mut(S::LANES) {
        // SAFETY: the chunk holds LANES floats.
        let x = s.mul_add(unsafe { s.load(chunk.as_ptr()) }, vscale, vshift);
        let e = simd::exp(s, x);
        vsum = s.add(vsum, e);
        // SAFETY: as above.
        unsafe { s.store(chunk.as_mut_ptr(), e) };
    }
    let mut sum = s.reduce_add(vsum);
    for x in tail.iter_mut() {
        *x = simd::exp(Scalar, *x * scale - max * scale);
        sum += *x;
    }
    sum
}

#[cfg(test)]
mod tests {
    //! The arithmetic is tested against the reference backend in `tests/kernels.rs`; here, the
    //! refusal of operands that do not fit (the tasks write through a raw pointer).
    use super::*;

    #[test]
    fn operands_that_do_not_fit_are_errors() {
        let pool = rayon::ThreadPoolBuilder::new()
            .num_threads(2)
            .build()
            .unwrap();
        let batch = |offsets: Vec<u32>| PackedBatch {
            ids: vec![0; 3],
            type_ids: vec![0; 3],
            position_ids: vec![0; 3],
            offsets,
        };
        let isa = Isa::best();
        let mut out = vec![MaybeUninit::new(0f32); 3 * 4];
        let qkv = vec![0.5f32; 3 * 12];
        let ok = batch(vec![0, 1, 3]);
        assert!(attention(&pool, isa, &qkv, &ok, 2, &mut out).is_ok());
        assert!(attention(&pool, isa, &qkv[1..], &ok, 2, &mut out).is_err());
        assert!(attention(&pool, isa, &qkv, &ok, 3, &mut out).is_err());
        assert!(attention(&pool, isa, &qkv, &ok, 0, &mut out).is_err());
        // An instruction set this CPU lacks (NEON on x86, AVX on ARM) is refused, not run.
        if let Some(missing) = Isa::ALL.into_iter().find(|i| !i.is_available()) {
            assert!(attention(&pool, missing, &qkv, &ok, 2, &mut out).is_err());
        }
        for offsets in [vec![0, 4], vec![0, 2, 1, 3], vec![1, 3], vec![0, 2]] {
            let err = attention(&pool, isa, &qkv, &batch(offsets.clone()), 2, &mut out);
            assert!(err.is_err(), "offsets {offsets:?}");
        }
    }
}
