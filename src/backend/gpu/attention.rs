//! Twin of the attention ladder, `shaders/attention_*.wgsl`: one `Params` layout and one
//! dispatch for every version (a workgroup per block of [`BLOCK`] queries and head).

use std::mem::size_of;

use bytemuck::{Pod, Zeroable};

use super::ladder::{Class, Needs, Op, Version};
use super::{Binding, Gpu, GpuBatch, GpuTensor, Kernel};
use crate::backend::HeadDims;
use crate::error::Result;

#[repr(C)]
#[derive(Clone, Copy, Pod, Zeroable)]
pub struct Params {
    pub heads: u32,
    pub hidden: u32,
    pub scale: f32,
}

const fn kernel(name: &'static str, source: &'static str, threads: u32) -> Kernel {
    Kernel {
        name,
        source,
        workgroup_size: [threads, 1, 1],
        params_size: size_of::<Params>(),
    }
}

pub static ONLINE: Kernel = kernel(
    "attention_1_online",
    include_str!("../../../shaders/attention_1_online.wgsl"),
    64,
);

pub static BLOCKED: Kernel = kernel(
    "attention_2_blocked",
    include_str!("../../../shaders/attention_2_blocked.wgsl"),
    128,
);

pub static COOP: Kernel = kernel(
    "attention_3_coop",
    include_str!("../../../shaders/attention_3_coop.wgsl"),
    128,
);

/// The ladder, version 1 first.
pub static VERSIONS: [Version; 3] = [
    Version {
        op: Op::Attention,
        number: 1,
        kernel: &ONLINE,
        tile: [BLOCK, 1],
        needs: Needs {
            subgroups: false,
            cooperative_matrix: false,
            inner_multiple: 1,
            workgroup_bytes: 16384,
        },
    },
    Version {
        op: Op::Attention,
        number: 2,
        kernel: &BLOCKED,
        tile: [BLOCK, 1],
        needs: Needs {
            subgroups: false,
            cooperative_matrix: false,
            inner_multiple: 1,
            workgroup_bytes: 16384,
        },
    },
    Version {
        op: Op::Attention,
        number: 3,
        kernel: &COOP,
        tile: [BLOCK, 1],
        needs: Needs {
            subgroups: false,
            cooperative_matrix: true,
            inner_multiple: 16,
            workgroup_bytes: 31760,
        },
    },
];

/// Queries per workgroup in every version: the batch's block table is cut at this size.
pub const BLOCK: usize = 64;
/// The head sizes the shaders hold: whole `vec4`s, at most 32 of them.
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
    let out = gpu.output(qkv.rows, h, "attention output")?; // [T, h]
    if batch.block_count == 0 {
        return Ok(out);
    }
    let version = gpu.version(Class::Attention {
        heads,
        d: h / heads,
    })?;
    record(gpu, version, qkv.raw(), batch, heads, h, out.raw())?;
    Ok(out)
}

/// Records `version` on the packed `qkv` of `batch`.
pub(super) fn record(
    gpu: &Gpu,
    version: &Version,
    qkv: &wgpu::Buffer,
    batch: &GpuBatch,
    heads: usize,
    h: usize,
    out: &wgpu::Buffer,
) -> Result<()> {
    let d = h / heads;
    let params = Params {
        heads: heads as u32,
        hidden: h as u32,
        scale: 1.0 / (d as f32).sqrt(),
    };
    let groups = [batch.block_count as u32, heads as u32, 1];
    let buffers = [&batch.blocks, qkv, out];
    gpu.dispatch(
        version.kernel,
        &[("HEAD_DIM", d as u32)],
        &params,
        &buffers,
        groups,
        Binding::Once,
    )
}
