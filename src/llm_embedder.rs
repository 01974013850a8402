//! LLM-Embedder (`BAAI/llm-embedder`): a BERT embedder whose queries and keys carry a
//! per-task instruction. The table is FlagEmbedding 1.2.11's `LLMEmbedder.instructions`
//! (`FlagEmbedding/flag_models.py`); 1.4.2 expresses the same as `FlagModel` with
//! `query_instruction_for_retrieval` / `passage_instruction_for_retrieval` set per task.

use crate::embedder::{FlagModel, Want};
use crate::error::Result;

/// LLM-Embedder's default query max length (keys use 512).
pub const QUERY_MAX_LENGTH: usize = 256;
pub const KEY_MAX_LENGTH: usize = 512;

#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
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

/// `LLMEmbedder.encode_queries(queries, task)`: the task's query instruction, max length 256.
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

/// `LLMEmbedder.encode_keys(keys, task)`: the task's key instruction, max length 512.
pub fn encode_keys(model: &FlagModel, task: Task, keys: &[&str]) -> Result<Vec<Vec<f32>>> {
    let (_, key) = task.instructions();
    let e = model.embed(keys, Some(key), KEY_MAX_LENGTH, Want::DENSE, &mut |_| {})?;
    Ok(e.dense)
}
