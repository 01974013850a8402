//! The self-check and autotuner, in the spirit of CLBlast's tuner and Triton's autotune: the
//! first time a shape class (a linear layer's `[out, in]`, an attention's heads and head size)
//! runs on an adapter, every version of its ladder that the adapter supports is
//!
//! 1. **checked**: run once on small random operands with the class's real inner dimension and
//!    compared with version 1 under the project's one kernel tolerance
//!    ([`Tolerance::kernel`]). A version that disagrees is disabled, with a one-line note. A
//!    version that cannot be tested anywhere but on a user's GPU (the cooperative-matrix ones)
//!    is therefore never trusted blindly;
//! 2. **timed**: the survivors run on the class's real shape, with as many rows as fit a time
//!    budget of [`BUDGET`] per class, and the fastest is chosen.
//!
//! The choice is cached per adapter, driver, kernel sources, precision and class in the user's
//! cache directory ([`cache_path`]), so later runs skip both steps.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};

use super::context::Context;
use super::ladder::{Class, Version};
use super::{Gpu, GpuPrecision, attention, matmul};
use crate::backend::{Activation, Kernels, PackedBatch, Tolerance};
use crate::error::Result;
use crate::internals::SplitMix64;

/// Time the timing step may take per shape class.
pub const BUDGET: Duration = Duration::from_millis(250);

/// What became of one version when a class was tuned.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Outcome {
    /// The adapter or the precision cannot run it (the reason).
    Unsupported(String),
    /// It does not take this shape (e.g. an inner dimension it needs a multiple of).
    Unfit(String),
    /// It disagreed with version 1 (the first element out of tolerance) and is disabled.
    Rejected(String),
    /// It agreed with version 1 and took this many microseconds (whole) per run at `rows` rows.
    Timed {
        /// Microseconds per run.
        micros: f64,
        /// Rows (matmul: tokens; attention: tokens in sequences of 128) it was timed at.
        rows: usize,
    },
}

/// How a class's version was chosen.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Source {
    /// `BGE_KERNELS` (or [`GpuOptions::kernels`](super::GpuOptions)) asked for it.
    Forced,
    /// Checked and timed in this process.
    Tuned,
    /// Read from the cache of an earlier run.
    Cached,
}

impl Source {
    /// `forced`, `tuned` or `cached`.
    pub fn name(self) -> &'static str {
        match self {
            Source::Forced => "forced",
            Source::Tuned => "tuned",
            Source::Cached => "cached",
        }
    }
}

/// The version chosen for one class, and what became of each version.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Tuning {
    /// The chosen version.
    pub version: u8,
    /// How.
    pub source: Source,
    /// Each version's outcome (empty when forced).
    pub outcomes: BTreeMap<u8, Outcome>,
}

impl Tuning {
    /// The version `forced` asks for, as it applies to `class`.
    pub fn forced(class: Class, forced: u8) -> Tuning {
        Tuning {
            version: super::ladder::fitting(class.op(), forced, class).number,
            source: Source::Forced,
            outcomes: BTreeMap::new(),
        }
    }

    /// One line per version, for `--verbose` and `bge devices --tune`.
    pub fn lines(&self, class: Class) -> Vec<String> {
        let mut lines = vec![format!(
            "{class}: version {} ({})",
            self.version,
            self.source.name()
        )];
        for (n, outcome) in &self.outcomes {
            let text = match outcome {
                Outcome::Unsupported(why) => format!("unsupported: {why}"),
                Outcome::Unfit(why) => format!("not for this shape: {why}"),
                Outcome::Rejected(why) => format!("REJECTED by the self-check: {why}"),
                Outcome::Timed { micros, rows } => {
                    let flops = class_flops(class, *rows, SEQ);
                    format!(
                        "{micros:.0} us at {rows} rows, {:.1} GFLOP/s",
                        flops / micros / 1e3
                    )
                }
            };
            lines.push(format!("  {} {n}: {text}", class.op()));
        }
        lines
    }
}

/// Floating-point operations of one run of `class` at `rows` rows.
fn class_flops(class: Class, rows: usize, seq: usize) -> f64 {
    match class {
        Class::Matmul { n, k } => 2.0 * (rows * n * k) as f64,
        // Q K^T and P V over sequences of `seq` tokens.
        Class::Attention { heads, d } => 4.0 * (rows * seq * heads * d) as f64,
    }
}

