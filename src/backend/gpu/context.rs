//! The wgpu side of the GPU backend: adapter discovery, one device per adapter per process,
//! pipelines compiled once per process, and GPU errors turned into [`Error`]s instead of the
//! panics wgpu's default handler raises.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, OnceLock};

use super::ladder::Class;
use super::tune::Tuning;
use super::{GpuPrecision, Kernel};
use crate::error::{Error, Result};

/// The adapters of this machine, in a stable order (the `N` of `--device gpu:N`).
pub fn adapters() -> &'static [wgpu::Adapter] {
    static ADAPTERS: OnceLock<Vec<wgpu::Adapter>> = OnceLock::new();
    ADAPTERS.get_or_init(|| {
        // Vulkan, Metal, DX12 unless WGPU_BACKEND says otherwise (e.g. `gl`).
        let backends = wgpu::Backends::from_env().unwrap_or(wgpu::Backends::PRIMARY);
        let mut desc = wgpu::InstanceDescriptor::new_without_display_handle_from_env();
        desc.backends = backends;
        let instance = wgpu::Instance::new(desc);
        pollster::block_on(instance.enumerate_adapters(backends))
    })
}

/// Preference among adapter types when no index is given: real GPUs first, software last.
fn rank(kind: wgpu::DeviceType) -> u8 {
    match kind {
        wgpu::DeviceType::DiscreteGpu => 0,
        wgpu::DeviceType::IntegratedGpu => 1,
        wgpu::DeviceType::VirtualGpu => 2,
        wgpu::DeviceType::Other => 3,
        wgpu::DeviceType::Cpu => 4,
    }
}

/// The index of the adapter `--device gpu` picks.
pub fn best_adapter() -> Option<usize> {
    adapters()
        .iter()
        .enumerate()
        .min_by_key(|(_, a)| rank(a.get_info().device_type))
        .map(|(i, _)| i)
}

/// Whether a hardware GPU (not a software rasterizer such as lavapipe) is present; this is
/// what `--device auto` asks.
pub fn hardware_gpu_present() -> bool {
    adapters()
        .iter()
        .any(|a| a.get_info().device_type != wgpu::DeviceType::Cpu)
}

/// A kernel, its storage precision and the values of its pipeline constants (e.g. the head size).
type PipelineKey = (&'static str, GpuPrecision, Vec<(&'static str, u32)>);

/// What `bge devices` prints: each adapter with its backend, driver, the features the kernels
/// use and the limits that size batches, and which adapter each [`Device`](crate::Device)
/// choice takes.
pub fn adapter_report() -> String {
    use std::fmt::Write;
    let mut out = String::new();
    let mib = |b: u64| format!("{} MiB", b >> 20);
    for (i, a) in adapters().iter().enumerate() {
        let info = a.get_info();
        let f = a.features();
        let l = a.limits();
        let yes = |flag| if f.contains(flag) { "yes" } else { "no" };
        let subgroups = if f.contains(wgpu::Features::SUBGROUP) {
            format!(
                "yes ({}..{})",
                info.subgroup_min_size, info.subgroup_max_size
            )
        } else {
            "no".into()
        };
        let coop: Vec<String> = if f.contains(wgpu::Features::EXPERIMENTAL_COOPERATIVE_MATRIX) {
            a.cooperative_matrix_properties()
                .iter()
                .map(|p| {
                    format!(
                        "{}x{}x{} {:?}->{:?}",
                        p.m_size, p.n_size, p.k_size, p.ab_type, p.cr_type
                    )
                })
                .collect()
        } else {
            Vec::new()
        };
        let _ = writeln!(
            out,
            "{i}: {} [{:?}, {:?}] driver: {} {}",
            info.name, info.device_type, info.backend, info.driver, info.driver_info
        );
        let _ = writeln!(
            out,
            "   f16: {}  subgroups: {subgroups}  cooperative matrix: {}",
            yes(wgpu::Features::SHADER_F16),
            if coop.is_empty() {
                "no".into()
            } else {
                coop.join(", ")
            }
        );
        let _ = writeln!(
            out,
            "   limits: storage binding {}, buffer {}, workgroup memory {} KiB, {} invocations per workgroup",
            mib(l.max_storage_buffer_binding_size),
            mib(l.max_buffer_size),
            l.max_compute_workgroup_storage_size / 1024,
            l.max_compute_invocations_per_workgroup
        );
    }
    match best_adapter() {
        None => {
            out.push_str("no GPU adapter: devices auto and cpu run on the CPU, device gpu fails\n")
        }
        Some(b) => {
            let auto = if hardware_gpu_present() {
                format!("device auto uses adapter {b}")
            } else {
                "device auto uses the CPU (only a software adapter is present)".into()
            };
            let _ = writeln!(out, "device gpu uses adapter {b}; {auto}");
        }
    }
    out
}

