//! Cross-encoder rerankers (bge-reranker-base/large, bge-reranker-v2-m3), as FlagEmbedding's
//! `FlagReranker` (`inference/reranker/encoder_only/base.py`): a (query, passage) pair in one
//! sequence, scored by the classifier on its first token.

use crate::backend::Dtype;
use crate::error::{Error, Result};
use crate::pipeline::{Device, Request};
use crate::runtime::Runtime;
use crate::source::ModelFiles;

/// FlagReranker's defaults.
pub const DEFAULT_MAX_LENGTH: usize = 512;
pub const DEFAULT_BATCH_SIZE: usize = 128;

pub struct Reranker {
    runtime: Runtime,
    pub name: String,
    /// Length of the whole pair in tokens; the query alone gets at most 3/4 of it.
    pub max_length: usize,
    pub batch_size: usize,
}

impl Reranker {
    /// Loads a `*ForSequenceClassification` model with one label.
    pub fn load(model: &str, device: Device, dtype: Dtype) -> Result<Self> {
        let files = ModelFiles::resolve(model)?;
        let runtime = Runtime::load(&files, device, dtype, None)?;
        if !runtime.heads().2 {
            return Err(Error::InvalidArgument(format!(
                "model `{}` is not a reranker: its config.json declares no *ForSequenceClassification architecture",
                files.name
            )));
        }
        let max_length =
            runtime.check_max_length(DEFAULT_MAX_LENGTH.min(runtime.config().max_tokens()))?;
        Ok(Reranker {
            name: files.name,
            runtime,
            max_length,
            batch_size: DEFAULT_BATCH_SIZE,
        })
    }

    pub fn tokenizer(&self) -> &crate::tokenize::Tokenizer {
        &self.runtime.tokenizer
    }

    /// `compute_score(pairs, max_length, normalize)`: the first logit of each pair; with
    /// `normalize`, its sigmoid.
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
        let max_length = self.runtime.check_max_length(self.max_length)?;
        let query_max_length = max_length * 3 / 4;
        let encoded = pairs
            .iter()
            .map(|(q, p)| {
                self.runtime
                    .tokenizer
                    .encode_pair(q, p, query_max_length, max_length)
            })
            .collect::<Result<Vec<_>>>()?;
        // A pair whose query alone fills the length is kept whole (see encode_pair); it must
        // still fit the position table.
        if let Some(e) = encoded
            .iter()
            .find(|e| e.len() > self.runtime.config().max_tokens())
        {
            return Err(Error::InvalidArgument(format!(
                "a pair of {} tokens exceeds the model's {} positions",
                e.len(),
                self.runtime.config().max_tokens()
            )));
        }
        let request = Request {
            logits: true,
            ..Request::default()
        };
        let out = self
            .runtime
            .run(&encoded, &request, self.batch_size, progress)?;
        Ok(out
            .logits
            .iter()
            .map(|l| {
                let x = l[0];
                if normalize {
                    1.0 / (1.0 + (-x).exp())
                } else {
                    x
                }
            })
            .collect())
    }
}
