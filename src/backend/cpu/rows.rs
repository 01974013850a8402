//! The row-wise operations of the CPU backend (embedding sum, LayerNorm with its residual,
//! gathers, mean pooling, L2 normalisation). Rows are independent, so they are split across
//! the pool's threads once there is enough work to pay for the hand-off. LayerNorm, on every
//! layer's critical path, is written in the vectors of [`Simd`]; the others' sums use 16
//! partial accumulators so that the compiler vectorises them.

use std::mem::MaybeUninit;

use rayon::prelude::*;

use super::simd::{Isa, Simd, SimdFn};
use crate::backend::PackedBatch;

/// Below this many output elements a row operation runs on the calling thread.
const PARALLEL_ELEMENTS: usize = 1 << 15;

/// Calls `f(row index, output row)` for every row of `out` (`cols` wide), in parallel when
/// the work is large enough.
pub fn for_rows<T: Send>(
    pool: &rayon::ThreadPool,
    out: &mut [T],
    cols: usize,
    f: impl Fn(usize, &mut [T]) + Sync,
) {
    if cols == 0 {
        return;
    }
    if out.len() < PARALLEL_ELEMENTS || pool.current_num_threads() == 1 {
        out.chunks_mut(cols)
            .enumerate()
            .for_each(|(r, row)| f(r, row));
    } else {
        let rows_per_task = (PARALLEL_ELEMENTS / cols).max(1);
        pool.install(|| {
            out.par_chunks_mut(cols * rows_per_task)
                .enumerate()
                .for_each(|(task, rows)| {
                    for (i, row) in rows.chunks_mut(cols).enumerate() {
                        f(task * rows_per_task + i, row);
                    }
                })
        });
    }
}

/// `sum((v - mean)^2)` with 16 independent partial sums (vectorisable; f32, as the GPU
/// kernels).
pub fn squared_deviation(values: &[f32], mean: f32) -> f32 {
    let mut acc = [0f32; 16];
    let chunks = values.chunks_exact(16);
    let tail: f32 = chunks
        .remainder()
        .iter()
        .map(|v| (v - mean) * (v - mean))
        .sum();
    for c in chunks {
        for i in 0..16 {
            let d = c[i] - mean;
            acc[i] += d * d;
        }
    }
    acc.iter().sum::<f32>() + tail
}

/// `out[t] = word[ids[t]] + position[position_ids[t]] + token_type[type_ids[t]]`.
pub fn embed(
    pool: &rayon::ThreadPool,
    batch: &PackedBatch,
    word: &[f32],       // [vocab, h]
    position: &[f32],   // [positions, h]
    token_type: &[f32], // [types, h]
    out: &mut [f32],    // [T, h]
    h: usize,
) {
    fn row(table: &[f32], i: u32, h: usize) -> &[f32] {
        &table[i as usize * h..][..h]
    }
    for_rows(pool, out, h, |t, o| {
        let (w, p, ty) = (
            row(word, batch.ids[t], h),
            row(position, batch.position_ids[t], h),
            row(token_type, batch.type_ids[t], h),
        );
        for c in 0..h {
            o[c] = w[c] + p[c] + ty[c];
        }
    });
}

/// LayerNorm of each row of `x + residual`: two passes (mean, then squared deviations), as
/// the reference, in the vectors of `isa`.
#[allow(clippy::too_many_arguments)]
pub fn layer_norm(
    pool: &rayon::ThreadPool,
    isa: Isa,
    x: &[f32],                // [T, h]
    residual: Option<&[f32]>, // [T, h]
    gamma: &[f32],            // [h]
    beta: &[f32],             // [h]
    eps: f32,
    out: &mut [MaybeUninit<f32>], // [T, h], need not be initialised
) {
    let h = gamma.len();
    // The vector loads of `Norm` read `h` values of `gamma` and `beta` unchecked.
    assert!(
        beta.len() == h
            && out.len() == x.len()
            && residual.is_none_or(|r| r.len() == x.len())
            && (h > 0 && x.len().is_multiple_of(h) || x.is_empty()),
        "layer_norm: x, residual, gamma, beta and out do not fit one [T, h]"
    );
    for_rows(pool, out, h, |t, o| {
        isa.dispatch(Norm {
            row: &x[t * h..(t + 1) * h],
            residual: residual.map(|r| &r[t * h..(t + 1) * h]),
            gamma,
            beta,
            eps,
            out: o,
        })
    });
}

/// One row of [`layer_norm`]: its operands, all `h` long, and its output.
struct Norm<'a> {
    row: &'a [f32],
    residual: Option<&'a [f32]>,
    gamma: &'a [f32],
    beta: &'a [f32],
    eps: f32,
    out: &'a mut [MaybeUninit<f32>],
}

impl SimdFn for Norm<'_> {
    type Output = ();

    #[inline(always)]
    fn call<S: Simd>(self, s: S) {
        layer_norm_with(s, self)
    }
}

