//! PyTorch checkpoints (`pytorch_model.bin`, `colbert_linear.pt`, `sparse_linear.pt`) in the
//! zip format of `torch.save` (PyTorch >= 1.6), read without running their pickle.
//!
//! The archive holds `<prefix>/data.pkl`, a pickle of the state dict, and the raw little-endian
//! bytes of each storage as `<prefix>/data/<key>`, stored uncompressed. [`pickle`] turns the
//! pickle into tensor descriptions without executing it, [`zip`] finds the storages in the
//! mapped file, and this module checks that each tensor is a contiguous run of its storage, so
//! that it can be handed out as bytes of the mapping, like a safetensors tensor.

mod pickle;
mod zip;

use std::collections::HashMap;
use std::ops::Range;
use std::path::Path;

use super::{DType, Entry, check_extent};
use crate::error::{Error, Result};
use pickle::{StorageKind, Tensor};

/// The first bytes of a zip archive (a local file header).
pub(super) const ZIP_MAGIC: &[u8] = b"PK\x03\x04";
/// The first bytes of the legacy (pre-1.6) torch.save format: pickle protocol 2, then the magic
/// number 0x1950a86a20f9469cfc6c as a LONG1 (torch/serialization.py, `MAGIC_NUMBER`).
pub(super) const LEGACY_MAGIC: &[u8] = b"\x80\x02\x8a\x0a\x6c\xfc\x9c\x46\xf9\x20\x6a\xa8\x50\x19";

pub(super) fn parse(path: &Path, bytes: &[u8]) -> Result<HashMap<String, Entry>> {
    let archive = zip::Archive::read(path, bytes)?;
    let prefix = record_prefix(path, &archive)?;
    let byteorder = format!("{prefix}/byteorder");
    if archive.contains(&byteorder) && bytes[archive.data(&byteorder)?] != *b"little" {
        return Err(Error::corrupt(
            path,
            "a big-endian checkpoint; only little-endian ones can be read",
        ));
    }
    let pickle = &bytes[archive.data(&format!("{prefix}/data.pkl"))?];
    let mut entries = HashMap::new();
    for (name, tensor) in pickle::load(path, pickle)? {
        let (size, dtype) = element(tensor.storage.kind);
        let Range { start, end } = locate(path, &archive, &prefix, &name, &tensor, size)?;
        let Some(dtype) = dtype else {
            continue;
        };
        check_extent(path, &name, dtype, &tensor.shape, (start, end), bytes.len())?;
        let shape = tensor.shape.clone();
        entries.insert(
            name,
            Entry {
                dtype,
                shape,
                start,
                end,
            },
        );
    }
    Ok(entries)
}

/// Bytes per element of a storage, and its weight dtype: none for int64 buffers (such as
/// `position_ids`), which are skipped as the safetensors reader skips integer tensors.
fn element(kind: StorageKind) -> (usize, Option<DType>) {
    match kind {
        StorageKind::F32 => (4, Some(DType::F32)),
        StorageKind::F16 => (2, Some(DType::F16)),
        StorageKind::BF16 => (2, Some(DType::BF16)),
        StorageKind::I64 => (8, None),
    }
}

/// The `<prefix>` of `<prefix>/data.pkl`: the archive's one top-level folder (the file's stem,
/// or `archive` in recent PyTorch).
fn record_prefix(path: &Path, archive: &zip::Archive) -> Result<String> {
    let mut prefixes = archive
        .names()
        .filter_map(|n| n.strip_suffix("/data.pkl"))
        .filter(|p| !p.contains('/'));
    match (prefixes.next(), prefixes.next()) {
        (Some(prefix), None) => Ok(prefix.to_owned()),
        (None, _) => Err(Error::corrupt(
            path,
            "a zip archive without `<name>/data.pkl`: not a torch.save checkpoint",
        )),
        (Some(_), Some(_)) => Err(Error::corrupt(
            path,
            "a zip archive with several `<name>/data.pkl`: not a torch.save checkpoint",
        )),
    }
}

/// The bytes of `tensor` in the file, once checked to be a contiguous run inside its storage.
fn locate(
    path: &Path,
    archive: &zip::Archive,
    prefix: &str,
    name: &str,
    tensor: &Tensor,
    element_size: usize,
) -> Result<Range<usize>> {
    let (shape, stride) = (&tensor.shape, &tensor.stride);
    let name = name.escape_debug();
    if !is_contiguous(shape, stride) {
        return Err(Error::corrupt(
            path,
            format!(
                "tensor `{name}`: strides {stride:?} are not row-major for shape {shape:?}; only contiguous tensors can be read"
            ),
        ));
    }
    let key = &tensor.storage.key;
    let storage = archive.data(&format!("{prefix}/data/{key}"))?;
    let key = key.escape_debug();
    // Element range offset..offset + numel, in bytes from the storage's start.
    let bytes = shape
        .iter()
        .try_fold(1usize, |n, &d| n.checked_mul(d))
        .and_then(|numel| {
            let start = tensor.offset.checked_mul(element_size)?;
            let end = numel.checked_mul(element_size)?.checked_add(start)?;
            Some(start..end)
        })
        .filter(|b| b.end <= storage.len());
    bytes
        .map(|b| storage.start + b.start..storage.start + b.end)
        .ok_or_else(|| {
            Error::corrupt(
                path,
                format!(
                    "tensor `{name}`: shape {shape:?} from element {} runs past the {} bytes of storage `{key}`",
                    tensor.offset,
                    storage.len()
                ),
            )
        })
}

/// Row-major without gaps, as PyTorch defines it: the stride of a size-1 dimension does not
/// matter and an empty tensor is contiguous (c10/core/Contiguity.h, `_compute_contiguous`).
fn is_contiguous(shape: &[usize], stride: &[usize]) -> bool {
    if shape.len() != stride.len() {
        return false;
    }
    if shape.contains(&0) {
        return true;
    }
    let mut expected = Some(1usize);
    for (&size, &stride) in shape.iter().zip(stride).rev() {
        if size != 1 {
            if expected != Some(stride) {
                return false;
            }
            expected = expected.and_then(|e| e.checked_mul(size));
        }
    }
    true
}

#[cfg(test)]
mod tests {
    use super::is_contiguous;

    #[test]
    fn contiguity_follows_pytorch() {
        assert!(is_contiguous(&[2, 3], &[3, 1]));
        assert!(is_contiguous(&[], &[]));
        // Size-1 dimensions may have any stride, and empty tensors are contiguous.
        assert!(is_contiguous(&[1, 32], &[1, 1]));
        assert!(is_contiguous(&[0, 3], &[7, 9]));
        // Transposed, padded, broadcast or mismatched strides are not.
        assert!(!is_contiguous(&[2, 3], &[1, 2]));
        assert!(!is_contiguous(&[2, 3], &[4, 1]));
        assert!(!is_contiguous(&[2, 3], &[0, 1]));
        assert!(!is_contiguous(&[2, 3], &[3]));
    }
}
