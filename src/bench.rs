//! `bge bench`: the encoder timed on the same work as `shared/tools/peers/peer_bench.py`
//! (token ids `[CLS] random>=1000 ... [SEP]` from SplitMix64, CLS pooling, L2 normalisation),
//! reported with the same JSON fields so the two compare line by line.

use std::path::PathBuf;
use std::time::Instant;

use serde_json::json;

use crate::backend::gpu::{Gpu, GpuOptions, GpuPrecision, KernelChoice, Op, tune};
use crate::backend::{Dtype, PackedBatch};
use crate::config::{Arch, ModelConfig, Pooling, Shape};
use crate::device::Device;
use crate::error::{Error, Result};
use crate::heads::{Head, HeadSet, HeadSources, Request};
use crate::loaded::load_resident;
use crate::model::{Checkpoint, RandomParams, SplitMix64};
use crate::source::ModelFiles;
use crate::weights::Weights;

#[derive(Clone, Debug)]
pub struct BenchSpec {
    /// Random weights at this shape (ignored when `model` is given, except as the label).
    pub shape: Option<Shape>,
    /// A real model directory instead of random weights.
    pub model: Option<PathBuf>,
    pub batch: usize,
    pub seq: usize,
    /// Sequence lengths uniform in `[max(seq/4, 2), seq]` instead of all `seq`.
    pub ragged: bool,
    pub device: Device,
    pub dtype: Dtype,
    pub threads: Option<usize>,
    pub warmup: usize,
    pub iters: usize,
    pub seed: u64,
    /// Runs only the first this many layers (activation memory per layer is the same for all,
    /// so one layer measures it cheaply on slow devices).
    pub layers: Option<usize>,
}

