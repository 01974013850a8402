//! What a backend implements: its types, what it can run, and one kernel per operation of
//! [`Backend`](super::Backend), which calls it only with operands that passed its checks.

use super::{Activation, BatchDims, Counters, Dims, Dtype, HeadDims, PackedBatch};
use crate::error::Result;

/// A backend's kernels. Each `*_unchecked` method computes the [`Backend`](super::Backend)
/// operation of the same name and may assume the shapes that operation checks: given operands
/// that fail them, it may return an error, panic or compute nonsense, but it never touches
/// memory it does not own (the CPU's kernel functions, public themselves, check what their
/// memory safety rests on). Implementations are `Send + Sync`: one backend serves every
/// thread that shares a model.
pub trait Kernels: Send + Sync {
    /// A `[rows, cols]` matrix in the backend's memory.
    type Tensor: Send + Sync;
    /// An embedding table `[rows, cols]`: only ever gathered from, by `embed`.
    type Table: Send + Sync;
    /// A linear layer's `[out, in]` weight and `[out]` bias, in the layout the backend prefers.
    type Linear: Send + Sync;
    /// A checked [`PackedBatch`] in the backend's memory.
    type Batch: Send + Sync;
    /// The storage precisions this backend can run, and no other.
    type Precision: Copy + std::fmt::Debug + Into<Dtype>;

    /// The precision this backend was built for.
    fn precision(&self) -> Self::Precision;

    /// One line naming the backend, device and precision (for `bge bench` and errors).
    fn describe(&self) -> String;

    /// The processor this backend runs on: a CPU model or a GPU adapter name.
    fn adapter(&self) -> String;

    /// The head sizes `attention` takes (every size unless a kernel's registers limit it).
    fn head_dims(&self) -> HeadDims {
        HeadDims::ANY
    }

    /// The most bytes of intermediate tensors held at once so far, where the backend keeps
    /// count (the GPU's buffer pool); the host process's peak is measured separately.
    fn activation_peak_bytes(&self) -> Option<u64> {
        None
    }

    /// Gets ready to run an encoder of `config`'s shapes (the GPU checks and times its kernel
    /// versions for them, or reads its earlier choice from the cache), so that the first
    /// forward pass does not.
    fn prepare(&self, config: &crate::ModelConfig) -> Result<()> {
        let _ = config;
        Ok(())
    }

    /// How many forward passes a caller should keep in flight, from as many threads: 1 where
    /// a pass keeps the whole device busy by itself (the CPU spreads one pass over every
    /// core); 2 on the GPU, so that the host's work for one batch (packing, upload, recording,
    /// readback) overlaps the device's work on another.
    fn passes_in_flight(&self) -> usize {
        1
    }

    /// What the backend has recorded so far, where it counts (the GPU): a forward pass's
    /// counts are the differences across it.
    fn counters(&self) -> Option<Counters> {
        None
    }

    /// Starts measuring the device's own time for the work it runs (the GPU's timestamp
    /// queries); false where the backend or adapter cannot.
    fn enable_gpu_timing(&self) -> bool {
        false
    }

    /// Device seconds of the work run since [`Self::enable_gpu_timing`], where measured: a
    /// forward pass's is the difference across it.
    fn gpu_seconds(&self) -> Option<f64> {
        None
    }

    /// The kernel version running each shape class so far and how it was chosen, e.g.
    /// `("matmul n=768 k=768", "3 (tuned)")`, where the backend has several (the GPU's ladders).
    fn kernel_choices(&self) -> Vec<(String, String)> {
        Vec::new()
    }

    /// The most elements one tensor may hold (a GPU's buffer binding limit); batches are split
    /// so that no activation exceeds it.
    fn max_tensor_elements(&self) -> usize {
        usize::MAX
    }

    /// Runs one forward pass, `pass`, which calls many operations in a row. The CPU backend
    /// runs it on one of its worker threads, so that the operations share out their work
    /// without waking the calling thread in between.
    fn run_pass<R: Send>(&self, pass: impl FnOnce() -> R + Send) -> R {
        pass()
    }

    /// `[rows, cols]` of a tensor.
    fn tensor_dims(&self, x: &Self::Tensor) -> Dims;
    /// `[rows, cols]` of an embedding table.
    fn table_dims(&self, t: &Self::Table) -> Dims;
    /// `[out, in]` of a linear layer.
    fn linear_dims(&self, w: &Self::Linear) -> Dims;
    /// The sizes of a batch, as [`PackedBatch::dims`] found them.
    fn batch_dims(&self, b: &Self::Batch) -> BatchDims;

