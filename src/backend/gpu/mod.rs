//! The wgpu backend: every [`Backend`](super::Backend) operation as a WGSL compute shader from `shaders/`.
//!
//! Residency: weights are uploaded once; an operation only records a dispatch into the pending
//! compute pass, so a whole forward pass is one compute pass and one submission, made when
//! [`Kernels::to_host`] needs a result. Intermediate tensors come from a pool; pipelines are
//! compiled once per process ([`Context`]); parameter buffers and bind groups are made once
//! per model and batch shape and reused (keyed by their contents).
//!
//! Precision: with [`GpuPrecision::F16`] activations are stored as f16 between operations, as
//! well as the linear weights; sums, softmax and LayerNorm statistics stay f32 inside the
//! kernels. Each shader that stores activations declares `alias Act = f32;` once; its f16 build
//! ([`Kernel::source_for`]) is the same file with `Act` bound to `f16`.
//!
//! Kernel ladders: matmul and attention exist in numbered versions ([`ladder`]); which one runs
//! per shape is forced by `BGE_KERNELS` or chosen on this adapter by the self-check and tuner
//! ([`tune`]).
//!
//! Threads: the pending encoder sits behind a mutex held only while one command is recorded
//! or the encoder is submitted, so concurrent forward passes interleave their commands on the
//! one queue, each in its own order, and reach the queue in the order they were recorded; a
//! readback submits what is pending and waits without the lock. A pooled buffer goes back to
//! the pool only after its last command is recorded, so whichever pass takes it next records
//! and submits its commands after that one. wgpu reports errors (a lost device, an invalid
//! command) for the whole device, not per thread: whichever call checks next fails with them.
//!
//! Each shader has a Rust twin module holding its `Params` struct (`#[repr(C)]`, the layout
//! of the shader's uniform), its [`Kernel`] description and the dispatch arithmetic.

mod attention;
mod context;
mod embed;
pub mod ladder;
mod layer_norm;
mod matmul;
mod pool;
mod rows;
pub mod tune;

use std::borrow::Cow;
use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use bytemuck::Pod;
use wgpu::util::DeviceExt;

use super::{Activation, BatchDims, Counters, Dims, Dtype, HeadDims, Kernels, PackedBatch};
use crate::error::{Error, Result};
use pool::{Pool, PooledBuffer};

pub use context::{Context, adapter_report, hardware_gpu_present, kernel_notes};
pub use ladder::{Class, KernelChoice, Op, Version};
pub use pool::PoolStats;
pub use tune::Tuning;

/// A shader and what the Rust side assumes about it (checked by `tests/shaders.rs`).
#[derive(Debug)]
pub struct Kernel {
    /// The shader's file name without `.wgsl`.
    pub name: &'static str,
    /// The WGSL source; the entry point is `main`.
    pub source: &'static str,
    /// The entry point's `@workgroup_size`, which the dispatch arithmetic relies on.
    pub workgroup_size: [u32; 3],
    /// `size_of` the Rust twin of the shader's `Params` uniform.
    pub params_size: usize,
}

impl Kernel {
    /// The line a shader storing activations declares their type with.
    pub const F32_STORAGE: &'static str = "alias Act = f32;";

    /// The shader built for `precision`: for f16, `enable f16;` first and `Act` bound to `f16`
    /// (shaders without `Act` are the same in both builds).
    pub fn source_for(&self, precision: GpuPrecision) -> Cow<'static, str> {
        match precision {
            GpuPrecision::F16 if self.source.contains(Self::F32_STORAGE) => Cow::Owned(format!(
                "enable f16;\n{}",
                self.source
                    .replacen(Self::F32_STORAGE, "alias Act = f16;", 1)
            )),
            _ => Cow::Borrowed(self.source),
        }
    }
}

/// Every kernel of the backend.
pub static KERNELS: &[&Kernel] = &[
    &embed::KERNEL,
    &embed::LAYER_NORM,
    &matmul::NAIVE,
    &matmul::TILED,
    &matmul::BLOCKED,
    &matmul::SUBGROUP,
    &matmul::COOP,
    &layer_norm::KERNEL,
    &attention::ONLINE,
    &attention::BLOCKED,
    &attention::COOP,
    &rows::GATHER,
    &rows::MEAN_POOL,
    &rows::L2_NORMALIZE,
];