/// The contexts opened in this process, by adapter index.
fn contexts() -> &'static Mutex<HashMap<usize, Arc<Context>>> {
    static CONTEXTS: OnceLock<Mutex<HashMap<usize, Arc<Context>>>> = OnceLock::new();
    CONTEXTS.get_or_init(Default::default)
}

/// What `--verbose` prints: per adapter opened in this process, the kernel version each shape
/// class runs with and every version the self-check disabled.
pub fn kernel_notes() -> Vec<String> {
    let contexts: Vec<Arc<Context>> = contexts()
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .values()
        .cloned()
        .collect();
    let mut lines = Vec::new();
    for ctx in contexts {
        lines.extend(
            ctx.notes()
                .into_iter()
                .map(|n| format!("{}: {n}", ctx.info.name)),
        );
        for (precision, class, tuning) in ctx.tunings() {
            let dtype: crate::backend::Dtype = precision.into();
            lines.push(format!(
                "{}: {dtype} {class}: version {} ({})",
                ctx.info.name,
                tuning.version,
                tuning.source.name()
            ));
        }
    }
    lines
}

/// A device, its queue, its pipelines and a record of errors wgpu reported asynchronously.
pub struct Context {
    /// The adapter's name, type, backend and driver.
    pub info: wgpu::AdapterInfo,
    /// The device, opened with the adapter's own limits.
    pub device: wgpu::Device,
    /// Its one queue.
    pub queue: wgpu::Queue,
    /// The limits the device was opened with.
    pub limits: wgpu::Limits,
    /// The optional features the kernels use that the device has (`SHADER_F16`, subgroups,
    /// cooperative matrices, timestamp queries).
    pub features: wgpu::Features,
    cooperative_matrices: Vec<wgpu::CooperativeMatrixProperties>,
    pipelines: Mutex<HashMap<PipelineKey, Arc<wgpu::ComputePipeline>>>,
    errors: Arc<Mutex<Vec<String>>>,
    /// The kernel version chosen per precision and shape class, for this process.
    tunings: Mutex<HashMap<(GpuPrecision, Class), Arc<Tuning>>>,
    /// Held while a class is tuned, so that tunings neither repeat nor time each other.
    tuning: Mutex<()>,
    notes: Mutex<Vec<String>>,
}

impl Context {
    /// The process-wide context of adapter `index` (`None`: the best adapter).
    pub fn shared(index: Option<usize>) -> Result<Arc<Context>> {
        let index = match index {
            Some(i) if i < adapters().len() => i,
            Some(i) => {
                return Err(Error::Gpu(format!(
                    "there is no adapter {i}; `bge devices` lists {} adapter(s)",
                    adapters().len()
                )));
            }
            None => best_adapter().ok_or_else(|| {
                Error::Gpu(
                    "no GPU adapter found (on Linux without a GPU, install Mesa's lavapipe: apt-get install mesa-vulkan-drivers)"
                        .into(),
                )
            })?,
        };
        let mut contexts = contexts().lock().unwrap_or_else(|e| e.into_inner());
        if let Some(c) = contexts.get(&index) {
            return Ok(c.clone());
        }
        let c = Arc::new(Context::new(&adapters()[index])?);
        contexts.insert(index, c.clone());
        Ok(c)
    }

