//! The wire format: TEI's request and response bodies (`router/src/http/types.rs` in
//! text-embeddings-inference), OpenAI's embeddings API, and bge's own `/encode` and `/score`.
//! Optional fields take TEI's and OpenAI's defaults; unknown fields are ignored, as both do.

use serde::de::Error as _;
use serde::{Deserialize, Deserializer, Serialize};

use super::served::Text;
use crate::tokenize::Side;

/// `inputs` (TEI) or `input` (OpenAI): a string, a list of strings, a list of token ids, or
/// a list of lists of token ids.
pub(crate) struct Inputs(pub Vec<Text>);

impl<'de> Deserialize<'de> for Inputs {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        use serde_json::Value;
        let expected =
            "a string, a list of strings, a list of token ids or a list of lists of token ids";
        let id = |v: &Value| v.as_u64().and_then(|n| u32::try_from(n).ok());
        let ids = |v: &Value| -> Option<Vec<u32>> { v.as_array()?.iter().map(id).collect() };
        let texts = match Value::deserialize(d)? {
            Value::String(s) => vec![Text::Str(s)],
            Value::Array(items) if items.iter().all(Value::is_string) => items
                .into_iter()
                .filter_map(|v| match v {
                    Value::String(s) => Some(Text::Str(s)),
                    _ => None,
                })
                .collect(),
            Value::Array(items) if items.iter().all(Value::is_number) => {
                let one = ids(&Value::Array(items)).ok_or_else(|| {
                    D::Error::custom(format!(
                        "expected {expected}: a token id must be an integer in 0..2^32"
                    ))
                })?;
                vec![Text::Ids(one)]
            }
            Value::Array(items) => items
                .iter()
                .map(|v| ids(v).map(Text::Ids))
                .collect::<Option<Vec<Text>>>()
                .ok_or_else(|| D::Error::custom(format!("expected {expected}")))?,
            other => {
                return Err(D::Error::custom(format!(
                    "expected {expected}, found {}",
                    kind_of(&other)
                )));
            }
        };
        Ok(Inputs(texts))
    }
}

fn kind_of(v: &serde_json::Value) -> &'static str {
    use serde_json::Value;
    match v {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "a list",
        Value::Object(_) => "an object",
    }
}

/// `truncation_direction`: `right` (cut the end, the default) or `left`; TEI's `Right` and
/// `Left` are accepted too.
#[derive(Clone, Copy, Default, Deserialize)]
pub(crate) enum Direction {
    #[default]
    #[serde(rename = "right", alias = "Right")]
    Right,
    #[serde(rename = "left", alias = "Left")]
    Left,
}

impl From<Direction> for Side {
    fn from(d: Direction) -> Side {
        match d {
            Direction::Right => Side::Right,
            Direction::Left => Side::Left,
        }
    }
}

fn yes() -> bool {
    true
}

/// `POST /embed` (and `POST /` on an embedder).
#[derive(Deserialize)]
pub(crate) struct EmbedRequest {
    pub inputs: Inputs,
    #[serde(default = "yes")]
    pub normalize: bool,
    pub truncate: Option<bool>,
    #[serde(default)]
    pub truncation_direction: Direction,
    pub prompt_name: Option<String>,
    /// Keep the first `dimensions` components (then re-normalise, if `normalize`).
    pub dimensions: Option<usize>,
}

/// `POST /embed_sparse` and `POST /embed_all`.
#[derive(Deserialize)]
pub(crate) struct TokensRequest {
    pub inputs: Inputs,
    pub truncate: Option<bool>,
    #[serde(default)]
    pub truncation_direction: Direction,
    pub prompt_name: Option<String>,
}

/// `POST /encode`: any of BGE-M3's outputs from one pass, named as in
/// `BGEM3FlagModel.encode`.
#[derive(Deserialize)]
pub(crate) struct EncodeRequest {
    pub inputs: Inputs,
    pub truncate: Option<bool>,
    #[serde(default)]
    pub truncation_direction: Direction,
    pub prompt_name: Option<String>,
    #[serde(default = "yes")]
    pub return_dense: bool,
    #[serde(default)]
    pub return_sparse: bool,
    #[serde(default)]
    pub return_colbert_vecs: bool,
}

