//! Twins of `shaders/embed.wgsl` and `shaders/embed_layer_norm.wgsl`.

use std::mem::size_of;

use bytemuck::{Pod, Zeroable};

use super::{Binding, Gpu, GpuBatch, GpuTable, GpuTensor, Kernel};
use crate::error::{Error, Result};

#[repr(C)]
#[derive(Clone, Copy, Pod, Zeroable)]
pub struct Params {
    pub tokens: u32,
    pub hidden: u32,
}

pub static KERNEL: Kernel = Kernel {
    name: "embed",
    source: include_str!("../../../shaders/embed.wgsl"),
    workgroup_size: [256, 1, 1],
    params_size: size_of::<Params>(),
};

#[repr(C)]
#[derive(Clone, Copy, Pod, Zeroable)]
pub struct NormParams {
    pub tokens: u32,
    pub hidden: u32,
    pub eps: f32,
}

pub static LAYER_NORM: Kernel = Kernel {
    name: "embed_layer_norm",
    source: include_str!("../../../shaders/embed_layer_norm.wgsl"),
    workgroup_size: [256, 1, 1],
    params_size: size_of::<NormParams>(),
};

/// Storage buffers `embed_layer_norm.wgsl` binds: an adapter allowing fewer runs the two
/// kernels it fuses.
const LAYER_NORM_BUFFERS: u32 = 9;

/// The word table and the token ids to read it with. A table kept on the host is gathered
/// there for this batch: the shader then reads row t for token t.
struct Words {
    table: wgpu::Buffer,
    ids: wgpu::Buffer,
    hidden: usize,
}

fn words(gpu: &Gpu, batch: &GpuBatch, word: &GpuTable) -> Result<Words> {
    Ok(match word {
        GpuTable::Resident { buffer, cols, .. } => Words {
            table: buffer.clone(),
            ids: batch.ids.clone(),
            hidden: *cols,
        },
        GpuTable::Host { data, cols, .. } => {
            let rows: Vec<f32> = batch
                .host_ids
                .iter()
                .flat_map(|&id| &data[id as usize * cols..(id as usize + 1) * cols])
                .copied()
                .collect();
            let identity: Vec<u32> = (0..batch.dims.tokens as u32).collect();
            Words {
                table: gpu.upload(bytemuck::cast_slice(&rows), "gathered word embeddings")?,
                ids: gpu.upload(bytemuck::cast_slice(&identity), "row ids")?,
                hidden: *cols,
            }
        }
    })
}

pub(super) fn embed(
    gpu: &Gpu,
    batch: &GpuBatch,
    word: &GpuTable,       // [vocab, h]
    position: &GpuTable,   // [positions, h]
    token_type: &GpuTable, // [types, h]
) -> Result<GpuTensor> {
    let (position, token_type) = (resident(position)?, resident(token_type)?);
    let words = words(gpu, batch, word)?;
    let h = words.hidden;
    let out = gpu.output(batch.dims.tokens, h, "embeddings")?; // [T, h]
    if batch.dims.tokens > 0 {
        let params = Params {
            tokens: batch.dims.tokens as u32,
            hidden: h as u32,
        };
        let buffers = [
            &words.ids,
            &batch.positions,
            &batch.types,
            &words.table,
            position,
            token_type,
            out.raw(),
        ];
        let groups = gpu.grid((batch.dims.tokens * h).div_ceil(256));
        gpu.dispatch(&KERNEL, &[], &params, &buffers, groups, Binding::Once)?;
    }
    Ok(out)
}

/// [`embed`] and the LayerNorm after it in one dispatch (two where the adapter binds fewer
/// than nine storage buffers per stage).
#[allow(clippy::too_many_arguments)]
pub(super) fn embed_layer_norm(
    gpu: &Gpu,
    batch: &GpuBatch,
    word: &GpuTable,
    position: &GpuTable,
    token_type: &GpuTable,
    gamma: &GpuTensor, // [1, h]
    beta: &GpuTensor,  // [1, h]
    eps: f32,
) -> Result<GpuTensor> {
    if gpu.ctx.limits.max_storage_buffers_per_shader_stage < LAYER_NORM_BUFFERS {
        let sum = embed(gpu, batch, word, position, token_type)?;
        return super::layer_norm::layer_norm(gpu, &sum, None, gamma, beta, eps);
    }
    let (position, token_type) = (resident(position)?, resident(token_type)?);
    let words = words(gpu, batch, word)?;
    let h = words.hidden;
    let out = gpu.output(batch.dims.tokens, h, "embeddings")?; // [T, h]
    if batch.dims.tokens > 0 {
        let params = NormParams {
            tokens: batch.dims.tokens as u32,
            hidden: h as u32,
            eps,
        };
        let buffers = [
            &words.ids,
            &batch.positions,
            &batch.types,
            &words.table,
            position,
            token_type,
            gamma.raw(),
            beta.raw(),
            out.raw(),
        ];
        let groups = gpu.grid(batch.dims.tokens);
        gpu.dispatch(&LAYER_NORM, &[], &params, &buffers, groups, Binding::Once)?;
    }
    Ok(out)
}

fn resident(t: &GpuTable) -> Result<&wgpu::Buffer> {
    match t {
        GpuTable::Resident { buffer, .. } => Ok(buffer),
        GpuTable::Host { .. } => Err(Error::Gpu(
            "only the word table may exceed a storage binding".into(),
        )),
    }
}
