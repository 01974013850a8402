//! The backend contract: the closed list of operations a BERT / XLM-RoBERTa encoder and the BGE
//! heads are made of. The model code is written once against [`Backend`]; the
//! [`reference`](mod@reference) backend implements it as plain loops and is the specification
//! every faster backend is tested against.
//!
//! Two traits, so that every backend answers a mistake the same way:
//! * [`Backend`] is what callers use. Each operation checks its operands' shapes here, once for
//!   all backends, and answers a mismatch with [`Error::Shape`]; then it runs the kernel.
//! * [`Kernels`] is what a backend implements: each `*_unchecked` kernel may assume that its
//!   operands passed those checks. Every [`Kernels`] type is a [`Backend`] (a blanket
//!   implementation), and no backend can replace the checks.
//!
//! Conventions shared by every operation (stated here once):
//! * A [`Backend::Tensor`](Kernels::Tensor) is a row-major `[rows, cols]` matrix; activations
//!   have one row per token. Batches are **packed**: the tokens of all sequences are
//!   concatenated, and a [`PackedBatch`]'s `offsets` say where each sequence starts. There is
//!   no padding anywhere, so a padded token can neither leak into attention nor cost work.
//!   (This equals FlagEmbedding's padded computation: its mask adds `finfo.min` to padded keys,
//!   whose softmax weight is then exactly 0.)
//! * Linear weights are `[out, in]` as Hugging Face stores them: `y = x W^T + b`.
//! * Arithmetic: inputs and outputs are f32 unless a backend was built for a narrower storage
//!   ([`Kernels::Precision`]); sums (dot products, means, variances, softmax denominators)
//!   always accumulate in f32 or wider.
//! * Every row is computed from its own inputs only, in an order that does not depend on the
//!   other rows: a text's vectors are the same bits whichever batch it is in.

mod batch;
pub mod cpu;
pub mod gpu;
mod kernels;
pub mod reference;

pub use batch::{BatchDims, HostBatch, PackedBatch};
pub use kernels::Kernels;

use crate::error::{Error, Result};

/// `[rows, cols]` of a tensor or an embedding table; `[out, in]` of a linear layer.
pub type Dims = [usize; 2];

/// The epilogue of [`Backend::matmul`], applied to `x W^T + b` element-wise.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Activation {
    /// `x W^T + b` as it is.
    None,
    /// Exact GELU, `x/2 * (1 + erf(x/sqrt 2))` (BERT's `gelu`, not the tanh approximation).
    Gelu,
    /// `tanh`, the reranker classifier's hidden layer.
    Tanh,
    /// `max(x, 0)`, the BGE-M3 sparse head.
    Relu,
}

/// The storage precision a user asks for. Each backend has its own precision type
/// ([`Kernels::Precision`]) holding only what it can run, converted from this one with a clear
/// error for the rest.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub enum Dtype {
    /// f32 everywhere: FlagEmbedding's numbers to ~1e-6.
    #[default]
    F32,
    /// GPU: linear weights stored as f16, activations f32.
    F16,
    /// CPU with AVX-512 BF16: linear weights and their inputs rounded to bf16, sums in f32.
    Bf16,
}

impl Dtype {
    /// Every precision, in the order of [`Dtype::name`]'s list.
    pub const ALL: [Dtype; 3] = [Dtype::F32, Dtype::F16, Dtype::Bf16];

    /// `f32`, `f16` or `bf16`.
    pub fn name(self) -> &'static str {
        match self {
            Dtype::F32 => "f32",
            Dtype::F16 => "f16",
            Dtype::Bf16 => "bf16",
        }
    }
}

impl std::fmt::Display for Dtype {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

impl std::str::FromStr for Dtype {
    type Err = Error;

    fn from_str(s: &str) -> Result<Self> {
        Dtype::ALL
            .into_iter()
            .find(|d| d.name() == s)
            .ok_or_else(|| {
                Error::InvalidArgument(format!("unknown dtype `{s}` (expected f32, f16 or bf16)"))
            })
    }
}

/// Work a device backend has recorded so far ([`Kernels::counters`]).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Counters {
    /// Kernel launches.
    pub dispatches: u64,
    /// Compute passes (each dispatch its own pass would make this `dispatches`).
    pub compute_passes: u64,
    /// Bind groups created (reused ones are not counted again).
    pub bind_groups_made: u64,
}

