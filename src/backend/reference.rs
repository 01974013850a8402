//! The reference backend: every operation of [`Backend`](super::Backend) as the plainest loops that compute it,
//! f32 storage with f64 accumulation. It is the executable specification: the SIMD CPU and WGSL
//! kernels are correct when they match it. Speed is not a goal here.

use super::{Activation, BatchDims, Dims, Dtype, HostBatch, Kernels, PackedBatch};
use crate::error::Result;

/// A row-major `[rows, cols]` matrix in host memory; `data` always holds `rows * cols` values
/// (the kernels' memory safety rests on it, so the fields are not public).
#[derive(Clone, Debug, PartialEq)]
pub struct Matrix {
    pub(crate) data: Vec<f32>,
    pub(crate) rows: usize,
    pub(crate) cols: usize,
}

impl Matrix {
    /// `data` as a `[rows, cols]` matrix; an error if the lengths disagree.
    pub fn new(data: Vec<f32>, rows: usize, cols: usize) -> Result<Self> {
        if rows.checked_mul(cols) != Some(data.len()) {
            return Err(crate::error::Error::InvalidArgument(format!(
                "tensor [{rows}, {cols}] given {} values",
                data.len()
            )));
        }
        Ok(Matrix { data, rows, cols })
    }

    fn zeros(rows: usize, cols: usize) -> Self {
        Matrix {
            data: vec![0.0; rows * cols],
            rows,
            cols,
        }
    }

    /// All values, row after row.
    pub fn data(&self) -> &[f32] {
        &self.data
    }

    /// The values, row after row.
    pub fn into_data(self) -> Vec<f32> {
        self.data
    }

    /// `rows`
    pub fn rows(&self) -> usize {
        self.rows
    }

    /// `cols`
    pub fn cols(&self) -> usize {
        self.cols
    }

    /// Row `r`.
    pub fn row(&self, r: usize) -> &[f32] {
        &self.data[r * self.cols..(r + 1) * self.cols]
    }

    fn row_mut(&mut self, r: usize) -> &mut [f32] {
        &mut self.data[r * self.cols..(r + 1) * self.cols]
    }
}

/// A linear layer as stored by Hugging Face.
pub struct Linear {
    /// `[out, in]`
    pub weight: Matrix,
    /// `[out]`
    pub bias: Vec<f32>,
}

/// The reference backend: no state, one thread.
#[derive(Clone, Copy, Debug, Default)]
pub struct Reference;

/// The reference backend's one precision.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Precision {
    /// f32 storage, f64 sums.
    F32,
}

impl From<Precision> for Dtype {
    fn from(_: Precision) -> Dtype {
        Dtype::F32
    }
}

/// Exact GELU: `x/2 * (1 + erf(x / sqrt 2))`.
pub fn gelu(x: f64) -> f64 {
    0.5 * x * (1.0 + libm::erf(x / std::f64::consts::SQRT_2))
}

/// `act` applied to `x`.
pub fn activate(act: Activation, x: f64) -> f64 {
    match act {
        Activation::None => x,
        Activation::Gelu => gelu(x),
        Activation::Tanh => x.tanh(),
        Activation::Relu => x.max(0.0),
    }
}

impl Kernels for Reference {
    type Tensor = Matrix;
    type Table = Matrix;
    type Linear = Linear;
    type Batch = HostBatch;
    type Precision = Precision;

    fn precision(&self) -> Precision {
        Precision::F32
    }

    fn describe(&self) -> String {
        "reference (plain loops, f32, one thread)".into()
    }

    fn adapter(&self) -> String {
        super::cpu_name()
    }

    fn tensor_dims(&self, x: &Matrix) -> Dims {
        [x.rows, x.cols]
    }

    fn table_dims(&self, t: &Matrix) -> Dims {
        [t.rows, t.cols]
    }

    fn linear_dims(&self, w: &Linear) -> Dims {
        [w.weight.rows, w.weight.cols]
    }

    fn batch_dims(&self, b: &HostBatch) -> BatchDims {
        b.dims
    }

    fn to_host(&self, x: &Matrix) -> Result<Vec<f32>> {
        Ok(x.data.clone())
    }

    fn tensor_unchecked(&self, data: &[f32], rows: usize, cols: usize) -> Result<Matrix> {
        Matrix::new(data.to_vec(), rows, cols)
    }

    fn table_unchecked(&self, data: &[f32], rows: usize, cols: usize) -> Result<Matrix> {
        Matrix::new(data.to_vec(), rows, cols)
    }

    fn linear_unchecked(
        &self,
        weight: &[f32],
        bias: &[f32],
        out: usize,
        inp: usize,
    ) -> Result<Linear> {
        Ok(Linear {
            weight: Matrix::new(weight.to_vec(), out, inp)?,
            bias: bias.to_vec(),
        })
    }

    fn batch_unchecked(&self, batch: &PackedBatch, dims: BatchDims) -> Result<HostBatch> {
        Ok(HostBatch {
            packed: batch.clone(),
            dims,
        })
    }

