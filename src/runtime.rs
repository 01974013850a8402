//! A model loaded for inference (config, tokenizer, encoder and heads on a backend) and the
//! batch loop every API shares: FlagEmbedding's order of work (sort by length, longest first;
//! cut into batches; restore the input order), with packed batches.

use crate::backend::Dtype;
use crate::config::{Head, ModelConfig, Pooling};
use crate::error::{Error, Result};
use crate::heads::HeadParams;
use crate::model::{self, Checkpoint};
use crate::pipeline::{self, Device, Outputs, Pipeline, Request};
use crate::source::ModelFiles;
use crate::tokenize::{Encoded, Tokenizer};
use crate::weights::Weights;

pub struct Runtime {
    pipeline: Box<dyn Pipeline>,
    pub tokenizer: Tokenizer,
    /// The repository name (`bge-m3`), from which FlagEmbedding infers defaults.
    pub name: String,
    /// The pooling `1_Pooling/config.json` declares, if the file exists.
    pub file_pooling: Option<Pooling>,
}

impl Runtime {
    pub fn load(
        files: &ModelFiles,
        device: Device,
        dtype: Dtype,
        threads: Option<usize>,
    ) -> Result<Self> {
        let config = ModelConfig::from_file(&files.config)?;
        let special: Vec<&std::path::Path> =
            files.special_tokens.iter().map(|p| p.as_path()).collect();
        let tokenizer = Tokenizer::from_file(&files.tokenizer)?.with_special_tokens(&special)?;
        let file_pooling = match &files.pooling {
            Some(p) => crate::config::read_pooling(p)?,
            None => None,
        };
        let weights = Weights::open(&files.weights)?;
        let checkpoint = Checkpoint::new(&weights)?;
        let head_file = |p: &Option<std::path::PathBuf>| -> Result<Option<Weights>> {
            p.as_ref()
                .map(|p| Weights::open(std::slice::from_ref(p)))
                .transpose()
        };
        let (sparse, colbert) = (
            head_file(&files.sparse_linear)?,
            head_file(&files.colbert_linear)?,
        );
        let classifier = checkpoint.unprefixed();
        let heads = HeadParams {
            sparse: sparse.as_ref().map(|w| w as _),
            colbert: colbert.as_ref().map(|w| w as _),
            classifier: match config.head {
                Head::Classifier { num_labels } => Some((&classifier as _, num_labels)),
                Head::Encoder => None,
            },
        };
        let pipeline = pipeline::load(device, dtype, threads, &config, &checkpoint, &heads)?;
        Ok(Runtime {
            pipeline,
            tokenizer,
            name: files.name.clone(),
            file_pooling,
        })
    }

    pub fn config(&self) -> &ModelConfig {
        self.pipeline.config()
    }

    /// The backend and device, in words.
    pub fn describe(&self) -> String {
        self.pipeline.describe()
    }

    /// Which heads the model has: (sparse, ColBERT, classifier).
    pub fn heads(&self) -> (bool, bool, bool) {
        self.pipeline.heads()
    }

    /// `max_length`, checked against the model's positions (2 ..= max tokens).
    pub fn check_max_length(&self, max_length: usize) -> Result<usize> {
        let c = self.config();
        if max_length < 2 || max_length > c.max_tokens() {
            return Err(Error::InvalidArgument(format!(
                "max length {max_length} is outside 2..={}, the range this model's {} position embeddings allow",
                c.max_tokens(),
                c.max_position_embeddings
            )));
        }
        Ok(max_length)
    }

    /// Runs `request` on every sequence, in batches of at most `batch_size` sequences (and
    /// what the device holds), longest first; outputs come back in input order. `progress`
    /// gets the number of sequences of each finished batch.
    pub fn run(
        &self,
        encoded: &[Encoded],
        request: &Request,
        batch_size: usize,
        progress: &mut dyn FnMut(usize),
    ) -> Result<Outputs> {
        if batch_size == 0 {
            return Err(Error::InvalidArgument(
                "batch size must be at least 1".into(),
            ));
        }
        let n = encoded.len();
        let mut all = Outputs {
            dense: vec![Vec::new(); if request.dense.is_some() { n } else { 0 }],
            token_weights: vec![Vec::new(); if request.token_weights { n } else { 0 }],
            colbert: vec![Vec::new(); if request.colbert { n } else { 0 }],
            logits: vec![Vec::new(); if request.logits { n } else { 0 }],
        };
        for batch in plan_batches(encoded, batch_size, self.pipeline.max_batch_tokens()) {
            let seqs: Vec<&Encoded> = batch.iter().map(|&i| &encoded[i]).collect();
            let packed = model::pack(self.config(), &seqs)?;
            let out = self.pipeline.run(&packed, request)?;
            scatter(&mut all.dense, &batch, out.dense);
            scatter(&mut all.token_weights, &batch, out.token_weights);
            scatter(&mut all.colbert, &batch, out.colbert);
            scatter(&mut all.logits, &batch, out.logits);
            progress(batch.len());
        }
        Ok(all)
    }
}

/// Puts a batch's results (in batch order) at their input positions.
fn scatter<T>(all: &mut [T], batch: &[usize], values: Vec<T>) {
    for (&i, v) in batch.iter().zip(values) {
        all[i] = v;
    }
}

/// Index batches: longest sequences first, at most `batch_size` sequences and `max_tokens`
/// tokens each (a sequence longer than `max_tokens` still gets a batch of its own).
pub(crate) fn plan_batches(
    encoded: &[Encoded],
    batch_size: usize,
    max_tokens: usize,
) -> Vec<Vec<usize>> {
    let mut order: Vec<usize> = (0..encoded.len()).collect();
    order.sort_by_key(|&i| std::cmp::Reverse(encoded[i].len()));
    let mut batches = Vec::new();
    let mut current: Vec<usize> = Vec::new();
    let mut tokens = 0;
    for i in order {
        let n = encoded[i].len();
        if !current.is_empty() && (current.len() == batch_size || tokens + n > max_tokens) {
            batches.push(std::mem::take(&mut current));
            tokens = 0;
        }
        current.push(i);
        tokens += n;
    }
    if !current.is_empty() {
        batches.push(current);
    }
    batches
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn batches_are_longest_first_and_bounded() {
        let enc = |n: usize| Encoded {
            ids: vec![1; n],
            type_ids: vec![0; n],
            untruncated_len: n,
        };
        let e = [enc(3), enc(9), enc(5), enc(2), enc(7)];
        assert_eq!(
            plan_batches(&e, 2, usize::MAX),
            [vec![1, 4], vec![2, 0], vec![3]]
        );
        assert_eq!(plan_batches(&e, 10, 12), [vec![1], vec![4, 2], vec![0, 3]]);
        assert!(plan_batches(&[], 4, 100).is_empty());
    }
}
