//! A restricted unpickler for the `data.pkl` of a torch.save checkpoint.
//!
//! A pickle is a program for a small stack machine whose GLOBAL and REDUCE opcodes can call any
//! Python function, `os.system` included. This machine runs only the opcodes a state dict uses
//! (each is documented in CPython's `Lib/pickletools.py`) and knows only the globals a state
//! dict needs, refusing any other global by name as soon as it appears. Nothing is executed:
//! the few known callables are interpreted (`_rebuild_tensor_v2` becomes a [`Tensor`]).
//!
//! Hostile input stays bounded: the stack (marks included) and the memo hold at most
//! [`MAX_ITEMS`] values, values nest at most [`MAX_DEPTH`] deep (so dropping them cannot
//! overflow the Rust stack), every index is checked, and values are shared (`Rc`), never
//! deep-copied, so memory grows with the pickle's length only.

use std::borrow::Cow;
use std::collections::HashMap;
use std::path::Path;
use std::rc::Rc;

use crate::error::{Error, Result};

/// Bound on the stack plus open marks, and on the memo. A state dict needs a few thousand.
const MAX_ITEMS: usize = 1 << 20;
/// Bound on how deeply tuples and dicts nest. A state dict needs 4.
const MAX_DEPTH: usize = 32;

// The opcodes a state dict uses, with their names in pickletools.py.
const MARK: u8 = b'(';
const STOP: u8 = b'.';
const BININT: u8 = b'J';
const BININT1: u8 = b'K';
const BININT2: u8 = b'M';
const NONE: u8 = b'N';
const BINPERSID: u8 = b'Q';
const REDUCE: u8 = b'R';
const BINUNICODE: u8 = b'X';
const BUILD: u8 = b'b';
const GLOBAL: u8 = b'c';
const EMPTY_DICT: u8 = b'}';
const EMPTY_TUPLE: u8 = b')';
const BINGET: u8 = b'h';
const LONG_BINGET: u8 = b'j';
const BINPUT: u8 = b'q';
const LONG_BINPUT: u8 = b'r';
const SETITEM: u8 = b's';
const TUPLE: u8 = b't';
const SETITEMS: u8 = b'u';
const PROTO: u8 = 0x80;
const TUPLE1: u8 = 0x85;
const TUPLE2: u8 = 0x86;
const TUPLE3: u8 = 0x87;
const NEWTRUE: u8 = 0x88;
const NEWFALSE: u8 = 0x89;
const LONG1: u8 = 0x8a;
const SHORT_BINUNICODE: u8 = 0x8c;
const BINUNICODE8: u8 = 0x8d;
const STACK_GLOBAL: u8 = 0x93;
const MEMOIZE: u8 = 0x94;
const FRAME: u8 = 0x95;
/// The newest pickle protocol (Python 3.8+).
const HIGHEST_PROTOCOL: i64 = 5;

/// Element type of a storage, from its class in the persistent id.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum StorageKind {
    F32,
    F16,
    BF16,
    I64,
}

/// One storage of the archive: its bytes are the entry `<prefix>/data/<key>`.
#[derive(Debug)]
pub(super) struct Storage {
    pub kind: StorageKind,
    pub key: String,
}

/// A tensor as `_rebuild_tensor_v2(storage, storage_offset, size, stride, ...)` describes it.
#[derive(Debug)]
pub(super) struct Tensor {
    pub storage: Rc<Storage>,
    /// Where the first element sits in the storage, in elements.
    pub offset: usize,
    pub shape: Vec<usize>,
    /// In elements, one per dimension.
    pub stride: Vec<usize>,
}

/// The callables and classes a state dict refers to; any other global is refused.
#[derive(Clone, Copy, Debug)]
enum Global {
    OrderedDict,
    RebuildTensor,
    RebuildParameter,
    Storage(StorageKind),
}

