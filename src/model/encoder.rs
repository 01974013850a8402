//! The BERT / XLM-RoBERTa encoder, written once against [`Backend`]. Weight names follow
//! Hugging Face's `modeling_bert.py` (XLM-R reuses them unchanged); the two architectures differ
//! only in their position ids, which the caller puts into the [`PackedBatch`](crate::backend::PackedBatch).

use super::Params;
use crate::backend::{Activation, Backend};
use crate::config::ModelConfig;
use crate::error::Result;

/// LayerNorm parameters, each `[1, h]`.
pub struct Norm<B: Backend> {
    pub gamma: B::Tensor,
    pub beta: B::Tensor,
}

impl<B: Backend> Norm<B> {
    fn load(b: &B, p: &dyn Params, name: &str, h: usize) -> Result<Self> {
        Ok(Norm {
            gamma: b.tensor(&p.get(&format!("{name}.weight"), &[h])?, 1, h)?,
            beta: b.tensor(&p.get(&format!("{name}.bias"), &[h])?, 1, h)?,
        })
    }
}

/// Loads `{name}.weight` `[out, in]` and `{name}.bias` `[out]` (plain `weight` and `bias`
/// when `name` is empty, as in a saved `nn.Linear`) into a backend linear layer.
pub(crate) fn load_linear<B: Backend>(
    b: &B,
    p: &dyn Params,
    name: &str,
    out: usize,
    inp: usize,
) -> Result<B::Linear> {
    let key = |part: &str| match name {
        "" => part.to_owned(),
        _ => format!("{name}.{part}"),
    };
    let w = p.get(&key("weight"), &[out, inp])?;
    let bias = p.get(&key("bias"), &[out])?;
    b.linear(&w, &bias, out, inp)
}

pub struct Layer<B: Backend> {
    /// `[3h, h]`: query, key and value projections stacked (one matmul instead of three).
    qkv: B::Linear,
    /// `[h, h]`
    attn_out: B::Linear,
    attn_norm: Norm<B>,
    /// `[ffn, h]`
    ffn_up: B::Linear,
    /// `[h, ffn]`
    ffn_down: B::Linear,
    ffn_norm: Norm<B>,
}

impl<B: Backend> Layer<B> {
    fn load(b: &B, p: &dyn Params, c: &ModelConfig, i: usize) -> Result<Self> {
        let (h, f) = (c.hidden_size, c.intermediate_size);
        let pre = format!("encoder.layer.{i}");
        let mut w = Vec::with_capacity(3 * h * h);
        let mut bias = Vec::with_capacity(3 * h);
        for part in ["query", "key", "value"] {
            w.extend(p.get(&format!("{pre}.attention.self.{part}.weight"), &[h, h])?);
            bias.extend(p.get(&format!("{pre}.attention.self.{part}.bias"), &[h])?);
        }
        Ok(Layer {
            qkv: b.linear(&w, &bias, 3 * h, h)?,
            attn_out: load_linear(b, p, &format!("{pre}.attention.output.dense"), h, h)?,
            attn_norm: Norm::load(b, p, &format!("{pre}.attention.output.LayerNorm"), h)?,
            ffn_up: load_linear(b, p, &format!("{pre}.intermediate.dense"), f, h)?,
            ffn_down: load_linear(b, p, &format!("{pre}.output.dense"), h, f)?,
            ffn_norm: Norm::load(b, p, &format!("{pre}.output.LayerNorm"), h)?,
        })
    }
}

/// Intermediate values the encoder can report while it runs (for layer-by-layer checks
/// against the float64 transformers dumps). Layer indices count from 0.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Probe {
    /// `[T, h]` word + position + type embeddings, before the embedding LayerNorm.
    EmbeddingsSum,
    /// `[T, h]` input of layer `l` (`l = 0` is the embedding LayerNorm output); after the last
    /// layer, `Hidden(num_layers)` is the encoder output.
    Hidden(usize),
    /// `[T, h]` attention probabilities times V, heads concatenated.
    AttnContext(usize),
    /// `[T, h]` `LayerNorm(dense(context) + input)`.
    AttnOutput(usize),
    /// `[T, ffn]` `gelu(dense(attn_output))`.
    FfnIntermediate(usize),
}

/// What [`Encoder::forward_probed`] hands each intermediate value to.
type Prober<'a, T> = dyn FnMut(Probe, &T) -> Result<()> + 'a;

pub struct Encoder<B: Backend> {
    pub config: ModelConfig,
    /// `[vocab, h]`
    word: B::Table,
    /// `[max_positions, h]`
    position: B::Table,
    /// `[type_vocab, h]`
    token_type: B::Table,
    norm: Norm<B>,
    layers: Vec<Layer<B>>,
}

