//! The FlagEmbedding-style API: [`FlagModel`] with `encode`, `encode_queries` and
//! `encode_corpus`, and the per-model defaults FlagEmbedding applies.
//!
//! Batching follows `FlagModel.encode` (FlagEmbedding 1.4.2, `abc/inference/AbsEmbedder.py`):
//! texts are tokenized, sorted by length (longest first), cut into batches of `batch_size`, and
//! the vectors are returned in input order. Batches are packed rather than padded (see
//! [`crate::backend`]), which gives the same vectors up to fp32 rounding.

use crate::backend::Dtype;
use crate::config::{ModelConfig, Pooling};
use crate::error::{Error, Result};
use crate::model::{self, Checkpoint};
use crate::pipeline::{self, Device, Pipeline};
use crate::source::ModelFiles;
use crate::tokenize::{Encoded, Tokenizer};
use crate::weights::Weights;

/// FlagEmbedding's query instruction for the English bge v1 / v1.5 models.
pub const INSTRUCTION_EN: &str = "Represent this sentence for searching relevant passages: ";
/// FlagEmbedding's query instruction for the Chinese bge v1 / v1.5 models.
pub const INSTRUCTION_ZH: &str = "为这个句子生成表示以用于检索相关文章：";

/// FlagModel's default `query_max_length` and `passage_max_length`.
pub const DEFAULT_MAX_LENGTH: usize = 512;
/// FlagModel's default `batch_size`.
pub const DEFAULT_BATCH_SIZE: usize = 256;

/// The query instruction FlagEmbedding's model cards prescribe for a model name:
/// `bge-*-en*` English, `bge-*-zh*` Chinese (not the `*-noinstruct` variant), none otherwise
/// (bge-m3 and unknown models).
pub fn default_query_instruction(model_name: &str) -> Option<&'static str> {
    let name = model_name.to_ascii_lowercase();
    let parts: Vec<&str> = name.split('-').collect();
    if parts.first() != Some(&"bge") || parts.contains(&"noinstruct") {
        return None;
    }
    if parts.contains(&"en") {
        Some(INSTRUCTION_EN)
    } else if parts.contains(&"zh") {
        Some(INSTRUCTION_ZH)
    } else {
        None
    }
}

/// How to load a model; `Default` gives FlagModel's defaults (except `use_fp16`: f32 here).
#[derive(Clone, Debug)]
pub struct Options {
    pub device: Device,
    pub dtype: Dtype,
    pub batch_size: usize,
    /// `passage_max_length`, for `encode` and `encode_corpus` (default 512).
    pub max_length: Option<usize>,
    /// `query_max_length`, for `encode_queries` (default 512).
    pub query_max_length: Option<usize>,
    /// Overrides `1_Pooling/config.json` (CLS when that file is absent).
    pub pooling: Option<Pooling>,
    pub normalize: bool,
    /// `query_instruction_for_retrieval`; `None` takes the model's default
    /// ([`default_query_instruction`]), `Some("")` means no instruction.
    pub query_instruction: Option<String>,
    /// How instruction and text are joined: `"{}{}"` (instruction first, then the text).
    pub query_instruction_format: String,
    /// `passage_instruction_for_retrieval`, used by `encode_corpus`.
    pub passage_instruction: Option<String>,
}

impl Default for Options {
    fn default() -> Self {
        Options {
            device: Device::Auto,
            dtype: Dtype::F32,
            batch_size: DEFAULT_BATCH_SIZE,
            max_length: None,
            query_max_length: None,
            pooling: None,
            normalize: true,
            query_instruction: None,
            query_instruction_format: "{}{}".into(),
            passage_instruction: None,
        }
    }
}

/// Dense vectors of a call, and how many of its texts were cut to the max length.
#[derive(Clone, Debug, PartialEq)]
pub struct DenseOutput {
    pub vectors: Vec<Vec<f32>>,
    pub truncated: usize,
}

/// A dense embedder with FlagEmbedding's `FlagModel` semantics.
pub struct FlagModel {
    pipeline: Box<dyn Pipeline>,
    tokenizer: Tokenizer,
    /// The model's name, from which the defaults were inferred.
    pub name: String,
    pub pooling: Pooling,
    pub normalize: bool,
    pub batch_size: usize,
    pub max_length: usize,
    pub query_max_length: usize,
    pub query_instruction: Option<String>,
    pub query_instruction_format: String,
    pub passage_instruction: Option<String>,
}

impl FlagModel {
    /// Loads `model` (a directory or a hub id such as `BAAI/bge-small-en-v1.5`).
    pub fn load(model: &str, options: &Options) -> Result<Self> {
        Self::from_files(&ModelFiles::resolve(model)?, options)
    }

    pub fn from_files(files: &ModelFiles, options: &Options) -> Result<Self> {
        let config = ModelConfig::from_file(&files.config)?;
        let tokenizer = Tokenizer::from_file(&files.tokenizer)?;
        let file_pooling = match &files.pooling {
            Some(p) => crate::config::read_pooling(p)?,
            None => None,
        };
        let weights = Weights::open(&files.weights)?;
        let pipeline = pipeline::load(
            options.device,
            options.dtype,
            &config,
            &Checkpoint::new(&weights)?,
        )?;
        let limit = |requested: Option<usize>| {
            check_max_length(
                requested.unwrap_or(DEFAULT_MAX_LENGTH.min(config.max_tokens())),
                &config,
            )
        };
        if options.batch_size == 0 {
            return Err(Error::InvalidArgument(
                "batch size must be at least 1".into(),
            ));
        }
        check_format(&options.query_instruction_format)?;
        Ok(FlagModel {
            name: files.name.clone(),
            pooling: options.pooling.or(file_pooling).unwrap_or(Pooling::Cls),
            normalize: options.normalize,
            batch_size: options.batch_size,
            max_length: limit(options.max_length)?,
            query_max_length: limit(options.query_max_length)?,
            query_instruction: options
                .query_instruction
                .clone()
                .or_else(|| default_query_instruction(&files.name).map(str::to_owned)),
            query_instruction_format: options.query_instruction_format.clone(),
            passage_instruction: options.passage_instruction.clone(),
            pipeline,
            tokenizer,
        })
    }