impl std::ops::Sub for Counters {
    type Output = Counters;

    fn sub(self, earlier: Counters) -> Counters {
        Counters {
            dispatches: self.dispatches - earlier.dispatches,
            compute_passes: self.compute_passes - earlier.compute_passes,
            bind_groups_made: self.bind_groups_made - earlier.bind_groups_made,
        }
    }
}

/// How far a fast kernel may be from the reference, or a ladder version from version 1:
/// `|got - want| <= atol + rtol * |want|` element-wise. Declared once, here: the kernel tests
/// and the GPU's on-device self-check both use [`Tolerance::kernel`].
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Tolerance {
    /// Absolute part.
    pub atol: f64,
    /// Relative part, times `|want|`.
    pub rtol: f64,
}

impl Tolerance {
    /// An f32 kernel against a reference with wider sums, on random operands of unit scale:
    /// f32 rounding over sums of a few thousand terms stays far below this.
    pub const KERNEL_F32: Tolerance = Tolerance {
        atol: 1e-5,
        rtol: 1e-4,
    };
    /// A kernel storing f16: its outputs are rounded to f16 (11 significant bits), so two
    /// correct kernels whose f32 sums differ in the last bits may round to neighbouring halves,
    /// 2^-10 |x| apart; this allows two such steps, plus an absolute part for values near 0
    /// (whose error comes from inputs of unit scale).
    pub const KERNEL_F16: Tolerance = Tolerance {
        atol: 1e-3,
        rtol: 1.0 / 512.0,
    };

    /// The kernel tolerance for results stored in `dtype` (bf16, 3 fewer significant bits than
    /// f16: 8 times its relative part).
    pub const fn kernel(dtype: Dtype) -> Tolerance {
        match dtype {
            Dtype::F32 => Tolerance::KERNEL_F32,
            Dtype::F16 => Tolerance::KERNEL_F16,
            Dtype::Bf16 => Tolerance {
                atol: 2.0 * Tolerance::KERNEL_F16.atol,
                rtol: 8.0 * Tolerance::KERNEL_F16.rtol,
            },
        }
    }

    /// Whether `got` is within tolerance of `want` (never for NaN).
    pub fn accepts(self, got: f64, want: f64) -> bool {
        (got - want).abs() <= self.atol + self.rtol * want.abs()
    }

    /// The first element of `got` out of tolerance of `want` (a length mismatch counts at the
    /// shorter length).
    pub fn first_violation(self, got: &[f32], want: &[f32]) -> Option<usize> {
        if got.len() != want.len() {
            return Some(got.len().min(want.len()));
        }
        got.iter()
            .zip(want)
            .position(|(&g, &w)| !self.accepts(g as f64, w as f64))
    }
}

/// The head sizes a backend's attention takes: multiples of `multiple`, at most `max`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct HeadDims {
    /// Every head size is a multiple of this.
    pub multiple: usize,
    /// The largest head size.
    pub max: usize,
}

impl HeadDims {
    /// Every head size.
    pub const ANY: HeadDims = HeadDims {
        multiple: 1,
        max: usize::MAX,
    };

    /// Whether head size `d` is one of these.
    pub fn contains(self, d: usize) -> bool {
        d > 0 && d.is_multiple_of(self.multiple) && d <= self.max
    }
}

fn shape_error(op: &str, message: String) -> Error {
    Error::Shape(format!("{op}: {message}"))
}

/// Passes when `ok`, else a [`Error::Shape`] naming `op`.
fn ensure(ok: bool, op: &str, message: impl FnOnce() -> String) -> Result<()> {
    if ok {
        Ok(())
    } else {
        Err(shape_error(op, message()))
    }
}

/// A `[rows, cols]` matrix of `len` values.
fn ensure_len(op: &str, what: &str, len: usize, [rows, cols]: Dims) -> Result<()> {
    ensure(rows.checked_mul(cols) == Some(len), op, || {
        format!("{what} [{rows}, {cols}] given {len} values")
    })
}

/// The operations, each checked once here for every backend, then run by the backend's
/// [`Kernels`]. Shapes use `T` tokens, `B` sequences, `h` hidden size.
pub trait Backend: Kernels {
    /// Copies `data` (`[rows, cols]`, row-major) into a new tensor.
    fn tensor(&self, data: &[f32], rows: usize, cols: usize) -> Result<Self::Tensor> {
        ensure_len("tensor", "a tensor", data.len(), [rows, cols])?;
        self.tensor_unchecked(data, rows, cols)
    }

