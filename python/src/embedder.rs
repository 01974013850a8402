//! `FlagModel`, and the embedder `BGEM3FlagModel` and `LLMEmbedder` share with it.

use std::collections::HashMap;

use pyo3::prelude::*;
use pyo3::types::PyDict;

use bge::{M3Model, Options, Want};

use crate::convert::{
    device, dtype, matrix, pooling, py_err, refuse_torch_only, take_kwargs, texts, value_error,
    vector,
};

/// The embedder behind `FlagModel`, `BGEM3FlagModel` and `LLMEmbedder`, with the
/// constructor arguments they share.
pub(crate) struct Embedder {
    held: Held,
    truncate_dim: Option<usize>,
}

/// A loaded embedder, as BGE-M3 (with its scoring API) or not.
pub(crate) enum Held {
    Plain(bge::FlagModel),
    M3(M3Model),
}

#[allow(clippy::too_many_arguments)]
pub(crate) fn load_embedder(
    py: Python,
    model_name_or_path: &str,
    normalize_embeddings: bool,
    use_fp16: bool,
    use_bf16: bool,
    query_instruction_for_retrieval: Option<String>,
    query_instruction_format: &str,
    devices: Option<&Bound<PyAny>>,
    pooling_method: &str,
    batch_size: usize,
    query_max_length: usize,
    passage_max_length: usize,
    truncate_dim: Option<usize>,
    passage_instruction: Option<String>,
) -> PyResult<Embedder> {
    let device = device(devices)?;
    // Finding out whether `devices=None` means a GPU enumerates the adapters: without the GIL.
    let dtype = py.detach(|| dtype(device, use_fp16, use_bf16))?;
    let options = Options {
        device,
        dtype,
        threads: None,
        batch_size,
        max_length: Some(passage_max_length),
        query_max_length: Some(query_max_length),
        pooling: Some(pooling(pooling_method)?),
        normalize: normalize_embeddings,
        // FlagModel: no instruction unless one is given (no inference from the name).
        query_instruction: Some(query_instruction_for_retrieval.unwrap_or_default()),
        query_instruction_format: query_instruction_format.to_owned(),
        passage_instruction,
    };
    if truncate_dim == Some(0) {
        return Err(value_error("truncate_dim must be at least 1"));
    }
    let path = model_name_or_path.to_owned();
    let model = py
        .detach(|| bge::FlagModel::load(&path, &options))
        .map_err(py_err)?;
    Ok(Embedder {
        held: Held::Plain(model),
        truncate_dim,
    })
}

impl Embedder {
    pub(crate) fn model(&self) -> &bge::FlagModel {
        match &self.held {
            Held::Plain(m) => m,
            Held::M3(m3) => m3.model(),
        }
    }

    /// The model as BGE-M3: an error unless it has both BGE-M3 heads.
    pub(crate) fn into_m3(self) -> PyResult<Embedder> {
        let held = match self.held {
            Held::Plain(m) => Held::M3(M3Model::new(m).map_err(py_err)?),
            m3 => m3,
        };
        Ok(Embedder { held, ..self })
    }

    pub(crate) fn m3(&self) -> PyResult<&M3Model> {
        match &self.held {
            Held::M3(m3) => Ok(m3),
            Held::Plain(m) => Err(value_error(format!("model `{}` is not BGE-M3", m.name()))),
        }
    }

    /// The outputs `want` asks for, in the library's order and form.
    pub(crate) fn embed(
        &self,
        py: Python,
        texts: &[String],
        instruction: Option<&str>,
        max_length: usize,
        want: Want,
        batch_size: Option<usize>,
    ) -> PyResult<bge::Embeddings> {
        let model = self.model();
        let batch_size = batch_size.unwrap_or(model.batch_size());
        let mut e = py
            .detach(|| {
                let refs: Vec<&str> = texts.iter().map(String::as_str).collect();
                model.embed_batched(
                    &refs,
                    instruction,
                    max_length,
                    want,
                    batch_size,
                    &mut |_| {},
                )
            })
            .map_err(py_err)?;
        if let Some(d) = self.truncate_dim {
            let normalize = model.normalize();
            e.dense = e
                .dense
                .into_iter()
                .map(|v| bge::truncate_dimensions(v, d, normalize))
                .collect();
            e.colbert = e
                .colbert
                .into_iter()
                .map(|rows| {
                    rows.into_iter()
                        .map(|v| bge::truncate_dimensions(v, d, true))
                        .collect()
                })
                .collect();
        }
        Ok(e)
    }

