//! FlagEmbedding's `FlagModel`: [`FlagModel`] with `encode`, `encode_queries` and
//! `encode_corpus`, and the per-model defaults FlagEmbedding applies.
//!
//! Batching follows `FlagModel.encode` (FlagEmbedding 1.4.2, `abc/inference/AbsEmbedder.py`):
//! texts are tokenized, sorted by length (longest first), cut into batches of `batch_size`, and
//! the vectors are returned in input order. Batches are packed rather than padded (see
//! [`crate::backend`]), which gives the same vectors up to fp32 rounding.

use crate::backend::Dtype;
use crate::config::{ModelConfig, Pooling};
use crate::device::Device;
use crate::error::{Error, Result};
use crate::heads::sparse::LexicalWeights;
use crate::heads::{Head, HeadSet, Outputs, Request};
use crate::loaded::LoadedModel;
use crate::source::ModelFiles;
use crate::tokenize::{Encoded, Side, Tokenizer};

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
    /// Where to run (default: a hardware GPU if there is one, else the CPU).
    pub device: Device,
    /// How weights are stored (default f32; `use_fp16` maps to f16 on a GPU).
    pub dtype: Dtype,
    /// Worker threads of the CPU backend (all cores by default).
    pub threads: Option<usize>,
    /// Texts per forward pass (default 256); any value gives the same vectors.
    pub batch_size: usize,
    /// `passage_max_length`, for `encode` and `encode_corpus` (default 512).
    pub max_length: Option<usize>,
    /// `query_max_length`, for `encode_queries` (default 512).
    pub query_max_length: Option<usize>,
    /// Overrides `1_Pooling/config.json` (CLS when that file is absent).
    pub pooling: Option<Pooling>,
    /// `normalize_embeddings`: L2-normalise the dense vectors (default true).
    pub normalize: bool,
    /// `query_instruction_for_retrieval`; `None` takes the model's default
    /// ([`default_query_instruction`]), `Some("")` means no instruction.
    pub query_instruction: Option<String>,
    /// How instruction and text are joined: `"{}{}"` (instruction first, then the text); it
    /// must hold `{}` twice, which [`FlagModel::load`] checks.
    pub query_instruction_format: String,
    /// `passage_instruction_for_retrieval`, used by `encode_corpus`.
    pub passage_instruction: Option<String>,
}

impl Default for Options {
    fn default() -> Self {
        Options {
            device: Device::Auto,
            dtype: Dtype::F32,
            threads: None,
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

/// Which outputs a call computes (one encoder pass serves all of them).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Want {
    /// The pooled sentence vector.
    pub dense: bool,
    /// BGE-M3 lexical weights.
    pub sparse: bool,
    /// BGE-M3 ColBERT vectors.
    pub colbert: bool,
}

impl Want {
    /// The dense vector only: what `encode` gives.
    pub const DENSE: Want = Want {
        dense: true,
        sparse: false,
        colbert: false,
    };

    /// Dense, sparse and ColBERT: everything BGE-M3 gives.
    pub const ALL: Want = Want {
        dense: true,
        sparse: true,
        colbert: true,
    };
}

impl From<Want> for HeadSet {
    fn from(w: Want) -> HeadSet {
        [
            (Head::Dense, w.dense),
            (Head::Sparse, w.sparse),
            (Head::Colbert, w.colbert),
        ]
        .into_iter()
        .filter(|&(_, asked)| asked)
        .map(|(head, _)| head)
        .collect()
    }
}

/// The outputs of one call, in input order (each list empty unless asked for), and how many
/// texts were cut to the max length.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Embeddings {
    /// `[n][h]` sentence vectors.
    pub dense: Vec<Vec<f32>>,
    /// BGE-M3 lexical weights per text.
    pub sparse: Vec<LexicalWeights>,
    /// BGE-M3 ColBERT vectors per text: one per token but the first (`len - 1` rows).
    pub colbert: Vec<Vec<Vec<f32>>>,
    /// How many of the texts were longer than the max length and cut.
    pub truncated: usize,
}

impl Embeddings {
    /// Text `i`'s outputs, as `bge embed` writes them.
    pub fn text(&self, i: usize) -> TextEmbeddings<'_> {
        TextEmbeddings {
            dense: self.dense.get(i).map(Vec::as_slice),
            sparse: self.sparse.get(i),
            colbert: self.colbert.get(i).map(Vec::as_slice),
        }
    }
}

/// One text's outputs in `bge embed`'s JSON shape (the server's `/encode` answers the same):
/// exactly the outputs computed, `{"dense": [...], "sparse": {"<token id>": w}, "colbert":
/// [[...]]}`.
#[derive(Clone, Copy, Debug, Default, serde::Serialize)]
pub struct TextEmbeddings<'a> {
    /// The sentence vector.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub dense: Option<&'a [f32]>,
    /// BGE-M3's lexical weights.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub sparse: Option<&'a LexicalWeights>,
    /// BGE-M3's ColBERT vectors.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub colbert: Option<&'a [Vec<f32>]>,
}

