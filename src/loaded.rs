//! A model loaded for inference: its config and tokenizer, its encoder and heads resident on
//! one backend, and the batch loop every API shares: FlagEmbedding's order of work (sort by
//! length, longest first; cut into batches; restore the input order), with packed batches.
//!
//! The backend is chosen at run time ([`Device`]), so the resident encoder and heads sit
//! behind an object-safe trait ([`Resident`]) over the generic `OnBackend<B>`. Below that line
//! everything is generic over [`Backend`]; above it (the model APIs, the CLI) there are host
//! vectors only. A loaded model is `Send + Sync`: any number of threads may run it at once.

use crate::backend::cpu::{Cpu, CpuPrecision};
use crate::backend::gpu::{Gpu, GpuOptions, GpuPrecision};
use crate::backend::reference::Reference;
use crate::backend::{Backend, Counters, Dtype, PackedBatch};
use crate::config::{Head as ConfigHead, ModelConfig, Pooling};
use crate::device::Device;
use crate::error::{Error, Result};
use crate::heads::{Head, HeadSet, HeadSources, Heads, Hidden, Outputs, Request};
use crate::model::{self, Checkpoint, Encoder, Params};
use crate::source::ModelFiles;
use crate::tokenize::{Encoded, Tokenizer};
use crate::weights::Weights;

/// A model's files loaded onto a backend, with its tokenizer.
pub(crate) struct LoadedModel {
    resident: Box<dyn Resident>,
    tokenizer: Tokenizer,
    /// The repository name (`bge-m3`), from which FlagEmbedding infers defaults.
    name: String,
    /// The pooling `1_Pooling/config.json` declares, if the file exists.
    file_pooling: Option<Pooling>,
}

impl LoadedModel {
    pub fn load(
        files: &ModelFiles,
        device: Device,
        dtype: Dtype,
        threads: Option<usize>,
    ) -> Result<Self> {
        let config = ModelConfig::from_file(&files.config)?;
        let special: Vec<&std::path::Path> =
            files.special_tokens.iter().map(|p| p.as_path()).collect();
        let tokenizer = Tokenizer::from_file(&files.tokenizer)?.with_special_tokens(&special)?;
        let file_pooling = match &files.pooling {
            Some(p) => crate::config::read_pooling(p)?,
            None => None,
        };
        let weights = Weights::open(&files.weights)?;
        let checkpoint = Checkpoint::new(&weights)?;
        let head_file = |p: &Option<std::path::PathBuf>| -> Result<Option<Weights>> {
            p.as_ref()
                .map(|p| Weights::open(std::slice::from_ref(p)))
                .transpose()
        };
        let (sparse, colbert) = (
            head_file(&files.sparse_linear)?,
            head_file(&files.colbert_linear)?,
        );
        let classifier = checkpoint.unprefixed();
        let heads = HeadSources {
            sparse: sparse
                .as_ref()
                .map(|w| (w as &dyn Params, tokenizer.sparse_skip_ids().to_vec())),
            colbert: colbert.as_ref().map(|w| w as _),
            classifier: match config.head {
                ConfigHead::Classifier { num_labels } => Some((&classifier as _, num_labels)),
                ConfigHead::Encoder => None,
            },
        };
        let resident = load_resident(device, dtype, threads, &config, &checkpoint, heads)?;
        Ok(LoadedModel {
            resident,
            tokenizer,
            name: files.name.clone(),
            file_pooling,
        })
    }

    pub fn config(&self) -> &ModelConfig {
        self.resident.config()
    }

