//! The fast CPU backend: the packed SIMD matrix multiply ([`gemm`]) with its fused epilogues,
//! attention as blocked GEMMs ([`attention`]), the row operations ([`rows`]), all on one rayon
//! thread pool. Every operation is tested against [`super::reference`] (`tests/kernels.rs`).

pub mod attention;
pub mod gemm;
pub mod rows;
pub mod simd;

use std::mem::MaybeUninit;

use super::reference::Matrix;
use super::{Activation, Backend, PackedBatch};
use crate::error::{Error, Result};
use gemm::PackedLinear;
use simd::Isa;

/// The CPU backend: the best instruction set of this CPU and a pool of worker threads.
pub struct Cpu {
    isa: Isa,
    /// Linear layers in bf16 ([`PackedLinear::bf16`]); attention and row ops stay f32.
    bf16: bool,
    pool: rayon::ThreadPool,
}

impl Cpu {
    /// A backend on `threads` threads (all cores by default) with the fastest instruction set.
    pub fn new(threads: Option<usize>) -> Result<Self> {
        Self::with_isa(threads, Isa::best())
    }

    /// [`Cpu::new`] with a chosen instruction set (tests compare every available one).
    pub fn with_isa(threads: Option<usize>, isa: Isa) -> Result<Self> {
        if !isa.is_available() {
            return Err(Error::InvalidArgument(format!(
                "this CPU cannot run the {} kernels",
                isa.name()
            )));
        }
        let threads = match threads {
            Some(0) => {
                return Err(Error::InvalidArgument(
                    "--threads must be at least 1".into(),
                ));
            }
            Some(t) => t,
            None => std::thread::available_parallelism().map_or(1, |n| n.get()),
        };
        let pool = rayon::ThreadPoolBuilder::new()
            .num_threads(threads)
            .thread_name(|i| format!("bge-cpu-{i}"))
            .build()
            .map_err(|e| Error::InvalidArgument(format!("cannot start {threads} threads: {e}")))?;
        Ok(Cpu {
            isa,
            bf16: false,
            pool,
        })
    }

    /// The same backend with its linear layers in bf16 (AVX-512 BF16); an error on CPUs
    /// without it.
    pub fn bf16(self) -> Result<Self> {
        PackedLinear::bf16(&[0.0], &[0.0], 1, 1)?;
        Ok(Cpu { bf16: true, ..self })
    }

    /// The worker threads.
    pub fn threads(&self) -> usize {
        self.pool.current_num_threads()
    }

    pub fn isa(&self) -> Isa {
        self.isa
    }

    /// Runs `f` on one of the pool's threads, so that the operations it calls share out their
    /// work without waking the calling thread in between.
    pub fn install<R: Send>(&self, f: impl FnOnce() -> R + Send) -> R {
        self.pool.install(f)
    }
}

/// A `[rows, cols]` matrix of zeros.
fn zeros(rows: usize, cols: usize) -> Matrix {
    Matrix {
        data: vec![0.0; rows * cols],
        rows,
        cols,
    }
}

/// A `[rows, cols]` matrix filled by `fill` from uninitialised memory, which saves zeroing
/// it first.
///
/// # Safety
/// When `fill` returns `Ok`, it has written every element.
unsafe fn written(
    rows: usize,
    cols: usize,
    fill: impl FnOnce(&mut [MaybeUninit<f32>]) -> Result<()>,
) -> Result<Matrix> {
    let len = rows * cols;
    let mut data = Vec::with_capacity(len);
    fill(&mut data.spare_capacity_mut()[..len])?;
    // SAFETY: the caller's guarantee.
    unsafe { data.set_len(len) };
    Ok(Matrix { data, rows, cols })
}

fn check(ok: bool, what: impl FnOnce() -> String) -> Result<()> {
    if ok {
        Ok(())
    } else {
        Err(Error::InvalidArgument(what()))
    }
}

impl Backend for Cpu {
    type Tensor = Matrix;
    type Table = Matrix;
    type Linear = PackedLinear;
    type Batch = PackedBatch;

    fn describe(&self) -> String {
        let precision = match self.bf16 {
            true => "bf16 linear layers, f32 sums",
            false => "f32",
        };
        format!(
            "cpu ({}, {} threads, {precision})",
            self.isa.name(),
            self.threads()
        )
    }

    fn adapter(&self) -> String {
        super::cpu_name()
    }

    fn tensor(&self, data: &[f32], rows: usize, cols: usize) -> Result<Matrix> {
        Matrix::new(data.to_vec(), rows, cols)
    }