    fn new(adapter: &wgpu::Adapter) -> Result<Self> {
        let wanted = wgpu::Features::SHADER_F16
            | wgpu::Features::SUBGROUP
            | wgpu::Features::TIMESTAMP_QUERY
            | wgpu::Features::EXPERIMENTAL_COOPERATIVE_MATRIX;
        let features = adapter.features() & wanted;
        // The adapter's own limits: wgpu's defaults are far lower (e.g. 16 KiB of workgroup
        // memory, 128 MiB bindings) than what GPUs offer.
        let limits = adapter.limits();
        let (device, queue) = pollster::block_on(adapter.request_device(&wgpu::DeviceDescriptor {
            label: Some("bge"),
            required_features: features,
            required_limits: limits.clone(),
            // SAFETY (the token's terms): the only experimental feature requested is cooperative
            // matrices, and no kernel using them runs before passing the self-check
            // (`tune.rs`) on this device, unless the user forces it with BGE_KERNELS.
            experimental_features: unsafe { wgpu::ExperimentalFeatures::enabled() },
            ..Default::default()
        }))
        .map_err(|e| Error::Gpu(format!("cannot open {}: {e}", adapter.get_info().name)))?;
        let errors: Arc<Mutex<Vec<String>>> = Arc::default();
        let sink = errors.clone();
        device.on_uncaptured_error(Arc::new(move |e: wgpu::Error| {
            sink.lock()
                .unwrap_or_else(|e| e.into_inner())
                .push(one_line(&e.to_string()));
        }));
        let lost = errors.clone();
        device.set_device_lost_callback(move |reason, message| {
            lost.lock()
                .unwrap_or_else(|e| e.into_inner())
                .push(format!("device lost ({reason:?}): {}", one_line(&message)));
        });
        Ok(Context {
            info: adapter.get_info(),
            device,
            queue,
            limits,
            features,
            cooperative_matrices: if features
                .contains(wgpu::Features::EXPERIMENTAL_COOPERATIVE_MATRIX)
            {
                adapter.cooperative_matrix_properties()
            } else {
                Vec::new()
            },
            pipelines: Mutex::default(),
            errors,
            tunings: Mutex::default(),
            tuning: Mutex::default(),
            notes: Mutex::default(),
        })
    }

    /// Whether shaders may use `f16`.
    pub fn has_f16(&self) -> bool {
        self.features.contains(wgpu::Features::SHADER_F16)
    }

    /// Whether the cooperative-matrix kernels' shape, 16x16x16 f16 inputs with f32 sums, is
    /// supported.
    pub fn has_cooperative_matrix_16x16_f16(&self) -> bool {
        self.has_f16()
            && self.cooperative_matrices.iter().any(|p| {
                (p.m_size, p.n_size, p.k_size) == (16, 16, 16)
                    && p.ab_type == wgpu::CooperativeScalarType::F16
                    && p.cr_type == wgpu::CooperativeScalarType::F32
            })
    }

    /// The tuning of `class` at `precision` made in this process, or `make`'s, remembered.
    /// Tunings run one at a time.
    pub(super) fn tuning(
        &self,
        precision: GpuPrecision,
        class: Class,
        make: impl FnOnce() -> Result<Tuning>,
    ) -> Result<Arc<Tuning>> {
        let lookup = || {
            self.tunings
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .get(&(precision, class))
                .cloned()
        };
        if let Some(t) = lookup() {
            return Ok(t);
        }
        let _one_at_a_time = self.tuning.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(t) = lookup() {
            return Ok(t);
        }
        let t = Arc::new(make()?);
        self.tunings
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert((precision, class), t.clone());
        Ok(t)
    }

    /// Every tuning made in this process, by precision and class.
    pub fn tunings(&self) -> Vec<(GpuPrecision, Class, Arc<Tuning>)> {
        let mut all: Vec<_> = self
            .tunings
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .iter()
            .map(|(&(p, c), t)| (p, c, t.clone()))
            .collect();
        all.sort_by_key(|&(p, c, _)| (p as u8, c));
        all
    }

    /// Replaces the tuning of `class` at `precision` (`bge devices --tune` measures afresh).
    pub(super) fn set_tuning(&self, precision: GpuPrecision, class: Class, tuning: Arc<Tuning>) {
        self.tunings
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert((precision, class), tuning);
    }