impl<B: Backend> Encoder<B> {
    pub fn load(b: &B, config: &ModelConfig, p: &dyn Params) -> Result<Self> {
        let c = config;
        let h = c.hidden_size;
        let table = |name: &str, rows: usize| -> Result<B::Table> {
            b.table(&p.get(name, &[rows, h])?, rows, h)
        };
        Ok(Encoder {
            config: c.clone(),
            word: table("embeddings.word_embeddings.weight", c.vocab_size)?,
            position: table(
                "embeddings.position_embeddings.weight",
                c.max_position_embeddings,
            )?,
            token_type: table("embeddings.token_type_embeddings.weight", c.type_vocab_size)?,
            norm: Norm::load(b, p, "embeddings.LayerNorm", h)?,
            layers: (0..c.num_layers)
                .map(|i| Layer::load(b, p, c, i))
                .collect::<Result<_>>()?,
        })
    }

    /// `[T, h]` last hidden state of a batch.
    pub fn forward(&self, b: &B, batch: &B::Batch) -> Result<B::Tensor> {
        self.run(b, batch, None, None)
    }

    /// `[rows.len(), h]`: the last hidden state of the given token rows only. The last layer
    /// still attends over every token, but its output projection and FFN run on these rows
    /// alone: for CLS pooling that skips three quarters of the last layer's work.
    pub fn forward_rows(&self, b: &B, batch: &B::Batch, rows: &[u32]) -> Result<B::Tensor> {
        self.run(b, batch, Some(rows), None)
    }

    /// [`Self::forward`] (or [`Self::forward_rows`] with `rows`), handing every intermediate
    /// value to `probe` as it is computed.
    pub fn forward_probed(
        &self,
        b: &B,
        batch: &B::Batch,
        rows: Option<&[u32]>,
        probe: &mut dyn FnMut(Probe, &B::Tensor) -> Result<()>,
    ) -> Result<B::Tensor> {
        self.run(b, batch, rows, Some(probe))
    }

    /// The forward pass, probed or not: without a probe the embedding sum and its LayerNorm
    /// are one operation ([`Backend::embed_layer_norm`]), since nothing needs the sum itself.
    fn run(
        &self,
        b: &B,
        batch: &B::Batch,
        rows: Option<&[u32]>,
        mut probe: Option<&mut Prober<'_, B::Tensor>>,
    ) -> Result<B::Tensor> {
        let c = &self.config;
        let eps = c.layer_norm_eps;
        let (word, position, types) = (&self.word, &self.position, &self.token_type);
        let (gamma, beta) = (&self.norm.gamma, &self.norm.beta);
        let mut x = if probe.is_some() {
            let sum = b.embed(batch, word, position, types)?;
            if let Some(p) = probe.as_mut() {
                p(Probe::EmbeddingsSum, &sum)?;
            }
            b.layer_norm(&sum, None, gamma, beta, eps)?
        } else {
            b.embed_layer_norm(batch, word, position, types, gamma, beta, eps)?
        }; // [T, h]
        let mut probe = |what: Probe, t: &B::Tensor| match probe.as_mut() {
            Some(p) => p(what, t),
            None => Ok(()),
        };
        if let (Some(rows), true) = (rows, self.layers.is_empty()) {
            x = b.gather_rows(&x, rows)?; // no layer to cut short: [T, h] -> [rows, h]
        }
        for (l, layer) in self.layers.iter().enumerate() {
            probe(Probe::Hidden(l), &x)?;
            let qkv = b.matmul(&x, &layer.qkv, Activation::None)?; // [T, 3h]
            let mut context = b.attention(&qkv, batch, c.num_heads)?; // [T, h]
            probe(Probe::AttnContext(l), &context)?;
            if let (Some(rows), true) = (rows, l + 1 == self.layers.len()) {
                // From here on only `rows` matter: [T, h] -> [rows, h].
                context = b.gather_rows(&context, rows)?;
                x = b.gather_rows(&x, rows)?;
            }
            let projected = b.matmul(&context, &layer.attn_out, Activation::None)?; // [T, h]
            let n = &layer.attn_norm;
            let attn = b.layer_norm(&projected, Some(&x), &n.gamma, &n.beta, eps)?; // [T, h]
            probe(Probe::AttnOutput(l), &attn)?;
            let up = b.matmul(&attn, &layer.ffn_up, Activation::Gelu)?; // [T, ffn]
            probe(Probe::FfnIntermediate(l), &up)?;
            let down = b.matmul(&up, &layer.ffn_down, Activation::None)?; // [T, h]
            let n = &layer.ffn_norm;
            x = b.layer_norm(&down, Some(&attn), &n.gamma, &n.beta, eps)?;
        }
        probe(Probe::Hidden(self.layers.len()), &x)?;
        Ok(x)
    }
}
