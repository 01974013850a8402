//! The rerankers' classifier: `out_proj(tanh(dense(h[<s>])))` on each pair's first token
//! (modeling_xlm_roberta.py, `XLMRobertaClassificationHead`; dropout is inactive at inference),
//! and the sigmoid FlagReranker applies with `normalize=True`.

use super::{Hidden, rows};
use crate::backend::{Activation, Backend};
use crate::error::Result;
use crate::model::{Params, load_linear};

/// `classifier.dense` `[h, h]` and `classifier.out_proj` `[labels, h]` on a backend.
pub(crate) struct Classifier<B: Backend> {
    dense: B::Linear,
    out_proj: B::Linear,
    labels: usize,
}

impl<B: Backend> Classifier<B> {
    pub fn load(b: &B, params: &dyn Params, h: usize, labels: usize) -> Result<Self> {
        Ok(Classifier {
            dense: load_linear(b, params, "classifier.dense", h, h)?,
            out_proj: load_linear(b, params, "classifier.out_proj", labels, h)?,
            labels,
        })
    }

    /// `[B][labels]`: each sequence's logits. Reads only the first row of each sequence.
    pub fn forward(&self, b: &B, hidden: &Hidden<B>) -> Result<Vec<Vec<f32>>> {
        let first = hidden.first_rows(b)?; // [B, h]
        let pooled = b.matmul(&first, &self.dense, Activation::Tanh)?; // [B, h]
        let logits = b.matmul(&pooled, &self.out_proj, Activation::None)?; // [B, labels]
        Ok(rows(b.to_host(&logits)?, self.labels))
    }
}

/// A pair's score from its first logit: the logit itself, or with `normalize` its sigmoid.
pub(crate) fn score(logits: &[f32], normalize: bool) -> f32 {
    let x = logits[0];
    match normalize {
        true => 1.0 / (1.0 + (-x).exp()),
        false => x,
    }
}
