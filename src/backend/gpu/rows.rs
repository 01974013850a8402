//! Twins of the row-wise shaders: `gather_rows.wgsl`, `mean_pool.wgsl`, `l2_normalize.wgsl`.

use std::mem::size_of;

use bytemuck::{Pod, Zeroable};

use super::{Binding, Gpu, GpuBatch, GpuTensor, Kernel};
use crate::error::Result;

/// `(count, cols)` for `gather_rows.wgsl` and `l2_normalize.wgsl` (`count` is output rows or
/// rows).
#[repr(C)]
#[derive(Clone, Copy, Pod, Zeroable)]
pub struct Params {
    pub count: u32,
    pub cols: u32,
}

pub static GATHER: Kernel = Kernel {
    name: "gather_rows",
    source: include_str!("../../../shaders/gather_rows.wgsl"),
    workgroup_size: [256, 1, 1],
    params_size: size_of::<Params>(),
};

/// `mean_pool.wgsl`'s: the sequences, the columns, and whether to normalise the means.
#[repr(C)]
#[derive(Clone, Copy, Pod, Zeroable)]
pub struct PoolParams {
    pub sequences: u32,
    pub cols: u32,
    pub normalize: u32,
}

pub static MEAN_POOL: Kernel = Kernel {
    name: "mean_pool",
    source: include_str!("../../../shaders/mean_pool.wgsl"),
    workgroup_size: [256, 1, 1],
    params_size: size_of::<PoolParams>(),
};

pub static L2_NORMALIZE: Kernel = Kernel {
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

/// Each sequence's mean row, L2-normalised if `normalize` (one dispatch either way).
pub(super) fn mean_pool(
    gpu: &Gpu,
    x: &GpuTensor,
    batch: &GpuBatch,
    normalize: bool,
) -> Result<GpuTensor> {
    // x: [T, cols] -> [B, cols]
    let out = gpu.output(batch.dims.sequences, x.cols, "mean pool")?;
    if batch.dims.sequences > 0 {
        let params = PoolParams {
            sequences: batch.dims.sequences as u32,
            cols: x.cols as u32,
            normalize: normalize as u32,
        };
        let groups = gpu.grid(batch.dims.sequences);
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