    /// Prepares an embedding table from `data` (`[rows, cols]`, row-major).
    fn table(&self, data: &[f32], rows: usize, cols: usize) -> Result<Self::Table> {
        ensure_len("table", "a table", data.len(), [rows, cols])?;
        self.table_unchecked(data, rows, cols)
    }

    /// Prepares a linear layer from `weight` `[out, in]` and `bias` `[out]`.
    fn linear(&self, weight: &[f32], bias: &[f32], out: usize, inp: usize) -> Result<Self::Linear> {
        ensure_len("linear", "a weight", weight.len(), [out, inp])?;
        ensure(bias.len() == out, "linear", || {
            format!("{} biases for {out} outputs", bias.len())
        })?;
        self.linear_unchecked(weight, bias, out, inp)
    }

    /// Checks a batch's token inputs ([`PackedBatch::dims`]) and moves them to the backend.
    fn batch(&self, batch: &PackedBatch) -> Result<Self::Batch> {
        let dims = batch.dims()?;
        self.batch_unchecked(batch, dims)
    }

    /// `[T, h]`: `word[ids[t]] + position[position_ids[t]] + token_type[type_ids[t]]`.
    fn embed(
        &self,
        batch: &Self::Batch,
        word: &Self::Table,
        position: &Self::Table,
        token_type: &Self::Table,
    ) -> Result<Self::Tensor> {
        embed_checks(self, batch, [word, position, token_type])?;
        self.embed_unchecked(batch, word, position, token_type)
    }

    /// `[T, h]`: `layer_norm(embed(batch, word, position, token_type), gamma, beta, eps)`, the
    /// encoder's first two operations as one (a backend may fuse them; the result is the
    /// composition's, with the sum kept in f32 where activations are stored narrower).
    #[allow(clippy::too_many_arguments)]
    fn embed_layer_norm(
        &self,
        batch: &Self::Batch,
        word: &Self::Table,
        position: &Self::Table,
        token_type: &Self::Table,
        gamma: &Self::Tensor,
        beta: &Self::Tensor,
        eps: f32,
    ) -> Result<Self::Tensor> {
        let h = embed_checks(self, batch, [word, position, token_type])?;
        for (name, t) in [("gamma", gamma), ("beta", beta)] {
            let dims = self.tensor_dims(t);
            ensure(dims == [1, h], "layer norm", || {
                format!("{name} is {dims:?} for rows of {h}: it must be [1, {h}]")
            })?;
        }
        self.embed_layer_norm_unchecked(batch, word, position, token_type, gamma, beta, eps)
    }

    /// `[T, out]`: `act(x W^T + b)` for `x` `[T, in]`.
    fn matmul(&self, x: &Self::Tensor, w: &Self::Linear, act: Activation) -> Result<Self::Tensor> {
        let ([rows, cols], [out, inp]) = (self.tensor_dims(x), self.linear_dims(w));
        ensure(cols == inp, "matmul", || {
            format!(
                "the input is [{rows}, {cols}] but the layer [{out}, {inp}] takes {inp} columns"
            )
        })?;
        self.matmul_unchecked(x, w, act)
    }

    /// `[T, h]`: LayerNorm over each row of `x + residual` (or `x`), with `gamma`/`beta` `[1, h]`:
    /// `(v - mean) / sqrt(var + eps) * gamma + beta`, biased variance.
    fn layer_norm(
        &self,
        x: &Self::Tensor,
        residual: Option<&Self::Tensor>,
        gamma: &Self::Tensor,
        beta: &Self::Tensor,
        eps: f32,
    ) -> Result<Self::Tensor> {
        let [rows, h] = self.tensor_dims(x);
        for (name, p) in [("gamma", gamma), ("beta", beta)] {
            let dims = self.tensor_dims(p);
            ensure(dims == [1, h], "layer norm", || {
                format!("{name} is {dims:?} for rows of {h}: it must be [1, {h}]")
            })?;
        }
        if let Some(r) = residual {
            let dims = self.tensor_dims(r);
            ensure(dims == [rows, h], "layer norm", || {
                format!("the residual is {dims:?} for an input of [{rows}, {h}]")
            })?;
        }
        self.layer_norm_unchecked(x, residual, gamma, beta, eps)
    }