/// Partial sums kept by [`layer_norm_with`], whatever the vector width: 16 is a multiple of
/// every `LANES`, so every instruction set rounds alike (one running sum of thousands of
/// values loses digits the reference keeps).
const PARTIAL_SUMS: usize = 16;

/// One row of [`layer_norm`] in vectors of `S` (whole groups of [`PARTIAL_SUMS`] values, then
/// the tail one at a time): `out = x + residual`, its mean, the mean of its squared
/// deviations, then `(out - mean) * inv * gamma + beta` in place.
#[inline(always)]
fn layer_norm_with<S: Simd>(s: S, norm: Norm) {
    let Norm {
        row: xs,
        residual,
        gamma,
        beta,
        eps,
        out,
    } = norm;
    let h = xs.len();
    let body = h - h % PARTIAL_SUMS;
    let vectors = PARTIAL_SUMS / S::LANES;
    let o = out[..h].as_mut_ptr().cast::<f32>();
    let (x, g, b) = (xs.as_ptr(), gamma.as_ptr(), beta.as_ptr());
    let total = |acc: &[S::V]| s.reduce_add(acc.iter().fold(s.splat(0.0), |t, &v| s.add(t, v)));
    // SAFETY (every block below): the vectors end at or before `body <= h`, the tails index
    // below `h`, and `x`, `residual`, `gamma`, `beta` and `out` all hold `h` floats.
    let mut acc = [s.splat(0.0); PARTIAL_SUMS];
    for i in (0..body).step_by(PARTIAL_SUMS) {
        for (j, a) in acc[..vectors].iter_mut().enumerate() {
            let at = i + j * S::LANES;
            unsafe {
                let mut v = s.load(x.add(at));
                if let Some(r) = residual {
                    v = s.add(v, s.load(r.as_ptr().add(at)));
                }
                s.store(o.add(at), v);
                *a = s.add(*a, v);
            }
        }
    }
    let mut sum = total(&acc[..vectors]);
    for i in body..h {
        let v = xs[i] + residual.map_or(0.0, |r| r[i]);
        unsafe { o.add(i).write(v) };
        sum += v;
    }
    let mean = sum / h as f32;
    let vmean = s.splat(mean);
    let mut acc = [s.splat(0.0); PARTIAL_SUMS];
    for i in (0..body).step_by(PARTIAL_SUMS) {
        for (j, a) in acc[..vectors].iter_mut().enumerate() {
            let d = s.sub(unsafe { s.load(o.add(i + j * S::LANES)) }, vmean);
            *a = s.mul_add(d, d, *a);
        }
    }
    let mut dev = total(&acc[..vectors]);
    for i in body..h {
        let d = unsafe { o.add(i).read() } - mean;
        dev += d * d;
    }
    let inv = 1.0 / (dev / h as f32 + eps).sqrt();
    let vinv = s.splat(inv);
    for i in (0..body).step_by(S::LANES) {
        unsafe {
            let scaled = s.mul(s.sub(s.load(o.add(i)), vmean), vinv);
            s.store(
                o.add(i),
                s.mul_add(scaled, s.load(g.add(i)), s.load(b.add(i))),
            );
        }
    }
    for i in body..h {
        unsafe {
            o.add(i)
                .write((o.add(i).read() - mean) * inv * gamma[i] + beta[i])
        };
    }
}

/// `out[i] = x[rows[i]]`.
pub fn gather(pool: &rayon::ThreadPool, x: &[f32], rows: &[u32], out: &mut [f32], cols: usize) {
    for_rows(pool, out, cols, |i, o| {
        let r = rows[i] as usize;
        o.copy_from_slice(&x[r * cols..(r + 1) * cols]);
    });
}

/// `out[s] = mean of x over sequence s's rows`.
pub fn mean_pool(
    pool: &rayon::ThreadPool,
    x: &[f32],
    batch: &PackedBatch,
    out: &mut [f32],
    cols: usize,
) {
    for_rows(pool, out, cols, |s, o| {
        let range = batch.range(s);
        o.fill(0.0);
        for t in range.clone() {
            for (a, v) in o.iter_mut().zip(&x[t * cols..(t + 1) * cols]) {
                *a += v;
            }
        }
        let inv = 1.0 / range.len() as f32;
        o.iter_mut().for_each(|a| *a *= inv);
    });
}

/// Each row divided by `max(||row||, 1e-12)`.
pub fn l2_normalize(pool: &rayon::ThreadPool, x: &[f32], out: &mut [f32], cols: usize) {
    for_rows(pool, out, cols, |r, o| {
        let xr = &x[r * cols..(r + 1) * cols];
        let norm = squared_deviation(xr, 0.0).sqrt();
        let inv = 1.0 / norm.max(1e-12);
        for c in 0..cols {
            o[c] = xr[c] * inv;
        }
    });
}