/// An embedder with FlagEmbedding's `FlagModel` semantics; with BGE-M3's heads present it also
/// gives sparse and ColBERT outputs (see [`M3Model`](crate::M3Model) for BGE-M3's scoring API).
///
/// A `FlagModel` is `Send + Sync`: share one (`&FlagModel`, or an `Arc`) between threads and
/// call it from all of them at once. A text's vectors are the same bits whether it is encoded
/// alone or among other texts, in whatever batch, at whatever `batch_size`, and from whichever
/// thread.
///
/// ```no_run
/// use bge::{FlagModel, Options};
///
/// let model = FlagModel::load("BAAI/bge-small-en-v1.5", &Options::default())?;
/// let queries = model.encode_queries(&["what is a panda?"])?;
/// let passages = model.encode_corpus(&["The giant panda is a bear native to China."])?;
/// let score: f32 = queries[0].iter().zip(&passages[0]).map(|(q, p)| q * p).sum();
/// # Ok::<(), bge::Error>(())
/// ```
pub struct FlagModel {
    loaded: LoadedModel,
    pooling: Pooling,
    normalize: bool,
    batch_size: usize,
    max_length: usize,
    query_max_length: usize,
    query_instruction: Option<String>,
    query_instruction_format: String,
    passage_instruction: Option<String>,
}

impl FlagModel {
    /// Loads `model` (a directory or a hub id such as `BAAI/bge-small-en-v1.5`).
    pub fn load(model: &str, options: &Options) -> Result<Self> {
        Self::from_files(&ModelFiles::resolve(model)?, options)
    }

    pub(crate) fn from_files(files: &ModelFiles, options: &Options) -> Result<Self> {
        if options.batch_size == 0 {
            return Err(Error::InvalidArgument(
                "batch size must be at least 1".into(),
            ));
        }
        check_format(&options.query_instruction_format)?;
        let loaded = LoadedModel::load(files, options.device, options.dtype, options.threads)?;
        let default_length = DEFAULT_MAX_LENGTH.min(loaded.config().max_tokens());
        let limit =
            |requested: Option<usize>| loaded.check_max_length(requested.unwrap_or(default_length));
        Ok(FlagModel {
            pooling: options
                .pooling
                .or(loaded.file_pooling())
                .unwrap_or(Pooling::Cls),
            normalize: options.normalize,
            batch_size: options.batch_size,
            max_length: limit(options.max_length)?,
            query_max_length: limit(options.query_max_length)?,
            query_instruction: options
                .query_instruction
                .clone()
                .or_else(|| default_query_instruction(loaded.name()).map(str::to_owned)),
            // A literal `\n` in the format is a newline, as FlagEmbedding reads it
            // (abc/inference/AbsEmbedder.py, get_detailed_instruct).
            query_instruction_format: options.query_instruction_format.replace("\\n", "\n"),
            passage_instruction: options.passage_instruction.clone(),
            loaded,
        })
    }

    /// The model's name (its directory or repository), from which the defaults were inferred.
    pub fn name(&self) -> &str {
        self.loaded.name()
    }

    /// The model's `config.json`, as read.
    pub fn config(&self) -> &ModelConfig {
        self.loaded.config()
    }

    /// The backend and device the model runs on, in words.
    pub fn describe(&self) -> String {
        self.loaded.describe()
    }

    /// The heads the model has: [`Head::Dense`] always; BGE-M3 adds [`Head::Sparse`]
    /// (`sparse_linear.pt`) and [`Head::Colbert`] (`colbert_linear.pt`).
    pub fn heads(&self) -> HeadSet {
        self.loaded.heads()
    }

    /// How dense vectors are pooled.
    pub fn pooling(&self) -> Pooling {
        self.pooling
    }

    /// Whether dense vectors are L2-normalised.
    pub fn normalize(&self) -> bool {
        self.normalize
    }

    /// Texts per forward pass.
    pub fn batch_size(&self) -> usize {
        self.batch_size
    }

    /// The max length of `encode` and `encode_corpus`, in tokens.
    pub fn max_length(&self) -> usize {
        self.max_length
    }

    /// The max length of `encode_queries`, in tokens.
    pub fn query_max_length(&self) -> usize {
        self.query_max_length
    }

    /// The instruction `encode_queries` puts before each query, if any.
    pub fn query_instruction(&self) -> Option<&str> {
        self.query_instruction.as_deref()
    }

    /// The instruction `encode_corpus` puts before each passage, if any.
    pub fn passage_instruction(&self) -> Option<&str> {
        self.passage_instruction.as_deref()
    }

    pub(crate) fn tokenizer(&self) -> &Tokenizer {
        self.loaded.tokenizer()
    }