/// Sequence length of the timed attention runs (BGE's benchmark shape, 256 x 128).
const SEQ: usize = 128;

/// Deterministic values uniform in `[-scale, scale)`.
fn random(n: usize, scale: f32, seed: u64) -> Vec<f32> {
    let mut rng = SplitMix64(seed);
    (0..n)
        .map(|_| (rng.unit_f32() * 2.0 - 1.0) * scale)
        .collect()
}

/// Operands of one class at some number of rows, ready to run any version on.
enum Operands {
    Matmul {
        x: super::GpuTensor,
        w: super::GpuLinear,
        m: usize,
    },
    Attention {
        qkv: super::GpuTensor,
        batch: super::GpuBatch,
        heads: usize,
        h: usize,
    },
}

impl Operands {
    /// Small operands for the self-check: awkward row counts, the real inner dimension.
    fn check(gpu: &Gpu, class: Class) -> Result<Operands> {
        match class {
            // More than one 128-row and 128-column tile, neither a multiple of a tile.
            Class::Matmul { n, k } => Self::matmul(gpu, 195, n.min(131), k),
            Class::Attention { heads, d } => Self::attention(gpu, &[1, 70, 130], heads, d),
        }
    }

    fn matmul(gpu: &Gpu, m: usize, n: usize, k: usize) -> Result<Operands> {
        let x = gpu.tensor_unchecked(&random(m * k, 1.0, 1), m, k)?;
        let weight = random(n * k, 1.0 / (k as f32).sqrt(), 2);
        let w = gpu.linear_unchecked(&weight, &random(n, 0.5, 3), n, k)?;
        Ok(Operands::Matmul { x, w, m })
    }

    fn attention(gpu: &Gpu, lens: &[usize], heads: usize, d: usize) -> Result<Operands> {
        let h = heads * d;
        let mut packed = PackedBatch {
            offsets: vec![0],
            ..PackedBatch::default()
        };
        for &len in lens {
            packed.ids.extend(std::iter::repeat_n(1, len));
            packed.type_ids.extend(std::iter::repeat_n(0, len));
            packed.position_ids.extend(0..len as u32);
            packed.offsets.push(packed.ids.len() as u32);
        }
        let tokens = packed.tokens();
        let dims = packed.dims()?;
        let batch = gpu.batch_unchecked(&packed, dims)?;
        // Scores of a few units: softmax neither uniform nor one-hot.
        let qkv = gpu.tensor_unchecked(&random(tokens * 3 * h, 2.0, 4), tokens, 3 * h)?;
        Ok(Operands::Attention {
            qkv,
            batch,
            heads,
            h,
        })
    }

    /// Operands of the class's real shape with `rows` rows (attention: in sequences of `seq`).
    fn timed(gpu: &Gpu, class: Class, rows: usize, seq: usize) -> Result<Operands> {
        match class {
            Class::Matmul { n, k } => Self::matmul(gpu, rows, n, k),
            Class::Attention { heads, d } => {
                Self::attention(gpu, &vec![seq; rows.div_ceil(seq)], heads, d)
            }
        }
    }

    /// Records one run of `version` with epilogue `act` into a new output.
    fn run(&self, gpu: &Gpu, version: &Version, act: Activation) -> Result<super::GpuTensor> {
        match self {
            Operands::Matmul { x, w, m } => {
                let out = gpu.scratch(*m, w.out, "tuning output")?;
                matmul::record(gpu, version, x.raw(), w, act, *m, out.raw())?;
                Ok(out)
            }
            Operands::Attention {
                qkv,
                batch,
                heads,
                h,
            } => {
                let out = gpu.scratch(qkv.rows, *h, "tuning output")?;
                attention::record(gpu, version, qkv.raw(), batch, *heads, *h, out.raw())?;
                Ok(out)
            }
        }
    }

    fn epilogues(&self) -> &'static [Activation] {
        match self {
            Operands::Matmul { .. } => &[
                Activation::None,
                Activation::Gelu,
                Activation::Tanh,
                Activation::Relu,
            ],
            Operands::Attention { .. } => &[Activation::None],
        }
    }
}

