//! The row-wise operations of the CPU backend (embedding sum, LayerNorm with its residual,
//! gathers, mean pooling, L2 normalisation). Rows are independent, so they are split across
//! the pool's threads once there is enough work to pay for the hand-off; sums use 16 partial
//! accumulators so the compiler vectorises them.

use std::mem::MaybeUninit;

use rayon::prelude::*;

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

/// `sum(values)` with 16 independent partial sums (vectorisable; f32, as the GPU kernels).
pub fn sum(values: &[f32]) -> f32 {
    let mut acc = [0f32; 16];
    let chunks = values.chunks_exact(16);
    let tail: f32 = chunks.remainder().iter().sum();
    for c in chunks {
        for i in 0..16 {
            acc[i] += c[i];
        }
    }
    acc.iter().sum::<f32>() + tail
}

/// `sum((v - mean)^2)`, vectorisable likewise.
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
/// the reference.
pub fn layer_norm(
    pool: &rayon::ThreadPool,
    x: &[f32],                // [T, h]
    residual: Option<&[f32]>, // [T, h]
    gamma: &[f32],            // [h]
    beta: &[f32],             // [h]
    eps: f32,
    out: &mut [MaybeUninit<f32>], // [T, h], need not be initialised
) {
    let h = gamma.len();
    for_rows(pool, out, h, |t, o| {
        let xr = &x[t * h..(t + 1) * h];
        match residual {
            Some(r) => {
                let rr = &r[t * h..(t + 1) * h];
                for c in 0..h {
                    o[c].write(xr[c] + rr[c]);
                }
            }
            None => {
                for c in 0..h {
                    o[c].write(xr[c]);
                }
            }
        }
        // SAFETY: every element of `o` was written just above.
        let o = unsafe { &mut *(o as *mut [MaybeUninit<f32>] as *mut [f32]) };
        let mean = sum(o) / h as f32;
        let inv = 1.0 / (squared_deviation(o, mean) / h as f32 + eps).sqrt();
        for c in 0..h {
            o[c] = (o[c] - mean) * inv * gamma[c] + beta[c];
        }
    });
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
