//! `.safetensors` headers (the `safetensors` crate validates the JSON header and the offsets).

use std::collections::HashMap;
use std::path::Path;

use safetensors::{Dtype, SafeTensors};

use super::{DType, Entry, check_extent};
use crate::error::{Error, Result};

/// Size of the little-endian u64 header length that starts every file.
const HEADER_LEN_BYTES: usize = 8;

pub(super) fn parse(path: &Path, bytes: &[u8]) -> Result<HashMap<String, Entry>> {
    let (header_len, metadata) =
        SafeTensors::read_metadata(bytes).map_err(|e| Error::corrupt(path, e.to_string()))?;
    let data_start = HEADER_LEN_BYTES + header_len;
    let mut entries = HashMap::new();
    for (name, info) in metadata.tensors() {
        let dtype = match info.dtype {
            Dtype::F32 => DType::F32,
            Dtype::F16 => DType::F16,
            Dtype::BF16 => DType::BF16,
            // Integer buffers (e.g. `embeddings.position_ids` in old BERT checkpoints) are not
            // weights; they are skipped, and a weight stored as one is reported as missing.
            _ => continue,
        };
        let (start, end) = (
            data_start + info.data_offsets.0,
            data_start + info.data_offsets.1,
        );
        check_extent(path, &name, dtype, &info.shape, (start, end), bytes.len())?;
        let shape = info.shape.clone();
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