/// Runs the benchmark and returns its one JSON line.
pub fn run(spec: &BenchSpec) -> Result<serde_json::Value> {
    if spec.batch == 0 || spec.iters == 0 {
        return Err(Error::InvalidArgument(
            "the batch and the iterations must be at least 1".into(),
        ));
    }
    if spec.layers == Some(0) {
        return Err(Error::InvalidArgument(
            "the layers must be at least 1: a benchmark times the encoder's layers".into(),
        ));
    }
    let device = spec.device.resolve();
    let (label, config, pipeline) = match (&spec.model, spec.shape) {
        (Some(dir), shape) => {
            let files = ModelFiles::from_dir(dir)?;
            let mut config = ModelConfig::from_file(&files.config)?;
            config.num_layers = spec.layers.unwrap_or(config.num_layers);
            let weights = Weights::open(&files.weights)?;
            let p = load_resident(
                device,
                spec.dtype,
                spec.threads,
                &config,
                &Checkpoint::new(&weights)?,
                HeadSources::default(),
            )?;
            let label = shape.map_or(files.name.clone(), |s| s.name().to_owned());
            (label, config, p)
        }
        (None, Some(shape)) => {
            let mut config = shape.config();
            config.num_layers = spec.layers.unwrap_or(config.num_layers);
            let p = load_resident(
                device,
                spec.dtype,
                spec.threads,
                &config,
                &RandomParams { seed: spec.seed },
                HeadSources::default(),
            )?;
            (shape.name().to_owned(), config, p)
        }
        (None, None) => {
            return Err(Error::InvalidArgument(
                "a benchmark needs a shape or a model".into(),
            ));
        }
    };
    if spec.seq < 2 || spec.seq > config.max_tokens() {
        return Err(Error::InvalidArgument(format!(
            "sequence length {} is outside 2..={} for this shape",
            spec.seq,
            config.max_tokens()
        )));
    }
    let (batch, lens) = inputs(&config, spec.batch, spec.seq, spec.ragged, spec.seed)?;
    // FlagEmbedding's dense output: CLS pooling, L2-normalised.
    let request = Request {
        heads: HeadSet::from(Head::Dense),
        pooling: Pooling::Cls,
        normalize: true,
    };
    let (loaded_rss, load_peak) = (rss_bytes("VmRSS:"), rss_bytes("VmHWM:"));
    // From here the high-water mark covers only the forward passes (Linux >= 4.0).
    let run_peak_known = std::fs::write("/proc/self/clear_refs", "5").is_ok();
    let mut checksum = 0.0;
    for _ in 0..spec.warmup {
        pipeline.forward(&batch, &request)?;
    }
    let mut times = Vec::with_capacity(spec.iters);
    let mut gpu_times = Vec::with_capacity(spec.iters);
    let mut per_pass = None;
    pipeline.enable_gpu_timing();
    for _ in 0..spec.iters {
        let before = (pipeline.counters(), pipeline.gpu_seconds());
        let start = Instant::now();
        let out = pipeline.forward(&batch, &request)?;
        times.push(start.elapsed().as_secs_f64());
        per_pass = before.0.zip(pipeline.counters()).map(|(a, b)| b - a);
        if let Some((a, b)) = before.1.zip(pipeline.gpu_seconds()) {
            gpu_times.push(b - a);
        }
        checksum = out.dense.iter().flatten().map(|&v| v as f64).sum::<f64>();
    }
    let run_peak = rss_bytes("VmHWM:");
    times.sort_by(f64::total_cmp);
    let median = times[times.len() / 2];
    gpu_times.sort_by(f64::total_cmp);
    let gpu_median = gpu_times.get(gpu_times.len() / 2).copied();
    let tokens: usize = lens.iter().sum();
    let flops: f64 = lens.iter().map(|&n| config.flops(n)).sum();
    // The threads doing the work: the CPU backend's pool, one host thread otherwise.
    let threads = match device {
        Device::Cpu => spec
            .threads
            .unwrap_or_else(|| std::thread::available_parallelism().map_or(1, |n| n.get())),
        _ => 1,
    };
    Ok(json!({
        "system": "bge",
        "device": device_name(device),
        "adapter": pipeline.adapter(),
        "backend": pipeline.describe(),
        "shape": label,
        "batch": spec.batch,
        "seq": spec.seq,
        "ragged": spec.ragged,
        "dtype": pipeline.dtype().name(),
        "threads": threads,
        "median_s": median,
        "min_s": times[0],
        "iters": times.len(),
        "tokens_per_s": tokens as f64 / median,
        "padded_tokens_per_s": (spec.batch * spec.seq) as f64 / median,
        "gflops": flops / median / 1e9,
        "checksum": checksum,
        "weights": if spec.model.is_some() { "real" } else { "random" },
        "layers": config.num_layers,
        // Peak resident memory of the whole process (loading included), what it held once
        // the model was loaded, and its peak during the forward passes.
        "peak_rss_bytes": load_peak.max(run_peak),
        "loaded_rss_bytes": loaded_rss,
        "run_peak_rss_bytes": run_peak.filter(|_| run_peak_known),
        "device_activation_peak_bytes": pipeline.activation_peak_bytes(),
        // GPU: kernel launches in one forward pass, the compute passes they were recorded in
        // and the bind groups it had to make (after the first pass of a shape: none), and the
        // kernel version each shape class ran with.
        "dispatches_per_pass": per_pass.map(|c| c.dispatches),
        "compute_passes_per_pass": per_pass.map(|c| c.compute_passes),
        "bind_groups_made_per_pass": per_pass.map(|c| c.bind_groups_made),
        // The GPU's own time for a forward pass (timestamp queries at the start and end of its
        // compute passes), where the adapter has them: median over the iterations.
        "gpu_median_s": gpu_median,
        "kernels": pipeline.kernel_choices().into_iter().collect::<std::collections::BTreeMap<_, _>>(),
    }))
}

