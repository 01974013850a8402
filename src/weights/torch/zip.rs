//! The zip container of `torch.save`: a central-directory reader that hands out the byte range
//! of each stored entry inside the mapped file (zip64 included, as PyTorch writes it).
//!
//! Hand-written rather than the `zip` crate: torch.save never compresses, so locating stored
//! entries is all we need, and that is the end record, the central directory and each local
//! header's length, about 150 lines with no decompressors behind them. Offsets follow PKWARE's
//! APPNOTE.TXT; every field read and every sum of offsets is bounds-checked against the file.
//! CRCs are not verified: that would read all 2 GB of bge-m3 at load time.

use std::collections::HashMap;
use std::ops::Range;
use std::path::Path;

use crate::error::{Error, Result};

const LOCAL_HEADER: u32 = 0x0403_4b50;
const CENTRAL_HEADER: u32 = 0x0201_4b50;
const END_OF_CENTRAL_DIR: u32 = 0x0605_4b50;
const ZIP64_END_OF_CENTRAL_DIR: u32 = 0x0606_4b50;
const ZIP64_LOCATOR: u32 = 0x0706_4b50;

/// Fixed sizes of the records (APPNOTE 4.3.7, 4.3.12, 4.3.15, 4.3.16).
const LOCAL_HEADER_LEN: usize = 30;
const CENTRAL_HEADER_LEN: usize = 46;
const ZIP64_LOCATOR_LEN: usize = 20;
const END_OF_CENTRAL_DIR_LEN: usize = 22;
/// The end record may be followed by a comment of at most this many bytes.
const MAX_COMMENT_LEN: usize = 0xffff;

/// Extra-field id of the zip64 extended information (APPNOTE 4.5.3).
const ZIP64_EXTRA_ID: u16 = 0x0001;
/// A 32-bit size or offset with this value is stored in the zip64 extra field instead.
const ZIP64_PLACEHOLDER: u32 = 0xffff_ffff;
/// Compression method 0: the entry's bytes are stored as they are.
const STORED: u16 = 0;

/// One file of the archive, as its central-directory record describes it.
struct Record {
    method: u16,
    compressed_size: usize,
    local_header: usize,
}

/// The entries of a zip archive, by name.
pub(super) struct Archive<'a> {
    file: Reader<'a>,
    records: HashMap<String, Record>,
}

impl<'a> Archive<'a> {
    /// Reads the central directory of the archive `bytes` (`path` only names it in errors).
    pub fn read(path: &'a Path, bytes: &'a [u8]) -> Result<Self> {
        let r = Reader { path, bytes };
        let end = find_end_of_central_dir(bytes).ok_or_else(|| {
            Error::corrupt(
                path,
                "not a complete zip archive: no end-of-central-directory record (truncated file?)",
            )
        })?;
        let mut count = u64::from(r.u16(end + 10)?);
        let mut dir_len = u64::from(r.u32(end + 12)?);
        let mut dir_start = u64::from(r.u32(end + 16)?);
        // zip64: a locator just before the end record points at the 64-bit version of it.
        if let Some(locator) = end.checked_sub(ZIP64_LOCATOR_LEN)
            && r.u32(locator)? == ZIP64_LOCATOR
        {
            let end64 = r.offset(r.u64(locator + 8)?)?;
            if r.u32(end64)? != ZIP64_END_OF_CENTRAL_DIR {
                return Err(r.corrupt("the zip64 locator does not point at a zip64 end record"));
            }
            count = r.u64(end64 + 32)?;
            dir_len = r.u64(end64 + 40)?;
            dir_start = r.u64(end64 + 48)?;
        }
        let dir_start = r.offset(dir_start)?;
        let dir_end = dir_start
            .checked_add(r.offset(dir_len)?)
            .filter(|&e| e <= bytes.len())
            .ok_or_else(|| r.corrupt("the central directory lies past the end of the file"))?;

        let mut records = HashMap::new();
        let mut at = dir_start;
        // Each record takes at least 46 bytes of the directory, so a hostile count cannot make
        // this loop run longer than the file allows.
        for _ in 0..count {
            if at
                .checked_add(CENTRAL_HEADER_LEN)
                .is_none_or(|e| e > dir_end)
            {
                return Err(r.corrupt("the central directory is shorter than its entry count"));
            }
            let (name, record, next) = r.central_record(at)?;
            records.insert(name, record);
            at = next;
        }
        Ok(Archive { file: r, records })
    }

    pub fn names(&self) -> impl Iterator<Item = &str> {
        self.records.keys().map(String::as_str)
    }

    pub fn contains(&self, name: &str) -> bool {
        self.records.contains_key(name)
    }

