//! The backend contract: the closed list of operations a BERT / XLM-RoBERTa encoder and the BGE
//! heads are made of. The model code ([`crate::model`]) is written once against this trait; the
//! [`reference`](mod@reference) backend implements it as plain loops and is the specification every faster
//! backend is tested against.
//!
//! Conventions shared by every operation (stated here once):
//! * A [`Backend::Tensor`] is a row-major `[rows, cols]` matrix; activations have one row per
//!   token. Batches are **packed**: the tokens of all sequences are concatenated, and a
//!   [`PackedBatch`]'s `offsets` say where each sequence starts. There is no padding anywhere,
//!   so a padded token can neither leak into attention nor cost work. (This equals
//!   FlagEmbedding's padded computation: its mask adds `finfo.min` to padded keys, whose
//!   softmax weight is then exactly 0.)
//! * Linear weights are `[out, in]` as Hugging Face stores them: `y = x W^T + b`.
//! * Arithmetic: inputs and outputs are f32 unless a backend was built for f16 storage; sums
//!   (dot products, means, variances, softmax denominators) always accumulate in f32 or wider.

pub mod cpu;
pub mod gpu;
pub mod reference;

use crate::error::{Error, Result};

/// The epilogue of [`Backend::matmul`], applied to `x W^T + b` element-wise.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Activation {
    None,
    /// Exact GELU, `x/2 * (1 + erf(x/sqrt 2))` (BERT's `gelu`, not the tanh approximation).
    Gelu,
    /// `tanh`, the reranker classifier's hidden layer.
    Tanh,
    /// `max(x, 0)`, the BGE-M3 sparse head.
    Relu,
}

/// Storage precision of weights and activations on a backend.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum Dtype {
    F32,
    /// GPU: linear weights stored as f16, activations f32.
    F16,
    /// CPU with AVX-512 BF16: linear weights and their inputs rounded to bf16, sums in f32.
    Bf16,
}

impl Dtype {
    pub fn name(self) -> &'static str {
        match self {
            Dtype::F32 => "f32",
            Dtype::F16 => "f16",
            Dtype::Bf16 => "bf16",
        }
    }
}

/// The host-side token inputs of one batch, packed without padding.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct PackedBatch {
    /// `[T]` token ids of all sequences, concatenated.
    pub ids: Vec<u32>,
    /// `[T]` token type (segment) ids.
    pub type_ids: Vec<u32>,
    /// `[T]` position ids (BERT: `0..len`; XLM-R: `pad+1 ..`).
    pub position_ids: Vec<u32>,
    /// `[B+1]` sequence `s` is tokens `offsets[s]..offsets[s+1]`; `offsets[0] = 0`.
    pub offsets: Vec<u32>,
}

impl PackedBatch {
    pub fn tokens(&self) -> usize {
        self.ids.len()
    }

    pub fn sequences(&self) -> usize {
        self.offsets.len().saturating_sub(1)
    }

    /// Token range of sequence `s`.
    pub fn range(&self, s: usize) -> std::ops::Range<usize> {
        self.offsets[s] as usize..self.offsets[s + 1] as usize
    }

    /// The longest sequence in the batch.
    pub fn max_len(&self) -> usize {
        (0..self.sequences())
            .map(|s| self.range(s).len())
            .max()
            .unwrap_or(0)
    }

    /// The first row of every sequence (`[CLS]` / `<s>`).
    pub fn first_rows(&self) -> Vec<u32> {
        self.offsets[..self.sequences()].to_vec()
    }

    /// Checks the invariants every backend relies on, so no kernel can index out of bounds:
    /// consistent lengths, non-empty sequences, and ids inside the embedding tables.
    pub fn validate(&self, vocab: usize, positions: usize, types: usize) -> Result<()> {
        let t = self.ids.len();
        let bad = |m: String| Err(Error::InvalidArgument(m));
        if self.type_ids.len() != t || self.position_ids.len() != t {
            return bad("packed batch: ids, type ids and positions differ in length".into());
        }
        if self.offsets.first() != Some(&0) || self.offsets.last() != Some(&(t as u32)) {
            return bad("packed batch: offsets must run from 0 to the token count".into());
        }
        if self.offsets.windows(2).any(|w| w[1] <= w[0]) {
            return bad("packed batch: every sequence needs at least one token".into());
        }
        if let Some(id) = self.ids.iter().find(|&&id| id as usize >= vocab) {
            return bad(format!(
                "token id {id} is outside the model's vocabulary of {vocab}: the tokenizer and the weights do not belong together"
            ));
        }
        if let Some(p) = self.position_ids.iter().find(|&&p| p as usize >= positions) {
            return bad(format!(
                "position {p} is outside the model's {positions} position embeddings"
            ));
        }
        if let Some(ty) = self.type_ids.iter().find(|&&ty| ty as usize >= types) {
            return bad(format!(
                "token type {ty} is outside the model's {types} token types"
            ));
        }
        Ok(())
    }
}

