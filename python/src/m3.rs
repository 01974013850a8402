//! `BGEM3FlagModel`: BGE-M3's dense, sparse and ColBERT outputs, and their scores.

use pyo3::prelude::*;
use pyo3::types::{PyDict, PyList};

use bge::{LexicalWeights, Want};

use crate::convert::{
    matrix, pairs, py_err, refuse_torch_only, rows_from, take_kwargs, texts, value_error, vector,
    weights_dict, weights_from,
};
use crate::embedder::{Embedder, load_embedder, passage_instruction};

/// BGE-M3 with FlagEmbedding's `BGEM3FlagModel` API: dense, sparse (lexical weights) and
/// ColBERT outputs from one encoder pass, and their scores.
#[pyclass(frozen, module = "bge_rs")]
pub(crate) struct BGEM3FlagModel {
    inner: Embedder,
    want: Want,
}

/// The dict `BGEM3FlagModel.encode` returns for `texts`.
fn m3_outputs<'py>(
    py: Python<'py>,
    e: &bge::Embeddings,
    want: Want,
    single: bool,
    width: usize,
) -> PyResult<Bound<'py, PyDict>> {
    let out = PyDict::new(py);
    let dense = match (want.dense, single) {
        (false, _) => py.None().into_bound(py),
        (true, true) => vector(py, &e.dense[0]),
        (true, false) => matrix(py, &e.dense, width)?,
    };
    let sparse = match (want.sparse, single) {
        (false, _) => py.None().into_bound(py),
        (true, true) => weights_dict(py, &e.sparse[0])?.into_any(),
        (true, false) => {
            let dicts = e
                .sparse
                .iter()
                .map(|w| weights_dict(py, w))
                .collect::<PyResult<Vec<_>>>()?;
            PyList::new(py, dicts)?.into_any()
        }
    };
    let colbert = match (want.colbert, single) {
        (false, _) => py.None().into_bound(py),
        (true, true) => matrix(py, &e.colbert[0], width)?,
        (true, false) => {
            let arrays = e
                .colbert
                .iter()
                .map(|rows| matrix(py, rows, width))
                .collect::<PyResult<Vec<_>>>()?;
            PyList::new(py, arrays)?.into_any()
        }
    };
    out.set_item("dense_vecs", dense)?;
    out.set_item("lexical_weights", sparse)?;
    out.set_item("colbert_vecs", colbert)?;
    Ok(out)
}

impl BGEM3FlagModel {
    #[allow(clippy::too_many_arguments)]
    fn encode_as<'py>(
        &self,
        py: Python<'py>,
        sentences: &Bound<'py, PyAny>,
        instruction: Option<&str>,
        max_length: usize,
        batch_size: Option<usize>,
        want: [Option<bool>; 3],
        kwargs: Option<&Bound<'py, PyDict>>,
    ) -> PyResult<Bound<'py, PyDict>> {
        // FlagEmbedding pops and ignores convert_to_numpy here: the outputs are numpy anyway.
        let extra = take_kwargs(kwargs, &["convert_to_numpy"], "BGEM3FlagModel.encode")?;
        if let Some(c) = extra.get("convert_to_numpy")
            && !c.extract::<bool>()?
        {
            return Err(value_error(
                "convert_to_numpy=False: BGEM3FlagModel's outputs are numpy arrays",
            ));
        }
        let want = Want {
            dense: want[0].unwrap_or(self.want.dense),
            sparse: want[1].unwrap_or(self.want.sparse),
            colbert: want[2].unwrap_or(self.want.colbert),
        };
        let (texts, single) = texts(sentences)?;
        let e = match want.dense || want.sparse || want.colbert {
            true => self
                .inner
                .embed(py, &texts, instruction, max_length, want, batch_size)?,
            false => bge::Embeddings::default(),
        };
        m3_outputs(py, &e, want, single, self.inner.width())
    }
}

