//! Twin of `shaders/attention.wgsl`.

use std::mem::size_of;

use bytemuck::{Pod, Zeroable};

use super::{Gpu, GpuBatch, GpuTensor, Kernel};
use crate::backend::HeadDims;
use crate::error::Result;

#[repr(C)]
#[derive(Clone, Copy, Pod, Zeroable)]
pub struct Params {
    pub heads: u32,
    pub hidden: u32,
    pub scale: f32,
}

pub const KERNEL: Kernel = Kernel {
    name: "attention",
    source: include_str!("../../../shaders/attention.wgsl"),
    workgroup_size: [64, 1, 1],
    params_size: size_of::<Params>(),
};

/// Queries per workgroup (`BLOCK` in the shader): the batch's block table is cut at this size.
pub const BLOCK: usize = 64;
/// The head sizes the shader holds: whole `vec4`s, at most `MAX_D4 = 32` of them.
pub const HEAD_DIMS: HeadDims = HeadDims {
    multiple: 4,
    max: 128,
};

pub(super) fn attention(
    gpu: &Gpu,
    qkv: &GpuTensor, // [T, 3h]
    batch: &GpuBatch,
    heads: usize,
) -> Result<GpuTensor> {
    let h = qkv.cols / 3;
    let d = h / heads;
    let out = gpu.output(qkv.rows, h, "attention output")?; // [T, h]
    if batch.block_count == 0 {
        return Ok(out);
    }
    let params = Params {
        heads: heads as u32,
        hidden: h as u32,
        scale: 1.0 / (d as f32).sqrt(),
    };
    let groups = [batch.block_count as u32, heads as u32, 1];
    let buffers = [&batch.blocks, qkv.raw(), out.raw()];
    gpu.dispatch(
        &KERNEL,
        &[("HEAD_DIM", d as u32)],
        &params,
        &buffers,
        groups,
    )?;
    Ok(out)
}
