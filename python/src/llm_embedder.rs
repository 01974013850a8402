//! `LLMEmbedder`: LLM-Embedder's queries and keys with their task's instruction.

use pyo3::prelude::*;

use bge::Task;
use bge::llm_embedder::{KEY_MAX_LENGTH, QUERY_MAX_LENGTH};

use crate::convert::py_err;
use crate::embedder::{Embedder, load_embedder};

/// LLM-Embedder with FlagEmbedding 1.2.11's `LLMEmbedder` API: queries and keys with their
/// task's instruction.
#[pyclass(frozen, module = "bge_rs")]
pub(crate) struct LLMEmbedder {
    inner: Embedder,
}

impl LLMEmbedder {
    #[allow(clippy::too_many_arguments)]
    fn encode_side<'py>(
        &self,
        py: Python<'py>,
        texts: &Bound<'py, PyAny>,
        batch_size: usize,
        max_length: usize,
        task: &str,
        query: bool,
    ) -> PyResult<Bound<'py, PyAny>> {
        let task: Task = task.parse().map_err(py_err)?;
        let (q, k) = task.instructions();
        let instruction = if query { q } else { k };
        let m = &self.inner;
        m.dense(
            py,
            texts,
            Some(instruction),
            max_length,
            Some(batch_size),
            None,
            None,
        )
    }
}

#[pymethods]
impl LLMEmbedder {
    #[new]
    #[pyo3(signature = (model_name_or_path, pooling_method="cls", normalize_embeddings=true, use_fp16=true, devices=None))]
    fn new(
        py: Python,
        model_name_or_path: &str,
        pooling_method: &str,
        normalize_embeddings: bool,
        use_fp16: bool,
        devices: Option<&Bound<PyAny>>,
    ) -> PyResult<Self> {
        let inner = load_embedder(
            py,
            model_name_or_path,
            normalize_embeddings,
            use_fp16,
            false,
            None,
            "{}{}",
            devices,
            pooling_method,
            256,
            QUERY_MAX_LENGTH,
            KEY_MAX_LENGTH,
            None,
            None,
        )?;
        Ok(LLMEmbedder { inner })
    }

    /// `encode_queries(queries, batch_size=256, max_length=256, task="qa")`: the task's query
    /// instruction before each query (tasks: qa, convsearch, chat, lrlm, icl, tool).
    #[pyo3(signature = (queries, batch_size=256, max_length=QUERY_MAX_LENGTH, task="qa"))]
    fn encode_queries<'py>(
        &self,
        py: Python<'py>,
        queries: &Bound<'py, PyAny>,
        batch_size: usize,
        max_length: usize,
        task: &str,
    ) -> PyResult<Bound<'py, PyAny>> {
        self.encode_side(py, queries, batch_size, max_length, task, true)
    }

    /// `encode_keys(keys, batch_size=256, max_length=512, task="qa")`: the task's key
    /// instruction before each key.
    #[pyo3(signature = (keys, batch_size=256, max_length=KEY_MAX_LENGTH, task="qa"))]
    fn encode_keys<'py>(
        &self,
        py: Python<'py>,
        keys: &Bound<'py, PyAny>,
        batch_size: usize,
        max_length: usize,
        task: &str,
    ) -> PyResult<Bound<'py, PyAny>> {
        self.encode_side(py, keys, batch_size, max_length, task, false)
    }

    /// The device and precision the model runs on, in words.
    #[getter]
    fn device(&self) -> String {
        self.inner.model().describe()
    }
}
