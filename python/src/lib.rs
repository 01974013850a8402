//! `bge_rs._bge`: FlagEmbedding's Python classes (`FlagModel`, `BGEM3FlagModel`,
//! `FlagReranker`, `LLMEmbedder`) on bge's engine. A thin layer: it converts Python arguments
//! to the library's types, releases the GIL around every call into the library, and converts
//! the results to what FlagEmbedding returns (numpy arrays, dicts, floats). The semantics
//! (instructions, truncation, pooling, scores) are the library's, so Python, the CLI and the
//! server give the same bits.
//!
//! `convert` holds the conversions; each class has its file.

mod convert;
mod embedder;
mod llm_embedder;
mod m3;
mod reranker;

use pyo3::prelude::*;

/// FlagEmbedding's classes on bge's engine.
#[pymodule]
fn _bge(m: &Bound<PyModule>) -> PyResult<()> {
    // As the `bge` binary does (see its docs): without it the CPU backend spends up to a third
    // of its time in page faults. BGE_RS_SYSTEM_MALLOC=1 leaves the allocator as it is.
    if std::env::var_os("BGE_RS_SYSTEM_MALLOC").is_none_or(|v| v != "1") {
        bge::keep_freed_memory();
    }
    m.add_class::<embedder::FlagModel>()?;
    m.add_class::<m3::BGEM3FlagModel>()?;
    m.add_class::<reranker::FlagReranker>()?;
    m.add_class::<llm_embedder::LLMEmbedder>()?;
    m.add("__version__", env!("CARGO_PKG_VERSION"))?;
    Ok(())
}
