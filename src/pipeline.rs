//! A model (encoder and heads) resident on one backend, behind an object-safe interface so that the device can be
//! chosen at run time (`--device`). Everything below this line is generic over [`Backend`];
//! everything above it (the embedder API, the CLI) sees host vectors only.

use std::str::FromStr;

use crate::backend::cpu::Cpu;
use crate::backend::gpu::{self, Gpu, GpuOptions};
use crate::backend::reference::Reference;
use crate::backend::{Activation, Backend, Dtype, PackedBatch};
use crate::config::{ModelConfig, Pooling};
use crate::error::{Error, Result};
use crate::heads::{HeadParams, Heads};
use crate::model::{Encoder, Params};

/// Where to run: `auto`, `cpu`, `reference`, `gpu` or `gpu:N`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub enum Device {
    /// A hardware GPU if one is present, otherwise the CPU.
    #[default]
    Auto,
    /// The CPU.
    Cpu,
    /// The plain-loop reference backend (slow; the specification the others are tested against).
    Reference,
    /// A GPU through wgpu: the first hardware adapter, or adapter `N` of `bge devices`.
    Gpu(Option<usize>),
}

impl Device {
    /// `Auto` made concrete: a hardware GPU if one is present, otherwise the CPU.
    pub fn resolve(self) -> Device {
        match self {
            Device::Auto if gpu::context::hardware_gpu_present() => Device::Gpu(None),
            Device::Auto => Device::Cpu,
            other => other,
        }
    }
}

impl FromStr for Device {
    type Err = Error;

    fn from_str(s: &str) -> Result<Self> {
        match s {
            "auto" => Ok(Device::Auto),
            "cpu" => Ok(Device::Cpu),
            "reference" => Ok(Device::Reference),
            "gpu" => Ok(Device::Gpu(None)),
            _ => s
                .strip_prefix("gpu:")
                .and_then(|n| n.parse().ok())
                .map(|n| Device::Gpu(Some(n)))
                .ok_or_else(|| {
                    Error::InvalidArgument(format!(
                        "unknown device `{s}` (expected auto, cpu, reference, gpu or gpu:N)"
                    ))
                }),
        }
    }
}

/// What one forward pass should produce; every output comes from the same encoder pass.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Request {
    /// Sentence vectors with this pooling, L2-normalised if the flag is set.
    pub dense: Option<(Pooling, bool)>,
    /// Per-token weights of the sparse head, `relu(sparse_linear(h_t))`.
    pub token_weights: bool,
    /// ColBERT vectors: `normalize(colbert_linear(h_t))` for every token but the first.
    pub colbert: bool,
    /// Classifier logits of the first token (rerankers).
    pub logits: bool,
}

/// The host-side results of a [`Request`], one entry per sequence of the batch.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Outputs {
    /// `[B][h]`
    pub dense: Vec<Vec<f32>>,
    /// `[B][len]`
    pub token_weights: Vec<Vec<f32>>,
    /// `[B][len - 1][h]`
    pub colbert: Vec<Vec<Vec<f32>>>,
    /// `[B][labels]`
    pub logits: Vec<Vec<f32>>,
}

/// A loaded model on some backend.
pub trait Pipeline {
    /// The backend, device and precision, in words.
    fn describe(&self) -> String;

    /// The processor it runs on (CPU model or GPU adapter).
    fn adapter(&self) -> String;

    fn config(&self) -> &ModelConfig;

    /// Which heads the model has: (sparse, colbert, classifier).
    fn heads(&self) -> (bool, bool, bool);

    /// The most tokens one forward pass may hold on this device.
    fn max_batch_tokens(&self) -> usize;

    /// The backend's peak bytes of intermediate tensors, where it keeps count (GPU).
    fn activation_peak_bytes(&self) -> Option<u64>;

    /// Runs the encoder once on `batch` and computes what `request` asks for.
    fn run(&self, batch: &PackedBatch, request: &Request) -> Result<Outputs>;
}

/// Loads a model's encoder and heads onto the backend `device` names; `threads` sizes the CPU
/// backend's pool (all cores by default).
pub fn load(
    device: Device,
    dtype: Dtype,
    threads: Option<usize>,
    config: &ModelConfig,
    params: &dyn Params,
    heads: &HeadParams,
) -> Result<Box<dyn Pipeline>> {
    match (device.resolve(), dtype) {
        (Device::Gpu(adapter), dtype) => {
            let gpu = Gpu::new(GpuOptions {
                adapter,
                dtype,
                ..GpuOptions::default()
            })?;
            Ok(Box::new(OnBackend::load(gpu, config, params, heads)?))
        }
        (_, Dtype::F16) => Err(Error::InvalidArgument(
            "--dtype f16 needs a GPU (--device gpu); the CPU takes f32 or bf16".into(),
        )),
        (Device::Reference, Dtype::F32) => {
            Ok(Box::new(OnBackend::load(Reference, config, params, heads)?))
        }
        (Device::Reference, Dtype::Bf16) => Err(Error::InvalidArgument(
            "the reference backend computes in f32 only".into(),
        )),
        (_, dtype) => {
            let cpu = Cpu::new(threads)?;
            let cpu = match dtype {
                Dtype::Bf16 => cpu.bf16()?,
                _ => cpu,
            };
            Ok(Box::new(OnCpu(OnBackend::load(
                cpu, config, params, heads,
            )?)))
        }
    }
}

/// The CPU pipeline, whose forward pass runs inside the backend's thread pool: the calling
/// thread hands the pass over once, instead of once per operation (a wake-up of a sleeping
/// thread each time, ~100 of them per pass, which is a tenth of a short query's latency).
struct OnCpu(OnBackend<Cpu>);

