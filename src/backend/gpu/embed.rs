//! Twin of `shaders/embed.wgsl`.

use std::mem::size_of;

use bytemuck::{Pod, Zeroable};

use super::{Gpu, GpuBatch, GpuTensor, Kernel};
use crate::error::Result;

#[repr(C)]
#[derive(Clone, Copy, Pod, Zeroable)]
pub struct Params {
    pub tokens: u32,
    pub hidden: u32,
}

pub const KERNEL: Kernel = Kernel {
    name: "embed",
    source: include_str!("../../../shaders/embed.wgsl"),
    workgroup_size: [256, 1, 1],
    params_size: size_of::<Params>(),
};

pub(super) fn embed(
    gpu: &Gpu,
    batch: &GpuBatch,
    word: &GpuTensor,       // [vocab, h]
    position: &GpuTensor,   // [positions, h]
    token_type: &GpuTensor, // [types, h]
) -> Result<GpuTensor> {
    let h = word.cols;
    let out = gpu.output(batch.tokens, h, "embeddings")?; // [T, h]
    if batch.tokens > 0 {
        let params = Params {
            tokens: batch.tokens as u32,
            hidden: h as u32,
        };
        let buffers = [
            &batch.ids,
            &batch.positions,
            &batch.types,
            word.raw(),
            position.raw(),
            token_type.raw(),
            out.raw(),
        ];
        let groups = gpu.grid((batch.tokens * h).div_ceil(256));
        gpu.dispatch(&KERNEL, &[], &params, &buffers, groups)?;
    }
    Ok(out)
}