#[pymethods]
impl BGEM3FlagModel {
    #[new]
    #[pyo3(signature = (
        model_name_or_path, normalize_embeddings=true, use_fp16=true, use_bf16=false,
        query_instruction_for_retrieval=None, query_instruction_format="{}{}", devices=None,
        pooling_method="cls", trust_remote_code=false, cache_dir=None, colbert_dim=-1,
        batch_size=256, query_max_length=512, passage_max_length=512, return_dense=true,
        return_sparse=false, return_colbert_vecs=false, truncate_dim=None, **kwargs
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
        colbert_dim: i64,
        batch_size: usize,
        query_max_length: usize,
        passage_max_length: usize,
        return_dense: bool,
        return_sparse: bool,
        return_colbert_vecs: bool,
        truncate_dim: Option<usize>,
        kwargs: Option<&Bound<PyDict>>,
    ) -> PyResult<Self> {
        refuse_torch_only(trust_remote_code, cache_dir)?;
        if colbert_dim != -1 {
            return Err(value_error(
                "colbert_dim: bge_rs reads colbert_linear.pt at its own size (FlagEmbedding's default, -1)",
            ));
        }
        let extra = take_kwargs(
            kwargs,
            &[
                "passage_instruction_for_retrieval",
                "passage_instruction_format",
            ],
            "BGEM3FlagModel",
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
        Ok(BGEM3FlagModel {
            inner: inner.into_m3()?,
            want: Want {
                dense: return_dense,
                sparse: return_sparse,
                colbert: return_colbert_vecs,
            },
        })
    }

    /// `encode(sentences, batch_size=None, max_length=None, return_dense=None,
    /// return_sparse=None, return_colbert_vecs=None)`: `{"dense_vecs", "lexical_weights",
    /// "colbert_vecs"}`, each None unless asked for (the constructor's `return_*` by default).
    /// `lexical_weights` maps token-id strings to weights; `colbert_vecs` holds one 2-D array
    /// per text (a row per token but the first).
    #[pyo3(signature = (sentences, batch_size=None, max_length=None, return_dense=None, return_sparse=None, return_colbert_vecs=None, **kwargs))]
    #[allow(clippy::too_many_arguments)]
    fn encode<'py>(
        &self,
        py: Python<'py>,
        sentences: &Bound<'py, PyAny>,
        batch_size: Option<usize>,
        max_length: Option<usize>,
        return_dense: Option<bool>,
        return_sparse: Option<bool>,
        return_colbert_vecs: Option<bool>,
        kwargs: Option<&Bound<'py, PyDict>>,
    ) -> PyResult<Bound<'py, PyDict>> {
        let max_length = max_length.unwrap_or(self.inner.model().max_length());
        let want = [return_dense, return_sparse, return_colbert_vecs];
        self.encode_as(py, sentences, None, max_length, batch_size, want, kwargs)
    }

    /// `encode_queries(queries, ...)`: as `encode`, with the query instruction (none by
    /// default) and `query_max_length`.
    #[pyo3(signature = (queries, batch_size=None, max_length=None, return_dense=None, return_sparse=None, return_colbert_vecs=None, **kwargs))]
    #[allow(clippy::too_many_arguments)]
    fn encode_queries<'py>(
        &self,
        py: Python<'py>,
        queries: &Bound<'py, PyAny>,
        batch_size: Option<usize>,
        max_length: Option<usize>,
        return_dense: Option<bool>,
        return_sparse: Option<bool>,
        return_colbert_vecs: Option<bool>,
        kwargs: Option<&Bound<'py, PyDict>>,
    ) -> PyResult<Bound<'py, PyDict>> {
        let m = self.inner.model();
        let max_length = max_length.unwrap_or(m.query_max_length());
        let want = [return_dense, return_sparse, return_colbert_vecs];
        let instruction = m.query_instruction();
        self.encode_as(
            py,
            queries,
            instruction,
            max_length,
            batch_size,
            want,
            kwargs,
        )
    }

    /// `encode_corpus(corpus, ...)`: as `encode`, with the passage instruction (if any).
    #[pyo3(signature = (corpus, batch_size=None, max_length=None, return_dense=None, return_sparse=None, return_colbert_vecs=None, **kwargs))]
    #[allow(clippy::too_many_arguments)]
    fn encode_corpus<'py>(
        &self,
        py: Python<'py>,
        corpus: &Bound<'py, PyAny>,
        batch_size: Option<usize>,
        max_length: Option<usize>,
        return_dense: Option<bool>,
        return_sparse: Option<bool>,
        return_colbert_vecs: Option<bool>,
        kwargs: Option<&Bound<'py, PyDict>>,
    ) -> PyResult<Bound<'py, PyDict>> {
        let m = self.inner.model();
        let max_length = max_length.unwrap_or(m.max_length());
        let want = [return_dense, return_sparse, return_colbert_vecs];
        let instruction = m.passage_instruction();
        self.encode_as(
            py,
            corpus,
            instruction,
            max_length,
            batch_size,
            want,
            kwargs,
        )
    }

    /// `compute_lexical_matching_score(lexical_weights_1, lexical_weights_2)`: the sum over
    /// token ids in both of the products of their weights; for two lists, the matrix of the
    /// scores of every pair.
    fn compute_lexical_matching_score<'py>(
        &self,
        py: Python<'py>,
        lexical_weights_1: &Bound<'py, PyAny>,
        lexical_weights_2: &Bound<'py, PyAny>,
    ) -> PyResult<Bound<'py, PyAny>> {
        let is_dict = |w: &Bound<PyAny>| w.is_instance_of::<PyDict>();
        match (is_dict(lexical_weights_1), is_dict(lexical_weights_2)) {
            (true, true) => {
                let (a, b) = (
                    weights_from(lexical_weights_1)?,
                    weights_from(lexical_weights_2)?,
                );
                Ok(bge::m3::compute_lexical_matching_score(&a, &b)
                    .into_pyobject(py)?
                    .into_any())
            }
            (false, false) => {
                let list = |w: &Bound<PyAny>| -> PyResult<Vec<LexicalWeights>> {
                    w.try_iter()?.map(|d| weights_from(&d?)).collect()
                };
                let (a, b) = (list(lexical_weights_1)?, list(lexical_weights_2)?);
                let rows: Vec<Vec<f32>> = a
                    .iter()
                    .map(|x| {
                        b.iter()
                            .map(|y| bge::m3::compute_lexical_matching_score(x, y))
                            .collect()
                    })
                    .collect();
                matrix(py, &rows, b.len())
            }
            _ => Err(value_error(
                "compute_lexical_matching_score: expected two dicts or two lists of dicts",
            )),
        }
    }

    /// `colbert_score(q_reps, p_reps)`: the mean over query vectors of the best dot product
    /// with a passage vector.
    fn colbert_score(
        &self,
        py: Python,
        q_reps: &Bound<PyAny>,
        p_reps: &Bound<PyAny>,
    ) -> PyResult<f32> {
        let (q, p) = (rows_from(py, q_reps)?, rows_from(py, p_reps)?);
        if let (Some(a), Some(b)) = (q.first(), p.first())
            && a.len() != b.len()
        {
            return Err(value_error(format!(
                "colbert_score: query vectors of {} and passage vectors of {} dimensions",
                a.len(),
                b.len()
            )));
        }
        Ok(py.detach(|| bge::m3::colbert_score(&q, &p)))
    }

    /// `convert_id_to_token(lexical_weights)`: the weights keyed by token text; a list of
    /// dicts gives a list, except that a list of one gives its dict (as FlagEmbedding does).
    fn convert_id_to_token<'py>(
        &self,
        py: Python<'py>,
        lexical_weights: &Bound<'py, PyAny>,
    ) -> PyResult<Bound<'py, PyAny>> {
        let m3 = self.inner.m3()?;
        let convert = |w: &Bound<PyAny>| -> PyResult<Bound<PyDict>> {
            let d = PyDict::new(py);
            for (token, weight) in m3.convert_id_to_token(&weights_from(w)?) {
                d.set_item(token, weight)?;
            }
            Ok(d)
        };
        if lexical_weights.is_instance_of::<PyDict>() {
            return Ok(convert(lexical_weights)?.into_any());
        }
        let mut dicts = lexical_weights
            .try_iter()?
            .map(|w| convert(&w?))
            .collect::<PyResult<Vec<_>>>()?;
        match dicts.len() {
            1 => Ok(dicts.remove(0).into_any()),
            _ => Ok(PyList::new(py, dicts)?.into_any()),
        }
    }

    /// `compute_score(sentence_pairs, batch_size=None, max_query_length=None,
    /// max_passage_length=None, weights_for_different_modes=None)`: `{"colbert", "sparse",
    /// "dense", "sparse+dense", "colbert+sparse+dense"}`, each a list (a float for one pair).
    /// Weights are `[dense, sparse, colbert]`, `[1, 1, 1]` by default.
    #[pyo3(signature = (sentence_pairs, batch_size=None, max_query_length=None, max_passage_length=None, weights_for_different_modes=None, **kwargs))]
    #[allow(clippy::too_many_arguments)]
    fn compute_score<'py>(
        &self,
        py: Python<'py>,
        sentence_pairs: &Bound<'py, PyAny>,
        batch_size: Option<usize>,
        max_query_length: Option<usize>,
        max_passage_length: Option<usize>,
        weights_for_different_modes: Option<Vec<f32>>,
        kwargs: Option<&Bound<'py, PyDict>>,
    ) -> PyResult<Bound<'py, PyAny>> {
        take_kwargs(kwargs, &[], "compute_score")?;
        let (pairs, single) = pairs(sentence_pairs)?;
        if pairs.is_empty() {
            return Ok(PyList::empty(py).into_any());
        }
        let weights = match weights_for_different_modes.as_deref() {
            None => bge::m3::DEFAULT_WEIGHTS,
            Some(&[d, s, c]) => [d, s, c],
            Some(other) => {
                return Err(value_error(format!(
                    "weights_for_different_modes: expected [dense, sparse, colbert], got {} numbers",
                    other.len()
                )));
            }
        };
        let m3 = self.inner.m3()?;
        let m = m3.model();
        let lengths = (
            max_query_length.unwrap_or(m.query_max_length()),
            max_passage_length.unwrap_or(m.max_length()),
        );
        let batch_size = batch_size.unwrap_or(m.batch_size());
        let scores = py
            .detach(|| {
                let refs: Vec<(&str, &str)> = pairs
                    .iter()
                    .map(|(q, p)| (q.as_str(), p.as_str()))
                    .collect();
                m3.compute_score_with(&refs, weights, lengths, batch_size)
            })
            .map_err(py_err)?;
        let out = PyDict::new(py);
        let columns: [ScoreColumn; 5] = [
            ("colbert", |s| s.colbert),
            ("sparse", |s| s.sparse),
            ("dense", |s| s.dense),
            ("sparse+dense", |s| s.sparse_dense),
            ("colbert+sparse+dense", |s| s.colbert_sparse_dense),
        ];
        for (key, get) in columns {
            let values: Vec<f32> = scores.iter().map(get).collect();
            match single {
                true => out.set_item(key, values[0])?,
                false => out.set_item(key, values)?,
            }
        }
        Ok(out.into_any())
    }

    /// The device and precision the model runs on, in words.
    #[getter]
    fn device(&self) -> String {
        self.inner.model().describe()
    }
}

/// A key of `compute_score`'s dict and how to read it from a pair's scores.
type ScoreColumn = (&'static str, fn(&bge::PairScores) -> f32);