/// Compares `version` with `reference` (version 1) on the self-check operands: `Err` with the
/// first element out of tolerance.
pub fn self_check(
    gpu: &Gpu,
    class: Class,
    version: &Version,
    reference: &Version,
) -> Result<std::result::Result<(), String>> {
    let operands = Operands::check(gpu, class)?;
    let tolerance = Tolerance::kernel(gpu.options.precision.into());
    for &act in operands.epilogues() {
        let want = gpu.to_host(&operands.run(gpu, reference, act)?)?;
        let got = gpu.to_host(&operands.run(gpu, version, act)?)?;
        if let Some(i) = tolerance.first_violation(&got, &want) {
            return Ok(Err(format!(
                "{class}{}: element {i} is {} where version {} gives {}",
                match act {
                    Activation::None => String::new(),
                    other => format!(" {other:?}"),
                },
                got[i],
                reference.number,
                want[i]
            )));
        }
    }
    Ok(Ok(()))
}

/// Seconds per run of `version` on `operands`: `runs` runs in one submission, after a warm-up.
fn time(gpu: &Gpu, operands: &Operands, version: &Version, runs: usize) -> Result<f64> {
    drop(operands.run(gpu, version, Activation::None)?);
    gpu.finish()?;
    let start = Instant::now();
    for _ in 0..runs {
        drop(operands.run(gpu, version, Activation::None)?);
    }
    gpu.finish()?;
    Ok(start.elapsed().as_secs_f64() / runs as f64)
}

/// Checks and times every version of `class`'s ladder on `gpu`.
pub fn tune(gpu: &Gpu, class: Class) -> Result<Tuning> {
    let versions: Vec<&Version> = class.op().versions().iter().collect();
    tune_among(gpu, class, &versions)
}

/// [`tune`] among `versions`, the first of which is the reference the others are checked
/// against (tests add a deliberately wrong version here).
pub fn tune_among(gpu: &Gpu, class: Class, versions: &[&Version]) -> Result<Tuning> {
    let ctx = gpu.context();
    let precision = gpu.options.precision;
    let reference = versions[0];
    let mut outcomes = BTreeMap::new();
    let mut candidates = vec![reference];
    for &v in &versions[1..] {
        let outcome = if let Err(why) = v.runs_on(ctx, precision) {
            Outcome::Unsupported(why)
        } else if !v.fits(class) {
            Outcome::Unfit(format!(
                "needs an inner dimension that is a multiple of {}",
                v.needs.inner_multiple
            ))
        } else {
            // A version that fails to compile or run on this driver is disabled like one that
            // computes wrong numbers.
            let verdict = self_check(gpu, class, v, reference).unwrap_or_else(|e| {
                let _ = ctx.check();
                Err(format!("{class}: it failed to run: {e}"))
            });
            match verdict {
                Ok(()) => {
                    candidates.push(v);
                    continue;
                }
                Err(why) => {
                    ctx.note(format!("{} {} disabled: {why}", class.op(), v.number));
                    Outcome::Rejected(why)
                }
            }
        };
        outcomes.insert(v.number, outcome);
    }

    // Rows: start small and double while the slowest plausible candidate's runs fit the
    // budget, up to a real batch (256 texts x 128 tokens is 32768 rows; 8192 keeps it shorter).
    let fastest_guess = candidates.last().copied().unwrap_or(reference);
    let per_candidate = BUDGET.as_secs_f64() / candidates.len() as f64;
    let mut rows = 128;
    loop {
        let operands = Operands::timed(gpu, class, rows, SEQ)?;
        let seconds = time(gpu, &operands, fastest_guess, 1)?;
        if rows >= 8192 || seconds * 2.0 * 3.0 > per_candidate {
            break;
        }
        rows *= 2;
    }
    let operands = Operands::timed(gpu, class, rows, SEQ)?;
    let mut best: Option<(f64, u8)> = None;
    for v in candidates {
        let once = match time(gpu, &operands, v, 1) {
            Ok(s) => s,
            Err(e) if v.number != reference.number => {
                let _ = ctx.check();
                let why = format!("{class}: it failed to run at {rows} rows: {e}");
                ctx.note(format!("{} {} disabled: {why}", class.op(), v.number));
                outcomes.insert(v.number, Outcome::Rejected(why));
                continue;
            }
            Err(e) => return Err(e),
        };
        // Repeat within the budget, unless one run shows it far behind the best so far.
        let far_behind = best.is_some_and(|(s, _)| once > 4.0 * s);
        let runs = ((per_candidate / once.max(1e-6)) as usize).clamp(1, 20);
        let seconds = if runs > 1 && !far_behind {
            time(gpu, &operands, v, runs)?
        } else {
            once
        };
        outcomes.insert(
            v.number,
            Outcome::Timed {
                micros: (seconds * 1e6).round(),
                rows,
            },
        );
        if best.is_none_or(|(s, _)| seconds < s) {
            best = Some((seconds, v.number));
        }
    }
    let version = best.map_or(1, |(_, n)| n);
    Ok(Tuning {
        version,
        source: Source::Tuned,
        outcomes,
    })
}

