//! The kernel ladders: each operation that dominates a forward pass (matmul, attention) exists
//! in numbered versions, one WGSL file each, in order of sophistication. Version 1 is the
//! readable one every other version is checked against; which version runs is forced by the
//! user (`BGE_KERNELS=matmul:3,attention:2`) or chosen per adapter and shape by
//! [`tune`](super::tune).

use std::fmt;

use super::context::Context;
use super::{GpuPrecision, Kernel, attention, matmul};
use crate::error::{Error, Result};

/// An operation with a ladder of kernels.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Op {
    /// [`Backend::matmul`](crate::backend::Backend::matmul): `x W^T + b` with its epilogue.
    Matmul,
    /// [`Backend::attention`](crate::backend::Backend::attention).
    Attention,
}

impl Op {
    /// Both, in the order `BGE_KERNELS` and reports list them.
    pub const ALL: [Op; 2] = [Op::Matmul, Op::Attention];

    /// `matmul` or `attention`.
    pub fn name(self) -> &'static str {
        match self {
            Op::Matmul => "matmul",
            Op::Attention => "attention",
        }
    }

    /// The op's versions, version 1 first.
    pub fn versions(self) -> &'static [Version] {
        match self {
            Op::Matmul => &matmul::VERSIONS,
            Op::Attention => &attention::VERSIONS,
        }
    }

    /// Version `number` of this op.
    pub fn version(self, number: u8) -> Option<&'static Version> {
        self.versions().iter().find(|v| v.number == number)
    }
}

impl fmt::Display for Op {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// One rung of a ladder: a shader and what it needs of the adapter and of the operands.
#[derive(Debug)]
pub struct Version {
    /// The op it computes.
    pub op: Op,
    /// Its number, 1 for the readable version.
    pub number: u8,
    /// The shader.
    pub kernel: &'static Kernel,
    /// Matmul: output rows and columns per workgroup (the dispatch is `[N / tile[1], M / tile[0]]`).
    /// Attention: queries per workgroup, and 1.
    pub tile: [usize; 2],
    /// What it needs to run.
    pub needs: Needs,
}

/// What a version needs of the adapter, the storage precision and the operands.
#[derive(Clone, Copy, Debug, Default)]
pub struct Needs {
    /// Subgroup operations (`Features::SUBGROUP`).
    pub subgroups: bool,
    /// Cooperative matrices of 16x16x16 f16 -> f32, on an adapter whose subgroups are exactly
    /// 32 wide (the kernels index subgroups as `local_invocation_index / 32`); f16 storage.
    pub cooperative_matrix: bool,
    /// The inner dimension (matmul: K; attention: the head size) is a multiple of this
    /// (vectorised loads, whole 16-wide matrix tiles); 1 for any.
    pub inner_multiple: usize,
    /// Bytes of workgroup memory (at most the adapter's limit).
    pub workgroup_bytes: u32,
}

/// The shape a choice is made for: the operands' sizes that do not change from batch to batch.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Class {
    /// A linear layer's `[out, in]`.
    Matmul {
        /// Output columns, N.
        n: usize,
        /// The inner dimension, K.
        k: usize,
    },
    /// Attention with `heads` heads of size `d`.
    Attention {
        /// Heads.
        heads: usize,
        /// Head size.
        d: usize,
    },
}

impl Class {
    /// The op it belongs to.
    pub fn op(self) -> Op {
        match self {
            Class::Matmul { .. } => Op::Matmul,
            Class::Attention { .. } => Op::Attention,
        }
    }

    /// The dimension [`Needs::inner_multiple`] is about.
    fn inner(self) -> usize {
        match self {
            Class::Matmul { k, .. } => k,
            Class::Attention { d, .. } => d,
        }
    }
}

impl fmt::Display for Class {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Class::Matmul { n, k } => write!(f, "matmul n={n} k={k}"),
            Class::Attention { heads, d } => write!(f, "attention heads={heads} d={d}"),
        }
    }
}

impl Version {
    /// Whether this version can run on `ctx` in `precision` at all; the reason when not.
    pub fn runs_on(
        &self,
        ctx: &Context,
        precision: GpuPrecision,
    ) -> std::result::Result<(), String> {
        let memory = ctx.limits.max_compute_workgroup_storage_size;
        if self.needs.workgroup_bytes > memory {
            return Err(format!(
                "needs {} bytes of workgroup memory, more than this adapter's {memory}",
                self.needs.workgroup_bytes
            ));
        }
        if self.needs.subgroups && !ctx.features.contains(wgpu::Features::SUBGROUP) {
            return Err("needs subgroup operations, which this adapter lacks".into());
        }
        if self.needs.cooperative_matrix {
            if precision != GpuPrecision::F16 {
                return Err("needs f16 storage (--dtype f16)".into());
            }
            if !ctx.has_cooperative_matrix_16x16_f16() {
                return Err(
                    "needs 16x16x16 f16 cooperative matrices, which this adapter lacks".into(),
                );
            }
            let (min, max) = (ctx.info.subgroup_min_size, ctx.info.subgroup_max_size);
            if (min, max) != (32, 32) {
                return Err(format!(
                    "needs subgroups of exactly 32 invocations (this adapter's are {min}..{max})"
                ));
            }
        }
        Ok(())
    }