    pub(crate) fn width(&self) -> usize {
        let h = self.model().config().hidden_size;
        self.truncate_dim.map_or(h, |d| d.min(h))
    }

    /// Dense vectors as FlagEmbedding returns them: 1-D for one str, 2-D float32 otherwise.
    #[allow(clippy::too_many_arguments)]
    pub(crate) fn dense<'py>(
        &self,
        py: Python<'py>,
        sentences: &Bound<'py, PyAny>,
        instruction: Option<&str>,
        max_length: usize,
        batch_size: Option<usize>,
        convert_to_numpy: Option<bool>,
        kwargs: Option<&Bound<'py, PyDict>>,
    ) -> PyResult<Bound<'py, PyAny>> {
        take_kwargs(kwargs, &[], "encode")?;
        if convert_to_numpy == Some(false) {
            return Err(value_error(
                "convert_to_numpy=False asks for a torch tensor; bge_rs has no torch and returns numpy arrays",
            ));
        }
        let (texts, single) = texts(sentences)?;
        let e = self.embed(py, &texts, instruction, max_length, Want::DENSE, batch_size)?;
        match single {
            true => Ok(vector(py, &e.dense[0])),
            false => matrix(py, &e.dense, self.width()),
        }
    }
}

/// An embedder with FlagEmbedding's `FlagModel` API (bge v1 / v1.5 and any BERT or
/// XLM-RoBERTa embedder). The GIL is released while it computes, so threads sharing one model
/// encode in parallel.
#[pyclass(frozen, module = "bge_rs")]
pub(crate) struct FlagModel {
    inner: Embedder,
}