impl Global {
    fn resolve(module: &str, name: &str) -> Option<Self> {
        Some(match (module, name) {
            ("collections", "OrderedDict") => Global::OrderedDict,
            ("torch._utils", "_rebuild_tensor_v2") => Global::RebuildTensor,
            ("torch._utils", "_rebuild_parameter") => Global::RebuildParameter,
            ("torch", "FloatStorage") => Global::Storage(StorageKind::F32),
            ("torch", "HalfStorage") => Global::Storage(StorageKind::F16),
            ("torch", "BFloat16Storage") => Global::Storage(StorageKind::BF16),
            ("torch", "LongStorage") => Global::Storage(StorageKind::I64),
            _ => return None,
        })
    }

    fn name(self) -> &'static str {
        match self {
            Global::OrderedDict => "collections.OrderedDict",
            Global::RebuildTensor => "torch._utils._rebuild_tensor_v2",
            Global::RebuildParameter => "torch._utils._rebuild_parameter",
            Global::Storage(_) => "a torch storage class",
        }
    }
}

/// A value on the machine's stack. Tuples and dicts are immutable once shared.
#[derive(Clone, Debug)]
enum Value {
    None,
    /// True or False: a state dict only passes `requires_grad`, which inference ignores.
    Bool,
    Int(i64),
    Str(Rc<str>),
    Tuple(Rc<Nested<Value>>),
    Dict(Rc<Nested<(Value, Value)>>),
    Global(Global),
    Storage(Rc<Storage>),
    Tensor(Rc<Tensor>),
}

/// The items of a tuple or dict, and how deeply they nest (1 for an empty one).
#[derive(Debug)]
struct Nested<T> {
    items: Vec<T>,
    depth: usize,
}

impl Value {
    fn depth(&self) -> usize {
        match self {
            Value::Tuple(t) => t.depth,
            Value::Dict(d) => d.depth,
            _ => 0,
        }
    }
}

/// Runs the pickle `data.pkl` of the checkpoint `path` and returns its state dict, in order.
pub(super) fn load(path: &Path, pickle: &[u8]) -> Result<Vec<(String, Rc<Tensor>)>> {
    let mut machine = Machine {
        path,
        pickle,
        pos: 0,
        op_start: 0,
        stack: Vec::new(),
        marks: Vec::new(),
        memo: HashMap::new(),
    };
    let Value::Dict(dict) = machine.run()? else {
        return Err(Error::corrupt(
            path,
            "data.pkl does not hold a state dict (a dict of tensors)",
        ));
    };
    dict.items
        .iter()
        .map(|(key, value)| match (key, value) {
            (Value::Str(key), Value::Tensor(t)) => Ok((key.to_string(), Rc::clone(t))),
            (Value::Str(key), _) => Err(Error::corrupt(
                path,
                format!("state dict entry `{}` is not a tensor", key.escape_debug()),
            )),
            _ => Err(Error::corrupt(path, "a state dict key is not a string")),
        })
        .collect()
}

struct Machine<'a> {
    path: &'a Path,
    pickle: &'a [u8],
    /// The next byte to read.
    pos: usize,
    /// Where the opcode being run starts, for error messages.
    op_start: usize,
    stack: Vec<Value>,
    /// The stack length at each open MARK.
    marks: Vec<usize>,
    memo: HashMap<usize, Value>,
}

impl<'a> Machine<'a> {
    /// Runs opcodes up to STOP and returns the value it pops.
    fn run(&mut self) -> Result<Value> {
        loop {
            self.op_start = self.pos;
            let op = self.take(1)?[0];
            match op {
                PROTO => self.protocol()?,
                // A frame only announces how many bytes follow.
                FRAME => _ = self.take(8)?,
                STOP => return self.pop(),
                MARK => {
                    self.check_room()?;
                    self.marks.push(self.stack.len());
                }
                NONE => self.push(Value::None)?,
                NEWTRUE | NEWFALSE => self.push(Value::Bool)?,
                BININT | BININT1 | BININT2 | LONG1 => self.int(op)?,
                SHORT_BINUNICODE | BINUNICODE | BINUNICODE8 => self.string(op)?,
                EMPTY_TUPLE | TUPLE | TUPLE1 | TUPLE2 | TUPLE3 => self.tuple(op)?,
                EMPTY_DICT => self.push(Value::Dict(self.nest(Vec::new(), 1)?))?,
                SETITEM | SETITEMS => self.set_items(op)?,
                BINPUT | LONG_BINPUT | MEMOIZE => self.memo_put(op)?,
                BINGET | LONG_BINGET => self.memo_get(op)?,
                GLOBAL | STACK_GLOBAL => self.global(op)?,
                BINPERSID => self.persistent_load()?,
                REDUCE => self.reduce()?,
                BUILD => {
                    // The only object a state dict builds is its OrderedDict, whose state is
                    // the `_metadata` attribute (module versions), of no use for inference.
                    let _state = self.pop()?;
                    if !matches!(self.stack.last(), Some(Value::Dict(_))) {
                        return Err(self.corrupt("BUILD is only supported on a dict"));
                    }
                }
                _ => {
                    return Err(self.corrupt(format!(
                        "unsupported pickle opcode 0x{op:02x}; only PyTorch state dicts can be read"
                    )));
                }
            }
        }
    }