    pub fn tokenizer(&self) -> &Tokenizer {
        &self.tokenizer
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    pub fn file_pooling(&self) -> Option<Pooling> {
        self.file_pooling
    }

    /// The backend and device, in words.
    pub fn describe(&self) -> String {
        self.resident.describe()
    }

    /// The heads the model has.
    pub fn heads(&self) -> HeadSet {
        self.resident.heads()
    }

    /// `max_length`, checked against the model's positions (2 ..= max tokens).
    pub fn check_max_length(&self, max_length: usize) -> Result<usize> {
        let c = self.config();
        if max_length < 2 || max_length > c.max_tokens() {
            return Err(Error::InvalidArgument(format!(
                "max length {max_length} is outside 2..={}, the range this model's {} position embeddings allow",
                c.max_tokens(),
                c.max_position_embeddings
            )));
        }
        Ok(max_length)
    }

    /// Runs `request` on every sequence, in batches of at most `batch_size` sequences (and
    /// what the device holds), longest first; outputs come back in input order. `progress`
    /// gets the number of sequences of each finished batch. A sequence's outputs do not depend
    /// on the batch it falls in.
    pub fn run(
        &self,
        encoded: &[Encoded],
        request: &Request,
        batch_size: usize,
        progress: &mut dyn FnMut(usize),
    ) -> Result<Outputs> {
        if batch_size == 0 {
            return Err(Error::InvalidArgument(
                "batch size must be at least 1".into(),
            ));
        }
        let n = encoded.len();
        let size = |asked: bool| if asked { n } else { 0 };
        let heads = request.heads;
        let mut all = Outputs {
            dense: vec![Vec::new(); size(heads.contains(Head::Dense))],
            sparse: vec![Default::default(); size(heads.contains(Head::Sparse))],
            colbert: vec![Vec::new(); size(heads.contains(Head::Colbert))],
            logits: vec![Vec::new(); size(heads.contains(Head::Classifier))],
        };
        // Passes in flight share the device's memory: each gets its share of the tokens.
        let in_flight = self.resident.passes_in_flight().max(1);
        let max_tokens = (self.resident.max_batch_tokens() / in_flight).max(1);
        let batches = plan_batches(encoded, batch_size, max_tokens);
        let forward = |batch: &[usize]| {
            let seqs: Vec<&Encoded> = batch.iter().map(|&i| &encoded[i]).collect();
            self.resident
                .forward(&model::pack(self.config(), &seqs)?, request)
        };
        let mut gather = |batch: &[usize], out: Outputs| {
            scatter(&mut all.dense, batch, out.dense);
            scatter(&mut all.sparse, batch, out.sparse);
            scatter(&mut all.colbert, batch, out.colbert);
            scatter(&mut all.logits, batch, out.logits);
            progress(batch.len());
        };
        let in_flight = in_flight.min(batches.len());
        if in_flight <= 1 {
            for batch in &batches {
                gather(batch, forward(batch)?);
            }
            return Ok(all);
        }
        // Several passes in flight (the GPU): while one batch runs on the device, another
        // thread packs, uploads and records the next, and reads its results back when it is
        // done. Each batch's results are its own (batch invariance), whichever thread runs it.
        let next = std::sync::atomic::AtomicUsize::new(0);
        let failed = std::sync::atomic::AtomicBool::new(false);
        std::thread::scope(|scope| {
            let (tx, rx) = std::sync::mpsc::channel();
            for _ in 0..in_flight {
                let (tx, next, failed, batches, forward) =
                    (tx.clone(), &next, &failed, &batches, &forward);
                scope.spawn(move || {
                    use std::sync::atomic::Ordering::Relaxed;
                    while !failed.load(Relaxed) {
                        let Some(batch) = batches.get(next.fetch_add(1, Relaxed)) else {
                            break;
                        };
                        let out = forward(batch);
                        failed.fetch_or(out.is_err(), Relaxed);
                        if tx.send((batch, out)).is_err() {
                            break;
                        }
                    }
                });
            }
            drop(tx);
            for (batch, out) in rx {
                match out {
                    Ok(out) => gather(batch, out),
                    Err(e) => return Err(e),
                }
            }
            Ok(())
        })?;
        Ok(all)
    }
}

/// An encoder and its heads resident on some backend.
pub(crate) trait Resident: Send + Sync {
    fn config(&self) -> &ModelConfig;

    /// The backend, device and precision, in words.
    fn describe(&self) -> String;

    /// The processor it runs on (CPU model or GPU adapter).
    fn adapter(&self) -> String;

    /// The precision the backend stores weights in.
    fn dtype(&self) -> Dtype;

    /// The heads the model has.
    fn heads(&self) -> HeadSet;

    /// The most tokens one forward pass may hold on this device.
    fn max_batch_tokens(&self) -> usize;

    /// How many forward passes [`LoadedModel::run`] keeps in flight at once.
    fn passes_in_flight(&self) -> usize;

    /// The backend's peak bytes of intermediate tensors, where it keeps count (GPU).
    fn activation_peak_bytes(&self) -> Option<u64>;

    /// The backend's counts of recorded work, where it keeps them (GPU).
    fn counters(&self) -> Option<Counters>;

    /// Starts the device's own timing of its work, where it can (GPU timestamp queries).
    fn enable_gpu_timing(&self) -> bool;

    /// Device seconds since [`Resident::enable_gpu_timing`], where measured.
    fn gpu_seconds(&self) -> Option<f64>;

    /// The kernel version of each shape class run so far, where there is a choice (GPU).
    fn kernel_choices(&self) -> Vec<(String, String)>;

