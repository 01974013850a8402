//! Twin of `shaders/layer_norm.wgsl`.

use std::mem::size_of;

use bytemuck::{Pod, Zeroable};

use super::{Binding, Gpu, GpuTensor, Kernel};
use crate::error::Result;

#[repr(C)]
#[derive(Clone, Copy, Pod, Zeroable)]
pub struct Params {
    pub rows: u32,
    pub cols: u32,
    pub eps: f32,
    pub has_residual: u32,
}

pub const KERNEL: Kernel = Kernel {
    name: "layer_norm",
    source: include_str!("../../../shaders/layer_norm.wgsl"),
    workgroup_size: [256, 1, 1],
    params_size: size_of::<Params>(),
};

pub(super) fn layer_norm(
    gpu: &Gpu,
    x: &GpuTensor,                // [T, h]
    residual: Option<&GpuTensor>, // [T, h]
    gamma: &GpuTensor,            // [1, h]
    beta: &GpuTensor,             // [1, h]
    eps: f32,
) -> Result<GpuTensor> {
    let out = gpu.output(x.rows, x.cols, "layer norm output")?;
    if x.rows == 0 {
        return Ok(out);
    }
    let params = Params {
        rows: x.rows as u32,
        cols: x.cols as u32,
        eps,
        has_residual: residual.is_some() as u32,
    };
    // Without a residual the shader never reads binding 2; x stands in for it.
    let residual = residual.unwrap_or(x);
    let buffers = [x.raw(), residual.raw(), gamma.raw(), beta.raw(), out.raw()];
    gpu.dispatch(
        &KERNEL,
        &[],
        &params,
        &buffers,
        gpu.grid(x.rows),
        Binding::Kept,
    )?;
    Ok(out)
}