    fn corrupt(&self, message: impl std::fmt::Display) -> Error {
        Error::corrupt(
            self.path,
            format!("data.pkl, opcode at byte {}: {message}", self.op_start),
        )
    }

    // ---- Reading arguments.

    /// The next `n` bytes of the pickle.
    fn take(&mut self, n: usize) -> Result<&'a [u8]> {
        let pickle = self.pickle;
        let end = self
            .pos
            .checked_add(n)
            .filter(|&end| end <= pickle.len())
            .ok_or_else(|| self.corrupt("the pickle ends before its STOP opcode (truncated?)"))?;
        let bytes = &pickle[self.pos..end];
        self.pos = end;
        Ok(bytes)
    }

    /// A little-endian integer of `width` bytes (at most 8), two's complement if `signed`.
    fn read_int(&mut self, width: usize, signed: bool) -> Result<i64> {
        let bytes = self.take(width)?;
        if width > 8 {
            return Err(self.corrupt(format!("a {width}-byte integer is out of range")));
        }
        let negative = signed && bytes.last().is_some_and(|b| b & 0x80 != 0);
        let mut le = if negative { [0xff; 8] } else { [0; 8] };
        le[..width].copy_from_slice(bytes);
        Ok(i64::from_le_bytes(le))
    }

    /// An unsigned length or index of `width` (1, 4 or 8) bytes.
    fn read_len(&mut self, width: usize) -> Result<usize> {
        let mut le = [0; 8];
        le[..width].copy_from_slice(self.take(width)?);
        let value = u64::from_le_bytes(le);
        usize::try_from(value).map_err(|_| self.corrupt(format!("length {value} is out of range")))
    }

    /// A newline-terminated argument of GLOBAL.
    fn line(&mut self) -> Result<Cow<'a, str>> {
        let rest = &self.pickle[self.pos..];
        let len = rest
            .iter()
            .position(|&b| b == b'\n')
            .ok_or_else(|| self.corrupt("GLOBAL without a newline-terminated name"))?;
        let line = self.take(len + 1)?;
        Ok(String::from_utf8_lossy(&line[..len]))
    }

    // ---- The stack.

    fn check_room(&self) -> Result<()> {
        if self.stack.len() + self.marks.len() >= MAX_ITEMS {
            return Err(self.corrupt(format!(
                "the pickle holds more than {MAX_ITEMS} values and marks at once"
            )));
        }
        Ok(())
    }

    fn push(&mut self, value: Value) -> Result<()> {
        self.check_room()?;
        self.stack.push(value);
        Ok(())
    }

    /// The last `n` values, which must lie above the innermost open MARK.
    fn pop_n(&mut self, n: usize) -> Result<Vec<Value>> {
        let floor = self.marks.last().copied().unwrap_or(0);
        let len = self.stack.len();
        if len < floor + n {
            return Err(self.corrupt("the pickle pops more values than it pushed"));
        }
        Ok(self.stack.split_off(len - n))
    }

    fn pop(&mut self) -> Result<Value> {
        self.pop_n(1)?
            .pop()
            .ok_or_else(|| self.corrupt("the pickle pops more values than it pushed"))
    }

    /// The values pushed since the innermost MARK, which is closed.
    fn pop_mark(&mut self) -> Result<Vec<Value>> {
        let mark = self
            .marks
            .pop()
            .ok_or_else(|| self.corrupt("the pickle closes a MARK it never opened"))?;
        Ok(self.stack.split_off(mark))
    }

    // ---- The opcode families.

    fn protocol(&mut self) -> Result<()> {
        let version = self.read_int(1, false)?;
        if version > HIGHEST_PROTOCOL {
            return Err(self.corrupt(format!("unknown pickle protocol {version}")));
        }
        Ok(())
    }

    fn int(&mut self, op: u8) -> Result<()> {
        let value = match op {
            BININT => self.read_int(4, true)?,
            BININT1 => self.read_int(1, false)?,
            BININT2 => self.read_int(2, false)?,
            _ => {
                let width = self.read_len(1)?;
                self.read_int(width, true)?
            }
        };
        self.push(Value::Int(value))
    }

    fn string(&mut self, op: u8) -> Result<()> {
        let len = match op {
            SHORT_BINUNICODE => self.read_len(1)?,
            BINUNICODE => self.read_len(4)?,
            _ => self.read_len(8)?,
        };
        let bytes = self.take(len)?;
        let s = std::str::from_utf8(bytes).map_err(|_| self.corrupt("a string is not UTF-8"))?;
        self.push(Value::Str(s.into()))
    }

    fn nest<T>(&self, items: Vec<T>, depth: usize) -> Result<Rc<Nested<T>>> {
        if depth > MAX_DEPTH {
            return Err(self.corrupt(format!(
                "values nest more than {MAX_DEPTH} deep; a state dict needs a few levels"
            )));
        }
        Ok(Rc::new(Nested { items, depth }))
    }

    fn tuple(&mut self, op: u8) -> Result<()> {
        let items = match op {
            EMPTY_TUPLE => Vec::new(),
            TUPLE => self.pop_mark()?,
            _ => self.pop_n(usize::from(op - TUPLE1 + 1))?,
        };
        let depth = 1 + items.iter().map(Value::depth).max().unwrap_or(0);
        let tuple = self.nest(items, depth)?;
        self.push(Value::Tuple(tuple))
    }

    /// SETITEM (one key and value) or SETITEMS (the pairs since the MARK) into the dict below.
    fn set_items(&mut self, op: u8) -> Result<()> {
        let pairs = if op == SETITEM {
            self.pop_n(2)?
        } else {
            self.pop_mark()?
        };
        let Value::Dict(dict) = self.pop()? else {
            return Err(self.corrupt("SETITEM(S) on a value that is not a dict"));
        };
        if pairs.len() % 2 != 0 {
            return Err(self.corrupt("SETITEMS with a key but no value"));
        }
        // Copying a shared dict on write would let a hostile pickle copy it once per opcode;
        // a state dict only ever fills a dict that is still empty when it is memoised.
        if Rc::strong_count(&dict) > 1 && !dict.items.is_empty() {
            return Err(self.corrupt("the pickle changes a dict after sharing it"));
        }
        let mut items = Rc::try_unwrap(dict).map_or_else(|_| Vec::new(), |d| d.items);
        let mut pairs = pairs.into_iter();
        while let (Some(key), Some(value)) = (pairs.next(), pairs.next()) {
            items.push((key, value));
        }
        let depth = items.iter().map(|(k, v)| k.depth().max(v.depth()));
        let depth = 1 + depth.max().unwrap_or(0);
        let dict = self.nest(items, depth)?;
        self.push(Value::Dict(dict))
    }

    /// BINPUT and LONG_BINPUT (index in the next 1 or 4 bytes), MEMOIZE (the next free index).
    fn memo_put(&mut self, op: u8) -> Result<()> {
        let index = match op {
            BINPUT => self.read_len(1)?,
            LONG_BINPUT => self.read_len(4)?,
            _ => self.memo.len(),
        };
        let top = self.pop()?;
        self.push(top.clone())?;
        if self.memo.len() >= MAX_ITEMS && !self.memo.contains_key(&index) {
            return Err(self.corrupt(format!("the memo holds more than {MAX_ITEMS} values")));
        }
        self.memo.insert(index, top);
        Ok(())
    }

    fn memo_get(&mut self, op: u8) -> Result<()> {
        let index = self.read_len(if op == BINGET { 1 } else { 4 })?;
        let value = self
            .memo
            .get(&index)
            .ok_or_else(|| self.corrupt(format!("memo index {index} was never set")))?;
        self.push(value.clone())
    }

    /// GLOBAL (`module\nname\n`) or STACK_GLOBAL (two strings on the stack): a known global,
    /// or the refusal to load.
    fn global(&mut self, op: u8) -> Result<()> {
        let (module, name) = if op == GLOBAL {
            (self.line()?, self.line()?)
        } else {
            let name = self.pop()?;
            let (Value::Str(module), Value::Str(name)) = (self.pop()?, name) else {
                return Err(self.corrupt("STACK_GLOBAL needs two strings"));
            };
            (Cow::Owned(module.to_string()), Cow::Owned(name.to_string()))
        };
        let Some(global) = Global::resolve(&module, &name) else {
            let global: String = format!("{module}.{name}")
                .escape_debug()
                .take(200)
                .collect();
            return Err(Error::UnsafeWeights {
                path: self.path.to_owned(),
                message: format!(
                    "the pickle references the global {global}; only PyTorch state dicts (OrderedDict of tensors) are allowed"
                ),
            });
        };
        self.push(Value::Global(global))
    }

    /// BINPERSID: a storage from its persistent id, `('storage', <storage class>, key,
    /// location, numel)` (torch/serialization.py, `persistent_id`); location and size are not
    /// needed.
    fn persistent_load(&mut self) -> Result<()> {
        if let Value::Tuple(id) = self.pop()?
            && let [
                Value::Str(tag),
                Value::Global(Global::Storage(kind)),
                Value::Str(key),
                Value::Str(_location),
                Value::Int(_numel),
            ] = id.items.as_slice()
            && &**tag == "storage"
        {
            let storage = Storage {
                kind: *kind,
                key: key.to_string(),
            };
            return self.push(Value::Storage(Rc::new(storage)));
        }
        Err(self
            .corrupt("a persistent id is not ('storage', <storage class>, key, location, numel)"))
    }

    /// REDUCE: interprets a call of one of the known globals.
    fn reduce(&mut self) -> Result<()> {
        let args = self.pop()?;
        let (Value::Global(global), Value::Tuple(args)) = (self.pop()?, args) else {
            return Err(self.corrupt("REDUCE needs a known global and a tuple of arguments"));
        };
        let value = match (global, args.items.as_slice()) {
            (Global::OrderedDict, []) => Value::Dict(self.nest(Vec::new(), 1)?),
            // torch/_utils.py: `_rebuild_tensor_v2(storage, storage_offset, size, stride,
            // requires_grad, backward_hooks, metadata=None)`.
            (
                Global::RebuildTensor,
                [
                    Value::Storage(storage),
                    Value::Int(offset),
                    Value::Tuple(shape),
                    Value::Tuple(stride),
                    _requires_grad,
                    _backward_hooks,
                    _metadata @ ..,
                ],
            ) if args.items.len() <= 7 => Value::Tensor(Rc::new(Tensor {
                storage: Rc::clone(storage),
                offset: self.size(*offset)?,
                shape: self.sizes(&shape.items)?,
                stride: self.sizes(&stride.items)?,
            })),
            // `_rebuild_parameter(data, requires_grad, backward_hooks)`: an nn.Parameter is
            // its tensor here.
            (
                Global::RebuildParameter,
                [tensor @ Value::Tensor(_), _requires_grad, _backward_hooks],
            ) => tensor.clone(),
            _ => {
                return Err(self.corrupt(format!(
                    "unexpected call of {} with {} arguments",
                    global.name(),
                    args.items.len()
                )));
            }
        };
        self.push(value)
    }

    fn size(&self, value: i64) -> Result<usize> {
        usize::try_from(value)
            .map_err(|_| self.corrupt(format!("tensor size or offset {value} is negative")))
    }

    fn sizes(&self, items: &[Value]) -> Result<Vec<usize>> {
        items
            .iter()
            .map(|v| match v {
                Value::Int(i) => self.size(*i),
                _ => Err(self.corrupt("a tensor size or stride is not an integer")),
            })
            .collect()
    }
}
