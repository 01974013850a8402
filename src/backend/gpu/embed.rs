//! Twin of `shaders/embed.wgsl`.

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

pub const KERNEL: Kernel = Kernel {
    name: "embed",
    source: include_str!("../../../shaders/embed.wgsl"),
    workgroup_size: [256, 1, 1],
    params_size: size_of::<Params>(),
};

pub(super) fn embed(
    gpu: &Gpu,
    batch: &GpuBatch,
    word: &GpuTable,       // [vocab, h]
    position: &GpuTable,   // [positions, h]
    token_type: &GpuTable, // [types, h]
) -> Result<GpuTensor> {
    let (position, token_type) = (resident(position)?, resident(token_type)?);
    // A word table kept on the host: gather this batch's rows there; the shader then reads
    // row t for token t.
    let gathered;
    let (word, ids, h) = match word {
        GpuTable::Resident { buffer, cols, .. } => (buffer, &batch.ids, *cols),
        GpuTable::Host { data, cols, .. } => {
            let rows: Vec<f32> = batch
                .host_ids
                .iter()
                .flat_map(|&id| &data[id as usize * cols..(id as usize + 1) * cols])
                .copied()
                .collect();
            let identity: Vec<u32> = (0..batch.dims.tokens as u32).collect();
            gathered = (
                gpu.upload(bytemuck::cast_slice(&rows), "gathered word embeddings")?,
                gpu.upload(bytemuck::cast_slice(&identity), "row ids")?,
            );
            (&gathered.0, &gathered.1, *cols)
        }
    };
    let out = gpu.output(batch.dims.tokens, h, "embeddings")?; // [T, h]
    if batch.dims.tokens > 0 {
        let params = Params {
            tokens: batch.dims.tokens as u32,
            hidden: h as u32,
        };
        let buffers = [
            ids,
            &batch.positions,
            &batch.types,
            word,
            position,
            token_type,
            out.raw(),
        ];
        let groups = gpu.grid((batch.dims.tokens * h).div_ceil(256));
        gpu.dispatch(&KERNEL, &[], &params, &buffers, groups, Binding::Once)?;
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