/// One lexical weight of `/embed_sparse`.
#[derive(Serialize)]
pub(crate) struct SparseValue {
    pub index: u32,
    pub value: f32,
}

/// `POST /rerank`.
#[derive(Deserialize)]
pub(crate) struct RerankRequest {
    pub query: String,
    pub texts: Vec<String>,
    pub truncate: Option<bool>,
    /// Only `right`: pairs are cut as FlagReranker cuts them (the passage's end).
    #[serde(default)]
    pub truncation_direction: Direction,
    #[serde(default)]
    pub raw_scores: bool,
    #[serde(default)]
    pub return_text: bool,
}

/// One entry of `/rerank`'s answer.
#[derive(Serialize)]
pub(crate) struct Rank {
    pub index: usize,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub text: Option<String>,
    pub score: f32,
}

/// `POST /score`: BGE-M3's `compute_score` of `query` with each of `texts`.
#[derive(Deserialize)]
pub(crate) struct ScoreRequest {
    pub query: String,
    pub texts: Vec<String>,
    pub truncate: Option<bool>,
    /// Weights of dense, sparse and ColBERT in the combined scores (default 1, 1, 1).
    pub weights: Option<[f32; 3]>,
}

/// `POST /tokenize`.
#[derive(Deserialize)]
pub(crate) struct TokenizeRequest {
    pub inputs: Inputs,
    #[serde(default = "yes")]
    pub add_special_tokens: bool,
    pub prompt_name: Option<String>,
}

/// `GET /info`: TEI's fields, and what bge adds (device, outputs, prompt names).
#[derive(Serialize)]
pub(crate) struct Info {
    pub model_id: String,
    pub model_sha: Option<String>,
    pub model_dtype: String,
    pub model_type: serde_json::Value,
    pub max_concurrent_requests: usize,
    pub max_input_length: usize,
    pub max_batch_tokens: usize,
    pub max_batch_requests: Option<usize>,
    pub max_client_batch_size: usize,
    pub auto_truncate: bool,
    pub tokenization_workers: usize,
    pub version: &'static str,
    pub device: String,
    pub outputs: Vec<&'static str>,
    pub prompt_names: Vec<String>,
}

/// `encoding_format` of `/v1/embeddings`.
#[derive(Clone, Copy, Default, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub(crate) enum Format {
    #[default]
    Float,
    /// The little-endian bytes of the f32 values, in base64.
    Base64,
}

/// `POST /v1/embeddings`.
#[derive(Deserialize)]
pub(crate) struct OpenAiRequest {
    pub input: Inputs,
    /// Accepted and echoed as the served name; the server serves one model.
    #[allow(dead_code)]
    pub model: Option<String>,
    #[serde(default)]
    pub encoding_format: Format,
    pub dimensions: Option<usize>,
    #[allow(dead_code)]
    pub user: Option<String>,
}

/// An embedding of `/v1/embeddings`: floats, or base64 of their bytes.
#[derive(Serialize)]
#[serde(untagged)]
pub(crate) enum OpenAiVector {
    Float(Vec<f32>),
    Base64(String),
}

#[derive(Serialize)]
pub(crate) struct OpenAiEmbedding {
    pub object: &'static str,
    pub index: usize,
    pub embedding: OpenAiVector,
}

#[derive(Serialize)]
pub(crate) struct OpenAiUsage {
    pub prompt_tokens: usize,
    pub total_tokens: usize,
}

#[derive(Serialize)]
pub(crate) struct OpenAiResponse {
    pub object: &'static str,
    pub data: Vec<OpenAiEmbedding>,
    pub model: String,
    pub usage: OpenAiUsage,
}

/// `GET /v1/models`' entries.
#[derive(Serialize)]
pub(crate) struct OpenAiModel {
    pub id: String,
    pub object: &'static str,
    pub created: u64,
    pub owned_by: &'static str,
}
