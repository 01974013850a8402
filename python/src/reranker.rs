//! `FlagReranker`: the bge-reranker cross-encoders.

use pyo3::prelude::*;
use pyo3::types::PyDict;

use bge::Reranker;

use crate::convert::{device, dtype, pairs, py_err, refuse_torch_only, take_kwargs, value_error};

/// A cross-encoder with FlagEmbedding's `FlagReranker` API.
#[pyclass(frozen, module = "bge_rs")]
pub(crate) struct FlagReranker {
    reranker: Reranker,
    batch_size: usize,
    query_max_length: Option<usize>,
    max_length: usize,
    normalize: bool,
}

#[pymethods]
impl FlagReranker {
    #[new]
    #[pyo3(signature = (
        model_name_or_path, use_fp16=false, query_instruction_for_rerank=None,
        query_instruction_format="{}{}", passage_instruction_for_rerank=None,
        passage_instruction_format="{}{}", trust_remote_code=false, cache_dir=None, devices=None,
        batch_size=128, query_max_length=None, max_length=512, normalize=false, **kwargs
    ))]
    #[allow(clippy::too_many_arguments)]
    fn new(
        py: Python,
        model_name_or_path: &str,
        use_fp16: bool,
        query_instruction_for_rerank: Option<String>,
        query_instruction_format: &str,
        passage_instruction_for_rerank: Option<String>,
        passage_instruction_format: &str,
        trust_remote_code: bool,
        cache_dir: Option<&str>,
        devices: Option<&Bound<PyAny>>,
        batch_size: usize,
        query_max_length: Option<usize>,
        max_length: usize,
        normalize: bool,
        kwargs: Option<&Bound<PyDict>>,
    ) -> PyResult<Self> {
        refuse_torch_only(trust_remote_code, cache_dir)?;
        take_kwargs(kwargs, &[], "FlagReranker")?;
        let _ = (query_instruction_format, passage_instruction_format);
        if query_instruction_for_rerank.is_some() || passage_instruction_for_rerank.is_some() {
            return Err(value_error(
                "query/passage_instruction_for_rerank: bge_rs's FlagReranker scores pairs as the bge-reranker models take them, without instructions",
            ));
        }
        if batch_size == 0 {
            return Err(value_error("batch_size must be at least 1"));
        }
        let device = device(devices)?;
        let dtype = dtype(device, use_fp16, false)?;
        let path = model_name_or_path.to_owned();
        let reranker = py
            .detach(|| Reranker::load(&path, device, dtype))
            .map_err(py_err)?;
        Ok(FlagReranker {
            reranker,
            batch_size,
            query_max_length,
            max_length,
            normalize,
        })
    }

    /// `compute_score(sentence_pairs, batch_size=None, query_max_length=None, max_length=None,
    /// normalize=None)`: the score of each `(query, passage)` pair, as a list (also for one
    /// pair, as FlagEmbedding 1.4.2 returns it); with `normalize`, the sigmoid.
    #[pyo3(signature = (sentence_pairs, batch_size=None, query_max_length=None, max_length=None, normalize=None, **kwargs))]
    #[allow(clippy::too_many_arguments)]
    fn compute_score(
        &self,
        py: Python,
        sentence_pairs: &Bound<PyAny>,
        batch_size: Option<usize>,
        query_max_length: Option<usize>,
        max_length: Option<usize>,
        normalize: Option<bool>,
        kwargs: Option<&Bound<PyDict>>,
    ) -> PyResult<Vec<f32>> {
        take_kwargs(kwargs, &[], "compute_score")?;
        let (pairs, _) = pairs(sentence_pairs)?;
        let lengths = (
            max_length.unwrap_or(self.max_length),
            query_max_length.or(self.query_max_length),
        );
        let batch_size = batch_size.unwrap_or(self.batch_size);
        let normalize = normalize.unwrap_or(self.normalize);
        let reranker = &self.reranker;
        py.detach(|| {
            let refs: Vec<(&str, &str)> = pairs
                .iter()
                .map(|(q, p)| (q.as_str(), p.as_str()))
                .collect();
            reranker.compute_score_at(&refs, normalize, lengths, batch_size, &mut |_| {})
        })
        .map_err(py_err)
    }

    /// The device and precision the model runs on, in words.
    #[getter]
    fn device(&self) -> String {
        self.reranker.describe()
    }
}