/// The closed set of operations. Shapes use `T` tokens, `B` sequences, `h` hidden size.
pub trait Backend {
    /// A `[rows, cols]` matrix in the backend's memory.
    type Tensor;
    /// An embedding table `[rows, cols]`: only ever gathered from, by [`Backend::embed`].
    type Table;
    /// A linear layer's `[out, in]` weight and `[out]` bias, in the layout the backend prefers.
    type Linear;
    /// A [`PackedBatch`] in the backend's memory.
    type Batch;

    /// One line naming the backend, device and precision (for `bge bench` and errors).
    fn describe(&self) -> String;

    /// The processor this backend runs on: a CPU model or a GPU adapter name.
    fn adapter(&self) -> String;

    /// The most bytes of intermediate tensors held at once so far, where the backend keeps
    /// count (the GPU's buffer pool); the host process's peak is measured separately.
    fn activation_peak_bytes(&self) -> Option<u64> {
        None
    }

    /// The most elements one tensor may hold (a GPU's buffer binding limit); batches are split
    /// so that no activation exceeds it.
    fn max_tensor_elements(&self) -> usize {
        usize::MAX
    }

    /// Copies `data` (`[rows, cols]`, row-major) into a new tensor.
    fn tensor(&self, data: &[f32], rows: usize, cols: usize) -> Result<Self::Tensor>;

    /// Prepares an embedding table from `data` (`[rows, cols]`, row-major).
    fn table(&self, data: &[f32], rows: usize, cols: usize) -> Result<Self::Table>;

    /// Copies a tensor back to the host as f32, waiting for any queued work.
    fn to_host(&self, x: &Self::Tensor) -> Result<Vec<f32>>;

    /// Prepares a linear layer from `weight` `[out, in]` and `bias` `[out]`.
    fn linear(&self, weight: &[f32], bias: &[f32], out: usize, inp: usize) -> Result<Self::Linear>;

    /// Uploads a batch's token inputs (already [`PackedBatch::validate`]d).
    fn batch(&self, batch: &PackedBatch) -> Result<Self::Batch>;

    /// `[T, h]`: `word[ids[t]] + position[position_ids[t]] + token_type[type_ids[t]]`.
    fn embed(
        &self,
        batch: &Self::Batch,
        word: &Self::Table,
        position: &Self::Table,
        token_type: &Self::Table,
    ) -> Result<Self::Tensor>;

    /// `[T, out]`: `act(x W^T + b)` for `x` `[T, in]`.
    fn matmul(&self, x: &Self::Tensor, w: &Self::Linear, act: Activation) -> Result<Self::Tensor>;

    /// `[T, h]`: LayerNorm over each row of `x + residual` (or `x`), with `gamma`/`beta` `[1, h]`:
    /// `(v - mean) / sqrt(var + eps) * gamma + beta`, biased variance.
    fn layer_norm(
        &self,
        x: &Self::Tensor,
        residual: Option<&Self::Tensor>,
        gamma: &Self::Tensor,
        beta: &Self::Tensor,
        eps: f32,
    ) -> Result<Self::Tensor>;

    /// `[T, h]`: multi-head self-attention inside each sequence of `batch`. `qkv` is `[T, 3h]`
    /// with Q in columns `0..h`, K in `h..2h`, V in `2h..3h`; head `j` owns columns
    /// `j*d..(j+1)*d` of each (`d = h / heads`). Output row `t`, head `j`:
    /// `softmax(q_t . k_s / sqrt(d) over s in t's sequence) . v`.
    fn attention(
        &self,
        qkv: &Self::Tensor,
        batch: &Self::Batch,
        heads: usize,
    ) -> Result<Self::Tensor>;

    /// `[rows.len(), cols]`: the given rows of `x`, in order.
    fn gather_rows(&self, x: &Self::Tensor, rows: &[u32]) -> Result<Self::Tensor>;

    /// `[B, h]`: the mean of each sequence's rows.
    fn mean_pool(&self, x: &Self::Tensor, batch: &Self::Batch) -> Result<Self::Tensor>;

    /// `[rows, cols]`: each row divided by `max(||row||_2, 1e-12)` (`torch.nn.functional.normalize`).
    fn l2_normalize(&self, x: &Self::Tensor) -> Result<Self::Tensor>;
}

/// The CPU's marketing name (`/proc/cpuinfo`), or the architecture where that is unknown.
pub fn cpu_name() -> String {
    std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("model name"))
                .and_then(|l| l.split(':').nth(1))
                .map(|n| n.trim().to_owned())
        })
        .unwrap_or_else(|| std::env::consts::ARCH.to_owned())
}
