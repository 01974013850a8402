//! Twin of `shaders/matmul_naive.wgsl`, `matmul_tiled.wgsl` and `matmul_tiled_f16.wgsl`
//! (one `Params` layout for all three).

use std::mem::size_of;

use bytemuck::{Pod, Zeroable};

use super::{Gpu, GpuLinear, GpuPrecision, GpuTensor, Kernel};
use crate::backend::Activation;
use crate::error::Result;

#[repr(C)]
#[derive(Clone, Copy, Pod, Zeroable)]
pub struct Params {
    pub m: u32,
    pub n: u32,
    pub k: u32,
    pub activation: u32,
}

/// Which f32 matmul the backend records (f16 weights always use the tiled kernel).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum MatmulKernel {
    /// One invocation per output: the readable reference.
    Naive,
    /// Shared-memory tiles, register-blocked.
    Tiled,
}

pub const NAIVE: Kernel = Kernel {
    name: "matmul_naive",
    source: include_str!("../../../shaders/matmul_naive.wgsl"),
    workgroup_size: [16, 16, 1],
    params_size: size_of::<Params>(),
};

pub const TILED: Kernel = Kernel {
    name: "matmul_tiled",
    source: include_str!("../../../shaders/matmul_tiled.wgsl"),
    workgroup_size: [16, 16, 1],
    params_size: size_of::<Params>(),
};

pub const TILED_F16: Kernel = Kernel {
    name: "matmul_tiled_f16",
    source: include_str!("../../../shaders/matmul_tiled_f16.wgsl"),
    workgroup_size: [16, 16, 1],
    params_size: size_of::<Params>(),
};

/// Output elements per workgroup side of the tiled kernels.
const TILE: usize = 64;

fn activation_code(act: Activation) -> u32 {
    match act {
        Activation::None => 0,
        Activation::Gelu => 1,
        Activation::Tanh => 2,
        Activation::Relu => 3,
    }
}

pub(super) fn matmul(
    gpu: &Gpu,
    x: &GpuTensor,
    w: &GpuLinear,
    act: Activation,
) -> Result<GpuTensor> {
    // x: [M, K]  w: [N, K]  ->  [M, N]
    let (m, n) = (x.rows, w.out);
    let out = gpu.output(m, n, "matmul output")?;
    if m == 0 {
        return Ok(out);
    }
    let params = Params {
        m: m as u32,
        n: n as u32,
        k: w.inp as u32,
        activation: activation_code(act),
    };
    let (kernel, side) = match (w.precision, gpu.options.matmul) {
        (GpuPrecision::F16, _) => (&TILED_F16, TILE),
        (GpuPrecision::F32, MatmulKernel::Tiled) => (&TILED, TILE),
        (GpuPrecision::F32, MatmulKernel::Naive) => (&NAIVE, 16),
    };
    let groups = [n.div_ceil(side) as u32, m.div_ceil(side) as u32, 1];
    let buffers = [x.raw(), &w.weight, &w.bias, out.raw()];
    gpu.dispatch(kernel, &[], &params, &buffers, groups)?;
    Ok(out)
}
