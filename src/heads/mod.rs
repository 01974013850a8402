//! What sits on top of the encoder: BGE-M3's sparse and ColBERT heads and the rerankers'
//! classifier, as backend layers ([`Heads`]), plus the host-side arithmetic FlagEmbedding does
//! on their outputs ([`sparse`], [`colbert`]).

pub mod colbert;
pub mod sparse;

use crate::backend::Backend;
use crate::config::ModelConfig;
use crate::error::Result;
use crate::model::Params;
use crate::model::encoder::load_linear;

/// Where each head's parameters come from, when the model has it.
#[derive(Default)]
pub struct HeadParams<'a> {
    /// `sparse_linear.pt`: `weight` `[1, h]`, `bias` `[1]`.
    pub sparse: Option<&'a dyn Params>,
    /// `colbert_linear.pt`: `weight` `[h, h]`, `bias` `[h]` (FlagEmbedding's `colbert_dim = -1`).
    pub colbert: Option<&'a dyn Params>,
    /// The checkpoint holding `classifier.dense.*` [h, h] and `classifier.out_proj.*`
    /// [labels, h] (`XLMRobertaForSequenceClassification`).
    pub classifier: Option<(&'a dyn Params, usize)>,
}

/// The reranker head: `out_proj(tanh(dense(h[<s>])))` (modeling_xlm_roberta.py,
/// `XLMRobertaClassificationHead`; dropout is inactive at inference).
pub struct Classifier<B: Backend> {
    pub dense: B::Linear,
    pub out_proj: B::Linear,
    pub labels: usize,
}

/// The heads a model has, resident on its backend.
pub struct Heads<B: Backend> {
    pub sparse: Option<B::Linear>,
    pub colbert: Option<B::Linear>,
    pub classifier: Option<Classifier<B>>,
}

impl<B: Backend> Heads<B> {
    pub fn load(b: &B, config: &ModelConfig, p: &HeadParams) -> Result<Self> {
        let h = config.hidden_size;
        Ok(Heads {
            sparse: p.sparse.map(|p| load_linear(b, p, "", 1, h)).transpose()?,
            colbert: p.colbert.map(|p| load_linear(b, p, "", h, h)).transpose()?,
            classifier: p
                .classifier
                .map(|(p, labels)| -> Result<Classifier<B>> {
                    Ok(Classifier {
                        dense: load_linear(b, p, "classifier.dense", h, h)?,
                        out_proj: load_linear(b, p, "classifier.out_proj", labels, h)?,
                        labels,
                    })
                })
                .transpose()?,
        })
    }
}
