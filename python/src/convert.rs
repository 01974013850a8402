//! Python values to the library's types and back: errors to exceptions, FlagEmbedding's
//! `devices` / `use_fp16` to bge's devices and precisions, texts and pairs from Python, and
//! numpy arrays and dicts for the results.

use std::collections::HashMap;

use numpy::{PyArray1, PyArrayMethods, PyReadonlyArray2};
use pyo3::exceptions::{
    PyFileNotFoundError, PyMemoryError, PyOSError, PyRuntimeError, PyTypeError, PyValueError,
};
use pyo3::prelude::*;
use pyo3::types::{PyDict, PyList, PyString};

use bge::{Device, Dtype, Error, LexicalWeights, Pooling};

/// A library error as the Python exception FlagEmbedding's users expect: `FileNotFoundError`
/// for a model that is not there, `ValueError` for a bad argument or file, `MemoryError` when
/// the GPU is full, `OSError` / `RuntimeError` for the rest.
pub(crate) fn py_err(e: Error) -> PyErr {
    let message = e.to_string();
    match e {
        Error::MissingFile { .. } | Error::Hub { .. } => PyFileNotFoundError::new_err(message),
        Error::Io { .. } => PyOSError::new_err(message),
        Error::GpuOutOfMemory { .. } => PyMemoryError::new_err(message),
        Error::Gpu(_) | Error::Server(_) => PyRuntimeError::new_err(message),
        _ => PyValueError::new_err(message),
    }
}

pub(crate) fn value_error(message: impl Into<String>) -> PyErr {
    PyValueError::new_err(message.into())
}

/// `sentences`: a str (then `true`) or a sequence of str.
pub(crate) fn texts(sentences: &Bound<PyAny>) -> PyResult<(Vec<String>, bool)> {
    if sentences.is_instance_of::<PyString>() {
        return Ok((vec![sentences.extract()?], true));
    }
    let texts = sentences
        .extract::<Vec<String>>()
        .map_err(|_| PyTypeError::new_err("expected a str or a list of str"))?;
    Ok((texts, false))
}

/// FlagEmbedding's `devices` (a str, an int, a one-element list, or None) as a bge device:
/// `cpu` the CPU; `cuda`, `cuda:N` (and `mps`, `npu`, `xpu`, `gpu`, `gpu:N`) GPU N through
/// wgpu; an int N `cuda:N`; None a hardware GPU if there is one, else the CPU.
pub(crate) fn device(devices: Option<&Bound<PyAny>>) -> PyResult<Device> {
    let Some(devices) = devices.filter(|d| !d.is_none()) else {
        return Ok(Device::Auto);
    };
    let one = |d: &Bound<PyAny>| -> PyResult<String> {
        match d.extract::<usize>() {
            Ok(n) => Ok(format!("cuda:{n}")),
            Err(_) => d
                .extract::<String>()
                .map_err(|_| value_error("devices: expected a str, an int or a list of them")),
        }
    };
    let names: Vec<String> = match devices.is_instance_of::<PyList>() {
        true => devices
            .try_iter()?
            .map(|d| one(&d?))
            .collect::<PyResult<_>>()?,
        false => vec![one(devices)?],
    };
    let [name] = names.as_slice() else {
        return Err(value_error(format!(
            "devices={names:?}: bge_rs runs a model on one device (FlagEmbedding's multi-process \
             pool has no counterpart: share one model between threads, which run in parallel, or \
             use one process per device)"
        )));
    };
    let (kind, index) = match name.split_once(':') {
        Some((kind, index)) => {
            let n = index
                .parse::<usize>()
                .map_err(|_| value_error(format!("devices: unknown device `{name}`")))?;
            (kind, Some(n))
        }
        None => (name.as_str(), None),
    };
    match (kind, index) {
        ("cpu", None) => Ok(Device::Cpu),
        ("auto", None) => Ok(Device::Auto),
        ("reference", None) => Ok(Device::Reference),
        ("cuda" | "gpu" | "mps" | "npu" | "xpu" | "musa", n) => Ok(Device::Gpu(n)),
        _ => Err(value_error(format!(
            "devices: unknown device `{name}` (cpu, cuda, cuda:N, gpu, gpu:N, mps or auto)"
        ))),
    }
}

/// `use_fp16` / `use_bf16` on `device`: f16 on a GPU (FlagEmbedding's fp16 on the CPU is a
/// slow path, so the CPU stays f32), bf16 on the CPU only.
pub(crate) fn dtype(device: Device, use_fp16: bool, use_bf16: bool) -> PyResult<Dtype> {
    let gpu = matches!(device.resolve(), Device::Gpu(_));
    match (gpu, use_bf16, use_fp16) {
        (true, true, _) => Err(value_error(
            "use_bf16: bf16 runs on the CPU (AVX-512 BF16); on a GPU use use_fp16",
        )),
        (false, true, _) => Ok(Dtype::Bf16),
        (true, false, true) => Ok(Dtype::F16),
        _ => Ok(Dtype::F32),
    }
}

