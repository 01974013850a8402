//! `config.json` (Hugging Face) and the sentence-transformers side files, read into typed values.
//!
//! Only what inference needs is kept; anything the runtime cannot run faithfully (another
//! activation, relative position embeddings, an unknown architecture) is refused here with a
//! message naming the file and the field, rather than producing wrong vectors later.

use std::path::Path;

use serde::Deserialize;

use crate::error::{Error, Result};

/// The encoder families of the BGE series.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Arch {
    /// bge v1 / v1.5 (en, zh), LLM-Embedder, MiniLM: BERT with absolute positions `0..T`.
    Bert,
    /// bge-m3 and the bge-reranker family: positions start at `pad_token_id + 1`.
    XlmRoberta,
}

/// What sits on top of the encoder in the checkpoint.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Head {
    /// `BertModel` / `XLMRobertaModel`: hidden states only (embedders).
    Encoder,
    /// `*ForSequenceClassification`: the cross-encoder rerankers (`dense -> tanh -> out_proj`).
    Classifier {
        /// Outputs of `out_proj` (1 for every bge-reranker).
        num_labels: usize,
    },
}

/// Sentence pooling, from `1_Pooling/config.json` (CLS when the file is absent, as in FlagModel).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Pooling {
    /// The hidden state of the first token (`[CLS]` / `<s>`).
    Cls,
    /// The mean over all real tokens, special tokens included (sentence-transformers semantics).
    Mean,
}

impl Pooling {
    /// FlagModel's `pooling_method` names: `cls` or `mean`.
    pub fn name(self) -> &'static str {
        match self {
            Pooling::Cls => "cls",
            Pooling::Mean => "mean",
        }
    }
}

impl std::str::FromStr for Pooling {
    type Err = Error;

    fn from_str(s: &str) -> Result<Self> {
        match s {
            "cls" => Ok(Pooling::Cls),
            "mean" => Ok(Pooling::Mean),
            _ => Err(Error::InvalidArgument(format!(
                "unknown pooling `{s}` (expected cls or mean)"
            ))),
        }
    }
}

/// The encoder hyper-parameters, read from `config.json` or taken from a [`Shape`].
#[derive(Clone, Debug, PartialEq)]
pub struct ModelConfig {
    /// BERT or XLM-RoBERTa (`model_type`).
    pub arch: Arch,
    /// What sits on the encoder in the checkpoint (`architectures`).
    pub head: Head,
    /// Rows of the word-embedding table.
    pub vocab_size: usize,
    /// `h`: the width of every hidden state (and of the dense vectors).
    pub hidden_size: usize,
    /// Transformer layers (`num_hidden_layers`).
    pub num_layers: usize,
    /// Attention heads (`num_attention_heads`); the head size is `h / num_heads`.
    pub num_heads: usize,
    /// Width of the feed-forward layer.
    pub intermediate_size: usize,
    /// Rows of the position table (XLM-R reserves the first `pad_token_id + 1`).
    pub max_position_embeddings: usize,
    /// Rows of the token-type table.
    pub type_vocab_size: usize,
    /// The padding token's id.
    pub pad_token_id: u32,
    /// LayerNorm's epsilon.
    pub layer_norm_eps: f32,
}

impl ModelConfig {
    /// The size of one attention head, `hidden_size / num_heads`.
    pub fn head_dim(&self) -> usize {
        self.hidden_size / self.num_heads
    }

    /// The first position id of a sequence: 0 for BERT; `padding_idx + 1` for XLM-R
    /// (modeling_xlm_roberta.py, `create_position_ids_from_input_ids`).
    pub fn first_position(&self) -> usize {
        match self.arch {
            Arch::Bert => 0,
            Arch::XlmRoberta => self.pad_token_id as usize + 1,
        }
    }

    /// The longest sequence (special tokens included) the position table can embed:
    /// 512 for bge-base, 8192 for bge-m3 (8194 positions, the first two reserved).
    pub fn max_tokens(&self) -> usize {
        self.max_position_embeddings
            .saturating_sub(self.first_position())
    }

    /// Reads and checks a `config.json`.
    pub fn from_file(path: &Path) -> Result<Self> {
        let bytes = std::fs::read(path).map_err(|e| Error::io(path, e))?;
        Self::from_json_bytes(path, &bytes)
    }

    /// Parses the text of a `config.json`; `path` only names it in errors.
    pub fn from_json_bytes(path: &Path, bytes: &[u8]) -> Result<Self> {
        let raw: RawConfig = parse_json(path, bytes)?;
        raw.into_config(path)
    }

