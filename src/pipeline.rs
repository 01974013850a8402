//! A model resident on one backend, behind an object-safe interface so that the device can be
//! chosen at run time (`--device`). Everything below this line is generic over [`Backend`];
//! everything above it (the embedder API, the CLI) sees host vectors only.

use std::str::FromStr;

use crate::backend::gpu::{self, Gpu, GpuOptions};
use crate::backend::reference::Reference;
use crate::backend::{Backend, Dtype, PackedBatch};
use crate::config::{ModelConfig, Pooling};
use crate::error::{Error, Result};
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

/// A loaded model on some backend.
pub trait Pipeline {
    /// The backend, device and precision, in words.
    fn describe(&self) -> String;

    /// The processor it runs on (CPU model or GPU adapter).
    fn adapter(&self) -> String;

    fn config(&self) -> &ModelConfig;

    /// The most tokens one forward pass may hold on this device.
    fn max_batch_tokens(&self) -> usize;

    /// `[B][h]` sentence vectors of a batch: pooled, and L2-normalised if `normalize`.
    fn dense(
        &self,
        batch: &PackedBatch,
        pooling: Pooling,
        normalize: bool,
    ) -> Result<Vec<Vec<f32>>>;
}

/// Loads a model's encoder onto the backend `device` names.
pub fn load(
    device: Device,
    dtype: Dtype,
    config: &ModelConfig,
    params: &dyn Params,
) -> Result<Box<dyn Pipeline>> {
    let device = match device {
        Device::Auto if gpu::context::hardware_gpu_present() => Device::Gpu(None),
        Device::Auto => Device::Cpu,
        other => other,
    };
    match (device, dtype) {
        (Device::Gpu(adapter), dtype) => {
            let gpu = Gpu::new(GpuOptions {
                adapter,
                dtype,
                ..GpuOptions::default()
            })?;
            Ok(Box::new(OnBackend::load(gpu, config, params)?))
        }
        (_, Dtype::F16) => Err(Error::InvalidArgument(
            "--dtype f16 needs a GPU (--device gpu); the CPU backends compute in f32".into(),
        )),
        (_, Dtype::F32) => Ok(Box::new(OnBackend::load(Reference, config, params)?)),
    }
}

/// An encoder and the backend holding its weights.
pub struct OnBackend<B: Backend> {
    pub backend: B,
    pub encoder: Encoder<B>,
}

impl<B: Backend> OnBackend<B> {
    pub fn load(backend: B, config: &ModelConfig, params: &dyn Params) -> Result<Self> {
        let encoder = Encoder::load(&backend, config, params)?;
        Ok(OnBackend { backend, encoder })
    }
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

    fn max_batch_tokens(&self) -> usize {
        // The widest activation per token: QKV (3h) or the FFN's intermediate.
        let c = &self.encoder.config;
        let widest = (3 * c.hidden_size).max(c.intermediate_size);
        self.backend.max_tensor_elements() / widest
    }

    fn dense(
        &self,
        batch: &PackedBatch,
        pooling: Pooling,
        normalize: bool,
    ) -> Result<Vec<Vec<f32>>> {
        let b = &self.backend;
        let on_device = b.batch(batch)?;
        let hidden = self.encoder.forward(b, &on_device)?; // [T, h]
        let pooled = match pooling {
            Pooling::Cls => b.gather_rows(&hidden, &batch.first_rows())?,
            Pooling::Mean => b.mean_pool(&hidden, &on_device)?,
        }; // [B, h]
        let out = if normalize {
            b.l2_normalize(&pooled)?
        } else {
            pooled
        };
        let h = self.encoder.config.hidden_size;
        Ok(b.to_host(&out)?.chunks(h).map(<[f32]>::to_vec).collect())
    }
}
