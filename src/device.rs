//! Where a model runs, as a user names it.

use std::str::FromStr;

use crate::backend::gpu;
use crate::error::{Error, Result};

/// Where to run: `auto`, `cpu`, `reference`, `gpu` or `gpu:N` (parsed from those strings).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Default)]
pub enum Device {
    /// A hardware GPU if one is present, otherwise the CPU.
    #[default]
    Auto,
    /// The CPU: SIMD kernels on all cores.
    Cpu,
    /// The plain-loop reference backend (slow; the specification the others are tested against).
    Reference,
    /// A GPU through wgpu: the best adapter, or adapter `N` as `bge devices` lists them.
    Gpu(Option<usize>),
}

impl Device {
    /// `Auto` made concrete: a hardware GPU if one is present, otherwise the CPU.
    pub fn resolve(self) -> Device {
        match self {
            Device::Auto if gpu::hardware_gpu_present() => Device::Gpu(None),
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

impl std::fmt::Display for Device {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Device::Auto => f.write_str("auto"),
            Device::Cpu => f.write_str("cpu"),
            Device::Reference => f.write_str("reference"),
            Device::Gpu(None) => f.write_str("gpu"),
            Device::Gpu(Some(n)) => write!(f, "gpu:{n}"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::Device;

    #[test]
    fn devices_parse_and_print_alike() {
        for name in ["auto", "cpu", "reference", "gpu", "gpu:3"] {
            let d: Device = name.parse().unwrap();
            assert_eq!(d.to_string(), name);
        }
        assert!("gpu:x".parse::<Device>().is_err());
        assert!("tpu".parse::<Device>().is_err());
    }
}
