//! The dense head: one vector per text, pooled from the last hidden state and optionally
//! L2-normalised, as FlagModel's `pooling_method` and `normalize_embeddings` say
//! (`inference/embedder/encoder_only/base.py`, `_sentence_embedding`). It has no weights.

use super::{Hidden, rows};
use crate::backend::Backend;
use crate::config::Pooling;
use crate::error::Result;

/// `[B][h]`: each sequence's first row (CLS) or the mean of its rows, then L2-normalised if
/// `normalize`.
pub(crate) fn forward<B: Backend>(
    b: &B,
    hidden: &Hidden<B>,
    pooling: Pooling,
    normalize: bool,
) -> Result<Vec<Vec<f32>>> {
    let pooled = match pooling {
        Pooling::Cls => hidden.first_rows(b)?,
        Pooling::Mean => b.mean_pool(&hidden.states, hidden.on_device)?,
    }; // [B, h]
    let pooled = match normalize {
        true => b.l2_normalize(&pooled)?,
        false => pooled,
    };
    let [_, h] = b.tensor_dims(&pooled);
    Ok(rows(b.to_host(&pooled)?, h))
}