    /// The byte range, in the file, of the stored entry `name`.
    pub fn data(&self, name: &str) -> Result<Range<usize>> {
        let r = &self.file;
        let name_for_errors = name.escape_debug();
        let record = self
            .records
            .get(name)
            .ok_or_else(|| r.corrupt(format!("the archive has no entry `{name_for_errors}`")))?;
        if record.method != STORED {
            return Err(r.corrupt(format!(
                "entry `{name_for_errors}` is compressed (zip method {}); torch.save stores entries uncompressed",
                record.method
            )));
        }
        let at = record.local_header;
        if r.u32(at)? != LOCAL_HEADER {
            return Err(r.corrupt(format!(
                "entry `{name_for_errors}`: no local header at byte {at}"
            )));
        }
        // The local header's sizes may be zero (flag bit 3, as PyTorch writes them); its name
        // and extra lengths (the extra field pads data to 64 bytes) say where the data starts.
        let name_len = usize::from(r.u16(at + 26)?);
        let extra_len = usize::from(r.u16(at + 28)?);
        let start = at + LOCAL_HEADER_LEN + name_len + extra_len;
        start
            .checked_add(record.compressed_size)
            .filter(|&end| end <= r.bytes.len())
            .map(|end| start..end)
            .ok_or_else(|| {
                r.corrupt(format!(
                    "entry `{name_for_errors}`: {} bytes from byte {start} run past the end of the {}-byte file",
                    record.compressed_size,
                    r.bytes.len()
                ))
            })
    }
}

/// The last end-of-central-directory signature, searched backwards over the largest comment.
fn find_end_of_central_dir(bytes: &[u8]) -> Option<usize> {
    let last = bytes.len().checked_sub(END_OF_CENTRAL_DIR_LEN)?;
    let first = last.saturating_sub(MAX_COMMENT_LEN);
    (first..=last)
        .rev()
        .find(|&at| bytes[at..at + 4] == END_OF_CENTRAL_DIR.to_le_bytes())
}

/// Bounds-checked little-endian reads at absolute offsets of the file.
struct Reader<'a> {
    path: &'a Path,
    bytes: &'a [u8],
}

impl Reader<'_> {
    fn corrupt(&self, message: impl Into<String>) -> Error {
        Error::corrupt(self.path, message)
    }

    fn field<const N: usize>(&self, at: usize) -> Result<[u8; N]> {
        at.checked_add(N)
            .and_then(|end| self.bytes.get(at..end))
            .and_then(|b| b.try_into().ok())
            .ok_or_else(|| {
                self.corrupt(format!(
                    "truncated zip: a field at byte {at} lies past the end of the {}-byte file",
                    self.bytes.len()
                ))
            })
    }

    fn u16(&self, at: usize) -> Result<u16> {
        self.field(at).map(u16::from_le_bytes)
    }

    fn u32(&self, at: usize) -> Result<u32> {
        self.field(at).map(u32::from_le_bytes)
    }

    fn u64(&self, at: usize) -> Result<u64> {
        self.field(at).map(u64::from_le_bytes)
    }

    /// A size or offset from the file, as an index that must lie inside it.
    fn offset(&self, value: u64) -> Result<usize> {
        usize::try_from(value)
            .ok()
            .filter(|&v| v <= self.bytes.len())
            .ok_or_else(|| {
                self.corrupt(format!(
                    "zip offset {value} lies past the end of the {}-byte file",
                    self.bytes.len()
                ))
            })
    }

    /// The central-directory record at `at` (APPNOTE 4.3.12): its name, what we keep of it and
    /// where the next record starts.
    fn central_record(&self, at: usize) -> Result<(String, Record, usize)> {
        if self.u32(at)? != CENTRAL_HEADER {
            return Err(self.corrupt(format!("no central directory record at byte {at}")));
        }
        let method = self.u16(at + 10)?;
        let compressed_size = self.u32(at + 20)?;
        let uncompressed_size = self.u32(at + 24)?;
        let name_len = usize::from(self.u16(at + 28)?);
        let extra_len = usize::from(self.u16(at + 30)?);
        let comment_len = usize::from(self.u16(at + 32)?);
        let local_header = self.u32(at + 42)?;

        let name_start = at + CENTRAL_HEADER_LEN;
        let extra_start = name_start + name_len;
        let next = extra_start + extra_len + comment_len;
        let name = self.bytes.get(name_start..extra_start).ok_or_else(|| {
            self.corrupt("a central directory name runs past the end of the file")
        })?;
        let name = String::from_utf8_lossy(name).into_owned();

        // Zip64 (APPNOTE 4.5.3): each field saturated at 0xffffffff is stored instead as a u64
        // of the extra field, in the order uncompressed size, compressed size, header offset.
        let zip64 = self.zip64_extra(extra_start, extra_start + extra_len)?;
        let mut zip64 = zip64.into_iter();
        let mut widen = |value: u32| {
            if value != ZIP64_PLACEHOLDER {
                return Ok(u64::from(value));
            }
            zip64.next().ok_or_else(|| {
                self.corrupt(format!(
                    "entry `{}`: a zip64 field is missing",
                    name.escape_debug()
                ))
            })
        };
        widen(uncompressed_size)?;
        let compressed_size = self.offset(widen(compressed_size)?)?;
        let local_header = self.offset(widen(local_header)?)?;
        let record = Record {
            method,
            compressed_size,
            local_header,
        };
        Ok((name, record, next))
    }

    /// The u64 values of the zip64 field among the extra fields in `start..end`, if any.
    fn zip64_extra(&self, start: usize, end: usize) -> Result<Vec<u64>> {
        let mut at = start;
        while at + 4 <= end {
            let id = self.u16(at)?;
            let len = usize::from(self.u16(at + 2)?);
            let data = at + 4;
            if id == ZIP64_EXTRA_ID {
                let data_end = (data + len).min(end);
                return (data..data_end)
                    .step_by(8)
                    .take_while(|v| v + 8 <= data_end)
                    .map(|v| self.u64(v))
                    .collect();
            }
            at = data + len;
        }
        Ok(Vec::new())
    }
}
