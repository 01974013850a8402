//! Arbitrary bytes into the PyTorch checkpoint reader, twice: as a whole file (mutations of the
//! seed `.pt` files reach the zip reader), and as the `data.pkl` of a well-formed archive (so
//! every input reaches the unpickler). Any panic, overflow or runaway allocation is a bug; an
//! error is the expected outcome.
#![no_main]

use bge::internals::parse_bytes;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let _ = parse_bytes(data);
    let _ = parse_bytes(&checkpoint(data));
});

/// A torch.save archive of stored entries holding `pickle` and a 256-byte storage `0`.
fn checkpoint(pickle: &[u8]) -> Vec<u8> {
    let storage = [0u8; 256];
    let entries: [(&str, &[u8]); 3] = [
        ("archive/data.pkl", pickle),
        ("archive/byteorder", b"little"),
        ("archive/data/0", &storage),
    ];
    let mut out = Vec::new();
    let mut dir = Vec::new();
    let le32 = |v: usize| (v as u32).to_le_bytes();
    for (name, data) in entries {
        let offset = out.len();
        // Local header (APPNOTE 4.3.7): signature, version 20, no flags, stored, zero
        // time/date/crc, sizes, name length, no extra.
        out.extend_from_slice(b"PK\x03\x04\x14\0\0\0\0\0\0\0\0\0\0\0\0\0");
        out.extend_from_slice(&le32(data.len()));
        out.extend_from_slice(&le32(data.len()));
        out.extend_from_slice(&(name.len() as u16).to_le_bytes());
        out.extend_from_slice(&[0, 0]);
        out.extend_from_slice(name.as_bytes());
        out.extend_from_slice(data);
        // Central record (4.3.12): the same fields plus comment, disk, attributes, offset.
        dir.extend_from_slice(b"PK\x01\x02\x14\0\x14\0\0\0\0\0\0\0\0\0\0\0\0\0");
        dir.extend_from_slice(&le32(data.len()));
        dir.extend_from_slice(&le32(data.len()));
        dir.extend_from_slice(&(name.len() as u16).to_le_bytes());
        dir.extend_from_slice(&[0; 12]);
        dir.extend_from_slice(&le32(offset));
        dir.extend_from_slice(name.as_bytes());
    }
    let dir_start = out.len();
    out.extend_from_slice(&dir);
    // End of central directory (4.3.16): three entries, directory length and offset.
    out.extend_from_slice(b"PK\x05\x06\0\0\0\0\x03\0\x03\0");
    out.extend_from_slice(&le32(dir.len()));
    out.extend_from_slice(&le32(dir_start));
    out.extend_from_slice(&[0, 0]);
    out
}