/// How to build a [`Gpu`] backend.
#[derive(Clone, Copy, Debug)]
pub struct GpuOptions {
    /// Adapter index (as `bge devices` lists them); `None` picks the best adapter.
    pub adapter: Option<usize>,
    /// Storage of linear weights and activations.
    pub precision: GpuPrecision,
    /// Kernel versions forced per op; ops left open take `BGE_KERNELS`'s, else the tuner's.
    pub kernels: KernelChoice,
}

impl Default for GpuOptions {
    fn default() -> Self {
        GpuOptions {
            adapter: None,
            precision: GpuPrecision::F32,
            kernels: KernelChoice::TUNED,
        }
    }
}

/// What the GPU backend stores linear weights and activations in.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub enum GpuPrecision {
    /// f32 everywhere.
    #[default]
    F32,
    /// f16 weights and activations (SHADER_F16 needed): half their memory and traffic. Sums,
    /// softmax and LayerNorm statistics stay f32 inside the kernels; biases and embedding
    /// tables stay f32 (LayerNorm's gamma and beta are tensors: f16 too).
    F16,
}

impl GpuPrecision {
    /// Bytes per stored element.
    pub fn bytes(self) -> usize {
        match self {
            GpuPrecision::F32 => 4,
            GpuPrecision::F16 => 2,
        }
    }
}

impl From<GpuPrecision> for Dtype {
    fn from(p: GpuPrecision) -> Dtype {
        match p {
            GpuPrecision::F32 => Dtype::F32,
            GpuPrecision::F16 => Dtype::F16,
        }
    }
}

impl TryFrom<Dtype> for GpuPrecision {
    type Error = Error;

    fn try_from(d: Dtype) -> Result<Self> {
        match d {
            Dtype::F32 => Ok(GpuPrecision::F32),
            Dtype::F16 => Ok(GpuPrecision::F16),
            Dtype::Bf16 => Err(Error::InvalidArgument(
                "dtype bf16 is for the CPU backend; on a GPU use f16".into(),
            )),
        }
    }
}

/// The wgpu backend on one adapter. `Sync`: see the module's notes on threads.
pub struct Gpu {
    ctx: Arc<Context>,
    pool: Arc<Pool>,
    options: GpuOptions,
    /// Commands recorded since the last submission, by every thread using this backend.
    pending: Mutex<Option<Pending>>,
    /// Parameter buffers by contents, and bind groups by pipeline and buffers: a forward pass
    /// over a batch of a shape seen before creates neither.
    bindings: Mutex<Bindings>,
    /// Dispatches, compute passes and bind groups made so far.
    dispatches: AtomicU64,
    passes: AtomicU64,
    bind_groups_made: AtomicU64,
    /// The version each shape class has run with.
    chosen: Mutex<std::collections::BTreeMap<Class, Arc<Tuning>>>,
    /// GPU time of the compute passes, once [`Kernels::enable_gpu_timing`] turned it on.
    timing: Mutex<Option<Timing>>,
}

/// Timestamps written at the beginning and end of each compute pass, resolved and read back
/// after the submission ran. Exact for one thread's passes (as `bge bench` runs them); passes
/// of several threads share one compute pass and one pair of timestamps.
struct Timing {
    queries: wgpu::QuerySet,
    resolved: wgpu::Buffer,
    readback: wgpu::Buffer,
    /// A resolved pair awaits reading.
    pending: bool,
    /// Seconds summed over every pass read so far.
    seconds: f64,
}

/// The open command encoder and its one compute pass.
struct Pending {
    /// Ended (dropped) before the encoder records anything else or finishes.
    pass: Option<wgpu::ComputePass<'static>>,
    encoder: wgpu::CommandEncoder,
    /// A pass of this encoder wrote timestamps.
    timed: bool,
}

/// Bind groups and uniform buffers made so far (cleared when they pass [`Bindings::MAX`], so
/// that the buffers of batches long gone are not kept alive by them).
#[derive(Default)]
struct Bindings {
    uniforms: HashMap<Vec<u8>, wgpu::Buffer>,
    groups: HashMap<(wgpu::ComputePipeline, Vec<wgpu::Buffer>), wgpu::BindGroup>,
}

impl Bindings {
    const MAX: usize = 4096;
}

/// Whether a dispatch's bind group is kept for the next pass of the same shape.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Binding {
    /// Every buffer bound lives as long as the model or the pool (weights, pooled tensors):
    /// the bind group is cached and reused.
    Kept,
    /// A buffer of this batch only is bound (token ids, the attention block table, row
    /// indices): the bind group is made for this dispatch and not kept, so that it does not
    /// keep that buffer alive.
    Once,
}

