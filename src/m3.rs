//! BGE-M3's API, as FlagEmbedding's `BGEM3FlagModel` (`inference/embedder/encoder_only/m3.py`):
//! dense, sparse (lexical) and ColBERT outputs from one encoder pass, and their scores.

use serde::Serialize;

use crate::error::{Error, Result};
use crate::flag_model::{Embeddings, FlagModel, Options, TextEmbeddings, Want};
use crate::heads::{Head, colbert};

pub use crate::heads::sparse::LexicalWeights;

/// `compute_score`'s default `weights_for_different_modes` in FlagEmbedding 1.4.2:
/// `[dense, sparse, colbert]` = `[1, 1, 1]` (the model card suggests `[0.4, 0.2, 0.4]`).
pub const DEFAULT_WEIGHTS: [f32; 3] = [1.0, 1.0, 1.0];

/// The five scores of a (query, passage) pair.
#[derive(Clone, Copy, Debug, PartialEq, Serialize)]
pub struct PairScores {
    /// The dot product of the dense vectors.
    pub dense: f32,
    /// The lexical matching score.
    pub sparse: f32,
    /// The ColBERT late-interaction score.
    pub colbert: f32,
    /// `(S·sparse + D·dense) / (D + S)`.
    #[serde(rename = "sparse+dense")]
    pub sparse_dense: f32,
    /// `(C·colbert + S·sparse + D·dense) / (D + S + C)`.
    #[serde(rename = "colbert+sparse+dense")]
    pub colbert_sparse_dense: f32,
}

impl PairScores {
    /// Combines the three scores with `weights` = `[dense, sparse, colbert]`, as FlagEmbedding.
    pub fn new(dense: f32, sparse: f32, colbert: f32, weights: [f32; 3]) -> Self {
        let [wd, ws, wc] = weights;
        PairScores {
            dense,
            sparse,
            colbert,
            sparse_dense: (sparse * ws + dense * wd) / (ws + wd),
            colbert_sparse_dense: (colbert * wc + sparse * ws + dense * wd) / (wd + ws + wc),
        }
    }
}

impl PairScores {
    /// The scores of a query and a passage from their outputs (all three asked for), as
    /// [`M3Model::compute_score`] gives them.
    pub(crate) fn of(q: TextEmbeddings, p: TextEmbeddings, weights: [f32; 3]) -> Self {
        let (empty_weights, no_vectors) = (LexicalWeights::default(), Vec::new());
        let (qd, pd) = (q.dense.unwrap_or_default(), p.dense.unwrap_or_default());
        let dense = qd.iter().zip(pd).map(|(a, b)| a * b).sum();
        let sparse =
            (q.sparse.unwrap_or(&empty_weights)).matching_score(p.sparse.unwrap_or(&empty_weights));
        let colbert = colbert_score(
            q.colbert.unwrap_or(&no_vectors),
            p.colbert.unwrap_or(&no_vectors),
        );
        PairScores::new(dense, sparse, colbert, weights)
    }
}

/// An error unless `weights` (dense, sparse, ColBERT) can be combined: dense + sparse and the
/// sum of all three must not be 0.
pub(crate) fn check_weights(weights: [f32; 3]) -> Result<()> {
    if weights.iter().sum::<f32>() == 0.0 || weights[0] + weights[1] == 0.0 {
        return Err(Error::InvalidArgument(format!(
            "weights {weights:?}: dense + sparse and the sum of all three must not be 0"
        )));
    }
    Ok(())
}

/// `compute_lexical_matching_score`: sum over ids in both texts of the product of weights.
pub fn compute_lexical_matching_score(a: &LexicalWeights, b: &LexicalWeights) -> f32 {
    a.matching_score(b)
}

/// `colbert_score`: mean over query vectors of the best dot product with a passage vector.
pub fn colbert_score(query: &[Vec<f32>], passage: &[Vec<f32>]) -> f32 {
    colbert::score(query, passage)
}

/// A BGE-M3 model: [`FlagModel`] plus the sparse and ColBERT heads and their scoring.
///
/// `Send + Sync`, and batch-invariant, as [`FlagModel`] is.
///
/// ```no_run
/// use bge::{M3Model, Options, Want};
///
/// let m3 = M3Model::load("BAAI/bge-m3", &Options::default())?;
/// let q = m3.encode_queries(&["what is BGE M3?"], Want::ALL)?;
/// let p = m3.encode_corpus(&["BGE M3 is an embedding model."], Want::ALL)?;
/// let lexical = bge::m3::compute_lexical_matching_score(&q.sparse[0], &p.sparse[0]);
/// let late = bge::m3::colbert_score(&q.colbert[0], &p.colbert[0]);
/// let all = m3.compute_score(&[("what is BGE M3?", "BGE M3 is ...")], [0.4, 0.2, 0.4])?;
/// # Ok::<(), bge::Error>(())
/// ```
pub struct M3Model {
    model: FlagModel,
}