/// The classes of a model's encoder: its four linear layers and its attention.
pub fn classes(config: &crate::ModelConfig) -> Vec<Class> {
    let (h, ffn) = (config.hidden_size, config.intermediate_size);
    vec![
        Class::Matmul { n: 3 * h, k: h },
        Class::Matmul { n: h, k: h },
        Class::Matmul { n: ffn, k: h },
        Class::Matmul { n: h, k: ffn },
        Class::Attention {
            heads: config.num_heads,
            d: config.head_dim(),
        },
    ]
}

/// One version timed on one class at some rows (`bge bench --op`).
#[derive(Clone, Copy, Debug)]
pub struct Measurement {
    /// Median seconds per run.
    pub seconds: f64,
    /// Floating-point operations per run.
    pub flops: f64,
    /// Bytes each run must read and write at least (operands once, results once).
    pub bytes: f64,
}

/// Times `version` on `class` at `rows` rows (attention: in sequences of `seq`): `iters`
/// submissions of back-to-back runs (as many as take about 20 ms), the clock stopped only once
/// the device has finished each submission; the median.
pub fn measure(
    gpu: &Gpu,
    class: Class,
    version: &Version,
    rows: usize,
    seq: usize,
    iters: usize,
) -> Result<Measurement> {
    let operands = Operands::timed(gpu, class, rows, seq)?;
    let once = time(gpu, &operands, version, 1)?;
    let runs = ((0.02 / once.max(1e-7)) as usize).clamp(1, 100);
    let mut times: Vec<f64> = (0..iters.max(1))
        .map(|_| time(gpu, &operands, version, runs))
        .collect::<Result<_>>()?;
    times.sort_by(f64::total_cmp);
    let rows = match &operands {
        Operands::Matmul { m, .. } => *m,
        Operands::Attention { qkv, .. } => qkv.rows,
    };
    let e = gpu.options.precision.bytes() as f64;
    let bytes = match class {
        Class::Matmul { n, k } => e * (rows * k + n * k + rows * n) as f64 + 4.0 * n as f64,
        Class::Attention { heads, d } => e * (rows * 4 * heads * d) as f64,
    };
    Ok(Measurement {
        seconds: times[times.len() / 2],
        flops: class_flops(class, rows, seq),
        bytes,
    })
}

/// `bge devices --tune`: checks and times every version at `config`'s classes on adapter
/// `adapter` (`None`: the best) in `dtype` (`None`: f32, then f16 where the adapter has it),
/// refreshes the cache, and returns the table.
pub fn table(
    adapter: Option<usize>,
    config: &crate::ModelConfig,
    dtype: Option<crate::backend::Dtype>,
) -> Result<String> {
    let ctx = Context::shared(adapter)?;
    let precisions = match dtype {
        Some(d) => vec![GpuPrecision::try_from(d)?],
        None if ctx.has_f16() => vec![GpuPrecision::F32, GpuPrecision::F16],
        None => vec![GpuPrecision::F32],
    };
    let mut out = String::new();
    for precision in precisions {
        let gpu = Gpu::new(super::GpuOptions {
            adapter,
            precision,
            kernels: super::KernelChoice::TUNED,
        })?;
        let dtype: crate::backend::Dtype = precision.into();
        out.push_str(&format!("tuned on {} in {dtype}:\n", ctx.describe()));
        for class in classes(config) {
            let t = gpu.retune(class)?;
            for line in t.lines(class) {
                out.push_str(&format!("  {line}\n"));
            }
        }
    }
    match cache_path() {
        Some(p) => out.push_str(&format!("choices cached in {}\n", p.display())),
        None => out.push_str("no cache directory (set BGE_CACHE_DIR): choices not cached\n"),
    }
    Ok(out)
}