    /// Whether this version takes operands of shape `class` (version 1 takes every shape).
    pub fn fits(&self, class: Class) -> bool {
        class.inner().is_multiple_of(self.needs.inner_multiple)
    }
}

/// Versions forced by the user, per op; `None` leaves the choice to the tuner.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct KernelChoice {
    /// The matmul version.
    pub matmul: Option<u8>,
    /// The attention version.
    pub attention: Option<u8>,
}

impl KernelChoice {
    /// The environment variable that forces versions, e.g. `matmul:3,attention:2`.
    pub const ENV: &'static str = "BGE_KERNELS";

    /// No version forced: every op is tuned.
    pub const TUNED: KernelChoice = KernelChoice {
        matmul: None,
        attention: None,
    };

    /// Every op at version `n` (where it has one).
    pub fn all(n: u8) -> KernelChoice {
        KernelChoice {
            matmul: Op::Matmul.version(n).map(|v| v.number),
            attention: Op::Attention.version(n).map(|v| v.number),
        }
    }

    /// What `BGE_KERNELS` forces; nothing when it is unset or empty.
    pub fn from_env() -> Result<KernelChoice> {
        match std::env::var(Self::ENV) {
            Ok(s) => s.parse(),
            Err(_) => Ok(KernelChoice::TUNED),
        }
    }

    /// The version forced for `op`.
    pub fn get(self, op: Op) -> Option<u8> {
        match op {
            Op::Matmul => self.matmul,
            Op::Attention => self.attention,
        }
    }

    /// These choices, with `other`'s filling the ops these leave open.
    pub fn or(self, other: KernelChoice) -> KernelChoice {
        KernelChoice {
            matmul: self.matmul.or(other.matmul),
            attention: self.attention.or(other.attention),
        }
    }
}

impl std::str::FromStr for KernelChoice {
    type Err = Error;

    /// `op:N` pairs separated by commas, e.g. `matmul:3,attention:2`.
    fn from_str(s: &str) -> Result<KernelChoice> {
        let mut choice = KernelChoice::TUNED;
        for item in s.split(',').map(str::trim).filter(|i| !i.is_empty()) {
            let bad = || {
                let ladders: Vec<String> = Op::ALL
                    .iter()
                    .map(|op| format!("{op}:1..{}", op.versions().len()))
                    .collect();
                Error::InvalidArgument(format!(
                    "{}: `{item}` is not one of {}",
                    Self::ENV,
                    ladders.join(", ")
                ))
            };
            let (name, number) = item.split_once(':').ok_or_else(bad)?;
            let op = Op::ALL
                .into_iter()
                .find(|op| op.name() == name.trim())
                .ok_or_else(bad)?;
            let number: u8 = number.trim().parse().map_err(|_| bad())?;
            op.version(number).ok_or_else(bad)?;
            match op {
                Op::Matmul => choice.matmul = Some(number),
                Op::Attention => choice.attention = Some(number),
            }
        }
        Ok(choice)
    }
}

impl fmt::Display for KernelChoice {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let parts: Vec<String> = Op::ALL
            .iter()
            .filter_map(|&op| self.get(op).map(|n| format!("{op}:{n}")))
            .collect();
        f.write_str(&parts.join(","))
    }
}

/// The version to run for `class` when `number` is asked for: that one if it fits the shape,
/// else the highest lower one that does (version 1 fits every shape).
pub fn fitting(op: Op, number: u8, class: Class) -> &'static Version {
    op.versions()
        .iter()
        .rev()
        .filter(|v| v.number <= number)
        .find(|v| v.fits(class))
        .unwrap_or(&op.versions()[0])
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn choices_parse_and_print_alike() {
        let c: KernelChoice = "matmul:3, attention:2".parse().unwrap();
        assert_eq!(c.matmul, Some(3));
        assert_eq!(c.attention, Some(2));
        assert_eq!(c.to_string(), "matmul:3,attention:2");
        assert_eq!("".parse::<KernelChoice>().unwrap(), KernelChoice::TUNED);
        for bad in ["matmul", "matmul:9", "conv:1", "matmul:x", "attention:0"] {
            let e = bad.parse::<KernelChoice>().unwrap_err().to_string();
            assert!(
                e.contains("BGE_KERNELS") && e.contains("matmul:1..5"),
                "{bad}: {e}"
            );
        }
    }

    #[test]
    fn versions_are_numbered_from_one_in_order() {
        for op in Op::ALL {
            for (i, v) in op.versions().iter().enumerate() {
                assert_eq!(v.number as usize, i + 1, "{op}");
                assert_eq!(v.op, op);
                assert!(v.kernel.name.starts_with(&format!("{op}_{}_", v.number)));
            }
            assert_eq!(
                op.versions()[0].needs.inner_multiple,
                1,
                "{op} 1 fits every shape"
            );
        }
    }

    #[test]
    fn a_version_that_does_not_fit_falls_back_to_a_lower_one() {
        let odd = Class::Matmul { n: 5, k: 129 };
        assert_eq!(fitting(Op::Matmul, 3, odd).number, 2);
        let even = Class::Matmul { n: 5, k: 128 };
        assert_eq!(fitting(Op::Matmul, 3, even).number, 3);
    }
}