    /// Copies a tensor back to the host as f32, waiting for any queued work.
    fn to_host(&self, x: &Self::Tensor) -> Result<Vec<f32>>;

    /// [`Backend::tensor`](super::Backend::tensor) on checked operands.
    fn tensor_unchecked(&self, data: &[f32], rows: usize, cols: usize) -> Result<Self::Tensor>;
    /// [`Backend::table`](super::Backend::table) on checked operands.
    fn table_unchecked(&self, data: &[f32], rows: usize, cols: usize) -> Result<Self::Table>;
    /// [`Backend::linear`](super::Backend::linear) on checked operands.
    fn linear_unchecked(
        &self,
        weight: &[f32],
        bias: &[f32],
        out: usize,
        inp: usize,
    ) -> Result<Self::Linear>;
    /// [`Backend::batch`](super::Backend::batch) on a checked batch.
    fn batch_unchecked(&self, batch: &PackedBatch, dims: BatchDims) -> Result<Self::Batch>;
    /// [`Backend::embed`](super::Backend::embed) on checked operands.
    fn embed_unchecked(
        &self,
        batch: &Self::Batch,
        word: &Self::Table,
        position: &Self::Table,
        token_type: &Self::Table,
    ) -> Result<Self::Tensor>;
    /// [`Backend::embed_layer_norm`](super::Backend::embed_layer_norm) on checked operands:
    /// [`Self::embed_unchecked`] then [`Self::layer_norm_unchecked`], unless the backend fuses
    /// them (the GPU).
    #[allow(clippy::too_many_arguments)]
    fn embed_layer_norm_unchecked(
        &self,
        batch: &Self::Batch,
        word: &Self::Table,
        position: &Self::Table,
        token_type: &Self::Table,
        gamma: &Self::Tensor,
        beta: &Self::Tensor,
        eps: f32,
    ) -> Result<Self::Tensor> {
        let sum = self.embed_unchecked(batch, word, position, token_type)?;
        self.layer_norm_unchecked(&sum, None, gamma, beta, eps)
    }
    /// [`Backend::matmul`](super::Backend::matmul) on checked operands.
    fn matmul_unchecked(
        &self,
        x: &Self::Tensor,
        w: &Self::Linear,
        act: Activation,
    ) -> Result<Self::Tensor>;
    /// [`Backend::layer_norm`](super::Backend::layer_norm) on checked operands.
    fn layer_norm_unchecked(
        &self,
        x: &Self::Tensor,
        residual: Option<&Self::Tensor>,
        gamma: &Self::Tensor,
        beta: &Self::Tensor,
        eps: f32,
    ) -> Result<Self::Tensor>;
    /// [`Backend::attention`](super::Backend::attention) on checked operands.
    fn attention_unchecked(
        &self,
        qkv: &Self::Tensor,
        batch: &Self::Batch,
        heads: usize,
    ) -> Result<Self::Tensor>;
    /// [`Backend::gather_rows`](super::Backend::gather_rows) on checked operands.
    fn gather_rows_unchecked(&self, x: &Self::Tensor, rows: &[u32]) -> Result<Self::Tensor>;
    /// [`Backend::mean_pool`](super::Backend::mean_pool) on checked operands.
    fn mean_pool_unchecked(&self, x: &Self::Tensor, batch: &Self::Batch) -> Result<Self::Tensor>;
    /// [`Backend::mean_pool_normalized`](super::Backend::mean_pool_normalized) on checked
    /// operands: [`Self::mean_pool_unchecked`] then [`Self::l2_normalize_unchecked`], unless the
    /// backend fuses them (the GPU).
    fn mean_pool_normalized_unchecked(
        &self,
        x: &Self::Tensor,
        batch: &Self::Batch,
    ) -> Result<Self::Tensor> {
        let pooled = self.mean_pool_unchecked(x, batch)?;
        self.l2_normalize_unchecked(&pooled)
    }
    /// [`Backend::l2_normalize`](super::Backend::l2_normalize).
    fn l2_normalize_unchecked(&self, x: &Self::Tensor) -> Result<Self::Tensor>;
}