impl Pipeline for OnCpu {
    fn describe(&self) -> String {
        self.0.describe()
    }

    fn adapter(&self) -> String {
        self.0.adapter()
    }

    fn config(&self) -> &ModelConfig {
        self.0.config()
    }

    fn heads(&self) -> (bool, bool, bool) {
        self.0.heads()
    }

    fn max_batch_tokens(&self) -> usize {
        self.0.max_batch_tokens()
    }

    fn activation_peak_bytes(&self) -> Option<u64> {
        self.0.activation_peak_bytes()
    }

    fn run(&self, batch: &PackedBatch, request: &Request) -> Result<Outputs> {
        self.0.backend.install(|| self.0.run(batch, request))
    }
}

/// An encoder, its heads and the backend holding their weights.
pub struct OnBackend<B: Backend> {
    pub backend: B,
    pub encoder: Encoder<B>,
    pub heads: Heads<B>,
}

impl<B: Backend> OnBackend<B> {
    pub fn load(
        backend: B,
        config: &ModelConfig,
        params: &dyn Params,
        heads: &HeadParams,
    ) -> Result<Self> {
        let encoder = Encoder::load(&backend, config, params)?;
        let heads = Heads::load(&backend, config, heads)?;
        Ok(OnBackend {
            backend,
            encoder,
            heads,
        })
    }
}

/// `0..n` as row indices.
fn identity(n: usize) -> Vec<u32> {
    (0..n as u32).collect()
}

/// Splits `[n][cols]` host values into rows.
fn rows(values: Vec<f32>, cols: usize) -> Vec<Vec<f32>> {
    values.chunks(cols.max(1)).map(<[f32]>::to_vec).collect()
}

fn missing_head(name: &str) -> Error {
    Error::InvalidArgument(format!("this model has no {name} head"))
}

impl<B: Backend> Pipeline for OnBackend<B> {
    fn describe(&self) -> String {
        self.backend.describe()
    }

    fn adapter(&self) -> String {
        self.backend.adapter()
    }

    fn config(&self) -> &ModelConfig {
        &self.encoder.config
    }

    fn heads(&self) -> (bool, bool, bool) {
        let h = &self.heads;
        (
            h.sparse.is_some(),
            h.colbert.is_some(),
            h.classifier.is_some(),
        )
    }

    fn max_batch_tokens(&self) -> usize {
        // The widest activation per token: QKV (3h) or the FFN's intermediate.
        let c = &self.encoder.config;
        let widest = (3 * c.hidden_size).max(c.intermediate_size);
        self.backend.max_tensor_elements() / widest
    }

    fn activation_peak_bytes(&self) -> Option<u64> {
        self.backend.activation_peak_bytes()
    }

    fn run(&self, batch: &PackedBatch, request: &Request) -> Result<Outputs> {
        let b = &self.backend;
        let h = self.encoder.config.hidden_size;
        let on_device = b.batch(batch)?;
        let mut out = Outputs::default();
        // CLS pooling and the classifier read the first token only; nothing else needs the
        // last layer's other rows.
        let first_only = !request.token_weights
            && !request.colbert
            && request.dense.is_none_or(|(p, _)| p == Pooling::Cls);
        let first = batch.first_rows();
        let hidden = if first_only {
            self.encoder.forward_rows(b, &on_device, &first)? // [B, h]
        } else {
            self.encoder.forward(b, &on_device)? // [T, h]
        };
        if let Some((pooling, normalize)) = request.dense {
            let pooled = match (pooling, first_only) {
                (Pooling::Cls, true) => b.gather_rows(&hidden, &identity(first.len()))?,
                (Pooling::Cls, false) => b.gather_rows(&hidden, &first)?,
                (Pooling::Mean, _) => b.mean_pool(&hidden, &on_device)?,
            }; // [B, h]
            let pooled = if normalize {
                b.l2_normalize(&pooled)?
            } else {
                pooled
            };
            out.dense = rows(b.to_host(&pooled)?, h);
        }
        if request.token_weights {
            let head = self
                .heads
                .sparse
                .as_ref()
                .ok_or_else(|| missing_head("sparse"))?;
            let weights = b.to_host(&b.matmul(&hidden, head, Activation::Relu)?)?; // [T]
            out.token_weights = (0..batch.sequences())
                .map(|s| weights[batch.range(s)].to_vec())
                .collect();
        }
        if request.colbert {
            let head = self
                .heads
                .colbert
                .as_ref()
                .ok_or_else(|| missing_head("ColBERT"))?;
            // Every token but each sequence's first ([CLS] / <s>), in order.
            let tokens: Vec<u32> = (0..batch.sequences())
                .flat_map(|s| batch.range(s).skip(1).map(|t| t as u32))
                .collect();
            let selected = b.gather_rows(&hidden, &tokens)?; // [T - B, h]
            let projected = b.matmul(&selected, head, Activation::None)?; // [T - B, dim]
            let mut vectors = rows(b.to_host(&b.l2_normalize(&projected)?)?, h).into_iter();
            out.colbert = (0..batch.sequences())
                .map(|s| vectors.by_ref().take(batch.range(s).len() - 1).collect())
                .collect();
        }
        if request.logits {
            let c = self
                .heads
                .classifier
                .as_ref()
                .ok_or_else(|| missing_head("classifier"))?;
            let cls_rows = if first_only {
                identity(first.len())
            } else {
                first
            };
            let first = b.gather_rows(&hidden, &cls_rows)?; // [B, h]
            let pooled = b.matmul(&first, &c.dense, Activation::Tanh)?; // [B, h]
            let logits = b.matmul(&pooled, &c.out_proj, Activation::None)?; // [B, labels]
            out.logits = rows(b.to_host(&logits)?, c.labels);
        }
        Ok(out)
    }
}