#[pymethods]
impl FlagModel {
    #[new]
    #[pyo3(signature = (
        model_name_or_path, normalize_embeddings=true, use_fp16=true, use_bf16=false,
        query_instruction_for_retrieval=None, query_instruction_format="{}{}", devices=None,
        pooling_method="cls", trust_remote_code=false, cache_dir=None, batch_size=256,
        query_max_length=512, passage_max_length=512, convert_to_numpy=true, truncate_dim=None,
        **kwargs
    ))]
    #[allow(clippy::too_many_arguments)]
    fn new(
        py: Python,
        model_name_or_path: &str,
        normalize_embeddings: bool,
        use_fp16: bool,
        use_bf16: bool,
        query_instruction_for_retrieval: Option<String>,
        query_instruction_format: &str,
        devices: Option<&Bound<PyAny>>,
        pooling_method: &str,
        trust_remote_code: bool,
        cache_dir: Option<&str>,
        batch_size: usize,
        query_max_length: usize,
        passage_max_length: usize,
        convert_to_numpy: bool,
        truncate_dim: Option<usize>,
        kwargs: Option<&Bound<PyDict>>,
    ) -> PyResult<Self> {
        refuse_torch_only(trust_remote_code, cache_dir)?;
        if !convert_to_numpy {
            return Err(value_error(
                "convert_to_numpy=False asks for torch tensors; bge_rs has no torch and returns numpy arrays",
            ));
        }
        let extra = take_kwargs(
            kwargs,
            &[
                "passage_instruction_for_retrieval",
                "passage_instruction_format",
            ],
            "FlagModel",
        )?;
        let passage_instruction = passage_instruction(&extra, query_instruction_format)?;
        let inner = load_embedder(
            py,
            model_name_or_path,
            normalize_embeddings,
            use_fp16,
            use_bf16,
            query_instruction_for_retrieval,
            query_instruction_format,
            devices,
            pooling_method,
            batch_size,
            query_max_length,
            passage_max_length,
            truncate_dim,
            passage_instruction,
        )?;
        Ok(FlagModel { inner })
    }

    /// `encode(sentences, batch_size=None, max_length=None, convert_to_numpy=None)`: no
    /// instruction, `passage_max_length` by default. A str gives a 1-D float32 array, a list a
    /// 2-D one, in input order.
    #[pyo3(signature = (sentences, batch_size=None, max_length=None, convert_to_numpy=None, **kwargs))]
    fn encode<'py>(
        &self,
        py: Python<'py>,
        sentences: &Bound<'py, PyAny>,
        batch_size: Option<usize>,
        max_length: Option<usize>,
        convert_to_numpy: Option<bool>,
        kwargs: Option<&Bound<'py, PyDict>>,
    ) -> PyResult<Bound<'py, PyAny>> {
        let m = &self.inner;
        let max_length = max_length.unwrap_or(m.model().max_length());
        m.dense(
            py,
            sentences,
            None,
            max_length,
            batch_size,
            convert_to_numpy,
            kwargs,
        )
    }

    /// `encode_queries(queries, ...)`: `query_instruction_for_retrieval` joined by
    /// `query_instruction_format`, `query_max_length` by default.
    #[pyo3(signature = (queries, batch_size=None, max_length=None, convert_to_numpy=None, **kwargs))]
    fn encode_queries<'py>(
        &self,
        py: Python<'py>,
        queries: &Bound<'py, PyAny>,
        batch_size: Option<usize>,
        max_length: Option<usize>,
        convert_to_numpy: Option<bool>,
        kwargs: Option<&Bound<'py, PyDict>>,
    ) -> PyResult<Bound<'py, PyAny>> {
        let m = &self.inner;
        let max_length = max_length.unwrap_or(m.model().query_max_length());
        let instruction = m.model().query_instruction();
        m.dense(
            py,
            queries,
            instruction,
            max_length,
            batch_size,
            convert_to_numpy,
            kwargs,
        )
    }

    /// `encode_corpus(corpus, ...)`: `passage_instruction_for_retrieval` (if given),
    /// `passage_max_length` by default.
    #[pyo3(signature = (corpus, batch_size=None, max_length=None, convert_to_numpy=None, **kwargs))]
    fn encode_corpus<'py>(
        &self,
        py: Python<'py>,
        corpus: &Bound<'py, PyAny>,
        batch_size: Option<usize>,
        max_length: Option<usize>,
        convert_to_numpy: Option<bool>,
        kwargs: Option<&Bound<'py, PyDict>>,
    ) -> PyResult<Bound<'py, PyAny>> {
        let m = &self.inner;
        let max_length = max_length.unwrap_or(m.model().max_length());
        let instruction = m.model().passage_instruction();
        m.dense(
            py,
            corpus,
            instruction,
            max_length,
            batch_size,
            convert_to_numpy,
            kwargs,
        )
    }

    /// The device and precision the model runs on, in words.
    #[getter]
    fn device(&self) -> String {
        self.inner.model().describe()
    }
}

/// `passage_instruction_for_retrieval` (FlagEmbedding reads it and `passage_instruction_format`,
/// default `"{}{}"`, from `**kwargs`). bge joins every instruction with
/// `query_instruction_format`, so a passage instruction whose format differs from it is
/// refused rather than joined differently from FlagEmbedding.
pub(crate) fn passage_instruction(
    extra: &HashMap<String, Bound<PyAny>>,
    query_format: &str,
) -> PyResult<Option<String>> {
    let instruction = extra
        .get("passage_instruction_for_retrieval")
        .map(|p| p.extract::<Option<String>>())
        .transpose()?
        .flatten();
    let format = match extra.get("passage_instruction_format") {
        Some(f) => f.extract::<String>()?,
        None => "{}{}".to_owned(),
    };
    if instruction.is_some() && format != query_format {
        return Err(value_error(format!(
            "passage_instruction_format `{format}` differs from query_instruction_format `{query_format}`: bge_rs joins both instructions with one format"
        )));
    }
    Ok(instruction)
}
