//! The fast CPU backend: the packed SIMD matrix multiply ([`gemm`]) with its fused epilogues,
//! attention as blocked GEMMs ([`attention`]), the row operations ([`rows`]), all on one rayon
//! thread pool. Every operation is tested against [`super::reference`] (`tests/kernels.rs`).

pub mod attention;
pub mod gemm;
pub mod rows;
pub mod simd;

use std::mem::MaybeUninit;

use super::reference::Matrix;
use super::{Activation, BatchDims, Dims, Dtype, HostBatch, Kernels, PackedBatch};
use crate::error::{Error, Result};
use gemm::PackedLinear;
use simd::Isa;

/// The CPU backend: the best instruction set of this CPU and a pool of worker threads.
/// Concurrent forward passes share the pool: each runs on it ([`Kernels::run_pass`]), and
/// each thread keeps its own working memory, so they proceed in parallel.
pub struct Cpu {
    isa: Isa,
    precision: CpuPrecision,
    pool: rayon::ThreadPool,
}

/// What the CPU backend stores linear layers in.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum CpuPrecision {
    /// f32 everywhere.
    #[default]
    F32,
    /// Linear layers in bf16 ([`PackedLinear::bf16`], AVX-512 BF16); attention and the row
    /// operations stay f32.
    Bf16,
}

impl From<CpuPrecision> for Dtype {
    fn from(p: CpuPrecision) -> Dtype {
        match p {
            CpuPrecision::F32 => Dtype::F32,
            CpuPrecision::Bf16 => Dtype::Bf16,
        }
    }
}

impl TryFrom<Dtype> for CpuPrecision {
    type Error = Error;

    fn try_from(d: Dtype) -> Result<Self> {
        match d {
            Dtype::F32 => Ok(CpuPrecision::F32),
            Dtype::Bf16 => Ok(CpuPrecision::Bf16),
            Dtype::F16 => Err(Error::InvalidArgument(
                "dtype f16 needs a GPU device; the CPU takes f32 or bf16".into(),
            )),
        }
    }
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
                    "the CPU backend needs at least 1 thread".into(),
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
            precision: CpuPrecision::F32,
            pool,
        })
    }

    /// The same backend storing its linear layers in `precision`; bf16 is an error on CPUs
    /// without AVX-512 BF16.
    pub fn with_precision(self, precision: CpuPrecision) -> Result<Self> {
        if precision == CpuPrecision::Bf16 {
            PackedLinear::bf16(&[0.0], &[0.0], 1, 1)?;
        }
        Ok(Cpu { precision, ..self })
    }

    /// The worker threads.
    pub fn threads(&self) -> usize {
        self.pool.current_num_threads()
    }

    /// The instruction set the kernels run with.
    pub fn isa(&self) -> Isa {
        self.isa
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

impl Kernels for Cpu {
    type Tensor = Matrix;
    type Table = Matrix;
    type Linear = PackedLinear;
    type Batch = HostBatch;
    type Precision = CpuPrecision;

    fn precision(&self) -> CpuPrecision {
        self.precision
    }

    fn describe(&self) -> String {
        let precision = match self.precision {
            CpuPrecision::Bf16 => "bf16 linear layers, f32 sums",
            CpuPrecision::F32 => "f32",
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

    /// Runs the pass on one of the pool's threads, so that the operations it calls share out
    /// their work without waking the calling thread in between (a wake-up per operation, ~100
    /// a pass, is a tenth of a short query's latency). Passes from several threads run side by
    /// side on the pool.
    fn run_pass<R: Send>(&self, pass: impl FnOnce() -> R + Send) -> R {
        self.pool.install(pass)
    }

    fn tensor_dims(&self, x: &Matrix) -> Dims {
        [x.rows, x.cols]
    }

    fn table_dims(&self, t: &Matrix) -> Dims {
        [t.rows, t.cols]
    }

    fn linear_dims(&self, w: &PackedLinear) -> Dims {
        [w.out(), w.inp()]
    }

    fn batch_dims(&self, b: &HostBatch) -> BatchDims {
        b.dims
    }

    fn to_host(&self, x: &Matrix) -> Result<Vec<f32>> {
        Ok(x.data.clone())
    }

    fn tensor_unchecked(&self, data: &[f32], rows: usize, cols: usize) -> Result<Matrix> {
        Matrix::new(data.to_vec(), rows, cols)
    }

    fn table_unchecked(&self, data: &[f32], rows: usize, cols: usize) -> Result<Matrix> {
        Matrix::new(data.to_vec(), rows, cols)
    }

    fn linear_unchecked(
        &self,
        weight: &[f32],
        bias: &[f32],
        out: usize,
        inp: usize,
    ) -> Result<PackedLinear> {
        match self.precision {
            CpuPrecision::Bf16 => PackedLinear::bf16(weight, bias, out, inp),
            CpuPrecision::F32 => PackedLinear::with_isa(weight, bias, out, inp, self.isa),
        }
    }

    fn batch_unchecked(&self, batch: &PackedBatch, dims: BatchDims) -> Result<HostBatch> {
        Ok(HostBatch {
            packed: batch.clone(),
            dims,
        })
    }

    fn embed_unchecked(
        &self,
        batch: &HostBatch,
        word: &Matrix,       // [vocab, h]
        position: &Matrix,   // [positions, h]
        token_type: &Matrix, // [types, h]
    ) -> Result<Matrix> {
        let (batch, h) = (&batch.packed, word.cols);
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

    fn matmul_unchecked(&self, x: &Matrix, w: &PackedLinear, act: Activation) -> Result<Matrix> {
        // x: [T, in] -> [T, out]
        // SAFETY: `linear_uninit` writes every element when it returns Ok.
        unsafe {
            written(x.rows, w.out(), |out| {
                gemm::linear_uninit(&x.data, x.rows, w, act, out, &self.pool)
            })
        }
    }

    fn layer_norm_unchecked(
        &self,
        x: &Matrix,                // [T, h]
        residual: Option<&Matrix>, // [T, h]
        gamma: &Matrix,            // [1, h]
        beta: &Matrix,             // [1, h]
        eps: f32,
    ) -> Result<Matrix> {
        let h = x.cols;
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

    fn attention_unchecked(&self, qkv: &Matrix, batch: &HostBatch, heads: usize) -> Result<Matrix> {
        // qkv: [T, 3h] -> [T, h]
        let (batch, h) = (&batch.packed, qkv.cols / 3);
        // SAFETY: `attention::attention` writes every element when it returns Ok.
        unsafe {
            written(qkv.rows, h, |out| {
                attention::attention(&self.pool, self.isa, &qkv.data, batch, heads, out)
            })
        }
    }

    fn gather_rows_unchecked(&self, x: &Matrix, rows: &[u32]) -> Result<Matrix> {
        let mut out = zeros(rows.len(), x.cols);
        rows::gather(&self.pool, &x.data, rows, &mut out.data, x.cols);
        Ok(out)
    }

    fn mean_pool_unchecked(&self, x: &Matrix, batch: &HostBatch) -> Result<Matrix> {
        // x: [T, h] -> [B, h]
        let batch = &batch.packed;
        let mut out = zeros(batch.sequences(), x.cols);
        rows::mean_pool(&self.pool, &x.data, batch, &mut out.data, x.cols);
        Ok(out)
    }

    fn l2_normalize_unchecked(&self, x: &Matrix) -> Result<Matrix> {
        let mut out = zeros(x.rows, x.cols);
        rows::l2_normalize(&self.pool, &x.data, &mut out.data, x.cols);
        Ok(out)
    }
}
