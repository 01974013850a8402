//! Twins of the row-wise shaders: `gather_rows.wgsl`, `mean_pool.wgsl`, `l2_normalize.wgsl`.

use std::mem::size_of;

use bytemuck::{Pod, Zeroable};

use super::{Binding, Gpu, GpuBatch, GpuTensor, Kernel};
use crate::error::Result;

/// `(count, cols)` for all three shaders (`count` is rows, output rows or sequences).
#[repr(C)]
#[derive(Clone, Copy, Pod, Zeroable)]
pub struct Params {
    pub count: u32,
    pub cols: u32,
}

pub const GATHER: Kernel = Kernel {
    name: "gather_rows",
    source: include_str!("../../../shaders/gather_rows.wgsl"),
    workgroup_size: [256, 1, 1],
    params_size: size_of::<Params>(),
};

pub const MEAN_POOL: Kernel = Kernel {
    name: "mean_pool",
    source: include_str!("../../../shaders/mean_pool.wgsl"),
    workgroup_size: [256, 1, 1],
    params_size: size_of::<Params>(),
};

pub const L2_NORMALIZE: Kernel = Kernel {
    name: "l2_normalize",
    source: include_str!("../../../shaders/l2_normalize.wgsl"),
    workgroup_size: [256, 1, 1],
    params_size: size_of::<Params>(),
};

pub(super) fn gather(gpu: &Gpu, x: &GpuTensor, rows: &[u32]) -> Result<GpuTensor> {
    // x: [*, cols] -> [rows.len(), cols]
    let out = gpu.output(rows.len(), x.cols, "gathered rows")?;
    if !rows.is_empty() {
        let index = gpu.upload(bytemuck::cast_slice(rows), "row indices")?;
        let params = Params {
            count: rows.len() as u32,
            cols: x.cols as u32,
        };
        let groups = gpu.grid((rows.len() * x.cols).div_ceil(256));
        gpu.dispatch(
            &GATHER,
            &[],
            &params,
            &[&index, x.raw(), out.raw()],
            groups,
            Binding::Once,
        )?;
    }
    Ok(out)
}

pub(super) fn mean_pool(gpu: &Gpu, x: &GpuTensor, batch: &GpuBatch) -> Result<GpuTensor> {
    // x: [T, cols] -> [B, cols]
    let out = gpu.output(batch.dims.sequences, x.cols, "mean pool")?;
    if batch.dims.sequences > 0 {
        let params = Params {
            count: batch.dims.sequences as u32,
            cols: x.cols as u32,
        };
        let groups = gpu.grid((batch.dims.sequences * x.cols).div_ceil(256));
        gpu.dispatch(
            &MEAN_POOL,
            &[],
            &params,
            &[&batch.offsets, x.raw(), out.raw()],
            groups,
            Binding::Once,
        )?;
    }
    Ok(out)
}

pub(super) fn l2_normalize(gpu: &Gpu, x: &GpuTensor) -> Result<GpuTensor> {
    let out = gpu.output(x.rows, x.cols, "normalized rows")?;
    if x.rows > 0 {
        let params = Params {
            count: x.rows as u32,
            cols: x.cols as u32,
        };
        gpu.dispatch(
            &L2_NORMALIZE,
            &[],
            &params,
            &[x.raw(), out.raw()],
            gpu.grid(x.rows),
            Binding::Kept,
        )?;
    }
    Ok(out)
}