    /// `[T, h]`: multi-head self-attention inside each sequence of `batch`. `qkv` is `[T, 3h]`
    /// with Q in columns `0..h`, K in `h..2h`, V in `2h..3h`; head `j` owns columns
    /// `j*d..(j+1)*d` of each (`d = h / heads`, a size [`Kernels::head_dims`] allows). Output
    /// row `t`, head `j`: `softmax(q_t . k_s / sqrt(d) over s in t's sequence) . v`.
    fn attention(
        &self,
        qkv: &Self::Tensor,
        batch: &Self::Batch,
        heads: usize,
    ) -> Result<Self::Tensor> {
        let ([rows, cols], tokens) = (self.tensor_dims(qkv), self.batch_dims(batch).tokens);
        ensure(rows == tokens, "attention", || {
            format!("qkv has {rows} rows for a batch of {tokens} tokens")
        })?;
        ensure(cols.is_multiple_of(3), "attention", || {
            format!("qkv has {cols} columns, not three blocks of h")
        })?;
        let h = cols / 3;
        ensure(heads > 0 && h.is_multiple_of(heads), "attention", || {
            format!("a hidden size of {h} does not split into {heads} heads")
        })?;
        let (d, allowed) = (h / heads, self.head_dims());
        ensure(allowed.contains(d), "attention", || {
            format!(
                "head size {d} is not supported by this backend: it takes multiples of {} up to {}",
                allowed.multiple, allowed.max
            )
        })?;
        self.attention_unchecked(qkv, batch, heads)
    }

    /// `[rows.len(), cols]`: the given rows of `x`, in order.
    fn gather_rows(&self, x: &Self::Tensor, rows: &[u32]) -> Result<Self::Tensor> {
        let [n, _] = self.tensor_dims(x);
        if let Some(r) = rows.iter().find(|&&r| r as usize >= n) {
            return Err(shape_error(
                "gather rows",
                format!("row {r} is outside the tensor's {n} rows"),
            ));
        }
        self.gather_rows_unchecked(x, rows)
    }

    /// `[B, h]`: the mean of each sequence's rows.
    fn mean_pool(&self, x: &Self::Tensor, batch: &Self::Batch) -> Result<Self::Tensor> {
        let ([rows, _], tokens) = (self.tensor_dims(x), self.batch_dims(batch).tokens);
        ensure(rows == tokens, "mean pool", || {
            format!("the input has {rows} rows for a batch of {tokens} tokens")
        })?;
        self.mean_pool_unchecked(x, batch)
    }

    /// `[B, h]`: `l2_normalize(mean_pool(x, batch))` as one operation (a backend may fuse
    /// them).
    fn mean_pool_normalized(&self, x: &Self::Tensor, batch: &Self::Batch) -> Result<Self::Tensor> {
        let ([rows, _], tokens) = (self.tensor_dims(x), self.batch_dims(batch).tokens);
        ensure(rows == tokens, "mean pool", || {
            format!("the input has {rows} rows for a batch of {tokens} tokens")
        })?;
        self.mean_pool_normalized_unchecked(x, batch)
    }

    /// `[rows, cols]`: each row divided by `max(||row||_2, 1e-12)`
    /// (`torch.nn.functional.normalize`). Any matrix is a valid input.
    fn l2_normalize(&self, x: &Self::Tensor) -> Result<Self::Tensor> {
        self.l2_normalize_unchecked(x)
    }
}

impl<K: Kernels> Backend for K {}

/// [`Backend::embed`]'s checks: the tables are equally wide (the width is returned) and hold
/// every row the batch names.
fn embed_checks<B: Backend + ?Sized>(
    b: &B,
    batch: &B::Batch,
    tables: [&B::Table; 3],
) -> Result<usize> {
    let d = b.batch_dims(batch);
    let [w, p, ty] = tables.map(|t| b.table_dims(t));
    ensure(w[1] == p[1] && w[1] == ty[1], "embed", || {
        format!(
            "the word, position and token type tables are {}, {} and {} wide",
            w[1], p[1], ty[1]
        )
    })?;
    for (name, needed, [rows, _]) in [
        ("token id", d.id_rows, w),
        ("position", d.position_rows, p),
        ("token type", d.type_rows, ty),
    ] {
        ensure(needed <= rows, "embed", || {
            format!("{name} {} is outside the table's {rows} rows", needed - 1)
        })?;
    }
    Ok(w[1])
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