/// `bge bench --op`: every version of `op`'s ladder on the GPU, at each of the shape's classes
/// (its linear layers, or its attention) with `batch * seq` rows: one JSON line per version
/// and class, with its time, GFLOP/s, GB/s and whether it agrees with version 1 (the
/// self-check); versions this adapter cannot run say why instead.
pub fn run_ops(spec: &BenchSpec, op: Op) -> Result<Vec<serde_json::Value>> {
    let Device::Gpu(adapter) = spec.device.resolve() else {
        return Err(Error::InvalidArgument(
            "bench --op times the GPU's kernels: use --device gpu".into(),
        ));
    };
    let shape = spec.shape.ok_or_else(|| {
        Error::InvalidArgument("bench --op needs --shape (the classes to time)".into())
    })?;
    if spec.batch == 0 || spec.seq == 0 {
        return Err(Error::InvalidArgument(
            "the batch and the sequence length must be at least 1".into(),
        ));
    }
    let gpu = Gpu::new(GpuOptions {
        adapter,
        precision: GpuPrecision::try_from(spec.dtype)?,
        kernels: KernelChoice::TUNED,
    })?;
    let rows = spec.batch * spec.seq;
    let mut lines = Vec::new();
    for class in tune::classes(&shape.config())
        .into_iter()
        .filter(|c| c.op() == op)
    {
        for version in op.versions() {
            let mut line = json!({
                "system": "bge",
                "op": op.name(),
                "version": version.number,
                "kernel": version.kernel.name,
                "class": class.to_string(),
                "shape": shape.name(),
                "dtype": spec.dtype.name(),
                "adapter": gpu.context().describe(),
                "rows": rows,
                "seq": spec.seq,
            });
            let skip = version
                .runs_on(gpu.context(), gpu.options().precision)
                .err()
                .or_else(|| (!version.fits(class)).then(|| "does not take this shape".into()));
            if let Some(why) = skip {
                line["skipped"] = why.into();
                lines.push(line);
                continue;
            }
            let agrees = tune::self_check(&gpu, class, version, &op.versions()[0])?;
            let m = tune::measure(&gpu, class, version, rows, spec.seq, spec.iters)?;
            line["agrees_with_version_1"] = agrees.is_ok().into();
            if let Err(why) = agrees {
                line["disagreement"] = why.into();
            }
            line["median_s"] = m.seconds.into();
            line["gflops"] = (m.flops / m.seconds / 1e9).into();
            line["gbps"] = (m.bytes / m.seconds / 1e9).into();
            lines.push(line);
        }
    }
    Ok(lines)
}

/// The peers' inputs: per sequence `[CLS] ids uniform in [1000, vocab) [SEP]`, lengths `seq`
/// or uniform in `[max(seq/4, 2), seq]`, all from one SplitMix64 stream.
pub fn inputs(
    config: &ModelConfig,
    batch: usize,
    seq: usize,
    ragged: bool,
    seed: u64,
) -> Result<(PackedBatch, Vec<usize>)> {
    let (cls, sep) = match config.arch {
        Arch::Bert => (101, 102),
        Arch::XlmRoberta => (0, 2),
    };
    let vocab = config.vocab_size as u64;
    let first_plain = 1000.min(vocab - 1);
    let mut rng = SplitMix64(seed);
    let mut seqs = Vec::with_capacity(batch);
    for _ in 0..batch {
        let n = if ragged {
            rng.range((seq / 4).max(2) as u64, seq as u64) as usize
        } else {
            seq
        };
        let ids: Vec<u32> = (0..n)
            .map(|t| match t {
                0 => cls,
                t if t == n - 1 => sep,
                _ => rng.range(first_plain, vocab - 1) as u32,
            })
            .collect();
        seqs.push(crate::tokenize::Encoded {
            type_ids: vec![0; n],
            untruncated_len: n,
            ids,
        });
    }
    let refs: Vec<_> = seqs.iter().collect();
    let lens = seqs.iter().map(|s| s.len()).collect();
    Ok((crate::model::pack(config, &refs)?, lens))
}

fn device_name(device: Device) -> &'static str {
    match device {
        Device::Gpu(_) => "gpu",
        _ => "cpu",
    }
}

/// A line of `/proc/self/status` in bytes (Linux): `VmRSS:` the resident memory now,
/// `VmHWM:` its peak.
fn rss_bytes(field: &str) -> Option<u64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find(|l| l.starts_with(field))?;
    let kib: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kib * 1024)
}
