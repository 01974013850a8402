//! The model behind the routes: an embedder ([`FlagModel`], with BGE-M3's heads where the
//! model has them) or a reranker ([`Reranker`]), its prompts (instructions), and the two
//! halves of every call: tokenization (on the tokenization workers) and one packed batch of
//! a [`Kind`] (on the inference worker). Both halves are the library's own, so the server's
//! answers are the same bits as the library's and the CLI's.

use crate::config::{Head as ConfigHead, ModelConfig};
use crate::error::{Error, Result};
use crate::flag_model::{FlagModel, Options};
use crate::heads::sparse::LexicalWeights;
use crate::heads::{Head, HeadSet};
use crate::llm_embedder::{self, Task};
use crate::reranker::Reranker;
use crate::source::ModelFiles;
use crate::tokenize::{Encoded, Side, Token};
use crate::{Device, Dtype};

/// What one packed batch computes; texts of different kinds never share a batch.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Kind {
    /// An embedder's `heads`, dense vectors L2-normalised if `normalize`.
    Embed { heads: HeadSet, normalize: bool },
    /// A reranker's logits.
    Classify,
}

/// One text's outputs (each empty unless its kind computes it).
#[derive(Default)]
pub(crate) struct TextOutput {
    pub dense: Vec<f32>,
    pub sparse: LexicalWeights,
    pub colbert: Vec<Vec<f32>>,
    pub logits: Vec<f32>,
}

/// An input: a text, or a text's token ids (without special tokens).
pub(crate) enum Text {
    Str(String),
    Ids(Vec<u32>),
}

/// How a text is prepared: the instruction before it and its max length in tokens.
pub(crate) struct Prompt {
    pub instruction: Option<String>,
    pub max_length: usize,
}

/// Why a request cannot be served as asked; the routes turn it into a status code.
pub(crate) enum Refusal {
    /// The request is wrong (422).
    Invalid(String),
    /// The model cannot do what the route does (424, as TEI answers it).
    Unsupported(String),
}

impl From<Error> for Refusal {
    fn from(e: Error) -> Self {
        Refusal::Invalid(e.to_string())
    }
}

enum Model {
    Embedder(FlagModel),
    Reranker(Reranker),
}

/// What `bge serve` loads.
pub(crate) struct LoadOptions<'a> {
    pub model: &'a str,
    pub device: Device,
    pub dtype: Dtype,
    pub max_input_length: Option<usize>,
    pub query_instruction: Option<String>,
}

/// The served model.
pub(crate) struct Served {
    model: Model,
    /// `--max-input-length`, when given: it replaces every prompt's own length.
    max_input_length: Option<usize>,
    llm_embedder: bool,
}

impl Served {
    pub fn load(o: &LoadOptions) -> Result<Self> {
        let files = ModelFiles::resolve(o.model)?;
        let config = ModelConfig::from_file(&files.config)?;
        let model = match config.head {
            ConfigHead::Classifier { .. } => {
                if o.query_instruction.is_some() {
                    return Err(Error::InvalidArgument(format!(
                        "model `{}` is a reranker: --query-instruction applies to embedders",
                        files.name
                    )));
                }
                let mut reranker = Reranker::from_files(&files, o.device, o.dtype)?;
                if let Some(n) = o.max_input_length {
                    reranker.set_max_length(n)?;
                }
                Model::Reranker(reranker)
            }
            ConfigHead::Encoder => Model::Embedder(FlagModel::from_files(
                &files,
                &Options {
                    device: o.device,
                    dtype: o.dtype,
                    max_length: o.max_input_length,
                    query_max_length: o.max_input_length,
                    query_instruction: o.query_instruction.clone(),
                    ..Options::default()
                },
            )?),
        };
        let llm_embedder = match &model {
            Model::Embedder(m) => llm_embedder::is_llm_embedder(m),
            Model::Reranker(_) => false,
        };
        Ok(Served {
            model,
            max_input_length: o.max_input_length,
            llm_embedder,
        })
    }

    /// The model's name (its directory or repository).
    pub fn name(&self) -> &str {
        match &self.model {
            Model::Embedder(m) => m.name(),
            Model::Reranker(r) => r.name(),
        }
    }

    pub fn describe(&self) -> String {
        match &self.model {
            Model::Embedder(m) => m.describe(),
            Model::Reranker(r) => r.describe(),
        }
    }

    pub fn is_reranker(&self) -> bool {
        matches!(self.model, Model::Reranker(_))
    }