/// Where choices are cached: `$BGE_CACHE_DIR`, else the platform's cache directory
/// (`$XDG_CACHE_HOME/bge`, `~/.cache/bge`, `%LOCALAPPDATA%\bge`), file `kernels.json`.
pub fn cache_path() -> Option<PathBuf> {
    let var = |name| {
        std::env::var_os(name)
            .filter(|v| !v.is_empty())
            .map(PathBuf::from)
    };
    let dir = var("BGE_CACHE_DIR")
        .or_else(|| var("XDG_CACHE_HOME").map(|d| d.join("bge")))
        .or_else(|| var("HOME").map(|d| d.join(".cache").join("bge")))
        .or_else(|| var("LOCALAPPDATA").map(|d| d.join("bge")))?;
    Some(dir.join("kernels.json"))
}

/// The cache key of `class` at `precision` on `ctx`: the adapter, its driver, bge's version and
/// a hash of every kernel source, so that a new driver or an edited kernel is tuned afresh.
pub fn cache_key(ctx: &Context, precision: GpuPrecision, class: Class) -> String {
    use std::hash::{Hash, Hasher};
    // FNV-1a: stable across runs and Rust versions, unlike DefaultHasher's promise.
    struct Fnv(u64);
    impl Hasher for Fnv {
        fn finish(&self) -> u64 {
            self.0
        }
        fn write(&mut self, bytes: &[u8]) {
            for &b in bytes {
                self.0 = (self.0 ^ b as u64).wrapping_mul(0x100000001b3);
            }
        }
    }
    let mut h = Fnv(0xcbf29ce484222325);
    for k in super::KERNELS {
        k.source.hash(&mut h);
    }
    // The Rust side of each version (tiles, needs) and the shader compiler's version.
    for op in super::Op::ALL {
        format!("{:?}", op.versions()).hash(&mut h);
    }
    "wgpu 30.0.2".hash(&mut h);
    let i = &ctx.info;
    format!(
        "{} [{:?} {:04x}:{:04x}] {} {} | bge {} kernels {:016x} | {} | {class}",
        i.name,
        i.backend,
        i.vendor,
        i.device,
        i.driver,
        i.driver_info,
        env!("CARGO_PKG_VERSION"),
        h.finish(),
        Into::<crate::backend::Dtype>::into(precision),
    )
}

/// The cache's entries, each as JSON: one that does not parse as a [`Tuning`] is skipped by
/// [`cached`] but kept by [`store`] (it may be another bge version's).
fn read_cache(path: &std::path::Path) -> BTreeMap<String, serde_json::Value> {
    std::fs::read(path)
        .ok()
        .and_then(|bytes| serde_json::from_slice(&bytes).ok())
        .unwrap_or_default()
}

/// The cached tuning of `key`, if any.
pub fn cached(key: &str) -> Option<Tuning> {
    let mut t: Tuning = serde_json::from_value(read_cache(&cache_path()?).remove(key)?).ok()?;
    t.source = Source::Cached;
    Some(t)
}

/// Adds `tuning` under `key` to the cache (written to a temporary file and renamed, so that a
/// reader never sees half a file). Failing to write is not an error: the next run tunes again.
pub fn store(key: &str, tuning: &Tuning) {
    let Some(path) = cache_path() else { return };
    let mut all = read_cache(&path);
    all.insert(
        key.to_owned(),
        serde_json::to_value(tuning).expect("tunings serialise"),
    );
    let Some(dir) = path.parent() else { return };
    // Unique per process and call: two writers never share a temporary file. (Two processes
    // storing at once may still lose one's entry: it is tuned again next time.)
    static WRITES: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
    let n = WRITES.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let tmp = dir.join(format!("kernels.json.{}.{n}", std::process::id()));
    let written = std::fs::create_dir_all(dir)
        .and_then(|()| {
            std::fs::write(
                &tmp,
                serde_json::to_vec_pretty(&all).expect("tunings serialise"),
            )
        })
        .and_then(|()| std::fs::rename(&tmp, &path));
    if written.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
}
