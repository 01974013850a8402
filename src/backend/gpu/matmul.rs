//! Twin of the matmul ladder, `shaders/matmul_*.wgsl`: one `Params` layout for every version,
//! and each version's tile, from which its dispatch follows.

use std::mem::size_of;

use bytemuck::{Pod, Zeroable};

use super::ladder::{Class, Needs, Op, Version};
use super::{Binding, Gpu, GpuLinear, GpuTensor, Kernel};
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

const fn kernel(name: &'static str, source: &'static str, workgroup_size: [u32; 3]) -> Kernel {
    Kernel {
        name,
        source,
        workgroup_size,
        params_size: size_of::<Params>(),
    }
}

pub static NAIVE: Kernel = kernel(
    "matmul_1_naive",
    include_str!("../../../shaders/matmul_1_naive.wgsl"),
    [16, 16, 1],
);
pub static TILED: Kernel = kernel(
    "matmul_2_tiled",
    include_str!("../../../shaders/matmul_2_tiled.wgsl"),
    [16, 16, 1],
);
pub static BLOCKED: Kernel = kernel(
    "matmul_3_blocked",
    include_str!("../../../shaders/matmul_3_blocked.wgsl"),
    [256, 1, 1],
);
pub static SUBGROUP: Kernel = kernel(
    "matmul_4_subgroup",
    include_str!("../../../shaders/matmul_4_subgroup.wgsl"),
    [256, 1, 1],
);
pub static COOP: Kernel = kernel(
    "matmul_5_coop",
    include_str!("../../../shaders/matmul_5_coop.wgsl"),
    [128, 1, 1],
);

/// The ladder, version 1 first.
pub static VERSIONS: [Version; 5] = [
    Version {
        op: Op::Matmul,
        number: 1,
        kernel: &NAIVE,
        tile: [16, 16],
        needs: Needs {
            subgroups: false,
            cooperative_matrix: false,
            inner_multiple: 1,
            workgroup_bytes: 0,
        },
    },
    Version {
        op: Op::Matmul,
        number: 2,
        kernel: &TILED,
        tile: [64, 64],
        needs: Needs {
            subgroups: false,
            cooperative_matrix: false,
            inner_multiple: 1,
            workgroup_bytes: 8192,
        },
    },
    Version {
        op: Op::Matmul,
        number: 3,
        kernel: &BLOCKED,
        tile: [128, 128],
        needs: Needs {
            subgroups: false,
            cooperative_matrix: false,
            inner_multiple: 4,
            workgroup_bytes: 16384,
        },
    },
    Version {
        op: Op::Matmul,
        number: 4,
        kernel: &SUBGROUP,
        tile: [128, 128],
        needs: Needs {
            subgroups: true,
            cooperative_matrix: false,
            inner_multiple: 4,
            workgroup_bytes: 8192,
        },
    },
    Version {
        op: Op::Matmul,
        number: 5,
        kernel: &COOP,
        tile: [128, 64],
        needs: Needs {
            subgroups: false,
            cooperative_matrix: true,
            inner_multiple: 4,
            workgroup_bytes: 19456,
        },
    },
];

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
    let version = gpu.version(Class::Matmul { n, k: w.inp })?;
    record(gpu, version, x.raw(), w, act, m, out.raw())?;
    Ok(out)
}

/// Records `version` computing `out = act(x W^T + b)` for `m` rows of `x`.
pub(super) fn record(
    gpu: &Gpu,
    version: &Version,
    x: &wgpu::Buffer,
    w: &GpuLinear,
    act: Activation,
    m: usize,
    out: &wgpu::Buffer,
) -> Result<()> {
    let params = Params {
        m: m as u32,
        n: w.out as u32,
        k: w.inp as u32,
        activation: activation_code(act),
    };
    let [tile_m, tile_n] = version.tile;
    let groups = [w.out.div_ceil(tile_n) as u32, m.div_ceil(tile_m) as u32, 1];
    let buffers = [x, &w.weight, &w.bias, out];
    gpu.dispatch(
        version.kernel,
        &[],
        &params,
        &buffers,
        groups,
        Binding::Kept,
    )
}