impl M3Model {
    /// Loads a model that has both BGE-M3 heads (`sparse_linear.pt`, `colbert_linear.pt`).
    pub fn load(model: &str, options: &Options) -> Result<Self> {
        Self::new(FlagModel::load(model, options)?)
    }

    /// A loaded [`FlagModel`] as BGE-M3; an error unless it has both BGE-M3 heads.
    pub fn new(model: FlagModel) -> Result<Self> {
        let heads = model.heads();
        if !(heads.contains(Head::Sparse) && heads.contains(Head::Colbert)) {
            return Err(Error::InvalidArgument(format!(
                "model `{}` is not a BGE-M3 model: it needs sparse_linear.pt and colbert_linear.pt beside its weights",
                model.name()
            )));
        }
        Ok(M3Model { model })
    }

    /// The model as a [`FlagModel`] (its settings, `embed` with a progress callback).
    pub fn model(&self) -> &FlagModel {
        &self.model
    }

    /// `encode(sentences, return_dense, return_sparse, return_colbert_vecs)` at `max_length`.
    pub fn encode(&self, texts: &[&str], want: Want) -> Result<Embeddings> {
        let m = &self.model;
        m.embed(texts, None, m.max_length(), want, &mut |_| {})
    }

    /// `encode_queries`: the query instruction (none by default for bge-m3), query max length.
    pub fn encode_queries(&self, queries: &[&str], want: Want) -> Result<Embeddings> {
        let m = &self.model;
        m.embed(
            queries,
            m.query_instruction(),
            m.query_max_length(),
            want,
            &mut |_| {},
        )
    }

    /// `encode_corpus`: the passage instruction (if any), max length.
    pub fn encode_corpus(&self, corpus: &[&str], want: Want) -> Result<Embeddings> {
        let m = &self.model;
        m.embed(
            corpus,
            m.passage_instruction(),
            m.max_length(),
            want,
            &mut |_| {},
        )
    }

    /// `compute_score(sentence_pairs, weights_for_different_modes)`: queries at the query max
    /// length and passages at the max length, no instructions. The ColBERT score of each pair
    /// is [`colbert_score`] over the unpadded vectors; FlagEmbedding's padded batch instead
    /// lets a padding row (a zero vector) win the max when a query token's best real match is
    /// negative, so its `colbert` differs from its own `colbert_score` there (README).
    pub fn compute_score(
        &self,
        pairs: &[(&str, &str)],
        weights: [f32; 3],
    ) -> Result<Vec<PairScores>> {
        let m = &self.model;
        let lengths = (m.query_max_length(), m.max_length());
        self.compute_score_with(pairs, weights, lengths, m.batch_size())
    }

    /// [`Self::compute_score`] with this call's own `(max_query_length, max_passage_length)`
    /// and batch size, as FlagEmbedding's `compute_score` takes them.
    pub fn compute_score_with(
        &self,
        pairs: &[(&str, &str)],
        weights: [f32; 3],
        (query_max_length, max_length): (usize, usize),
        batch_size: usize,
    ) -> Result<Vec<PairScores>> {
        check_weights(weights)?;
        let (all, m) = (Want::ALL, &self.model);
        let queries: Vec<&str> = pairs.iter().map(|p| p.0).collect();
        let passages: Vec<&str> = pairs.iter().map(|p| p.1).collect();
        let q = m.embed_batched(
            &queries,
            None,
            query_max_length,
            all,
            batch_size,
            &mut |_| {},
        )?;
        let p = m.embed_batched(&passages, None, max_length, all, batch_size, &mut |_| {})?;
        Ok((0..pairs.len())
            .map(|i| PairScores::of(q.text(i), p.text(i), weights))
            .collect())
    }

    /// `convert_id_to_token`: lexical weights keyed by token text (as `tokenizer.decode([id])`).
    pub fn convert_id_to_token(&self, weights: &LexicalWeights) -> Vec<(String, f32)> {
        let t = self.model.tokenizer();
        weights
            .0
            .iter()
            .map(|&(id, w)| (t.decode(&[id]).unwrap_or_default(), w))
            .collect()
    }
}