    /// Records a one-line note (a kernel disabled by the self-check) for `--verbose`.
    pub fn note(&self, line: String) {
        self.notes
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .push(line);
    }

    /// The notes recorded so far.
    pub fn notes(&self) -> Vec<String> {
        self.notes.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }

    /// The compute pipeline of `kernel` built for `precision` (see [`Kernel::source_for`]) with
    /// its `override` constants set, compiled on first use.
    pub fn pipeline(
        &self,
        kernel: &Kernel,
        precision: GpuPrecision,
        constants: &[(&'static str, u32)],
    ) -> Result<Arc<wgpu::ComputePipeline>> {
        let key = (kernel.name, precision, constants.to_vec());
        let cached = |key| self.lock_pipelines().get(key).cloned();
        if let Some(p) = cached(&key) {
            return Ok(p);
        }
        // Compiled without the lock, so that other threads' dispatches of compiled kernels do
        // not wait for this one; two threads may compile the same kernel once each at first.
        let scope = self.device.push_error_scope(wgpu::ErrorFilter::Validation);
        let module = self
            .device
            .create_shader_module(wgpu::ShaderModuleDescriptor {
                label: Some(kernel.name),
                source: wgpu::ShaderSource::Wgsl(kernel.source_for(precision)),
            });
        let values: Vec<(&str, f64)> = constants.iter().map(|&(k, v)| (k, v as f64)).collect();
        let pipeline = self
            .device
            .create_compute_pipeline(&wgpu::ComputePipelineDescriptor {
                label: Some(kernel.name),
                layout: None,
                module: &module,
                entry_point: Some("main"),
                compilation_options: wgpu::PipelineCompilationOptions {
                    constants: &values,
                    ..Default::default()
                },
                cache: None,
            });
        if let Some(e) = pollster::block_on(scope.pop()) {
            return Err(Error::Gpu(format!(
                "shader {} does not compile on {}: {}",
                kernel.name,
                self.info.name,
                one_line(&e.to_string())
            )));
        }
        let pipeline = Arc::new(pipeline);
        self.lock_pipelines().insert(key, pipeline.clone());
        Ok(pipeline)
    }

    fn lock_pipelines(
        &self,
    ) -> std::sync::MutexGuard<'_, HashMap<PipelineKey, Arc<wgpu::ComputePipeline>>> {
        self.pipelines.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// A buffer of `size` bytes, or [`Error::GpuOutOfMemory`] when the device cannot give it.
    pub fn buffer(&self, size: u64, usage: wgpu::BufferUsages, what: &str) -> Result<wgpu::Buffer> {
        let too_big = size > self.limits.max_buffer_size
            || (usage.contains(wgpu::BufferUsages::STORAGE)
                && size > self.limits.max_storage_buffer_binding_size);
        if too_big {
            return Err(Error::GpuOutOfMemory {
                what: format!("{what} (above this adapter's buffer limits)"),
                bytes: size,
            });
        }
        let scope = self.device.push_error_scope(wgpu::ErrorFilter::OutOfMemory);
        let buffer = self.device.create_buffer(&wgpu::BufferDescriptor {
            label: Some(what),
            size: size.max(4),
            usage,
            mapped_at_creation: false,
        });
        match pollster::block_on(scope.pop()) {
            None => Ok(buffer),
            Some(_) => Err(Error::GpuOutOfMemory {
                what: what.to_owned(),
                bytes: size,
            }),
        }
    }

    /// Errors wgpu reported since the last call, as one [`Error`].
    pub fn check(&self) -> Result<()> {
        let mut errors = self.errors.lock().unwrap_or_else(|e| e.into_inner());
        if errors.is_empty() {
            return Ok(());
        }
        let message = errors.join("; ");
        errors.clear();
        Err(Error::Gpu(message))
    }

    /// `name (backend, driver)` for messages and benchmark reports.
    pub fn describe(&self) -> String {
        let i = &self.info;
        format!(
            "{} ({:?}, {} {})",
            i.name, i.backend, i.driver, i.driver_info
        )
    }
}

fn one_line(s: &str) -> String {
    s.split_whitespace().collect::<Vec<_>>().join(" ")
}
