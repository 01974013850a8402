//! `bge`: BAAI's BGE embedding models in Rust, with the same numbers as FlagEmbedding.
//!
//! ```no_run
//! use bge::{FlagModel, Options};
//!
//! let model = FlagModel::load("BAAI/bge-small-en-v1.5", &Options::default())?;
//! let queries = model.encode_queries(&["what is a panda?"])?;
//! let passages = model.encode_corpus(&["The giant panda is a bear native to China."])?;
//! let score: f32 = queries[0].iter().zip(&passages[0]).map(|(a, b)| a * b).sum();
//! # Ok::<(), bge::Error>(())
//! ```
//!
//! The path of a text: [`tokenize`] -> [`model::pack`] -> [`model::Encoder`] on a
//! [`backend::Backend`] -> pooling and normalisation ([`pipeline`]) -> [`FlagModel`].

pub mod backend;
pub mod bench;
pub mod config;
pub mod embedder;
pub mod error;
pub mod heads;
pub mod llm_embedder;
pub mod m3;
pub mod model;
pub mod pipeline;
pub mod reranker;
pub mod runtime;
pub mod source;
pub mod tokenize;
pub mod weights;

pub use backend::Dtype;
pub use config::{ModelConfig, Pooling};
pub use embedder::{Embeddings, FlagModel, Options, Want};
pub use error::{Error, Result};
pub use m3::M3Model;
pub use pipeline::Device;
pub use reranker::Reranker;