    fn embed_unchecked(
        &self,
        batch: &HostBatch,
        word: &Matrix,       // [vocab, h]
        position: &Matrix,   // [max_positions, h]
        token_type: &Matrix, // [type_vocab, h]
    ) -> Result<Matrix> {
        let batch = &batch.packed;
        let mut out = Matrix::zeros(batch.tokens(), word.cols); // [T, h]
        for t in 0..batch.tokens() {
            let w = word.row(batch.ids[t] as usize);
            let p = position.row(batch.position_ids[t] as usize);
            let ty = token_type.row(batch.type_ids[t] as usize);
            for (c, o) in out.row_mut(t).iter_mut().enumerate() {
                *o = w[c] + p[c] + ty[c];
            }
        }
        Ok(out)
    }

    fn matmul_unchecked(&self, x: &Matrix, w: &Linear, act: Activation) -> Result<Matrix> {
        // x: [T, in]  w.weight: [out, in]  w.bias: [out]  ->  [T, out]
        let mut out = Matrix::zeros(x.rows, w.weight.rows);
        for t in 0..x.rows {
            let xr = x.row(t);
            for o in 0..w.weight.rows {
                let wr = w.weight.row(o);
                let mut acc = w.bias[o] as f64;
                for i in 0..x.cols {
                    acc += xr[i] as f64 * wr[i] as f64;
                }
                out.data[t * out.cols + o] = activate(act, acc) as f32;
            }
        }
        Ok(out)
    }

    fn layer_norm_unchecked(
        &self,
        x: &Matrix,                // [T, h]
        residual: Option<&Matrix>, // [T, h]
        gamma: &Matrix,            // [1, h]
        beta: &Matrix,             // [1, h]
        eps: f32,
    ) -> Result<Matrix> {
        let h = x.cols;
        let mut out = Matrix::zeros(x.rows, h);
        let mut v = vec![0f64; h];
        for t in 0..x.rows {
            for (c, a) in v.iter_mut().enumerate() {
                *a = x.row(t)[c] as f64 + residual.map_or(0.0, |r| r.row(t)[c] as f64);
            }
            let mean = v.iter().sum::<f64>() / h as f64;
            let var = v.iter().map(|a| (a - mean) * (a - mean)).sum::<f64>() / h as f64;
            let inv = 1.0 / (var + eps as f64).sqrt();
            for (c, o) in out.row_mut(t).iter_mut().enumerate() {
                *o = ((v[c] - mean) * inv * gamma.data[c] as f64 + beta.data[c] as f64) as f32;
            }
        }
        Ok(out)
    }

    fn attention_unchecked(&self, qkv: &Matrix, batch: &HostBatch, heads: usize) -> Result<Matrix> {
        // qkv: [T, 3h] -> [T, h]
        let batch = &batch.packed;
        let h = qkv.cols / 3;
        let d = h / heads;
        let scale = 1.0 / (d as f64).sqrt();
        let mut out = Matrix::zeros(qkv.rows, h);
        for s in 0..batch.sequences() {
            let seq = batch.range(s);
            let mut scores = vec![0f64; seq.len()];
            for head in 0..heads {
                let (q0, k0, v0) = (head * d, h + head * d, 2 * h + head * d);
                for t in seq.clone() {
                    let q = &qkv.row(t)[q0..q0 + d];
                    for (score, u) in scores.iter_mut().zip(seq.clone()) {
                        let k = &qkv.row(u)[k0..k0 + d];
                        let dot: f64 = (0..d).map(|i| q[i] as f64 * k[i] as f64).sum();
                        *score = dot * scale;
                    }
                    let max = scores.iter().cloned().fold(f64::NEG_INFINITY, f64::max);
                    scores.iter_mut().for_each(|a| *a = (*a - max).exp());
                    let sum: f64 = scores.iter().sum();
                    for i in 0..d {
                        let mut acc = 0f64;
                        for (p, u) in scores.iter().zip(seq.clone()) {
                            acc += p * qkv.row(u)[v0 + i] as f64;
                        }
                        out.data[t * h + head * d + i] = (acc / sum) as f32;
                    }
                }
            }
        }
        Ok(out)
    }

    fn gather_rows_unchecked(&self, x: &Matrix, rows: &[u32]) -> Result<Matrix> {
        let mut out = Matrix::zeros(rows.len(), x.cols);
        for (i, &r) in rows.iter().enumerate() {
            out.row_mut(i).copy_from_slice(x.row(r as usize));
        }
        Ok(out)
    }

    fn mean_pool_unchecked(&self, x: &Matrix, batch: &HostBatch) -> Result<Matrix> {
        // x: [T, h] -> [B, h]
        let batch = &batch.packed;
        let mut out = Matrix::zeros(batch.sequences(), x.cols);
        for s in 0..batch.sequences() {
            let seq = batch.range(s);
            for c in 0..x.cols {
                let sum: f64 = seq.clone().map(|t| x.row(t)[c] as f64).sum();
                out.data[s * x.cols + c] = (sum / seq.len() as f64) as f32;
            }
        }
        Ok(out)
    }

    fn l2_normalize_unchecked(&self, x: &Matrix) -> Result<Matrix> {
        let mut out = x.clone();
        for r in 0..x.rows {
            let norm = x
                .row(r)
                .iter()
                .map(|&a| a as f64 * a as f64)
                .sum::<f64>()
                .sqrt();
            let inv = 1.0 / norm.max(1e-12);
            out.row_mut(r)
                .iter_mut()
                .for_each(|a| *a = (*a as f64 * inv) as f32);
        }
        Ok(out)
    }
}
