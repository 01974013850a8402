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
//! The models: [`FlagModel`] (bge v1 / v1.5 and any BERT / XLM-RoBERTa embedder),
//! [`M3Model`] (BGE-M3's dense, sparse and ColBERT outputs), [`Reranker`] (the bge-reranker
//! cross-encoders) and [`LlmEmbedder`]. Each loads with [`Options`] (or a [`Device`] and a
//! [`Dtype`]) and answers every failure with an [`Error`].
//!
//! Two promises hold on every [`Device`]:
//! * **Thread safety.** Every model type is `Send + Sync`: many threads may call one loaded
//!   model at once. The CPU backend runs their calls side by side on its thread pool; the GPU
//!   backend interleaves them on its queue.
//! * **Batch invariance.** A text's outputs are the same bits whether it is encoded alone, among
//!   other texts, at any batch size, or on any thread, because batches are packed without
//!   padding and every row is computed from its own inputs only.
//!
//! The path of a text: tokenizer -> packed batch -> encoder on a [`backend::Backend`] -> heads
//! (dense, sparse, ColBERT, classifier) -> the model API. [`backend`] is public for those who
//! test, time or read the kernels.

#![warn(missing_docs)]

mod alloc;
pub mod backend;
#[allow(missing_docs)] // reached only through `internals`
mod bench;
mod config;
mod device;
mod error;
mod flag_model;
mod heads;
pub mod llm_embedder;
mod loaded;
pub mod m3;
#[allow(missing_docs)] // reached only through `internals`
mod model;
mod reranker;
#[cfg(feature = "serve")]
pub mod serve;
#[allow(missing_docs)] // reached only through `internals`
mod source;
#[allow(missing_docs)] // reached only through `internals`
mod tokenize;
#[allow(missing_docs)] // reached only through `internals`
mod weights;

pub use alloc::keep_freed_memory;
pub use backend::Dtype;
pub use config::{ModelConfig, Pooling};
pub use device::Device;
pub use error::{Error, Result};
pub use flag_model::{
    Embeddings, FlagModel, INSTRUCTION_EN, INSTRUCTION_ZH, Options, TextEmbeddings, Want,
    default_query_instruction,
};
pub use heads::dense::shorten as truncate_dimensions;
pub use heads::{Head, HeadSet};
pub use llm_embedder::{LlmEmbedder, Task};
pub use m3::{LexicalWeights, M3Model, PairScores};
pub use reranker::Reranker;

/// Not part of the public API, and without any stability promise: what `bge`'s own binary,
/// tests, benchmarks and fuzzers reach below the model types (the encoder with its probes,
/// random weights, the weight readers, the tokenizer, the benchmark).
#[doc(hidden)]
pub mod internals {
    pub use crate::bench::{
        BenchSpec, inputs as bench_inputs, run as run_bench, run_ops as run_bench_ops,
    };
    pub use crate::config::{Arch, Head as ConfigHead, Shape};
    pub use crate::flag_model::{DEFAULT_BATCH_SIZE, DEFAULT_MAX_LENGTH};
    pub use crate::model::{Checkpoint, Encoder, Params, Probe, RandomParams, SplitMix64, pack};
    pub use crate::reranker::DEFAULT_BATCH_SIZE as RERANKER_BATCH_SIZE;
    pub use crate::source::ModelFiles;
    pub use crate::tokenize::{Encoded, Tokenizer};
    pub use crate::weights::{DType, WeightFile, Weights, parse_bytes};
}