    pub fn config(&self) -> &ModelConfig {
        self.pipeline.config()
    }

    /// The backend and device the model runs on, in words.
    pub fn describe(&self) -> String {
        self.pipeline.describe()
    }

    pub fn tokenizer(&self) -> &Tokenizer {
        &self.tokenizer
    }

    /// `FlagModel.encode`: no instruction, `max_length`.
    pub fn encode(&self, texts: &[&str]) -> Result<Vec<Vec<f32>>> {
        Ok(self
            .encode_with(texts, None, self.max_length, &mut |_| {})?
            .vectors)
    }

    /// `FlagModel.encode_queries`: the query instruction (if any), `query_max_length`.
    pub fn encode_queries(&self, queries: &[&str]) -> Result<Vec<Vec<f32>>> {
        let instruction = self.query_instruction.as_deref();
        Ok(self
            .encode_with(queries, instruction, self.query_max_length, &mut |_| {})?
            .vectors)
    }

    /// `FlagModel.encode_corpus`: the passage instruction (if any), `max_length`.
    pub fn encode_corpus(&self, corpus: &[&str]) -> Result<Vec<Vec<f32>>> {
        let instruction = self.passage_instruction.as_deref();
        Ok(self
            .encode_with(corpus, instruction, self.max_length, &mut |_| {})?
            .vectors)
    }

    /// The general form: `instruction` joined to each text by `query_instruction_format`,
    /// truncation at `max_length`, and `progress(n)` after every batch of `n` texts.
    pub fn encode_with(
        &self,
        texts: &[&str],
        instruction: Option<&str>,
        max_length: usize,
        progress: &mut dyn FnMut(usize),
    ) -> Result<DenseOutput> {
        let max_length = check_max_length(max_length, self.config())?;
        let joined: Vec<String>;
        let inputs: Vec<&str> = match instruction.filter(|i| !i.is_empty()) {
            Some(ins) => {
                joined = texts
                    .iter()
                    .map(|t| apply_format(&self.query_instruction_format, ins, t))
                    .collect();
                joined.iter().map(String::as_str).collect()
            }
            None => texts.to_vec(),
        };
        let encoded = self.tokenizer.encode_batch(&inputs, max_length)?;
        let truncated = encoded.iter().filter(|e| e.truncated()).count();
        let mut vectors = vec![Vec::new(); texts.len()];
        for batch in plan_batches(&encoded, self.batch_size, self.pipeline.max_batch_tokens()) {
            let seqs: Vec<&Encoded> = batch.iter().map(|&i| &encoded[i]).collect();
            let packed = model::pack(self.config(), &seqs)?;
            let dense = self.pipeline.dense(&packed, self.pooling, self.normalize)?;
            for (&i, v) in batch.iter().zip(dense) {
                vectors[i] = v;
            }
            progress(batch.len());
        }
        Ok(DenseOutput { vectors, truncated })
    }
}

/// Index batches: longest texts first, at most `batch_size` texts and `max_tokens` tokens each.
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

fn check_max_length(max_length: usize, config: &ModelConfig) -> Result<usize> {
    if max_length < 2 || max_length > config.max_tokens() {
        return Err(Error::InvalidArgument(format!(
            "max length {max_length} is outside 2..={}, the range this model's {} position embeddings allow",
            config.max_tokens(),
            config.max_position_embeddings
        )));
    }
    Ok(max_length)
}

fn check_format(format: &str) -> Result<()> {
    if format.matches("{}").count() != 2 {
        return Err(Error::InvalidArgument(format!(
            "query instruction format `{format}` must contain `{{}}` twice: instruction, then text"
        )));
    }
    Ok(())
}

/// Python's `format.format(instruction, text)` for a format with two `{}`.
fn apply_format(format: &str, instruction: &str, text: &str) -> String {
    let parts: Vec<&str> = format.splitn(3, "{}").collect();
    [parts[0], instruction, parts[1], text, parts[2]].concat()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn instructions_follow_the_model_name() {
        assert_eq!(
            default_query_instruction("bge-base-en-v1.5"),
            Some(INSTRUCTION_EN)
        );
        assert_eq!(
            default_query_instruction("bge-large-en"),
            Some(INSTRUCTION_EN)
        );
        assert_eq!(
            default_query_instruction("bge-small-zh-v1.5"),
            Some(INSTRUCTION_ZH)
        );
        assert_eq!(default_query_instruction("bge-large-zh-noinstruct"), None);
        assert_eq!(default_query_instruction("bge-m3"), None);
        assert_eq!(default_query_instruction("all-MiniLM-L6-v2"), None);
        assert_eq!(default_query_instruction("tiny-bge"), None);
    }

    #[test]
    fn format_puts_instruction_then_text() {
        assert_eq!(apply_format("{}{}", "Q: ", "x"), "Q: x");
        assert_eq!(
            apply_format("<instruct>{}\n<query>{}", "find", "a {} b"),
            "<instruct>find\n<query>a {} b"
        );
        assert!(check_format("{}").is_err());
    }

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
