//! LLM-Embedder (`BAAI/llm-embedder`): a BERT embedder whose queries and keys carry a
//! per-task instruction. The table is FlagEmbedding 1.2.11's `LLMEmbedder.instructions`
//! (`FlagEmbedding/flag_models.py`); 1.4.2 expresses the same as `FlagModel` with
//! `query_instruction_for_retrieval` / `passage_instruction_for_retrieval` set per task.

use crate::error::{Error, Result};
use crate::flag_model::{FlagModel, Options, Want};

/// LLM-Embedder's max length of a query.
pub const QUERY_MAX_LENGTH: usize = 256;
/// LLM-Embedder's max length of a key (a passage).
pub const KEY_MAX_LENGTH: usize = 512;

/// The tasks LLM-Embedder has instructions for.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Task {
    /// Question answering.
    Qa,
    /// Conversational search.
    Convsearch,
    /// Long conversation (historical dialogues).
    Chat,
    /// Long-range language modelling.
    Lrlm,
    /// In-context learning (example retrieval).
    Icl,
    /// Tool retrieval.
    Tool,
}

impl Task {
    /// Every task, in FlagEmbedding's order.
    pub const ALL: [Task; 6] = [
        Task::Qa,
        Task::Convsearch,
        Task::Chat,
        Task::Lrlm,
        Task::Icl,
        Task::Tool,
    ];

    /// The task's name in FlagEmbedding's table (`qa`, `convsearch`, ...).
    pub fn name(self) -> &'static str {
        match self {
            Task::Qa => "qa",
            Task::Convsearch => "convsearch",
            Task::Chat => "chat",
            Task::Lrlm => "lrlm",
            Task::Icl => "icl",
            Task::Tool => "tool",
        }
    }

    /// `(query instruction, key instruction)`.
    pub fn instructions(self) -> (&'static str, &'static str) {
        match self {
            Task::Qa => (
                "Represent this query for retrieving relevant documents: ",
                "Represent this document for retrieval: ",
            ),
            Task::Convsearch => (
                "Encode this query and context for searching relevant passages: ",
                "Encode this passage for retrieval: ",
            ),
            Task::Chat => (
                "Embed this dialogue to find useful historical dialogues: ",
                "Embed this historical dialogue for retrieval: ",
            ),
            Task::Lrlm => (
                "Embed this text chunk for finding useful historical chunks: ",
                "Embed this historical text chunk for retrieval: ",
            ),
            Task::Icl => (
                "Convert this example into vector to look for useful examples: ",
                "Convert this example into vector for retrieval: ",
            ),
            Task::Tool => (
                "Transform this user request for fetching helpful tool descriptions: ",
                "Transform this tool description for retrieval: ",
            ),
        }
    }
}

impl std::str::FromStr for Task {
    type Err = Error;

    fn from_str(s: &str) -> Result<Self> {
        Task::ALL
            .into_iter()
            .find(|t| t.name() == s)
            .ok_or_else(|| {
                let names: Vec<&str> = Task::ALL.iter().map(|t| t.name()).collect();
                Error::InvalidArgument(format!(
                    "unknown LLM-Embedder task `{s}` (expected one of {})",
                    names.join(", ")
                ))
            })
    }
}

/// LLM-Embedder with FlagEmbedding's `LLMEmbedder` API: queries and keys with their task's
/// instruction. `Send + Sync`, and batch-invariant, as [`FlagModel`] is.
///
/// ```no_run
/// use bge::{LlmEmbedder, Options, Task};
///
/// let model = LlmEmbedder::load("BAAI/llm-embedder", &Options::default())?;
/// let q = model.encode_queries(Task::Qa, &["what is a panda?"])?;
/// let k = model.encode_keys(Task::Qa, &["The giant panda is a bear."])?;
/// # Ok::<(), bge::Error>(())
/// ```
pub struct LlmEmbedder {
    model: FlagModel,
}

impl LlmEmbedder {
    /// Loads the model (a directory or a hub id).
    pub fn load(model: &str, options: &Options) -> Result<Self> {
        Ok(LlmEmbedder {
            model: FlagModel::load(model, options)?,
        })
    }

    /// The model as a [`FlagModel`].
    pub fn model(&self) -> &FlagModel {
        &self.model
    }

    /// `encode_queries(queries, task)`: the task's query instruction, max length 256.
    pub fn encode_queries(&self, task: Task, queries: &[&str]) -> Result<Vec<Vec<f32>>> {
        encode_queries(&self.model, task, queries)
    }

    /// `encode_keys(keys, task)`: the task's key instruction, max length 512.
    pub fn encode_keys(&self, task: Task, keys: &[&str]) -> Result<Vec<Vec<f32>>> {
        encode_keys(&self.model, task, keys)
    }
}

/// Whether `model` is LLM-Embedder (its directory or repository is named `llm-embedder`), whose
/// queries then default to the `qa` task, as `LLMEmbedder.encode_queries` does.
pub fn is_llm_embedder(model: &FlagModel) -> bool {
    model.name().eq_ignore_ascii_case("llm-embedder")
}

/// `LLMEmbedder.encode_queries(queries, task)` on a model loaded as a [`FlagModel`].
pub fn encode_queries(model: &FlagModel, task: Task, queries: &[&str]) -> Result<Vec<Vec<f32>>> {
    let (query, _) = task.instructions();
    let e = model.embed(
        queries,
        Some(query),
        QUERY_MAX_LENGTH,
        Want::DENSE,
        &mut |_| {},
    )?;
    Ok(e.dense)
}

/// `LLMEmbedder.encode_keys(keys, task)` on a model loaded as a [`FlagModel`].
pub fn encode_keys(model: &FlagModel, task: Task, keys: &[&str]) -> Result<Vec<Vec<f32>>> {
    let (_, key) = task.instructions();
    let e = model.embed(keys, Some(key), KEY_MAX_LENGTH, Want::DENSE, &mut |_| {})?;
    Ok(e.dense)
}