    /// Encoder FLOPs of one sequence of `len` tokens, the convention shared with
    /// `peer_bench.py`: `len * L * (8h^2 + 4h*ffn + 4*len*h)` (projections, FFN, attention).
    pub fn flops(&self, len: usize) -> f64 {
        let (l, h, f, n) = (
            self.num_layers as f64,
            self.hidden_size as f64,
            self.intermediate_size as f64,
            len as f64,
        );
        n * l * (8.0 * h * h + 4.0 * h * f + 4.0 * n * h)
    }
}

/// The real shapes of the BGE series, for benchmarks with random weights.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[allow(missing_docs)] // the names say it
pub enum Shape {
    BgeSmall,
    BgeBase,
    BgeLarge,
    BgeM3,
}

impl std::str::FromStr for Shape {
    type Err = Error;

    fn from_str(s: &str) -> Result<Self> {
        Shape::ALL
            .into_iter()
            .find(|shape| shape.name() == s)
            .ok_or_else(|| {
                Error::InvalidArgument(format!(
                    "unknown shape `{s}` (expected bge-small, bge-base, bge-large or bge-m3)"
                ))
            })
    }
}

#[allow(missing_docs)]
impl Shape {
    pub const ALL: [Shape; 4] = [
        Shape::BgeSmall,
        Shape::BgeBase,
        Shape::BgeLarge,
        Shape::BgeM3,
    ];

    pub fn name(self) -> &'static str {
        match self {
            Shape::BgeSmall => "bge-small",
            Shape::BgeBase => "bge-base",
            Shape::BgeLarge => "bge-large",
            Shape::BgeM3 => "bge-m3",
        }
    }

    /// The config of the released model of this shape (`BAAI/bge-*-en-v1.5`, `BAAI/bge-m3`).
    pub fn config(self) -> ModelConfig {
        let bert = |hidden_size, num_layers, num_heads| ModelConfig {
            arch: Arch::Bert,
            head: Head::Encoder,
            vocab_size: 30522,
            hidden_size,
            num_layers,
            num_heads,
            intermediate_size: 4 * hidden_size,
            max_position_embeddings: 512,
            type_vocab_size: 2,
            pad_token_id: 0,
            layer_norm_eps: 1e-12,
        };
        match self {
            Shape::BgeSmall => bert(384, 12, 12),
            Shape::BgeBase => bert(768, 12, 12),
            Shape::BgeLarge => bert(1024, 24, 16),
            Shape::BgeM3 => ModelConfig {
                arch: Arch::XlmRoberta,
                head: Head::Encoder,
                vocab_size: 250002,
                hidden_size: 1024,
                num_layers: 24,
                num_heads: 16,
                intermediate_size: 4096,
                max_position_embeddings: 8194,
                type_vocab_size: 1,
                pad_token_id: 1,
                layer_norm_eps: 1e-5,
            },
        }
    }
}

/// Reads `1_Pooling/config.json` of a sentence-transformers layout; `None` when absent.
pub fn read_pooling(path: &Path) -> Result<Option<Pooling>> {
    if !path.is_file() {
        return Ok(None);
    }
    let raw: RawPooling = read_json(path)?;
    let unsupported = raw.pooling_mode_max_tokens
        || raw.pooling_mode_mean_sqrt_len_tokens
        || raw.pooling_mode_weightedmean_tokens
        || raw.pooling_mode_lasttoken;
    match (raw.pooling_mode_cls_token, raw.pooling_mode_mean_tokens) {
        (true, false) if !unsupported => Ok(Some(Pooling::Cls)),
        (false, true) if !unsupported => Ok(Some(Pooling::Mean)),
        _ => Err(Error::config(
            path,
            "unsupported pooling: exactly one of pooling_mode_cls_token and pooling_mode_mean_tokens must be true",
        )),
    }
}

pub(crate) fn read_json<T: serde::de::DeserializeOwned>(path: &Path) -> Result<T> {
    let bytes = std::fs::read(path).map_err(|e| Error::io(path, e))?;
    parse_json(path, &bytes)
}

fn parse_json<T: serde::de::DeserializeOwned>(path: &Path, bytes: &[u8]) -> Result<T> {
    serde_json::from_slice(bytes).map_err(|source| Error::Json {
        path: path.to_owned(),
        source,
    })
}

#[derive(Deserialize, Default)]
#[serde(default)]
struct RawPooling {
    pooling_mode_cls_token: bool,
    pooling_mode_mean_tokens: bool,
    pooling_mode_max_tokens: bool,
    pooling_mode_mean_sqrt_len_tokens: bool,
    pooling_mode_weightedmean_tokens: bool,
    pooling_mode_lasttoken: bool,
}

