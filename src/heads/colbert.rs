//! BGE-M3's ColBERT head: `normalize(colbert_linear(h_t))` for every token but each text's
//! first (`inference/embedder/encoder_only/m3.py`, `_colbert_embedding`: `[:, 1:]`), and the
//! late-interaction score over two texts' vectors.

use super::{Hidden, rows};
use crate::backend::{Activation, Backend};
use crate::error::Result;
use crate::model::{Params, load_linear};

/// `colbert_linear.pt` on a backend: `[h, h]` (FlagEmbedding's default `colbert_dim = -1`).
pub(crate) struct Colbert<B: Backend> {
    linear: B::Linear,
}

impl<B: Backend> Colbert<B> {
    /// `weight` `[h, h]` and `bias` `[h]` from `params`.
    pub fn load(b: &B, params: &dyn Params, h: usize) -> Result<Self> {
        Ok(Colbert {
            linear: load_linear(b, params, "", h, h)?,
        })
    }

    /// `[B][len - 1][h]`: each sequence's vectors. Needs every token's hidden state.
    pub fn forward(&self, b: &B, hidden: &Hidden<B>) -> Result<Vec<Vec<Vec<f32>>>> {
        let batch = hidden.batch;
        // Every token but each sequence's first ([CLS] / <s>), in order.
        let tokens: Vec<u32> = (0..batch.sequences())
            .flat_map(|s| batch.range(s).skip(1).map(|t| t as u32))
            .collect();
        let selected = b.gather_rows(&hidden.states, &tokens)?; // [T - B, h]
        let projected = b.matmul(&selected, &self.linear, Activation::None)?; // [T - B, h]
        let normalized = b.l2_normalize(&projected)?;
        let [_, dim] = b.tensor_dims(&normalized);
        let mut vectors = rows(b.to_host(&normalized)?, dim).into_iter();
        Ok((0..batch.sequences())
            .map(|s| vectors.by_ref().take(batch.range(s).len() - 1).collect())
            .collect())
    }
}

/// `colbert_score(q, p)` of FlagEmbedding: for each query vector its best dot product with any
/// passage vector, averaged over the query vectors. Rows are the unpadded vectors of one text
/// each, so (unlike `compute_score`'s padded batch, see the README) a padded zero row can never
/// win the max.
pub fn score(query: &[Vec<f32>], passage: &[Vec<f32>]) -> f32 {
    if query.is_empty() || passage.is_empty() {
        return 0.0;
    }
    let total: f64 = query
        .iter()
        .map(|q| {
            passage
                .iter()
                .map(|p| {
                    q.iter()
                        .zip(p)
                        .map(|(a, b)| *a as f64 * *b as f64)
                        .sum::<f64>()
                })
                .fold(f64::NEG_INFINITY, f64::max)
        })
        .sum();
    (total / query.len() as f64) as f32
}

#[cfg(test)]
mod tests {
    #[test]
    fn mean_of_best_matches() {
        let q = vec![vec![1.0, 0.0], vec![0.0, 1.0]];
        let p = vec![vec![0.5, 0.5], vec![-1.0, 0.2]];
        // Row 0: max(0.5, -1.0) = 0.5; row 1: max(0.5, 0.2) = 0.5.
        assert_eq!(super::score(&q, &p), 0.5);
        // A negative best match stays negative (no padding row at 0).
        assert_eq!(super::score(&[vec![1.0, 0.0]], &[vec![-0.5, 0.0]]), -0.5);
    }
}
