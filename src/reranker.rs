//! Cross-encoder rerankers (bge-reranker-base/large, bge-reranker-v2-m3), as FlagEmbedding's
//! `FlagReranker` (`inference/reranker/encoder_only/base.py`): a (query, passage) pair in one
//! sequence, scored by the classifier on its first token.

use crate::backend::Dtype;
use crate::config::Pooling;
use crate::device::Device;
use crate::error::{Error, Result};
use crate::heads::{Head, HeadSet, Request, classifier};
use crate::loaded::LoadedModel;
use crate::source::ModelFiles;
use crate::tokenize::Encoded;

/// FlagReranker's default `max_length`.
pub const DEFAULT_MAX_LENGTH: usize = 512;
/// FlagReranker's default `batch_size`.
pub const DEFAULT_BATCH_SIZE: usize = 128;

/// A cross-encoder with FlagEmbedding's `FlagReranker` semantics.
///
/// `Send + Sync`, and batch-invariant: a pair's score does not depend on the other pairs of
/// the call or on the batch size.
///
/// ```no_run
/// use bge::{Device, Dtype, Reranker};
///
/// let reranker = Reranker::load("BAAI/bge-reranker-base", Device::Auto, Dtype::F32)?;
/// let scores = reranker.compute_score(&[("what is a panda?", "The giant panda is a bear.")], true)?;
/// # Ok::<(), bge::Error>(())
/// ```
pub struct Reranker {
    loaded: LoadedModel,
    max_length: usize,
    batch_size: usize,
}

impl Reranker {
    /// Loads a `*ForSequenceClassification` model (a directory or a hub id).
    pub fn load(model: &str, device: Device, dtype: Dtype) -> Result<Self> {
        Self::from_files(&ModelFiles::resolve(model)?, device, dtype)
    }

    pub(crate) fn from_files(files: &ModelFiles, device: Device, dtype: Dtype) -> Result<Self> {
        let loaded = LoadedModel::load(files, device, dtype, None)?;
        if !loaded.heads().contains(Head::Classifier) {
            return Err(Error::InvalidArgument(format!(
                "model `{}` is not a reranker: its config.json declares no *ForSequenceClassification architecture",
                files.name
            )));
        }
        let max_length =
            loaded.check_max_length(DEFAULT_MAX_LENGTH.min(loaded.config().max_tokens()))?;
        Ok(Reranker {
            loaded,
            max_length,
            batch_size: DEFAULT_BATCH_SIZE,
        })
    }

    /// The model's name (its directory or repository).
    pub fn name(&self) -> &str {
        self.loaded.name()
    }

    /// The backend and device the model runs on, in words.
    pub fn describe(&self) -> String {
        self.loaded.describe()
    }

    #[cfg_attr(not(feature = "serve"), allow(dead_code))] // the server's `/tokenize`
    pub(crate) fn tokenizer(&self) -> &crate::tokenize::Tokenizer {
        self.loaded.tokenizer()
    }

    /// The length of a whole pair in tokens; the query alone gets at most 3/4 of it.
    pub fn max_length(&self) -> usize {
        self.max_length
    }

    /// Sets [`Self::max_length`]: at least 2, at most what the model's positions allow.
    pub fn set_max_length(&mut self, max_length: usize) -> Result<()> {
        self.max_length = self.loaded.check_max_length(max_length)?;
        Ok(())
    }

    /// Pairs per forward pass.
    pub fn batch_size(&self) -> usize {
        self.batch_size
    }

    /// Sets how many pairs run in one forward pass (at least 1).
    pub fn set_batch_size(&mut self, batch_size: usize) -> Result<()> {
        if batch_size == 0 {
            return Err(Error::InvalidArgument(
                "batch size must be at least 1".into(),
            ));
        }
        self.batch_size = batch_size;
        Ok(())
    }

    /// `compute_score(pairs, normalize=...)` at [`Self::max_length`]: the first logit of each
    /// pair; with `normalize`, its sigmoid.
    pub fn compute_score(&self, pairs: &[(&str, &str)], normalize: bool) -> Result<Vec<f32>> {
        self.compute_score_with(pairs, normalize, &mut |_| {})
    }

    /// [`Self::compute_score`] with `progress(n)` after each batch of `n` pairs.
    pub fn compute_score_with(
        &self,
        pairs: &[(&str, &str)],
        normalize: bool,
        progress: &mut dyn FnMut(usize),
    ) -> Result<Vec<f32>> {
        let (max_length, batch_size) = (self.max_length, self.batch_size);
        self.compute_score_at(pairs, normalize, (max_length, None), batch_size, progress)
    }

    /// [`Self::compute_score`] with this call's own `(max_length, query_max_length)` (the
    /// query's share defaults to 3/4 of the pair) and batch size, as FlagReranker takes them.
    pub fn compute_score_at(
        &self,
        pairs: &[(&str, &str)],
        normalize: bool,
        lengths: (usize, Option<usize>),
        batch_size: usize,
        progress: &mut dyn FnMut(usize),
    ) -> Result<Vec<f32>> {
        let encoded = self.tokenize(pairs, lengths)?;
        Ok(self
            .run(&encoded, batch_size, progress)?
            .iter()
            .map(|logits| classifier::score(logits, normalize))
            .collect())
    }

    /// The pairs as the cross-encoder reads them: the whole pair cut to `max_length`, the
    /// query alone to `query_max_length` (default 3/4 of `max_length`).
    pub(crate) fn tokenize(
        &self,
        pairs: &[(&str, &str)],
        (max_length, query_max_length): (usize, Option<usize>),
    ) -> Result<Vec<Encoded>> {
        let max_length = self.loaded.check_max_length(max_length)?;
        let query_max_length = query_max_length.unwrap_or(max_length * 3 / 4);
        let tokenizer = self.loaded.tokenizer();
        let encoded = pairs
            .iter()
            .map(|(q, p)| tokenizer.encode_pair(q, p, query_max_length, max_length))
            .collect::<Result<Vec<_>>>()?;
        // A pair whose query alone fills the length is kept whole (see encode_pair); it must
        // still fit the position table.
        let limit = self.loaded.config().max_tokens();
        if let Some(e) = encoded.iter().find(|e| e.len() > limit) {
            return Err(Error::InvalidArgument(format!(
                "a pair of {} tokens exceeds the model's {limit} positions",
                e.len(),
            )));
        }
        Ok(encoded)
    }

    /// Each tokenized pair's logits.
    pub(crate) fn run(
        &self,
        encoded: &[Encoded],
        batch_size: usize,
        progress: &mut dyn FnMut(usize),
    ) -> Result<Vec<Vec<f32>>> {
        let request = Request {
            heads: HeadSet::from(Head::Classifier),
            pooling: Pooling::Cls,
            normalize: false,
        };
        Ok(self
            .loaded
            .run(encoded, &request, batch_size, progress)?
            .logits)
    }
}
