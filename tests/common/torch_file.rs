//! Builders for PyTorch checkpoints in tests: pickles the way torch.save writes them, and zip
//! archives of stored entries, byte by byte (no Python needed).

pub const MARK: u8 = b'(';
pub const STOP: u8 = b'.';
pub const NONE: u8 = b'N';
pub const BINPERSID: u8 = b'Q';
pub const REDUCE: u8 = b'R';
pub const BUILD: u8 = b'b';
pub const EMPTY_DICT: u8 = b'}';
pub const EMPTY_TUPLE: u8 = b')';
pub const LONG_BINGET: u8 = b'j';
pub const BINPUT: u8 = b'q';
pub const LONG_BINPUT: u8 = b'r';
pub const SETITEM: u8 = b's';
pub const TUPLE: u8 = b't';
pub const SETITEMS: u8 = b'u';
pub const TUPLE1: u8 = 0x85;
pub const TUPLE2: u8 = 0x86;
pub const NEWTRUE: u8 = 0x88;
pub const NEWFALSE: u8 = 0x89;
pub const STACK_GLOBAL: u8 = 0x93;

/// Pickle bytes, protocol 2.
pub struct Pickle(pub Vec<u8>);

impl Pickle {
    pub fn new() -> Self {
        Pickle(vec![0x80, 2])
    }

    pub fn op(mut self, op: u8) -> Self {
        self.0.push(op);
        self
    }

    pub fn raw(mut self, bytes: &[u8]) -> Self {
        self.0.extend_from_slice(bytes);
        self
    }

    /// BINUNICODE.
    pub fn str(self, s: &str) -> Self {
        self.op(b'X')
            .raw(&(s.len() as u32).to_le_bytes())
            .raw(s.as_bytes())
    }

    /// BININT.
    pub fn int(self, v: usize) -> Self {
        self.op(b'J').raw(&(v as i32).to_le_bytes())
    }

    /// GLOBAL.
    pub fn global(self, module: &str, name: &str) -> Self {
        self.op(b'c').raw(format!("{module}\n{name}\n").as_bytes())
    }

    pub fn ints(self, values: &[usize]) -> Self {
        values
            .iter()
            .fold(self.op(MARK), |p, &v| p.int(v))
            .op(TUPLE)
    }
}

/// A tensor of a state dict, all stored in the storage with key `0`.
pub struct TensorSpec {
    pub name: &'static str,
    pub class: &'static str,
    pub offset: usize,
    pub shape: Vec<usize>,
    pub stride: Vec<usize>,
}

pub fn contiguous(name: &'static str, rows: usize, cols: usize) -> TensorSpec {
    TensorSpec {
        name,
        class: "FloatStorage",
        offset: 0,
        shape: vec![rows, cols],
        stride: vec![cols, 1],
    }
}

/// `_rebuild_tensor_v2(persistent_load(('storage', class, '0', 'cpu', numel)), offset, shape,
/// stride, False, OrderedDict())`, as torch.save pickles a tensor.
pub fn tensor(p: Pickle, t: &TensorSpec) -> Pickle {
    let numel = t.shape.iter().product();
    let p = p.global("torch._utils", "_rebuild_tensor_v2").op(MARK);
    let p = p.op(MARK).str("storage").global("torch", t.class).str("0");
    let p = p.str("cpu").int(numel).op(TUPLE).op(BINPERSID);
    let p = p.int(t.offset).ints(&t.shape).ints(&t.stride).op(NEWFALSE);
    let p = p
        .global("collections", "OrderedDict")
        .op(EMPTY_TUPLE)
        .op(REDUCE);
    p.op(TUPLE).op(REDUCE)
}

/// `{name: tensor, ...}` pickled.
pub fn state_dict(tensors: &[TensorSpec]) -> Vec<u8> {
    let p = Pickle::new().op(EMPTY_DICT).op(MARK);
    let p = tensors.iter().fold(p, |p, t| tensor(p.str(t.name), t));
    p.op(SETITEMS).op(STOP).0
}