/// A `[rows, cols]` matrix of the backend's precision in a GPU buffer.
pub struct GpuTensor {
    buffer: Buffer,
    rows: usize,
    cols: usize,
}

enum Buffer {
    /// Written by the host once (weights, inputs).
    Uploaded(wgpu::Buffer),
    /// Written by a kernel, recycled when dropped.
    Pooled(PooledBuffer),
}

impl GpuTensor {
    fn raw(&self) -> &wgpu::Buffer {
        match &self.buffer {
            Buffer::Uploaded(b) => b,
            Buffer::Pooled(b) => b.raw(),
        }
    }

    fn len(&self) -> usize {
        self.rows * self.cols
    }
}

/// An f32 embedding table. One larger than a storage binding (bge-m3's 250002 x 1024 f32
/// words are 1 GB; lavapipe and many integrated GPUs bind at most 128 MiB) stays in host
/// memory, and each batch's rows are gathered there and uploaded: `T * h` floats, negligible
/// next to the encoder's work.
pub enum GpuTable {
    /// In a GPU buffer.
    #[allow(missing_docs)]
    Resident {
        buffer: wgpu::Buffer,
        rows: usize,
        cols: usize,
    },
    /// In host memory, `[rows, cols]`.
    #[allow(missing_docs)]
    Host {
        data: Vec<f32>,
        rows: usize,
        cols: usize,
    },
}

/// A linear layer: weight `[out, in]` (the backend's precision) and bias `[out]` (f32).
pub struct GpuLinear {
    weight: wgpu::Buffer,
    bias: wgpu::Buffer,
    out: usize,
    inp: usize,
}

/// A packed batch on the GPU, with the attention kernel's table of 64-query blocks.
pub struct GpuBatch {
    /// `[T]` token ids, on the host too for tables kept there.
    host_ids: Vec<u32>,
    ids: wgpu::Buffer,
    positions: wgpu::Buffer,
    types: wgpu::Buffer,
    offsets: wgpu::Buffer,
    /// `[blocks]` of (sequence start, sequence length, first query, 0).
    blocks: wgpu::Buffer,
    block_count: usize,
    dims: BatchDims,
}

impl Gpu {
    /// The backend on the adapter `options` names (an error without one, or for f16 where the
    /// adapter lacks `SHADER_F16`).
    pub fn new(options: GpuOptions) -> Result<Self> {
        let ctx = Context::shared(options.adapter)?;
        if options.precision == GpuPrecision::F16 && !ctx.has_f16() {
            return Err(Error::Gpu(format!(
                "{} has no f16 shader support (SHADER_F16); use dtype f32",
                ctx.info.name
            )));
        }
        let options = GpuOptions {
            kernels: options.kernels.or(KernelChoice::from_env()?),
            ..options
        };
        for op in Op::ALL {
            if let Some(n) = options.kernels.get(op) {
                let v = op
                    .version(n)
                    .ok_or_else(|| Error::InvalidArgument(format!("{op} has no version {n}")))?;
                v.runs_on(&ctx, options.precision).map_err(|why| {
                    Error::Gpu(format!(
                        "{op} version {n} was forced, but it {why} ({})",
                        ctx.info.name
                    ))
                })?;
            }
        }
        Ok(Gpu {
            pool: Pool::new(ctx.clone()),
            ctx,
            options,
            pending: Mutex::new(None),
            bindings: Mutex::default(),
            dispatches: AtomicU64::new(0),
            passes: AtomicU64::new(0),
            bind_groups_made: AtomicU64::new(0),
            chosen: Mutex::default(),
            timing: Mutex::default(),
        })
    }

    /// The options it was made with (`kernels` including what `BGE_KERNELS` forces).
    pub fn options(&self) -> GpuOptions {
        self.options
    }