    fn table(&self, data: &[f32], rows: usize, cols: usize) -> Result<Matrix> {
        self.tensor(data, rows, cols)
    }

    fn to_host(&self, x: &Matrix) -> Result<Vec<f32>> {
        Ok(x.data.clone())
    }

    fn linear(&self, weight: &[f32], bias: &[f32], out: usize, inp: usize) -> Result<PackedLinear> {
        match self.bf16 {
            true => PackedLinear::bf16(weight, bias, out, inp),
            false => PackedLinear::with_isa(weight, bias, out, inp, self.isa),
        }
    }

    fn batch(&self, batch: &PackedBatch) -> Result<PackedBatch> {
        Ok(batch.clone())
    }

    fn embed(
        &self,
        batch: &PackedBatch,
        word: &Matrix,       // [vocab, h]
        position: &Matrix,   // [positions, h]
        token_type: &Matrix, // [types, h]
    ) -> Result<Matrix> {
        let h = word.cols;
        check(position.cols == h && token_type.cols == h, || {
            "embedding tables differ in width".into()
        })?;
        let mut out = zeros(batch.tokens(), h); // [T, h]
        rows::embed(
            &self.pool,
            batch,
            &word.data,
            &position.data,
            &token_type.data,
            &mut out.data,
            h,
        );
        Ok(out)
    }

    fn matmul(&self, x: &Matrix, w: &PackedLinear, act: Activation) -> Result<Matrix> {
        // x: [T, in] -> [T, out]
        // SAFETY: `linear_uninit` writes every element when it returns Ok.
        unsafe {
            written(x.rows, w.out(), |out| {
                gemm::linear_uninit(&x.data, x.rows, w, act, out, &self.pool)
            })
        }
    }

    fn layer_norm(
        &self,
        x: &Matrix,                // [T, h]
        residual: Option<&Matrix>, // [T, h]
        gamma: &Matrix,            // [1, h]
        beta: &Matrix,             // [1, h]
        eps: f32,
    ) -> Result<Matrix> {
        let h = x.cols;
        check(
            gamma.data.len() == h
                && beta.data.len() == h
                && residual.is_none_or(|r| r.data.len() == x.data.len()),
            || format!("layer norm over {h} columns: parameter or residual shapes differ"),
        )?;
        // SAFETY: `rows::layer_norm` writes every row of `out`.
        unsafe {
            written(x.rows, h, |out| {
                rows::layer_norm(
                    &self.pool,
                    self.isa,
                    &x.data,
                    residual.map(|r| r.data.as_slice()),
                    &gamma.data,
                    &beta.data,
                    eps,
                    out,
                );
                Ok(())
            })
        }
    }

    fn attention(&self, qkv: &Matrix, batch: &PackedBatch, heads: usize) -> Result<Matrix> {
        // qkv: [T, 3h] -> [T, h]
        let h = qkv.cols / 3;
        check(
            qkv.rows == batch.tokens() && qkv.cols == 3 * h && heads > 0 && h.is_multiple_of(heads),
            || {
                format!(
                    "attention: qkv [{}, {}] for {heads} heads",
                    qkv.rows, qkv.cols
                )
            },
        )?;
        // SAFETY: `attention::attention` writes every element when it returns Ok.
        unsafe {
            written(qkv.rows, h, |out| {
                attention::attention(&self.pool, self.isa, &qkv.data, batch, heads, out)
            })
        }
    }

    fn gather_rows(&self, x: &Matrix, rows: &[u32]) -> Result<Matrix> {
        check(rows.iter().all(|&r| (r as usize) < x.rows), || {
            format!("gather: a row index is outside the {} rows", x.rows)
        })?;
        let mut out = zeros(rows.len(), x.cols);
        rows::gather(&self.pool, &x.data, rows, &mut out.data, x.cols);
        Ok(out)
    }

    fn mean_pool(&self, x: &Matrix, batch: &PackedBatch) -> Result<Matrix> {
        // x: [T, h] -> [B, h]
        check(x.rows == batch.tokens(), || {
            "mean pool: rows and tokens differ".into()
        })?;
        let mut out = zeros(batch.sequences(), x.cols);
        rows::mean_pool(&self.pool, &x.data, batch, &mut out.data, x.cols);
        Ok(out)
    }

    fn l2_normalize(&self, x: &Matrix) -> Result<Matrix> {
        let mut out = zeros(x.rows, x.cols);
        rows::l2_normalize(&self.pool, &x.data, &mut out.data, x.cols);
        Ok(out)
    }
}