pub(crate) fn pooling(method: &str) -> PyResult<Pooling> {
    method
        .parse()
        .map_err(|_| value_error(format!("pooling_method `{method}`: expected cls or mean")))
}

/// The `**kwargs` a class takes, by name; any other is an error (nothing is ignored).
pub(crate) fn take_kwargs<'py>(
    kwargs: Option<&Bound<'py, PyDict>>,
    allowed: &[&str],
    what: &str,
) -> PyResult<HashMap<String, Bound<'py, PyAny>>> {
    let mut out = HashMap::new();
    for (key, value) in kwargs.into_iter().flat_map(|k| k.iter()) {
        let key: String = key.extract()?;
        if !allowed.contains(&key.as_str()) {
            return Err(value_error(format!(
                "{what}: unknown argument `{key}` (bge_rs takes FlagEmbedding 1.4.2's arguments and refuses the rest rather than ignore them)"
            )));
        }
        out.insert(key, value);
    }
    Ok(out)
}

/// FlagEmbedding's arguments that mean nothing without PyTorch: accepted at their defaults,
/// refused otherwise.
pub(crate) fn refuse_torch_only(trust_remote_code: bool, cache_dir: Option<&str>) -> PyResult<()> {
    if trust_remote_code {
        return Err(value_error(
            "trust_remote_code=True: bge_rs runs no model code from the hub, only BERT and XLM-RoBERTa weights",
        ));
    }
    if cache_dir.is_some() {
        return Err(value_error(
            "cache_dir: set HF_HUB_CACHE (or HF_HOME) to choose the Hugging Face cache bge_rs reads",
        ));
    }
    Ok(())
}

/// `rows` as a 2-D float32 array of `cols` columns (also when there are no rows).
pub(crate) fn matrix<'py>(
    py: Python<'py>,
    rows: &[Vec<f32>],
    cols: usize,
) -> PyResult<Bound<'py, PyAny>> {
    let flat: Vec<f32> = rows.iter().flatten().copied().collect();
    Ok(PyArray1::from_vec(py, flat)
        .reshape([rows.len(), cols])?
        .into_any())
}

pub(crate) fn vector<'py>(py: Python<'py>, v: &[f32]) -> Bound<'py, PyAny> {
    PyArray1::from_slice(py, v).into_any()
}

/// FlagEmbedding's lexical weights: `{"<token id>": weight}`.
pub(crate) fn weights_dict<'py>(
    py: Python<'py>,
    w: &LexicalWeights,
) -> PyResult<Bound<'py, PyDict>> {
    let d = PyDict::new(py);
    for &(id, weight) in &w.0 {
        d.set_item(id.to_string(), weight)?;
    }
    Ok(d)
}

pub(crate) fn weights_from(d: &Bound<PyAny>) -> PyResult<LexicalWeights> {
    let items: Vec<(String, f32)> = d
        .call_method0("items")?
        .try_iter()?
        .map(|kv| kv?.extract::<(String, f32)>())
        .collect::<PyResult<_>>()
        .map_err(|_| {
            value_error("lexical weights: expected a dict of token-id strings to floats")
        })?;
    let pairs = items
        .into_iter()
        .map(|(k, w)| {
            k.parse::<u32>()
                .map(|id| (id, w))
                .map_err(|_| value_error(format!("lexical weights: `{k}` is not a token id")))
        })
        .collect::<PyResult<_>>()?;
    Ok(LexicalWeights(pairs))
}

/// A 2-D array-like as rows of f32 (numpy converts it).
pub(crate) fn rows_from(py: Python, x: &Bound<PyAny>) -> PyResult<Vec<Vec<f32>>> {
    let np = py.import("numpy")?;
    let a = np.call_method1("ascontiguousarray", (x, "float32"))?;
    let a: PyReadonlyArray2<f32> = a
        .extract()
        .map_err(|_| value_error("expected a 2-D array of vectors"))?;
    let view = a.as_array();
    Ok(view.rows().into_iter().map(|r| r.to_vec()).collect())
}

/// `sentence_pairs`: one `(query, passage)` pair (then `true`) or a sequence of them; a pair
/// is a tuple or a list of two str.
pub(crate) fn pairs(sentence_pairs: &Bound<PyAny>) -> PyResult<(Vec<(String, String)>, bool)> {
    let expected = || PyTypeError::new_err("expected a (query, passage) pair or a list of pairs");
    let pair = |p: &Bound<PyAny>| -> PyResult<(String, String)> {
        if p.is_instance_of::<PyString>() {
            return Err(expected());
        }
        match p
            .extract::<Vec<String>>()
            .map_err(|_| expected())?
            .as_slice()
        {
            [q, d] => Ok((q.clone(), d.clone())),
            _ => Err(expected()),
        }
    };
    let items: Vec<Bound<PyAny>> = sentence_pairs
        .try_iter()
        .map_err(|_| expected())?
        .collect::<PyResult<_>>()?;
    if items
        .first()
        .is_some_and(|i| i.is_instance_of::<PyString>())
    {
        return Ok((vec![pair(sentence_pairs)?], true));
    }
    let pairs = items.iter().map(pair).collect::<PyResult<_>>()?;
    Ok((pairs, false))
}