    /// The version that runs `class`: the forced one (or the highest lower one that takes the
    /// shape), else the cached choice, else the tuner's (which checks and times every version
    /// now, and caches its choice).
    pub fn version(&self, class: Class) -> Result<&'static Version> {
        let op = class.op();
        let mut chosen = self.chosen.lock().unwrap_or_else(|e| e.into_inner());
        let tuning = match chosen.get(&class) {
            Some(t) => t.clone(),
            None => {
                let t = self.tuning(class)?;
                if t.source == tune::Source::Forced {
                    // Tuned and cached choices are listed from the context's tunings.
                    let dtype: Dtype = self.options.precision.into();
                    self.ctx
                        .note(format!("{dtype} {class}: version {} (forced)", t.version));
                }
                chosen.insert(class, t.clone());
                t
            }
        };
        op.version(tuning.version)
            .ok_or_else(|| Error::Gpu(format!("{op} has no version {}", tuning.version)))
    }

    /// How `class`'s version is chosen (see [`Self::version`]).
    pub fn tuning(&self, class: Class) -> Result<Arc<Tuning>> {
        if let Some(n) = self.options.kernels.get(class.op()) {
            return Ok(Arc::new(Tuning::forced(class, n)));
        }
        let precision = self.options.precision;
        self.ctx.tuning(precision, class, || {
            let key = tune::cache_key(&self.ctx, precision, class);
            // A cached choice is used only if it still names a version that runs here and
            // takes this shape (the file may be stale, foreign or edited).
            let usable = |t: &Tuning| {
                class
                    .op()
                    .version(t.version)
                    .is_some_and(|v| v.fits(class) && v.runs_on(&self.ctx, precision).is_ok())
            };
            if let Some(t) = tune::cached(&key).filter(usable) {
                return Ok(t);
            }
            let t = tune::tune(self, class);
            // The tuner's operands are bound once: let their buffers go.
            self.forget_bindings();
            let t = t?;
            tune::store(&key, &t);
            Ok(t)
        })
    }

    /// Drops every cached bind group and parameter buffer (and with them the buffers they
    /// keep alive).
    fn forget_bindings(&self) {
        *self.bindings.lock().unwrap_or_else(|e| e.into_inner()) = Bindings::default();
    }

    /// Checks and times `class` afresh (ignoring this process's and the cache's choice), and
    /// caches the result: `bge devices --tune`.
    pub fn retune(&self, class: Class) -> Result<Arc<Tuning>> {
        let precision = self.options.precision;
        let t = tune::tune(self, class);
        self.forget_bindings();
        let t = Arc::new(t?);
        tune::store(&tune::cache_key(&self.ctx, precision, class), &t);
        self.ctx.set_tuning(precision, class, t.clone());
        Ok(t)
    }

    /// The device, its limits and features.
    pub fn context(&self) -> &Context {
        &self.ctx
    }

    /// Allocation statistics of intermediate tensors.
    pub fn pool_stats(&self) -> PoolStats {
        self.pool.stats()
    }

    /// Starts [`Self::pool_stats`]' peaks afresh (to measure one phase of work).
    pub fn reset_pool_peaks(&self) {
        self.pool.reset_peaks()
    }

    /// A buffer the host fills once, e.g. weights or token ids.
    fn upload(&self, bytes: &[u8], what: &str) -> Result<wgpu::Buffer> {
        // Whole 16-byte words, so that shaders may bind any tensor as an array of vec4.
        let size = (bytes.len() as u64).next_multiple_of(16).max(16);
        let usage = wgpu::BufferUsages::STORAGE
            | wgpu::BufferUsages::COPY_DST
            | wgpu::BufferUsages::COPY_SRC;
        let buffer = self.ctx.buffer(size, usage, what)?;
        let mut padded;
        let data = if bytes.len() as u64 == size {
            bytes
        } else {
            padded = bytes.to_vec();
            padded.resize(size as usize, 0);
            &padded
        };
        self.ctx.queue.write_buffer(&buffer, 0, data);
        Ok(buffer)
    }

    /// A `[rows, cols]` output tensor outside the pool, freed when dropped (the tuner's, whose
    /// sizes a pool would keep forever).
    fn scratch(&self, rows: usize, cols: usize, what: &str) -> Result<GpuTensor> {
        let bytes = (rows * cols * self.options.precision.bytes()) as u64;
        let usage = wgpu::BufferUsages::STORAGE | wgpu::BufferUsages::COPY_SRC;
        Ok(GpuTensor {
            buffer: Buffer::Uploaded(self.ctx.buffer(bytes.next_multiple_of(16), usage, what)?),
            rows,
            cols,
        })
    }

    /// A pooled `[rows, cols]` output tensor.
    fn output(&self, rows: usize, cols: usize, what: &str) -> Result<GpuTensor> {
        let bytes = rows * cols * self.options.precision.bytes();
        let buffer = self.pool.take(bytes as u64, what)?;
        Ok(GpuTensor {
            buffer: Buffer::Pooled(buffer),
            rows,
            cols,
        })
    }

    /// Records one dispatch of `kernel` specialised with `constants` (its `override`s) into
    /// the pending compute pass: binding 0 is `params`, bindings 1.. are `buffers`.
    fn dispatch(
        &self,
        kernel: &Kernel,
        constants: &[(&'static str, u32)],
        params: &impl Pod,
        buffers: &[&wgpu::Buffer],
        groups: [u32; 3],
        binding: Binding,
    ) -> Result<()> {
        let pipeline = self
            .ctx
            .pipeline(kernel, self.options.precision, constants)?;
        let bind_group = self.bind_group(
            kernel,
            &pipeline,
            bytemuck::bytes_of(params),
            buffers,
            binding,
        );
        // Cloned out of the lock: `submit` takes the pending lock first, then this one.
        let queries = (self.timing.lock().unwrap_or_else(|e| e.into_inner()))
            .as_ref()
            .map(|t| t.queries.clone());
        let timestamp_writes = queries
            .as_ref()
            .map(|query_set| wgpu::ComputePassTimestampWrites {
                query_set,
                beginning_of_pass_write_index: Some(0),
                end_of_pass_write_index: Some(1),
            });
        self.record(|pending| {
            if pending.pass.is_none() {
                pending.timed |= timestamp_writes.is_some();
                self.passes.fetch_add(1, Ordering::Relaxed);
            }
            let pass = pending.pass.get_or_insert_with(|| {
                pending
                    .encoder
                    .begin_compute_pass(&wgpu::ComputePassDescriptor {
                        label: Some("bge forward"),
                        timestamp_writes,
                    })
                    .forget_lifetime()
            });
            pass.set_pipeline(&pipeline);
            pass.set_bind_group(0, &bind_group, &[]);
            pass.dispatch_workgroups(groups[0], groups[1], groups[2]);
        });
        self.dispatches.fetch_add(1, Ordering::Relaxed);
        Ok(())
    }

    /// The bind group of `pipeline` with `params` (in a uniform buffer) and `buffers`, made on
    /// first use.
    fn bind_group(
        &self,
        kernel: &Kernel,
        pipeline: &wgpu::ComputePipeline,
        params: &[u8],
        buffers: &[&wgpu::Buffer],
        binding: Binding,
    ) -> wgpu::BindGroup {
        let mut bindings = self.bindings.lock().unwrap_or_else(|e| e.into_inner());
        if bindings.groups.len() + bindings.uniforms.len() > Bindings::MAX {
            *bindings = Bindings::default();
        }
        let device = &self.ctx.device;
        let uniform = bindings
            .uniforms
            .entry(params.to_vec())
            .or_insert_with(|| {
                device.create_buffer_init(&wgpu::util::BufferInitDescriptor {
                    label: Some("params"),
                    contents: params,
                    usage: wgpu::BufferUsages::UNIFORM,
                })
            })
            .clone();
        let all: Vec<wgpu::Buffer> = std::iter::once(&uniform)
            .chain(buffers.iter().copied())
            .cloned()
            .collect();
        let make = |all: &[wgpu::Buffer]| {
            self.bind_groups_made.fetch_add(1, Ordering::Relaxed);
            let entries: Vec<_> = all
                .iter()
                .enumerate()
                .map(|(i, b)| wgpu::BindGroupEntry {
                    binding: i as u32,
                    resource: b.as_entire_binding(),
                })
                .collect();
            device.create_bind_group(&wgpu::BindGroupDescriptor {
                label: Some(kernel.name),
                layout: &pipeline.get_bind_group_layout(0),
                entries: &entries,
            })
        };
        match binding {
            Binding::Once => make(&all),
            Binding::Kept => bindings
                .groups
                .entry((pipeline.clone(), all))
                .or_insert_with_key(|(_, all)| make(all))
                .clone(),
        }
    }

    /// Records commands into the pending encoder (holding its lock only meanwhile).
    fn record(&self, commands: impl FnOnce(&mut Pending)) {
        let mut pending = self.pending.lock().unwrap_or_else(|e| e.into_inner());
        let pending = pending.get_or_insert_with(|| Pending {
            pass: None,
            timed: false,
            encoder: self
                .ctx
                .device
                .create_command_encoder(&wgpu::CommandEncoderDescriptor { label: Some("bge") }),
        });
        commands(pending);
    }

    /// `count` workgroups folded into x and y under the per-dimension limit; shaders recover
    /// the flat index as `x + y * num_workgroups.x`.
    fn grid(&self, count: usize) -> [u32; 3] {
        let max = self.ctx.limits.max_compute_workgroups_per_dimension as usize;
        let x = count.clamp(1, max);
        [x as u32, count.div_ceil(x) as u32, 1]
    }

    /// Submits the pending commands (if any) and returns the submission's index. The lock is
    /// held until the queue has them, so that submissions keep the order of recording: a
    /// buffer another thread released into the pool, and that this thread's commands reuse,
    /// is never written by them before its previous user's commands have run.
    fn submit(&self) -> Option<wgpu::SubmissionIndex> {
        let mut pending = self.pending.lock().unwrap_or_else(|e| e.into_inner());
        let Pending {
            pass,
            mut encoder,
            timed,
        } = pending.take()?;
        drop(pass);
        // The timing lock is held until the queue has the copy, so that no other thread maps
        // the readback buffer in between.
        let mut timing = self.timing.lock().unwrap_or_else(|e| e.into_inner());
        if let (true, Some(t)) = (timed, timing.as_mut()) {
            encoder.resolve_query_set(&t.queries, 0..2, &t.resolved, 0);
            encoder.copy_buffer_to_buffer(&t.resolved, 0, &t.readback, 0, 16);
            t.pending = true;
        }
        Some(self.ctx.queue.submit([encoder.finish()]))
    }

    /// Waits until the GPU has run submission `index`, then reports any error it raised.
    fn wait(&self, index: Option<wgpu::SubmissionIndex>) -> Result<()> {
        if let Some(index) = index {
            self.ctx
                .device
                .poll(wgpu::PollType::Wait {
                    submission_index: Some(index),
                    timeout: None,
                })
                .map_err(|e| Error::Gpu(format!("waiting for the GPU: {e}")))?;
        }
        self.ctx.check()?;
        self.read_timestamps()
    }

    /// Adds the GPU time of the last timed pass, once its submission has run.
    fn read_timestamps(&self) -> Result<()> {
        let mut timing = self.timing.lock().unwrap_or_else(|e| e.into_inner());
        let Some(t) = timing.as_mut().filter(|t| t.pending) else {
            return Ok(());
        };
        t.pending = false;
        let (tx, rx) = std::sync::mpsc::channel();
        t.readback.map_async(wgpu::MapMode::Read, .., move |r| {
            let _ = tx.send(r);
        });
        self.ctx
            .device
            .poll(wgpu::PollType::wait_indefinitely())
            .map_err(|e| Error::Gpu(format!("waiting for the GPU: {e}")))?;
        rx.recv()
            .map_err(|_| Error::Gpu("timestamp readback was dropped".into()))?
            .map_err(|e| Error::Gpu(format!("timestamp readback: {e}")))?;
        let ticks: [u64; 2] = {
            let view = t
                .readback
                .get_mapped_range(..)
                .map_err(|e| Error::Gpu(format!("timestamp readback: {e}")))?;
            bytemuck::pod_read_unaligned(&view[..16])
        };
        t.readback.unmap();
        let period = self.ctx.queue.get_timestamp_period() as f64;
        t.seconds += ticks[1].saturating_sub(ticks[0]) as f64 * period * 1e-9;
        Ok(())
    }

    /// Submits what is pending and waits until the GPU has run it.
    pub fn finish(&self) -> Result<()> {
        let index = self.submit();
        self.wait(index)
    }
}

impl Kernels for Gpu {
    type Tensor = GpuTensor;
    type Table = GpuTable;
    type Linear = GpuLinear;
    type Batch = GpuBatch;
    type Precision = GpuPrecision;

    fn precision(&self) -> GpuPrecision {
        self.options.precision
    }

    fn describe(&self) -> String {
        let weights = match self.options.precision {
            GpuPrecision::F32 => "f32",
            GpuPrecision::F16 => "f16 weights and activations, f32 sums",
        };
        format!("wgpu on {} [{weights}]", self.ctx.describe())
    }

    fn adapter(&self) -> String {
        self.ctx.info.name.clone()
    }

    /// The attention kernels keep a query's head in registers as `vec4`s (at most 32 of them).
    fn head_dims(&self) -> HeadDims {
        attention::HEAD_DIMS
    }

    fn tensor_dims(&self, x: &GpuTensor) -> Dims {
        [x.rows, x.cols]
    }

    fn table_dims(&self, t: &GpuTable) -> Dims {
        match t {
            GpuTable::Resident { rows, cols, .. } => [*rows, *cols],
            GpuTable::Host { rows, cols, .. } => [*rows, *cols],
        }
    }

    fn linear_dims(&self, w: &GpuLinear) -> Dims {
        [w.out, w.inp]
    }

    fn batch_dims(&self, b: &GpuBatch) -> BatchDims {
        b.dims
    }

    fn max_tensor_elements(&self) -> usize {
        (self.ctx.limits.max_storage_buffer_binding_size / self.options.precision.bytes() as u64)
            as usize
    }

    fn activation_peak_bytes(&self) -> Option<u64> {
        Some(self.pool.stats().peak_in_use)
    }

    fn prepare(&self, config: &crate::ModelConfig) -> Result<()> {
        for class in tune::classes(config) {
            self.version(class)?;
        }
        Ok(())
    }

    fn passes_in_flight(&self) -> usize {
        2
    }

    fn counters(&self) -> Option<Counters> {
        Some(Counters {
            dispatches: self.dispatches.load(Ordering::Relaxed),
            compute_passes: self.passes.load(Ordering::Relaxed),
            bind_groups_made: self.bind_groups_made.load(Ordering::Relaxed),
        })
    }

    fn enable_gpu_timing(&self) -> bool {
        if !self.ctx.features.contains(wgpu::Features::TIMESTAMP_QUERY) {
            return false;
        }
        let mut timing = self.timing.lock().unwrap_or_else(|e| e.into_inner());
        if timing.is_none() {
            let device = &self.ctx.device;
            let buffer = |usage, label| {
                device.create_buffer(&wgpu::BufferDescriptor {
                    label: Some(label),
                    size: 16,
                    usage,
                    mapped_at_creation: false,
                })
            };
            *timing = Some(Timing {
                queries: device.create_query_set(&wgpu::QuerySetDescriptor {
                    label: Some("pass timestamps"),
                    ty: wgpu::QueryType::Timestamp,
                    count: 2,
                }),
                resolved: buffer(
                    wgpu::BufferUsages::QUERY_RESOLVE | wgpu::BufferUsages::COPY_SRC,
                    "resolved timestamps",
                ),
                readback: buffer(
                    wgpu::BufferUsages::MAP_READ | wgpu::BufferUsages::COPY_DST,
                    "timestamps",
                ),
                pending: false,
                seconds: 0.0,
            });
        }
        true
    }

    fn gpu_seconds(&self) -> Option<f64> {
        let timing = self.timing.lock().unwrap_or_else(|e| e.into_inner());
        timing.as_ref().map(|t| t.seconds)
    }

    fn kernel_choices(&self) -> Vec<(String, String)> {
        self.chosen
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .iter()
            .map(|(class, t)| {
                (
                    class.to_string(),
                    format!("{} ({})", t.version, t.source.name()),
                )
            })
            .collect()
    }

    fn tensor_unchecked(&self, data: &[f32], rows: usize, cols: usize) -> Result<GpuTensor> {
        let buffer = match self.options.precision {
            GpuPrecision::F32 => self.upload(bytemuck::cast_slice(data), "tensor")?,
            GpuPrecision::F16 => self.upload(bytemuck::cast_slice(&to_f16(data)), "tensor")?,
        };
        Ok(GpuTensor {
            buffer: Buffer::Uploaded(buffer),
            rows,
            cols,
        })
    }

    fn table_unchecked(&self, data: &[f32], rows: usize, cols: usize) -> Result<GpuTable> {
        let bytes = (data.len() * 4) as u64;
        if bytes > self.ctx.limits.max_storage_buffer_binding_size {
            return Ok(GpuTable::Host {
                data: data.to_vec(),
                rows,
                cols,
            });
        }
        Ok(GpuTable::Resident {
            buffer: self.upload(bytemuck::cast_slice(data), "embedding table")?,
            rows,
            cols,
        })
    }

    fn to_host(&self, x: &GpuTensor) -> Result<Vec<f32>> {
        let bytes = (x.len() * self.options.precision.bytes()) as u64;
        if bytes == 0 {
            self.submit();
            return Ok(Vec::new());
        }
        let staging = self.ctx.buffer(
            bytes.next_multiple_of(4),
            wgpu::BufferUsages::MAP_READ | wgpu::BufferUsages::COPY_DST,
            "readback",
        )?;
        // f16 readbacks of an odd length copy the last half's padding too (copies are whole words).
        let copied = bytes.next_multiple_of(4);
        self.record(|pending| {
            drop(pending.pass.take());
            pending
                .encoder
                .copy_buffer_to_buffer(x.raw(), 0, &staging, 0, copied)
        });
        let index = self.submit();
        let (tx, rx) = std::sync::mpsc::channel();
        staging.map_async(wgpu::MapMode::Read, .., move |r| {
            let _ = tx.send(r);
        });
        self.wait(index)?;
        rx.recv()
            .map_err(|_| Error::Gpu("readback was dropped".into()))?
            .map_err(|e| Error::Gpu(format!("readback: {e}")))?;
        let view = staging
            .get_mapped_range(..)
            .map_err(|e| Error::Gpu(format!("readback: {e}")))?;
        let data = match self.options.precision {
            GpuPrecision::F32 => bytemuck::cast_slice::<u8, f32>(&view).to_vec(),
            GpuPrecision::F16 => bytemuck::cast_slice::<u8, half::f16>(&view)[..x.len()]
                .iter()
                .map(|h| h.to_f32())
                .collect(),
        };
        drop(view);
        staging.unmap();
        Ok(data)
    }

    fn linear_unchecked(
        &self,
        weight: &[f32],
        bias: &[f32],
        out: usize,
        inp: usize,
    ) -> Result<GpuLinear> {
        let weight = match self.options.precision {
            GpuPrecision::F32 => self.upload(bytemuck::cast_slice(weight), "weight")?,
            GpuPrecision::F16 => self.upload(bytemuck::cast_slice(&to_f16(weight)), "weight")?,
        };
        Ok(GpuLinear {
            weight,
            bias: self.upload(bytemuck::cast_slice(bias), "bias")?,
            out,
            inp,
        })
    }

    fn batch_unchecked(&self, batch: &PackedBatch, dims: BatchDims) -> Result<GpuBatch> {
        let mut blocks: Vec<[u32; 4]> = Vec::new();
        for s in 0..batch.sequences() {
            let r = batch.range(s);
            for first in (0..r.len()).step_by(attention::BLOCK) {
                blocks.push([r.start as u32, r.len() as u32, first as u32, 0]);
            }
        }
        let u32s = |v: &[u32], what| self.upload(bytemuck::cast_slice(v), what);
        Ok(GpuBatch {
            host_ids: batch.ids.clone(),
            ids: u32s(&batch.ids, "ids")?,
            positions: u32s(&batch.position_ids, "positions")?,
            types: u32s(&batch.type_ids, "types")?,
            offsets: u32s(&batch.offsets, "offsets")?,
            blocks: self.upload(bytemuck::cast_slice(&blocks), "attention blocks")?,
            block_count: blocks.len(),
            dims,
        })
    }

    fn embed_unchecked(
        &self,
        batch: &GpuBatch,
        word: &GpuTable,
        position: &GpuTable,
        token_type: &GpuTable,
    ) -> Result<GpuTensor> {
        embed::embed(self, batch, word, position, token_type)
    }

    fn embed_layer_norm_unchecked(
        &self,
        batch: &GpuBatch,
        word: &GpuTable,
        position: &GpuTable,
        token_type: &GpuTable,
        gamma: &GpuTensor,
        beta: &GpuTensor,
        eps: f32,
    ) -> Result<GpuTensor> {
        embed::embed_layer_norm(self, batch, word, position, token_type, gamma, beta, eps)
    }

    fn matmul_unchecked(&self, x: &GpuTensor, w: &GpuLinear, act: Activation) -> Result<GpuTensor> {
        matmul::matmul(self, x, w, act)
    }

    fn layer_norm_unchecked(
        &self,
        x: &GpuTensor,
        residual: Option<&GpuTensor>,
        gamma: &GpuTensor,
        beta: &GpuTensor,
        eps: f32,
    ) -> Result<GpuTensor> {
        layer_norm::layer_norm(self, x, residual, gamma, beta, eps)
    }

    fn attention_unchecked(
        &self,
        qkv: &GpuTensor,
        batch: &GpuBatch,
        heads: usize,
    ) -> Result<GpuTensor> {
        attention::attention(self, qkv, batch, heads)
    }

    fn gather_rows_unchecked(&self, x: &GpuTensor, rows: &[u32]) -> Result<GpuTensor> {
        rows::gather(self, x, rows)
    }

    fn mean_pool_unchecked(&self, x: &GpuTensor, batch: &GpuBatch) -> Result<GpuTensor> {
        rows::mean_pool(self, x, batch, false)
    }

    fn mean_pool_normalized_unchecked(&self, x: &GpuTensor, batch: &GpuBatch) -> Result<GpuTensor> {
        rows::mean_pool(self, x, batch, true)
    }

    fn l2_normalize_unchecked(&self, x: &GpuTensor) -> Result<GpuTensor> {
        rows::l2_normalize(self, x)
    }
}

/// `values` rounded to f16 (to nearest, ties to even).
fn to_f16(values: &[f32]) -> Vec<half::f16> {
    values.iter().map(|&v| half::f16::from_f32(v)).collect()
}
