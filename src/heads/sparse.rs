//! BGE-M3's sparse head: a weight per token, `relu(sparse_linear(h_t))`, folded into each
//! text's lexical weights as FlagEmbedding does (`inference/embedder/encoder_only/m3.py`,
//! `_sparse_embedding` and `_process_token_weights`).

use serde::ser::{Serialize, SerializeMap, Serializer};

use super::Hidden;
use crate::backend::{Activation, Backend};
use crate::error::Result;
use crate::model::{Params, load_linear};

/// `sparse_linear.pt` on a backend, with the token ids whose weights are dropped.
pub(crate) struct Sparse<B: Backend> {
    /// `[1, h]`
    linear: B::Linear,
    /// The tokenizer's `cls`, `eos`, `pad` and `unk` ids.
    skip: Vec<u32>,
}

impl<B: Backend> Sparse<B> {
    /// `weight` `[1, h]` and `bias` `[1]` from `params`.
    pub fn load(b: &B, params: &dyn Params, h: usize, skip: Vec<u32>) -> Result<Self> {
        Ok(Sparse {
            linear: load_linear(b, params, "", 1, h)?,
            skip,
        })
    }

    /// Each sequence's lexical weights. Needs every token's hidden state.
    pub fn forward(&self, b: &B, hidden: &Hidden<B>) -> Result<Vec<LexicalWeights>> {
        let batch = hidden.batch;
        let weights = b.matmul(&hidden.states, &self.linear, Activation::Relu)?; // [T, 1]
        let weights = b.to_host(&weights)?;
        Ok((0..batch.sequences())
            .map(|s| {
                let r = batch.range(s);
                LexicalWeights::from_tokens(&batch.ids[r.clone()], &weights[r], &self.skip)
            })
            .collect())
    }
}

/// A text's lexical weights: `(token id, weight)` in order of first occurrence, one entry per
/// id. Serialises as FlagEmbedding's dict: `{"<token id>": weight, ...}`.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct LexicalWeights(pub Vec<(u32, f32)>);

impl LexicalWeights {
    /// Scans the tokens in order, skipping the `skip` ids (cls, eos, pad, unk) and weights
    /// that are not positive; an id seen again keeps its largest weight.
    pub fn from_tokens(ids: &[u32], weights: &[f32], skip: &[u32]) -> Self {
        let mut out: Vec<(u32, f32)> = Vec::new();
        for (&id, &w) in ids.iter().zip(weights) {
            if skip.contains(&id) || w.is_nan() || w <= 0.0 {
                continue;
            }
            match out.iter_mut().find(|(i, _)| *i == id) {
                Some((_, best)) => *best = best.max(w),
                None => out.push((id, w)),
            }
        }
        LexicalWeights(out)
    }

    /// The weight of token `id`, if the text has it.
    pub fn get(&self, id: u32) -> Option<f32> {
        self.0.iter().find(|(i, _)| *i == id).map(|&(_, w)| w)
    }

    /// `compute_lexical_matching_score`: the sum over ids present in both of `w_a * w_b`.
    pub fn matching_score(&self, other: &LexicalWeights) -> f32 {
        self.0
            .iter()
            .filter_map(|&(id, w)| other.get(id).map(|v| w as f64 * v as f64))
            .sum::<f64>() as f32
    }
}

impl Serialize for LexicalWeights {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        let mut map = s.serialize_map(Some(self.0.len()))?;
        for (id, w) in &self.0 {
            map.serialize_entry(&id.to_string(), w)?;
        }
        map.end()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn first_occurrence_order_max_weight_and_skips() {
        let ids = [0, 7, 5, 7, 3, 9, 2];
        let w = [0.9, 0.1, 0.5, 0.3, 0.8, -0.2, 0.4];
        let lw = LexicalWeights::from_tokens(&ids, &w, &[0, 2, 3]);
        assert_eq!(lw.0, vec![(7, 0.3), (5, 0.5)]);
        let other = LexicalWeights(vec![(5, 2.0), (11, 1.0)]);
        assert_eq!(lw.matching_score(&other), 1.0);
        assert_eq!(serde_json::to_string(&lw).unwrap(), r#"{"7":0.3,"5":0.5}"#);
    }
}
