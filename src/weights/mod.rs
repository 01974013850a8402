//! Checkpoint files (safetensors, PyTorch zip), memory-mapped: a name -> (dtype, shape, bytes)
//! table over the mapping.
//!
//! Each format module only parses its header into `Entry`s; the bytes are never copied until a
//! backend converts a tensor into its own storage, so a 2 GB checkpoint costs one copy, not two.

mod safetensors;
mod torch;

use std::collections::HashMap;
use std::fs::File;
use std::path::{Path, PathBuf};

use memmap2::Mmap;

use crate::error::{Error, Result};

/// Element types a checkpoint tensor may have.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum DType {
    F32,
    F16,
    BF16,
}

impl DType {
    pub fn size(self) -> usize {
        match self {
            DType::F32 => 4,
            DType::F16 | DType::BF16 => 2,
        }
    }
}

/// Where one tensor lives inside a mapped file.
#[derive(Clone, Debug)]
pub(crate) struct Entry {
    pub dtype: DType,
    pub shape: Vec<usize>,
    /// Byte range in the mapping, already checked to lie inside it and to match dtype x shape.
    pub start: usize,
    pub end: usize,
}

/// One memory-mapped checkpoint file and the tensors its header describes.
pub struct WeightFile {
    path: PathBuf,
    map: Mmap,
    entries: HashMap<String, Entry>,
}

impl WeightFile {
    /// Opens a `.safetensors` file or a PyTorch zip checkpoint (`pytorch_model.bin`, `*.pt`).
    pub fn open(path: &Path) -> Result<Self> {
        let map = map_file(path)?;
        let entries = parse(path, &map)?;
        Ok(WeightFile {
            path: path.to_owned(),
            map,
            entries,
        })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    pub fn names(&self) -> impl Iterator<Item = &str> {
        self.entries.keys().map(String::as_str)
    }

    pub fn get(&self, name: &str) -> Option<TensorRef<'_>> {
        let e = self.entries.get(name)?;
        Some(TensorRef {
            name: name.to_owned(),
            dtype: e.dtype,
            shape: &e.shape,
            bytes: &self.map[e.start..e.end],
        })
    }
}

/// The checkpoint of one model: one or several files (sharded checkpoints), looked up by name.
pub struct Weights {
    files: Vec<WeightFile>,
}

impl Weights {
    pub fn new(files: Vec<WeightFile>) -> Self {
        Weights { files }
    }

    /// Opens every file of a checkpoint.
    pub fn open(paths: &[PathBuf]) -> Result<Self> {
        Ok(Weights::new(
            paths
                .iter()
                .map(|p| WeightFile::open(p))
                .collect::<Result<_>>()?,
        ))
    }

    pub fn contains(&self, name: &str) -> bool {
        self.files.iter().any(|f| f.entries.contains_key(name))
    }

    /// The tensor `name`, or an error naming the file searched.
    pub fn get(&self, name: &str) -> Result<TensorRef<'_>> {
        self.files
            .iter()
            .find_map(|f| f.get(name))
            .ok_or_else(|| self.missing(name))
    }

    /// The error for a tensor this checkpoint lacks.
    pub fn missing(&self, name: &str) -> Error {
        Error::MissingTensor {
            path: self
                .files
                .first()
                .map(|f| f.path.clone())
                .unwrap_or_default(),
            name: name.to_owned(),
        }
    }

    /// `name` as f32, after checking its shape.
    pub fn f32(&self, name: &str, shape: &[usize]) -> Result<Vec<f32>> {
        Ok(self.get(name)?.expect_shape(shape)?.to_f32())
    }
}

/// A borrowed view of one tensor's raw little-endian bytes.
pub struct TensorRef<'a> {
    pub name: String,
    pub dtype: DType,
    pub shape: &'a [usize],
    pub bytes: &'a [u8],
}

impl TensorRef<'_> {
    pub fn expect_shape(self, shape: &[usize]) -> Result<Self> {
        if self.shape != shape {
            return Err(Error::ShapeMismatch {
                name: self.name,
                expected: shape.to_vec(),
                found: self.shape.to_vec(),
            });
        }
        Ok(self)
    }

    pub fn to_f32(&self) -> Vec<f32> {
        let b = self.bytes;
        match self.dtype {
            DType::F32 => b
                .chunks_exact(4)
                .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
                .collect(),
            DType::F16 => b
                .chunks_exact(2)
                .map(|c| half::f16::from_le_bytes([c[0], c[1]]).to_f32())
                .collect(),
            DType::BF16 => b
                .chunks_exact(2)
                .map(|c| half::bf16::from_le_bytes([c[0], c[1]]).to_f32())
                .collect(),
        }
    }
}

/// Reads the tensor table of a checkpoint, picking the format from its first bytes: torch.save
/// writes a zip archive; a safetensors file starts with its header length, so it has no magic.
fn parse(path: &Path, bytes: &[u8]) -> Result<HashMap<String, Entry>> {
    if bytes.starts_with(torch::ZIP_MAGIC) {
        torch::parse(path, bytes)
    } else if bytes.starts_with(torch::LEGACY_MAGIC) {
        Err(Error::corrupt(
            path,
            "a legacy (pre-1.6) torch.save file; re-save it with a recent PyTorch or convert it to safetensors",
        ))
    } else {
        safetensors::parse(path, bytes)
    }
}

/// Parses checkpoint bytes (safetensors or a PyTorch zip) into `(name, dtype, shape)`, sorted
/// by name, without keeping them; for fuzzing and inspection.
pub fn parse_bytes(bytes: &[u8]) -> Result<Vec<(String, DType, Vec<usize>)>> {
    let mut tensors: Vec<_> = parse(Path::new("<bytes>"), bytes)?
        .into_iter()
        .map(|(name, e)| (name, e.dtype, e.shape))
        .collect();
    tensors.sort_by(|a, b| a.0.cmp(&b.0));
    Ok(tensors)
}

fn map_file(path: &Path) -> Result<Mmap> {
    let file = File::open(path).map_err(|e| Error::io(path, e))?;
    // SAFETY: the mapping is read-only and private to this process. Like every mmap-based
    // checkpoint loader (safetensors, candle, llama.cpp), it assumes nobody truncates the file
    // while the model is loaded.
    unsafe { Mmap::map(&file) }.map_err(|e| Error::io(path, e))
}

/// Checks that `count` elements of `dtype` fill exactly `start..end` inside a `len`-byte file.
pub(crate) fn check_extent(
    path: &Path,
    name: &str,
    dtype: DType,
    shape: &[usize],
    (start, end): (usize, usize),
    len: usize,
) -> Result<()> {
    let count = shape
        .iter()
        .try_fold(1usize, |a, &d| a.checked_mul(d))
        .ok_or_else(|| Error::corrupt(path, format!("tensor `{name}`: shape overflows")))?;
    let bytes = count.checked_mul(dtype.size());
    if end < start || end > len || bytes != Some(end - start) {
        return Err(Error::corrupt(
            path,
            format!(
                "tensor `{name}`: {shape:?} {dtype:?} does not fit bytes {start}..{end} of a {len}-byte file"
            ),
        ));
    }
    Ok(())
}