    /// Runs the encoder once on `batch` and the heads `request` asks for.
    fn forward(&self, batch: &PackedBatch, request: &Request) -> Result<Outputs>;
}

/// Loads an encoder with parameters `params` and its heads onto the backend `device` names,
/// storing weights in `dtype`; `threads` sizes the CPU backend's pool (all cores by default).
pub(crate) fn load_resident(
    device: Device,
    dtype: Dtype,
    threads: Option<usize>,
    config: &ModelConfig,
    params: &dyn Params,
    heads: HeadSources,
) -> Result<Box<dyn Resident>> {
    Ok(match device.resolve() {
        Device::Gpu(adapter) => {
            let precision = GpuPrecision::try_from(dtype)?;
            let gpu = Gpu::new(GpuOptions {
                adapter,
                precision,
                ..GpuOptions::default()
            })?;
            Box::new(OnBackend::load(gpu, config, params, heads)?)
        }
        Device::Reference => {
            if dtype != Dtype::F32 {
                return Err(Error::InvalidArgument(format!(
                    "the reference backend computes in f32 only, not {dtype}"
                )));
            }
            Box::new(OnBackend::load(Reference, config, params, heads)?)
        }
        Device::Cpu | Device::Auto => {
            let precision = CpuPrecision::try_from(dtype)?;
            let cpu = Cpu::new(threads)?.with_precision(precision)?;
            Box::new(OnBackend::load(cpu, config, params, heads)?)
        }
    })
}

/// An encoder, its heads and the backend holding their weights.
struct OnBackend<B: Backend> {
    backend: B,
    encoder: Encoder<B>,
    heads: Heads<B>,
}

impl<B: Backend> OnBackend<B> {
    fn load(
        backend: B,
        config: &ModelConfig,
        params: &dyn Params,
        heads: HeadSources,
    ) -> Result<Self> {
        let d = config.head_dim();
        if !backend.head_dims().contains(d) {
            let allowed = backend.head_dims();
            return Err(Error::InvalidArgument(format!(
                "the model's head size {d} is not supported by {}: it takes multiples of {} up to {}",
                backend.describe(),
                allowed.multiple,
                allowed.max
            )));
        }
        let encoder = Encoder::load(&backend, config, params)?;
        let heads = Heads::load(&backend, config, heads)?;
        backend.prepare(config)?;
        Ok(OnBackend {
            backend,
            encoder,
            heads,
        })
    }
}

impl<B: Backend> Resident for OnBackend<B> {
    fn config(&self) -> &ModelConfig {
        &self.encoder.config
    }

    fn describe(&self) -> String {
        self.backend.describe()
    }

    fn adapter(&self) -> String {
        self.backend.adapter()
    }

    fn dtype(&self) -> Dtype {
        self.backend.precision().into()
    }

    fn heads(&self) -> HeadSet {
        self.heads.available()
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

    fn passes_in_flight(&self) -> usize {
        self.backend.passes_in_flight()
    }

    fn counters(&self) -> Option<Counters> {
        self.backend.counters()
    }

    fn enable_gpu_timing(&self) -> bool {
        self.backend.enable_gpu_timing()
    }

    fn gpu_seconds(&self) -> Option<f64> {
        self.backend.gpu_seconds()
    }

    fn kernel_choices(&self) -> Vec<(String, String)> {
        self.backend.kernel_choices()
    }

    fn forward(&self, batch: &PackedBatch, request: &Request) -> Result<Outputs> {
        let b = &self.backend;
        b.run_pass(|| {
            let on_device = b.batch(batch)?;
            // CLS pooling and the classifier read the first token only; nothing else needs the
            // last layer's other rows.
            let all_tokens = request.needs_all_tokens();
            let states = match all_tokens {
                true => self.encoder.forward(b, &on_device)?, // [T, h]
                false => self
                    .encoder
                    .forward_rows(b, &on_device, &batch.first_rows())?, // [B, h]
            };
            let hidden = Hidden {
                states,
                all_tokens,
                batch,
                on_device: &on_device,
            };
            self.heads.forward(b, &hidden, request)
        })
    }
}

/// Puts a batch's results (in batch order) at their input positions.
fn scatter<T>(all: &mut [T], batch: &[usize], values: Vec<T>) {
    for (&i, v) in batch.iter().zip(values) {
        all[i] = v;
    }
}

/// Index batches: longest sequences first, at most `batch_size` sequences and `max_tokens`
/// tokens each (a sequence longer than `max_tokens` still gets a batch of its own).
fn plan_batches(encoded: &[Encoded], batch_size: usize, max_tokens: usize) -> Vec<Vec<usize>> {
    let mut order: Vec<usize> = (0..encoded.len()).collect();
    order.sort_by_key(|&i| std::cmp::Reverse(encoded[i].len()));
    let mut batches = Vec::new();
    let mut current: Vec<usize> = Vec::new();
    let mut tokens = 0;
    for i in order {
        let n = encoded[i].len();
        if !current.is_empty() && (current.len() == batch_size || tokens + n > max_tokens) {
            batches.push(std::mem::take(&mut current));
            tokens = 0;
        }
        current.push(i);
        tokens += n;
    }
    if !current.is_empty() {
        batches.push(current);
    }
    batches
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn batches_are_longest_first_and_bounded() {
        let enc = |n: usize| Encoded {
            ids: vec![1; n],
            type_ids: vec![0; n],
            untruncated_len: n,
        };
        let e = [enc(3), enc(9), enc(5), enc(2), enc(7)];
        assert_eq!(
            plan_batches(&e, 2, usize::MAX),
            [vec![1, 4], vec![2, 0], vec![3]]
        );
        assert_eq!(plan_batches(&e, 10, 12), [vec![1], vec![4, 2], vec![0, 3]]);
        assert!(plan_batches(&[], 4, 100).is_empty());
    }
}