/// A torch.save archive holding `pickle` and one storage, key `0`.
pub fn checkpoint(pickle: &[u8], storage: &[u8], zip64: bool) -> Vec<u8> {
    let entries = [
        ("archive/data.pkl".to_owned(), pickle.to_vec()),
        ("archive/byteorder".to_owned(), b"little".to_vec()),
        ("archive/data/0".to_owned(), storage.to_vec()),
    ];
    zip(&entries, zip64)
}

/// A zip archive of stored entries (APPNOTE.TXT); with `zip64`, every size and offset goes
/// through the zip64 extra field and the zip64 end records. CRCs are left zero.
pub fn zip(entries: &[(String, Vec<u8>)], zip64: bool) -> Vec<u8> {
    fn put(out: &mut Vec<u8>, fields: &[(u64, usize)]) {
        for &(v, width) in fields {
            out.extend_from_slice(&v.to_le_bytes()[..width]);
        }
    }
    let wide = |v: usize| if zip64 { 0xffff_ffff } else { v as u64 };
    let mut out = Vec::new();
    let mut dir = Vec::new();
    for (name, data) in entries {
        let offset = out.len();
        let (size, n) = (data.len(), name.len() as u64);
        // Local header: signature, version, flags, method, time, date, crc, sizes, name, extra.
        let header = [(0x0403_4b50, 4), (20, 2), (0, 2), (0, 2), (0, 4), (0, 4)];
        put(&mut out, &header);
        put(
            &mut out,
            &[(size as u64, 4), (size as u64, 4), (n, 2), (0, 2)],
        );
        out.extend_from_slice(name.as_bytes());
        out.extend_from_slice(data);
        // Central record: the same plus comment length, disk, attributes and header offset.
        let extra = if zip64 { 28 } else { 0 };
        let record = [
            (0x0201_4b50, 4),
            (45, 2),
            (45, 2),
            (0, 2),
            (0, 2),
            (0, 4),
            (0, 4),
        ];
        put(&mut dir, &record);
        put(
            &mut dir,
            &[(wide(size), 4), (wide(size), 4), (n, 2), (extra, 2)],
        );
        put(
            &mut dir,
            &[(0, 2), (0, 2), (0, 2), (0, 4), (wide(offset), 4)],
        );
        dir.extend_from_slice(name.as_bytes());
        if zip64 {
            let sizes = [(size as u64, 8), (size as u64, 8), (offset as u64, 8)];
            put(&mut dir, &[(1, 2), (24, 2)]);
            put(&mut dir, &sizes);
        }
    }
    let (dir_start, count) = (out.len() as u64, entries.len() as u64);
    out.extend_from_slice(&dir);
    let dir_len = dir.len() as u64;
    if zip64 {
        let end64 = out.len() as u64;
        put(
            &mut out,
            &[(0x0606_4b50, 4), (44, 8), (45, 2), (45, 2), (0, 4), (0, 4)],
        );
        put(
            &mut out,
            &[(count, 8), (count, 8), (dir_len, 8), (dir_start, 8)],
        );
        put(&mut out, &[(0x0706_4b50, 4), (0, 4), (end64, 8), (1, 4)]);
    }
    let (count16, len32, start32) = if zip64 {
        (0xffff, 0xffff_ffff, 0xffff_ffff)
    } else {
        (count, dir_len, dir_start)
    };
    put(&mut out, &[(0x0605_4b50, 4), (0, 2), (0, 2)]);
    put(
        &mut out,
        &[(count16, 2), (count16, 2), (len32, 4), (start32, 4), (0, 2)],
    );
    out
}

pub fn find(haystack: &[u8], needle: &[u8]) -> Option<usize> {
    haystack.windows(needle.len()).position(|w| w == needle)
}