    /// The heads the model has.
    pub fn heads(&self) -> HeadSet {
        match &self.model {
            Model::Embedder(m) => m.heads(),
            Model::Reranker(_) => HeadSet::from(Head::Classifier),
        }
    }

    /// How the dense head pools (`cls` or `mean`); `None` for a reranker.
    pub fn pooling(&self) -> Option<&'static str> {
        match &self.model {
            Model::Embedder(m) => Some(m.pooling().name()),
            Model::Reranker(_) => None,
        }
    }

    /// The size of the dense vectors (0 for a reranker).
    pub fn hidden_size(&self) -> usize {
        match &self.model {
            Model::Embedder(m) => m.config().hidden_size,
            Model::Reranker(_) => 0,
        }
    }

    /// Whether dense vectors are L2-normalised by default (FlagModel's `normalize_embeddings`).
    pub fn normalize(&self) -> bool {
        match &self.model {
            Model::Embedder(m) => m.normalize(),
            Model::Reranker(_) => false,
        }
    }

    /// The max input length without a prompt, in tokens.
    pub fn max_input_length(&self) -> usize {
        match &self.model {
            Model::Embedder(m) => m.max_length(),
            Model::Reranker(r) => r.max_length(),
        }
    }

    /// The names `prompt_name` takes: `query` (the model's query instruction, as
    /// `bge embed --query`), and for LLM-Embedder `<task>_query` and `<task>_key`.
    pub fn prompt_names(&self) -> Vec<String> {
        let mut names = vec!["query".to_owned()];
        if self.llm_embedder {
            for task in Task::ALL {
                names.push(format!("{}_query", task.name()));
                names.push(format!("{}_key", task.name()));
            }
        }
        names
    }

    /// The prompt `name` means (no prompt: FlagModel's `encode`).
    pub fn prompt(&self, name: Option<&str>) -> Result<Prompt, Refusal> {
        let model = self.embedder("prompt_name")?;
        let length = |own: usize| self.max_input_length.unwrap_or(own);
        let task_prompt = |task: Task, query: bool| {
            let (q, k) = task.instructions();
            match query {
                true => Prompt {
                    instruction: Some(q.to_owned()),
                    max_length: length(llm_embedder::QUERY_MAX_LENGTH),
                },
                false => Prompt {
                    instruction: Some(k.to_owned()),
                    max_length: length(llm_embedder::KEY_MAX_LENGTH),
                },
            }
        };
        match name {
            None => Ok(Prompt {
                instruction: None,
                max_length: model.max_length(),
            }),
            // LLM-Embedder's queries default to its `qa` task, as its `encode_queries` does.
            Some("query") if self.llm_embedder => Ok(task_prompt(Task::Qa, true)),
            Some("query") => Ok(Prompt {
                instruction: model.query_instruction().map(str::to_owned),
                max_length: model.query_max_length(),
            }),
            Some(other) => {
                let task = other
                    .strip_suffix("_query")
                    .map(|t| (t, true))
                    .or_else(|| other.strip_suffix("_key").map(|t| (t, false)))
                    .filter(|_| self.llm_embedder)
                    .and_then(|(t, query)| Some((t.parse::<Task>().ok()?, query)));
                match task {
                    Some((task, query)) => Ok(task_prompt(task, query)),
                    None => Err(Refusal::Invalid(format!(
                        "unknown prompt_name `{other}`; this model has {}",
                        self.prompt_names().join(", ")
                    ))),
                }
            }
        }
    }

    /// The embedder, or why `route` cannot run on this model.
    fn embedder(&self, route: &str) -> Result<&FlagModel, Refusal> {
        match &self.model {
            Model::Embedder(m) => Ok(m),
            Model::Reranker(r) => Err(Refusal::Unsupported(format!(
                "model `{}` is a reranker: {route} needs an embedding model (use /rerank)",
                r.name()
            ))),
        }
    }

    /// An error unless the model can run `kind`.
    pub fn check(&self, kind: Kind, route: &str) -> Result<(), Refusal> {
        match kind {
            Kind::Embed { heads, .. } => self
                .embedder(route)?
                .check_heads(heads)
                .map_err(|e| Refusal::Unsupported(format!("{route}: {e}"))),
            Kind::Classify => match &self.model {
                Model::Reranker(_) => Ok(()),
                Model::Embedder(m) => Err(Refusal::Unsupported(format!(
                    "model `{}` is not a reranker: {route} needs a *ForSequenceClassification model",
                    m.name()
                ))),
            },
        }
    }

    /// Tokenizes `texts` as `prompt` says; a text over the max length is cut at `side` if
    /// `truncate`, and refused otherwise.
    pub fn tokenize(
        &self,
        texts: &[Text],
        prompt: &Prompt,
        truncate: bool,
        side: Side,
    ) -> Result<Vec<Encoded>, Refusal> {
        let model = self.embedder("an embedding route")?;
        let max_length = prompt.max_length;
        let instruction = prompt.instruction.as_deref();
        let strings: Vec<&str> = texts
            .iter()
            .filter_map(|t| match t {
                Text::Str(s) => Some(s.as_str()),
                Text::Ids(_) => None,
            })
            .collect();
        let encoded = match strings.len() == texts.len() {
            true => model.tokenize(&strings, instruction, max_length, side)?,
            false if instruction.is_some_and(|i| !i.is_empty()) => {
                return Err(Refusal::Invalid(
                    "a prompt's instruction applies to text inputs only, not to token ids".into(),
                ));
            }
            false => {
                let tokenizer = model.tokenizer();
                texts
                    .iter()
                    .map(|t| match t {
                        Text::Ids(ids) => tokenizer.encode_ids(ids, max_length, side),
                        Text::Str(s) => model
                            .tokenize(&[s], None, max_length, side)
                            .map(|mut v| v.remove(0)),
                    })
                    .collect::<Result<_>>()?
            }
        };
        check_lengths(&encoded, max_length, truncate, "input")?;
        Ok(encoded)
    }

    /// Tokenizes (query, text) pairs for the reranker, refusing a pair over the max length
    /// unless `truncate`.
    pub fn tokenize_pairs(
        &self,
        query: &str,
        texts: &[String],
        truncate: bool,
    ) -> Result<Vec<Encoded>, Refusal> {
        let Model::Reranker(reranker) = &self.model else {
            return Err(self.check(Kind::Classify, "/rerank").unwrap_err());
        };
        let pairs: Vec<(&str, &str)> = texts.iter().map(|t| (query, t.as_str())).collect();
        let encoded = reranker.tokenize(&pairs, (reranker.max_length(), None))?;
        check_lengths(&encoded, reranker.max_length(), truncate, "pair")?;
        Ok(encoded)
    }

    /// `text`'s tokens, after the prompt's instruction.
    pub fn tokens(
        &self,
        text: &str,
        prompt: &Prompt,
        add_special_tokens: bool,
    ) -> Result<Vec<Token>, Refusal> {
        let tokenizer = match &self.model {
            Model::Embedder(m) => m.tokenizer(),
            Model::Reranker(r) => r.tokenizer(),
        };
        let text = match (&self.model, prompt.instruction.as_deref()) {
            (Model::Embedder(m), Some(i)) if !i.is_empty() => m.instructed(i, text),
            _ => text.to_owned(),
        };
        Ok(tokenizer.tokens(&text, add_special_tokens)?)
    }

    /// Runs one packed batch of `kind` (on the inference worker).
    pub fn run(&self, kind: &Kind, encoded: &[Encoded]) -> Result<Vec<TextOutput>> {
        let n = encoded.len();
        match (&self.model, *kind) {
            (Model::Embedder(m), Kind::Embed { heads, normalize }) => {
                let out = m.run(encoded, heads, normalize, usize::MAX, &mut |_| {})?;
                let mut dense = out.dense.into_iter();
                let mut sparse = out.sparse.into_iter();
                let mut colbert = out.colbert.into_iter();
                Ok((0..n)
                    .map(|_| TextOutput {
                        dense: dense.next().unwrap_or_default(),
                        sparse: sparse.next().unwrap_or_default(),
                        colbert: colbert.next().unwrap_or_default(),
                        logits: Vec::new(),
                    })
                    .collect())
            }
            (Model::Reranker(r), Kind::Classify) => Ok(r
                .run(encoded, usize::MAX, &mut |_| {})?
                .into_iter()
                .map(|logits| TextOutput {
                    logits,
                    ..TextOutput::default()
                })
                .collect()),
            _ => Err(Error::InvalidArgument(format!(
                "this model cannot run {kind:?}"
            ))),
        }
    }
}

/// Refuses the first sequence longer than `max_length` unless `truncate` (then it was cut).
fn check_lengths(
    encoded: &[Encoded],
    max_length: usize,
    truncate: bool,
    what: &str,
) -> Result<(), Refusal> {
    match encoded.iter().position(Encoded::truncated) {
        Some(i) if !truncate => Err(Refusal::Invalid(format!(
            "{what} {i} has {} tokens, more than the max input length of {max_length}; \
             send `truncate: true` or start the server with --auto-truncate",
            encoded[i].untruncated_len
        ))),
        _ => Ok(()),
    }
}
