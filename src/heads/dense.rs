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
    // Where the encoder ran its last layer on the first rows only, its output is already the
    // CLS rows: no copy.
    let cls_only = !hidden.all_tokens;
    let pooled = match (pooling, normalize) {
        (Pooling::Cls, true) if cls_only => Some(b.l2_normalize(&hidden.states)?),
        (Pooling::Cls, false) if cls_only => None,
        (Pooling::Cls, true) => Some(b.l2_normalize(&hidden.first_rows(b)?)?),
        (Pooling::Cls, false) => Some(hidden.first_rows(b)?),
        (Pooling::Mean, true) => Some(b.mean_pool_normalized(&hidden.states, hidden.on_device)?),
        (Pooling::Mean, false) => Some(b.mean_pool(&hidden.states, hidden.on_device)?),
    }; // [B, h]
    let pooled = pooled.as_ref().unwrap_or(&hidden.states);
    let [_, h] = b.tensor_dims(pooled);
    Ok(rows(b.to_host(pooled)?, h))
}

/// Matryoshka-style shortening: the first `dimensions` components of `vector`, L2-normalised
/// again if `normalize` (TEI's and OpenAI's `dimensions`, FlagModel's `truncate_dim`); a vector
/// no longer than `dimensions` is kept as it is.
pub fn shorten(mut vector: Vec<f32>, dimensions: usize, normalize: bool) -> Vec<f32> {
    if dimensions >= vector.len() {
        return vector;
    }
    vector.truncate(dimensions);
    if normalize {
        // torch.nn.functional.normalize: x / max(||x||, eps)
        let norm = vector
            .iter()
            .map(|&x| x as f64 * x as f64)
            .sum::<f64>()
            .sqrt();
        let scale = 1.0 / norm.max(1e-12);
        vector
            .iter_mut()
            .for_each(|x| *x = (*x as f64 * scale) as f32);
    }
    vector
}

#[cfg(test)]
mod tests {
    #[test]
    fn shortening_keeps_the_first_components_and_renormalises() {
        let v = vec![0.6, 0.0, 0.8, 0.0];
        assert_eq!(super::shorten(v.clone(), 4, true), v);
        assert_eq!(super::shorten(v.clone(), 1, false), [0.6]);
        assert_eq!(super::shorten(v.clone(), 1, true), [1.0]);
        assert_eq!(super::shorten(vec![0.0, 0.0], 1, true), [0.0]);
    }
}