    /// `FlagModel.encode`: no instruction, `max_length`.
    pub fn encode(&self, texts: &[&str]) -> Result<Vec<Vec<f32>>> {
        let max_length = self.max_length;
        Ok(self
            .embed(texts, None, max_length, Want::DENSE, &mut |_| {})?
            .dense)
    }

    /// `FlagModel.encode_queries`: the query instruction (if any), `query_max_length`.
    pub fn encode_queries(&self, queries: &[&str]) -> Result<Vec<Vec<f32>>> {
        let instruction = self.query_instruction.as_deref();
        let max_length = self.query_max_length;
        Ok(self
            .embed(queries, instruction, max_length, Want::DENSE, &mut |_| {})?
            .dense)
    }

    /// `FlagModel.encode_corpus`: the passage instruction (if any), `max_length`.
    pub fn encode_corpus(&self, corpus: &[&str]) -> Result<Vec<Vec<f32>>> {
        let instruction = self.passage_instruction.as_deref();
        let max_length = self.max_length;
        Ok(self
            .embed(corpus, instruction, max_length, Want::DENSE, &mut |_| {})?
            .dense)
    }

    /// The general form: `instruction` joined to each text by `query_instruction_format`,
    /// truncation at `max_length`, the outputs `want` asks for, and `progress(n)` after every
    /// batch of `n` texts.
    pub fn embed(
        &self,
        texts: &[&str],
        instruction: Option<&str>,
        max_length: usize,
        want: Want,
        progress: &mut dyn FnMut(usize),
    ) -> Result<Embeddings> {
        self.embed_batched(
            texts,
            instruction,
            max_length,
            want,
            self.batch_size,
            progress,
        )
    }

    /// [`Self::embed`] with this call's own batch size (FlagModel's per-call `batch_size`),
    /// which changes the memory and speed of the call, never its outputs.
    pub fn embed_batched(
        &self,
        texts: &[&str],
        instruction: Option<&str>,
        max_length: usize,
        want: Want,
        batch_size: usize,
        progress: &mut dyn FnMut(usize),
    ) -> Result<Embeddings> {
        let heads = HeadSet::from(want);
        self.check_heads(heads)?;
        let encoded = self.tokenize(texts, instruction, max_length, Side::Right)?;
        let out = self.run(&encoded, heads, self.normalize, batch_size, progress)?;
        Ok(Embeddings {
            dense: out.dense,
            sparse: out.sparse,
            colbert: out.colbert,
            truncated: encoded.iter().filter(|e| e.truncated()).count(),
        })
    }

    /// An error naming the missing file unless the model has every head of `heads`.
    pub(crate) fn check_heads(&self, heads: HeadSet) -> Result<()> {
        match heads.iter().find(|&h| !self.heads().contains(h)) {
            None => Ok(()),
            Some(head) => {
                let file = match head {
                    Head::Sparse => "sparse_linear.pt",
                    Head::Colbert => "colbert_linear.pt",
                    _ => "a *ForSequenceClassification config",
                };
                Err(Error::InvalidArgument(format!(
                    "model `{}` has no {} head ({file}); sparse and ColBERT outputs need BGE-M3",
                    self.name(),
                    head.name()
                )))
            }
        }
    }

    /// The first half of [`Self::embed`]: `instruction` joined to each text, then the tokens,
    /// cut to `max_length` at `side`.
    pub(crate) fn tokenize(
        &self,
        texts: &[&str],
        instruction: Option<&str>,
        max_length: usize,
        side: Side,
    ) -> Result<Vec<Encoded>> {
        let max_length = self.loaded.check_max_length(max_length)?;
        let joined: Vec<String>;
        let inputs: Vec<&str> = match instruction.filter(|i| !i.is_empty()) {
            Some(ins) => {
                joined = texts.iter().map(|t| self.instructed(ins, t)).collect();
                joined.iter().map(String::as_str).collect()
            }
            None => texts.to_vec(),
        };
        self.tokenizer()
            .encode_batch_from(&inputs, max_length, side)
    }

    /// `text` with `instruction` joined by `query_instruction_format`.
    pub(crate) fn instructed(&self, instruction: &str, text: &str) -> String {
        apply_format(&self.query_instruction_format, instruction, text)
    }

    /// The second half of [`Self::embed`]: the `heads` (checked with [`Self::check_heads`])
    /// on tokenized texts, dense vectors L2-normalised if `normalize`.
    pub(crate) fn run(
        &self,
        encoded: &[Encoded],
        heads: HeadSet,
        normalize: bool,
        batch_size: usize,
        progress: &mut dyn FnMut(usize),
    ) -> Result<Outputs> {
        let request = Request {
            heads,
            pooling: self.pooling,
            normalize,
        };
        self.loaded.run(encoded, &request, batch_size, progress)
    }
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
}