#[derive(Deserialize)]
struct RawConfig {
    model_type: Option<String>,
    #[serde(default)]
    architectures: Vec<String>,
    vocab_size: usize,
    hidden_size: usize,
    num_hidden_layers: usize,
    num_attention_heads: usize,
    intermediate_size: usize,
    max_position_embeddings: usize,
    #[serde(default = "default_type_vocab")]
    type_vocab_size: usize,
    pad_token_id: Option<u32>,
    layer_norm_eps: Option<f32>,
    hidden_act: Option<String>,
    position_embedding_type: Option<String>,
    num_labels: Option<usize>,
    id2label: Option<serde_json::Map<String, serde_json::Value>>,
}

fn default_type_vocab() -> usize {
    2
}

impl RawConfig {
    fn into_config(self, path: &Path) -> Result<ModelConfig> {
        let arch = match self.model_type.as_deref() {
            Some("bert") => Arch::Bert,
            Some("xlm-roberta") => Arch::XlmRoberta,
            Some(other) => {
                return Err(Error::config(
                    path,
                    format!(
                        "unsupported architecture: model_type `{other}` (supported: bert, xlm-roberta)"
                    ),
                ));
            }
            None => return Err(Error::config(path, "no `model_type` field")),
        };
        // The exact erf GELU is the only activation the BGE series uses; "gelu_new" and friends
        // are tanh approximations that would silently move every vector.
        match self.hidden_act.as_deref() {
            None | Some("gelu") => {}
            Some(other) => {
                return Err(Error::config(
                    path,
                    format!("unsupported hidden_act `{other}` (only the exact erf `gelu`)"),
                ));
            }
        }
        match self.position_embedding_type.as_deref() {
            None | Some("absolute") => {}
            Some(other) => {
                return Err(Error::config(
                    path,
                    format!("unsupported position_embedding_type `{other}` (only `absolute`)"),
                ));
            }
        }
        let head = if self
            .architectures
            .iter()
            .any(|a| a.ends_with("ForSequenceClassification"))
        {
            let num_labels = self
                .num_labels
                .or(self.id2label.as_ref().map(|m| m.len()))
                .unwrap_or(2);
            if num_labels == 0 {
                return Err(Error::config(
                    path,
                    "a *ForSequenceClassification model needs at least one label (num_labels / id2label)",
                ));
            }
            Head::Classifier { num_labels }
        } else {
            Head::Encoder
        };
        let config = ModelConfig {
            arch,
            head,
            vocab_size: self.vocab_size,
            hidden_size: self.hidden_size,
            num_layers: self.num_hidden_layers,
            num_heads: self.num_attention_heads,
            intermediate_size: self.intermediate_size,
            max_position_embeddings: self.max_position_embeddings,
            type_vocab_size: self.type_vocab_size,
            pad_token_id: self
                .pad_token_id
                .unwrap_or(if arch == Arch::Bert { 0 } else { 1 }),
            layer_norm_eps: self.layer_norm_eps.unwrap_or(1e-12),
        };
        let positive = [
            ("vocab_size", config.vocab_size),
            ("hidden_size", config.hidden_size),
            ("num_hidden_layers", config.num_layers),
            ("num_attention_heads", config.num_heads),
            ("intermediate_size", config.intermediate_size),
            ("type_vocab_size", config.type_vocab_size),
        ];
        if let Some((field, _)) = positive.iter().find(|(_, v)| *v == 0) {
            return Err(Error::config(path, format!("`{field}` must be positive")));
        }
        if !config.hidden_size.is_multiple_of(config.num_heads) {
            return Err(Error::config(
                path,
                format!(
                    "hidden_size {} is not a multiple of num_attention_heads {}",
                    config.hidden_size, config.num_heads
                ),
            ));
        }
        if config.max_tokens() < 2 {
            return Err(Error::config(
                path,
                "max_position_embeddings leaves no room for the two special tokens",
            ));
        }
        Ok(config)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn flops_match_the_peer_formula() {
        // bge-base, one 128-token sequence: 128 * 12 * (8*768^2 + 4*768*3072 + 4*128*768)
        let want = 128.0 * 12.0 * (8.0 * 589824.0 + 4.0 * 768.0 * 3072.0 + 4.0 * 128.0 * 768.0);
        assert_eq!(Shape::BgeBase.config().flops(128), want);
    }

    #[test]
    fn xlm_roberta_reserves_the_padding_positions() {
        let m3 = Shape::BgeM3.config();
        assert_eq!(m3.first_position(), 2);
        assert_eq!(m3.max_tokens(), 8192);
        assert_eq!(Shape::BgeBase.config().max_tokens(), 512);
    }
}
