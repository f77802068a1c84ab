//! A whitelisting unpickler for PyTorch's `torch.save` files.
//!
//! It interprets the opcodes PyTorch's pickler emits (protocol 2, plus the few protocol 4
//! opcodes newer picklers use) into a small [`Value`] tree. Globals are resolved against a
//! fixed whitelist (`collections.OrderedDict`, `torch._utils._rebuild_tensor[_v2]`,
//! `torch._utils._rebuild_parameter[_with_state]`, `torch.*Storage`); any other global is an
//! error naming it. Nothing from the file is ever called: `REDUCE` on a whitelisted global
//! builds a [`Value`] in Rust, tensors stay descriptions ([`TensorSpec`]) until the caller
//! reads their storages.
//!
//! A hostile file cannot exhaust the machine through it: containers nest at most
//! [`MAX_DEPTH`] deep, at most [`MAX_OBJECTS`] objects are made (items copied count), the
//! stack, marks and memo are bounded, every clone is a reference count (strings, bytes and
//! tuples are shared), and nested values are dropped iteratively, never recursively.

use std::cell::RefCell;
use std::collections::{HashMap, HashSet};
use std::ops::{Deref, DerefMut};
use std::rc::Rc;
use tch::Kind;

/// Deepest nesting of containers accepted (a state dict needs about 5; Python's own
/// recursion limit is 1000).
pub const MAX_DEPTH: usize = 200;
/// Most objects one pickle may make, items copied by `OrderedDict` included (a ResNet-152
/// state dict makes about 15 000).
pub const MAX_OBJECTS: usize = 5_000_000;
/// Largest tensor rank accepted.
pub const MAX_RANK: usize = 64;

/// Why a pickle could not be read.
#[derive(Debug, Clone, PartialEq)]
pub enum PickleError {
    /// Not a pickle PyTorch writes, or damaged: the reason, with the byte offset.
    Malformed(String),
    /// The pickle names a global outside the whitelist (`module.name`).
    Forbidden(String),
}

/// A whitelisted global.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Global {
    OrderedDict,
    RebuildTensor,
    RebuildTensorV2,
    RebuildParameter,
    RebuildParameterWithState,
    /// `torch.FloatStorage` etc., with the element type.
    Storage(Kind),
}

/// A storage named by a persistent id: `('storage', torch.FloatStorage, key, location, numel)`
/// (the legacy format adds `view_metadata`: `(view_key, offset, size)` or `None`).
#[derive(Debug, Clone, PartialEq)]
pub struct StorageRef {
    /// Key of the root storage: the zip entry `data/<key>` or the legacy storage key.
    pub key: String,
    pub kind: Kind,
    /// Element count of the root storage, as the file declares it.
    pub numel: i64,
    /// Offset in elements of a legacy storage view inside its root storage.
    pub view_offset: i64,
}

/// A tensor as `_rebuild_tensor_v2(storage, offset, size, stride, ...)` describes it.
#[derive(Debug, Clone, PartialEq)]
pub struct TensorSpec {
    pub storage: StorageRef,
    /// Offset in elements into the storage.
    pub offset: i64,
    pub size: Vec<i64>,
    pub stride: Vec<i64>,
}

/// What an unpickled object can be.
#[derive(Debug, Clone)]
pub enum Value {
    None,
    Bool(bool),
    Int(i128),
    // Floats and bytes appear only in metadata; kept for `Debug` in error messages.
    Float(#[allow(dead_code)] f64),
    Str(Rc<str>),
    Bytes(#[allow(dead_code)] Rc<[u8]>),
    Tuple(Rc<Items>),
    /// Lists and dicts are shared (the memo may hold them while they are still being filled).
    List(Rc<RefCell<Items>>),
    Dict(Rc<RefCell<Pairs>>),
    Global(Global),
    Storage(StorageRef),
    Tensor(TensorSpec),
}

/// The items of a tuple or list. Dropped iteratively, so that nesting cannot overflow the
/// stack; `Debug` shows only the count.
#[derive(Default)]
pub struct Items {
    pub items: Vec<Value>,
    /// Nesting depth of the container holding these items (1 for flat).
    depth: usize,
}

/// The entries of a dict, in insertion order; dropped iteratively like [`Items`].
#[derive(Default)]
pub struct Pairs {
    pub items: Vec<(Value, Value)>,
    depth: usize,
}

impl Items {
    /// Moves the items out (the emptied container is then dropped trivially).
    fn take(mut self) -> Vec<Value> {
        std::mem::take(&mut self.items)
    }

    fn new(items: Vec<Value>) -> Items {
        let depth = 1 + items.iter().map(Value::depth).max().unwrap_or(0);
        Items { items, depth }
    }
}

impl Pairs {
    fn take(mut self) -> Vec<(Value, Value)> {
        std::mem::take(&mut self.items)
    }

    fn new(items: Vec<(Value, Value)>) -> Pairs {
        let depth = 1 + items
            .iter()
            .map(|(k, v)| k.depth().max(v.depth()))
            .max()
            .unwrap_or(0);
        Pairs { items, depth }
    }
}

impl Deref for Items {
    type Target = Vec<Value>;
    fn deref(&self) -> &Vec<Value> {
        &self.items
    }
}

impl DerefMut for Items {
    fn deref_mut(&mut self) -> &mut Vec<Value> {
        &mut self.items
    }
}

impl Deref for Pairs {
    type Target = Vec<(Value, Value)>;
    fn deref(&self) -> &Vec<(Value, Value)> {
        &self.items
    }
}

impl std::fmt::Debug for Items {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "[{} items]", self.items.len())
    }
}

impl std::fmt::Debug for Pairs {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{{{} entries}}", self.items.len())
    }
}

impl Drop for Items {
    fn drop(&mut self) {
        drop_iteratively(std::mem::take(&mut self.items));
    }
}

impl Drop for Pairs {
    fn drop(&mut self) {
        let flat = std::mem::take(&mut self.items)
            .into_iter()
            .flat_map(|(k, v)| [k, v])
            .collect();
        drop_iteratively(flat);
    }
}

/// Drops values with a work list instead of recursion: the items of every container owned
/// only by the list are moved onto it before the (then empty) container is freed.
fn drop_iteratively(mut work: Vec<Value>) {
    while let Some(v) = work.pop() {
        match v {
            Value::Tuple(rc) => {
                if let Ok(mut items) = Rc::try_unwrap(rc) {
                    work.append(&mut items.items);
                }
            }
            Value::List(rc) => {
                if let Ok(cell) = Rc::try_unwrap(rc) {
                    work.append(&mut cell.into_inner().items);
                }
            }
            Value::Dict(rc) => {
                if let Ok(cell) = Rc::try_unwrap(rc) {
                    let mut pairs = cell.into_inner();
                    for (k, v) in pairs.items.drain(..) {
                        work.push(k);
                        work.push(v);
                    }
                }
            }
            _ => {}
        }
    }
}

impl Value {
    fn list(items: Vec<Value>) -> Value {
        Value::List(Rc::new(RefCell::new(Items::new(items))))
    }

    fn tuple(items: Vec<Value>) -> Value {
        Value::Tuple(Rc::new(Items::new(items)))
    }

    fn dict(items: Vec<(Value, Value)>) -> Value {
        Value::Dict(Rc::new(RefCell::new(Pairs::new(items))))
    }

    /// Nesting depth: 0 for a scalar, 1 for a flat container. A list or dict that is
    /// currently being filled (a self-reference) counts as its recorded depth.
    fn depth(&self) -> usize {
        match self {
            Value::Tuple(t) => t.depth,
            Value::List(l) => l.try_borrow().map_or(MAX_DEPTH, |l| l.depth),
            Value::Dict(d) => d.try_borrow().map_or(MAX_DEPTH, |d| d.depth),
            _ => 0,
        }
    }

    /// A short name of the value's type, for error messages.
    pub fn type_name(&self) -> &'static str {
        match self {
            Value::None => "None",
            Value::Bool(_) => "bool",
            Value::Int(_) => "int",
            Value::Float(_) => "float",
            Value::Str(_) => "str",
            Value::Bytes(_) => "bytes",
            Value::Tuple(_) => "tuple",
            Value::List(_) => "list",
            Value::Dict(_) => "dict",
            Value::Global(_) => "global",
            Value::Storage(_) => "storage",
            Value::Tensor(_) => "tensor",
        }
    }

    /// Looks a string key up in a dict.
    pub fn get(&self, key: &str) -> Option<Value> {
        match self {
            Value::Dict(d) => d
                .borrow()
                .iter()
                .find(|(k, _)| matches!(k, Value::Str(s) if &**s == key))
                .map(|(_, v)| v.clone()),
            _ => None,
        }
    }
}

/// Result of [`unpickle`].
#[derive(Debug)]
pub struct Unpickled {
    pub value: Value,
    /// Offset of the byte after `STOP`.
    pub end: usize,
    /// Every storage named by a persistent id, in order of first appearance.
    pub storages: Vec<StorageRef>,
}

/// Highest pickle protocol accepted (PyTorch writes 2).
const MAX_PROTOCOL: u8 = 5;

/// Resolves `module.name` against the whitelist.
fn resolve_global(module: &str, name: &str) -> Result<Global, PickleError> {
    let g = match (module, name) {
        ("collections", "OrderedDict") => Global::OrderedDict,
        ("torch._utils", "_rebuild_tensor") => Global::RebuildTensor,
        ("torch._utils", "_rebuild_tensor_v2") => Global::RebuildTensorV2,
        ("torch._utils", "_rebuild_parameter") => Global::RebuildParameter,
        ("torch._utils", "_rebuild_parameter_with_state") => Global::RebuildParameterWithState,
        ("torch", storage) => match storage_kind(storage) {
            Some(kind) => Global::Storage(kind),
            None => return Err(PickleError::Forbidden(format!("{module}.{name}"))),
        },
        _ => return Err(PickleError::Forbidden(format!("{module}.{name}"))),
    };
    Ok(g)
}

/// Element type of a `torch.<Name>Storage` class.
fn storage_kind(name: &str) -> Option<Kind> {
    Some(match name {
        "FloatStorage" => Kind::Float,
        "DoubleStorage" => Kind::Double,
        "HalfStorage" => Kind::Half,
        "BFloat16Storage" => Kind::BFloat16,
        "LongStorage" => Kind::Int64,
        "IntStorage" => Kind::Int,
        "ShortStorage" => Kind::Int16,
        "CharStorage" => Kind::Int8,
        "ByteStorage" => Kind::Uint8,
        "BoolStorage" => Kind::Bool,
        _ => return None,
    })
}

struct Machine<'a> {
    data: &'a [u8],
    pos: usize,
    stack: Vec<Value>,
    marks: Vec<usize>,
    memo: HashMap<u64, Value>,
    storages: Vec<StorageRef>,
    storage_keys: HashSet<String>,
    /// Objects made so far, against [`MAX_OBJECTS`].
    objects: usize,
}

/// Interprets one pickle starting at `start` in `data`, up to and including its `STOP`.
pub fn unpickle(data: &[u8], start: usize) -> Result<Unpickled, PickleError> {
    let mut m = Machine {
        data,
        pos: start,
        stack: Vec::new(),
        marks: Vec::new(),
        memo: HashMap::new(),
        storages: Vec::new(),
        storage_keys: HashSet::new(),
        objects: 0,
    };
    let value = m.run()?;
    Ok(Unpickled {
        value,
        end: m.pos,
        storages: m.storages,
    })
}

fn malformed<T>(msg: String) -> Result<T, PickleError> {
    Err(PickleError::Malformed(msg))
}

impl Machine<'_> {
    fn take(&mut self, n: usize) -> Result<&[u8], PickleError> {
        let end = self.pos.checked_add(n).filter(|&e| e <= self.data.len());
        match end {
            Some(end) => {
                let s = &self.data[self.pos..end];
                self.pos = end;
                Ok(s)
            }
            None => malformed(format!(
                "unexpected end of data at byte {} (needed {n} more bytes; truncated file?)",
                self.pos
            )),
        }
    }

    fn u8(&mut self) -> Result<u8, PickleError> {
        Ok(self.take(1)?[0])
    }

    fn u16(&mut self) -> Result<u16, PickleError> {
        let b = self.take(2)?;
        Ok(u16::from_le_bytes([b[0], b[1]]))
    }

    fn u32(&mut self) -> Result<u32, PickleError> {
        let b = self.take(4)?;
        Ok(u32::from_le_bytes([b[0], b[1], b[2], b[3]]))
    }

    fn u64(&mut self) -> Result<u64, PickleError> {
        let b = self.take(8)?;
        let mut a = [0u8; 8];
        a.copy_from_slice(b);
        Ok(u64::from_le_bytes(a))
    }

    /// A length that must fit in the remaining data.
    fn len(&mut self, n: u64) -> Result<usize, PickleError> {
        let remaining = (self.data.len() - self.pos) as u64;
        if n > remaining {
            return malformed(format!(
                "length {n} at byte {} runs past the end of the data (truncated file?)",
                self.pos
            ));
        }
        Ok(n as usize)
    }

    fn line(&mut self) -> Result<String, PickleError> {
        let rest = &self.data[self.pos..];
        let Some(nl) = rest.iter().position(|&b| b == b'\n') else {
            return malformed(format!(
                "unterminated line at byte {} (truncated file?)",
                self.pos
            ));
        };
        let s = String::from_utf8_lossy(&rest[..nl]).into_owned();
        self.pos += nl + 1;
        Ok(s)
    }

    fn utf8(&mut self, n: usize) -> Result<String, PickleError> {
        let at = self.pos;
        let b = self.take(n)?;
        match std::str::from_utf8(b) {
            Ok(s) => Ok(s.to_owned()),
            Err(_) => malformed(format!("invalid UTF-8 string at byte {at}")),
        }
    }

    /// Counts `n` objects against [`MAX_OBJECTS`].
    fn charge(&mut self, n: usize, at: usize) -> Result<(), PickleError> {
        self.objects = self.objects.saturating_add(n);
        if self.objects > MAX_OBJECTS {
            return malformed(format!(
                "more than {MAX_OBJECTS} objects by byte {at} (not a state dict PyTorch writes)"
            ));
        }
        Ok(())
    }

    /// Pushes a value; containers deeper than [`MAX_DEPTH`] are refused.
    fn push(&mut self, v: Value, at: usize) -> Result<(), PickleError> {
        self.charge(1, at)?;
        check_depth(v.depth(), at)?;
        self.stack.push(v);
        Ok(())
    }

    fn pop(&mut self, op: u8) -> Result<Value, PickleError> {
        let floor = self.marks.last().copied().unwrap_or(0);
        if self.stack.len() <= floor {
            return malformed(format!(
                "stack underflow in opcode 0x{op:02x} at byte {}",
                self.pos - 1
            ));
        }
        Ok(self.stack.pop().expect("checked above"))
    }

    fn top(&mut self, op: u8) -> Result<&mut Value, PickleError> {
        let at = self.pos;
        match self.stack.last_mut() {
            Some(v) => Ok(v),
            None => malformed(format!(
                "empty stack in opcode 0x{op:02x} at byte {}",
                at - 1
            )),
        }
    }

    /// Pops everything above the last mark, and the mark.
    fn pop_mark(&mut self, op: u8) -> Result<Vec<Value>, PickleError> {
        let Some(mark) = self.marks.pop() else {
            return malformed(format!(
                "opcode 0x{op:02x} at byte {} without a MARK",
                self.pos - 1
            ));
        };
        Ok(self.stack.split_off(mark))
    }

    fn memo_put(&mut self, idx: u64, op: u8) -> Result<(), PickleError> {
        let at = self.pos;
        self.charge(1, at)?;
        let v = self.top(op)?.clone();
        self.memo.insert(idx, v);
        Ok(())
    }

    fn memo_get(&mut self, idx: u64) -> Result<(), PickleError> {
        let at = self.pos;
        match self.memo.get(&idx) {
            Some(v) => {
                let v = v.clone();
                self.push(v, at)
            }
            None => malformed(format!(
                "memo key {idx} read before it was written (byte {})",
                self.pos
            )),
        }
    }

    fn push_global(&mut self, module: &str, name: &str) -> Result<(), PickleError> {
        let g = resolve_global(module, name)?;
        let at = self.pos;
        self.push(Value::Global(g), at)
    }

    fn run(&mut self) -> Result<Value, PickleError> {
        loop {
            let at = self.pos;
            let op = self.u8()?;
            match op {
                // PROTO
                0x80 => {
                    let v = self.u8()?;
                    if v > MAX_PROTOCOL {
                        return malformed(format!("unsupported pickle protocol {v}"));
                    }
                }
                // FRAME: the frame length is only a hint for buffering.
                0x95 => {
                    self.u64()?;
                }
                // STOP
                b'.' => {
                    let v = self.pop(op)?;
                    return Ok(v);
                }
                b'(' => {
                    if self.marks.len() >= MAX_DEPTH {
                        return malformed(format!(
                            "more than {MAX_DEPTH} nested MARKs at byte {at} (not a state dict PyTorch writes)"
                        ));
                    }
                    self.marks.push(self.stack.len())
                }
                b'}' => self.push(Value::dict(Vec::new()), at)?,
                b']' => self.push(Value::list(Vec::new()), at)?,
                b')' => self.push(Value::tuple(Vec::new()), at)?,
                // DICT, LIST, TUPLE from the items above the mark
                b'd' => {
                    let items = self.pop_mark(op)?;
                    let pairs = pairs(items, at)?;
                    self.push(Value::dict(pairs), at)?;
                }
                b'l' => {
                    let items = self.pop_mark(op)?;
                    self.push(Value::list(items), at)?;
                }
                b't' => {
                    let items = self.pop_mark(op)?;
                    self.push(Value::tuple(items), at)?;
                }
                0x85..=0x87 => {
                    let n = (op - 0x84) as usize;
                    let mut items = Vec::with_capacity(n);
                    for _ in 0..n {
                        items.push(self.pop(op)?);
                    }
                    items.reverse();
                    self.push(Value::tuple(items), at)?;
                }
                // POP, POP_MARK, DUP
                b'0' => {
                    self.pop(op)?;
                }
                b'1' => {
                    self.pop_mark(op)?;
                }
                b'2' => {
                    let v = self.top(op)?.clone();
                    self.push(v, at)?;
                }
                // Strings: BINUNICODE, SHORT_BINUNICODE, BINUNICODE8
                b'X' | 0x8c | 0x8d => {
                    let n = match op {
                        b'X' => self.u32()? as u64,
                        0x8c => self.u8()? as u64,
                        _ => self.u64()?,
                    };
                    let n = self.len(n)?;
                    let s = self.utf8(n)?;
                    self.push(Value::Str(s.into()), at)?;
                }
                // Python 2 byte strings (BINSTRING, SHORT_BINSTRING): text in legacy files.
                b'T' | b'U' => {
                    let n = if op == b'T' { self.u32()? as u64 } else { self.u8()? as u64 };
                    let n = self.len(n)?;
                    let s = String::from_utf8_lossy(self.take(n)?).into_owned();
                    self.push(Value::Str(s.into()), at)?;
                }
                // BINBYTES, SHORT_BINBYTES, BINBYTES8
                b'B' | b'C' | 0x8e => {
                    let n = match op {
                        b'B' => self.u32()? as u64,
                        b'C' => self.u8()? as u64,
                        _ => self.u64()?,
                    };
                    let n = self.len(n)?;
                    let b = self.take(n)?.to_vec();
                    self.push(Value::Bytes(b.into()), at)?;
                }
                // Integers: BININT, BININT1, BININT2, LONG1, LONG4, INT (text)
                b'J' => {
                    let v = self.u32()? as i32;
                    self.push(Value::Int(v as i128), at)?;
                }
                b'K' => {
                    let v = self.u8()?;
                    self.push(Value::Int(v as i128), at)?;
                }
                b'M' => {
                    let v = self.u16()?;
                    self.push(Value::Int(v as i128), at)?;
                }
                0x8a | 0x8b => {
                    let n = if op == 0x8a { self.u8()? as u64 } else { self.u32()? as u64 };
                    let n = self.len(n)?;
                    if n > 16 {
                        return malformed(format!("integer of {n} bytes at byte {at} is too large"));
                    }
                    let b = self.take(n)?;
                    let mut v: i128 = 0;
                    for (i, &byte) in b.iter().enumerate() {
                        v |= (byte as i128) << (8 * i);
                    }
                    // Two's complement sign extension.
                    if n > 0 && n < 16 && b[n - 1] & 0x80 != 0 {
                        v -= 1i128 << (8 * n);
                    }
                    self.push(Value::Int(v), at)?;
                }
                b'I' => {
                    let line = self.line()?;
                    let v = match line.as_str() {
                        "00" => Value::Bool(false),
                        "01" => Value::Bool(true),
                        s => match s.parse::<i128>() {
                            Ok(i) => Value::Int(i),
                            Err(_) => return malformed(format!("bad INT {s:?} at byte {at}")),
                        },
                    };
                    self.push(v, at)?;
                }
                // BINFLOAT (big-endian)
                b'G' => {
                    let v = f64::from_bits(u64::from_be_bytes(self.take(8)?.try_into().expect("8 bytes")));
                    self.push(Value::Float(v), at)?;
                }
                0x88 => self.push(Value::Bool(true), at)?,
                0x89 => self.push(Value::Bool(false), at)?,
                b'N' => self.push(Value::None, at)?,
                // SETITEM, SETITEMS
                b's' => {
                    let v = self.pop(op)?;
                    let k = self.pop(op)?;
                    let depth = 1 + k.depth().max(v.depth());
                    check_depth(depth, at)?;
                    match self.top(op)? {
                        Value::Dict(d) => {
                            let mut d = d.borrow_mut();
                            d.depth = d.depth.max(depth);
                            d.items.push((k, v))
                        }
                        other => {
                            return malformed(format!("SETITEM on a {} at byte {at}", other.type_name()))
                        }
                    }
                }
                b'u' => {
                    let items = self.pop_mark(op)?;
                    let new = Pairs::new(pairs(items, at)?);
                    check_depth(new.depth, at)?;
                    match self.top(op)? {
                        Value::Dict(d) => {
                            let mut d = d.borrow_mut();
                            d.depth = d.depth.max(new.depth);
                            d.items.append(&mut Pairs::take(new))
                        }
                        other => {
                            return malformed(format!("SETITEMS on a {} at byte {at}", other.type_name()))
                        }
                    }
                }
                // APPEND, APPENDS
                b'a' => {
                    let v = self.pop(op)?;
                    let depth = 1 + v.depth();
                    check_depth(depth, at)?;
                    match self.top(op)? {
                        Value::List(l) => {
                            let mut l = l.borrow_mut();
                            l.depth = l.depth.max(depth);
                            l.items.push(v)
                        }
                        other => {
                            return malformed(format!("APPEND on a {} at byte {at}", other.type_name()))
                        }
                    }
                }
                b'e' => {
                    let items = Items::new(self.pop_mark(op)?);
                    check_depth(items.depth, at)?;
                    match self.top(op)? {
                        Value::List(l) => {
                            let mut l = l.borrow_mut();
                            l.depth = l.depth.max(items.depth);
                            l.items.append(&mut Items::take(items))
                        }
                        other => {
                            return malformed(format!("APPENDS on a {} at byte {at}", other.type_name()))
                        }
                    }
                }
                // Memo: BINPUT, LONG_BINPUT, MEMOIZE, PUT; BINGET, LONG_BINGET, GET
                b'q' => {
                    let i = self.u8()? as u64;
                    self.memo_put(i, op)?;
                }
                b'r' => {
                    let i = self.u32()? as u64;
                    self.memo_put(i, op)?;
                }
                0x94 => {
                    let i = self.memo.len() as u64;
                    self.memo_put(i, op)?;
                }
                b'p' => {
                    let line = self.line()?;
                    let Ok(i) = line.parse::<u64>() else {
                        return malformed(format!("bad PUT index {line:?} at byte {at}"));
                    };
                    self.memo_put(i, op)?;
                }
                b'h' => {
                    let i = self.u8()? as u64;
                    self.memo_get(i)?;
                }
                b'j' => {
                    let i = self.u32()? as u64;
                    self.memo_get(i)?;
                }
                b'g' => {
                    let line = self.line()?;
                    let Ok(i) = line.parse::<u64>() else {
                        return malformed(format!("bad GET index {line:?} at byte {at}"));
                    };
                    self.memo_get(i)?;
                }
                // GLOBAL, STACK_GLOBAL: resolved against the whitelist, never imported.
                b'c' => {
                    let module = self.line()?;
                    let name = self.line()?;
                    self.push_global(&module, &name)?;
                }
                0x93 => {
                    let name = self.pop(op)?;
                    let module = self.pop(op)?;
                    match (module, name) {
                        (Value::Str(m), Value::Str(n)) => self.push_global(&m, &n)?,
                        _ => return malformed(format!("STACK_GLOBAL without strings at byte {at}")),
                    }
                }
                // REDUCE: a whitelisted callable applied to a tuple, evaluated here.
                b'R' => {
                    let args = self.pop(op)?;
                    let callable = self.pop(op)?;
                    if let (Value::Global(Global::OrderedDict), Value::Tuple(t)) = (&callable, &args) {
                        if let Some(Value::List(l)) = t.first() {
                            // Its items are copied: count them.
                            let n = l.borrow().len();
                            self.charge(n, at)?;
                        }
                    }
                    let v = reduce(callable, args, at)?;
                    self.push(v, at)?;
                }
                // BUILD: only the `_metadata` of an OrderedDict or a tensor's (empty) state.
                b'b' => {
                    let _state = self.pop(op)?;
                    match self.top(op)? {
                        Value::Dict(_) | Value::Tensor(_) => {}
                        other => {
                            return malformed(format!("BUILD on a {} at byte {at}", other.type_name()))
                        }
                    }
                }
                // BINPERSID: a storage reference.
                b'Q' => {
                    let pid = self.pop(op)?;
                    let s = persistent_storage(pid, at)?;
                    if self.storage_keys.insert(s.key.clone()) {
                        self.storages.push(s.clone());
                    }
                    self.push(Value::Storage(s), at)?;
                }
                other => {
                    return malformed(format!(
                        "unsupported pickle opcode 0x{other:02x} at byte {at} (not a PyTorch state dict?)"
                    ))
                }
            }
        }
    }
}

fn check_depth(depth: usize, at: usize) -> Result<(), PickleError> {
    if depth > MAX_DEPTH {
        return malformed(format!(
            "containers nest more than {MAX_DEPTH} deep at byte {at} (not a state dict PyTorch writes)"
        ));
    }
    Ok(())
}

fn pairs(items: Vec<Value>, at: usize) -> Result<Vec<(Value, Value)>, PickleError> {
    if items.len() % 2 != 0 {
        return malformed(format!("odd number of dict items at byte {at}"));
    }
    let mut out = Vec::with_capacity(items.len() / 2);
    let mut it = items.into_iter();
    while let (Some(k), Some(v)) = (it.next(), it.next()) {
        out.push((k, v));
    }
    Ok(out)
}

fn int(v: &Value, what: &str, at: usize) -> Result<i64, PickleError> {
    match v {
        Value::Int(i) => match i64::try_from(*i) {
            Ok(i) => Ok(i),
            Err(_) => malformed(format!("{what} {i} out of range at byte {at}")),
        },
        other => malformed(format!(
            "{what} is a {}, expected an int, at byte {at}",
            other.type_name()
        )),
    }
}

fn ints(v: &Value, what: &str, at: usize) -> Result<Vec<i64>, PickleError> {
    let rank = match v {
        Value::Tuple(items) => items.len(),
        Value::List(items) => items.borrow().len(),
        _ => 0,
    };
    if rank > MAX_RANK {
        return malformed(format!(
            "{what} has {rank} dimensions at byte {at} (at most {MAX_RANK})"
        ));
    }
    match v {
        Value::Tuple(items) => items.iter().map(|i| int(i, what, at)).collect(),
        Value::List(items) => items.borrow().iter().map(|i| int(i, what, at)).collect(),
        other => malformed(format!(
            "{what} is a {}, expected a tuple, at byte {at}",
            other.type_name()
        )),
    }
}

/// Applies a whitelisted global to its arguments.
fn reduce(callable: Value, args: Value, at: usize) -> Result<Value, PickleError> {
    let Value::Global(g) = callable else {
        return malformed(format!("REDUCE on a {} at byte {at}", callable.type_name()));
    };
    let Value::Tuple(args) = args else {
        return malformed(format!(
            "REDUCE arguments are a {} at byte {at}",
            args.type_name()
        ));
    };
    match g {
        Global::OrderedDict => {
            let items = match args.as_slice() {
                [] => Vec::new(),
                [Value::List(l)] => {
                    let mut items = Vec::new();
                    for pair in l.borrow().iter() {
                        match pair {
                            Value::Tuple(kv) if kv.len() == 2 => {
                                items.push((kv[0].clone(), kv[1].clone()))
                            }
                            _ => {
                                return malformed(format!(
                                    "OrderedDict item is not a pair at byte {at}"
                                ))
                            }
                        }
                    }
                    items
                }
                _ => return malformed(format!("unexpected OrderedDict arguments at byte {at}")),
            };
            Ok(Value::dict(items))
        }
        Global::RebuildTensor | Global::RebuildTensorV2 => {
            if args.len() < 4 {
                return malformed(format!(
                    "_rebuild_tensor with {} arguments at byte {at}",
                    args.len()
                ));
            }
            let Value::Storage(storage) = &args[0] else {
                return malformed(format!(
                    "_rebuild_tensor on a {}, expected a storage, at byte {at}",
                    args[0].type_name()
                ));
            };
            let offset = int(&args[1], "storage offset", at)?;
            let size = ints(&args[2], "tensor size", at)?;
            let stride = ints(&args[3], "tensor stride", at)?;
            if size.len() != stride.len() {
                return malformed(format!(
                    "tensor size {size:?} and stride {stride:?} differ in rank at byte {at}"
                ));
            }
            Ok(Value::Tensor(TensorSpec {
                storage: storage.clone(),
                offset,
                size,
                stride,
            }))
        }
        Global::RebuildParameter | Global::RebuildParameterWithState => match args.first() {
            Some(t @ Value::Tensor(_)) => Ok(t.clone()),
            _ => malformed(format!("_rebuild_parameter without a tensor at byte {at}")),
        },
        Global::Storage(_) => malformed(format!("a storage class is called at byte {at}")),
    }
}

/// Reads `('storage', torch.XStorage, key, location, numel[, view_metadata])`.
fn persistent_storage(pid: Value, at: usize) -> Result<StorageRef, PickleError> {
    let Value::Tuple(t) = pid else {
        return malformed(format!(
            "persistent id is a {} at byte {at}",
            pid.type_name()
        ));
    };
    match t.as_slice() {
        [Value::Str(tag), Value::Global(Global::Storage(kind)), key, _location, numel, rest @ ..]
            if &**tag == "storage" && rest.len() <= 1 =>
        {
            let key = match key {
                Value::Str(s) => s.to_string(),
                Value::Int(i) => i.to_string(),
                other => {
                    return malformed(format!(
                        "storage key is a {} at byte {at}",
                        other.type_name()
                    ))
                }
            };
            let numel = int(numel, "storage size", at)?;
            let view_offset = match rest.first() {
                None | Some(Value::None) => 0,
                Some(Value::Tuple(v)) if v.len() == 3 => int(&v[1], "storage view offset", at)?,
                Some(other) => {
                    return malformed(format!(
                        "storage view metadata is a {} at byte {at}",
                        other.type_name()
                    ))
                }
            };
            if numel < 0 || view_offset < 0 {
                return malformed(format!("negative storage size or offset at byte {at}"));
            }
            Ok(StorageRef {
                key,
                kind: *kind,
                numel,
                view_offset,
            })
        }
        _ => malformed(format!(
            "unsupported persistent id at byte {at} (expected a storage)"
        )),
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    /// `SHORT_BINUNICODE`.
    pub(crate) fn s(out: &mut Vec<u8>, text: &str) {
        out.push(0x8c);
        out.push(text.len() as u8);
        out.extend_from_slice(text.as_bytes());
    }

    #[test]
    fn reads_dict_list_tuple_ints_floats_and_memo() {
        let mut p = vec![0x80, 2, b'}', b'q', 0, b'('];
        s(&mut p, "a");
        p.extend_from_slice(&[b'K', 7]);
        s(&mut p, "b");
        p.extend_from_slice(&[b']', b'q', 1, b'J']);
        p.extend_from_slice(&(-5i32).to_le_bytes());
        p.push(b'a');
        s(&mut p, "c");
        p.push(b'G');
        p.extend_from_slice(&1.5f64.to_be_bytes());
        p.extend_from_slice(&[0x8a, 2, 0xff, 0x7f, 0x86, b'u']); // LONG1 32767, TUPLE2
        s(&mut p, "d");
        p.extend_from_slice(&[b'h', 1, b's', b'.']); // the list again, via the memo
        let u = unpickle(&p, 0).unwrap();
        assert_eq!(u.end, p.len());
        let v = u.value;
        assert!(matches!(v.get("a"), Some(Value::Int(7))));
        let Some(Value::List(l)) = v.get("b") else {
            panic!("b is not a list")
        };
        assert!(matches!(l.borrow()[0], Value::Int(-5)));
        let Some(Value::Tuple(t)) = v.get("c") else {
            panic!("c is not a tuple")
        };
        assert!(matches!(t[..], [Value::Float(f), Value::Int(32767)] if f == 1.5));
        // The memoised list is the same object.
        let Some(Value::List(l2)) = v.get("d") else {
            panic!("d is not a list")
        };
        assert!(Rc::ptr_eq(&l, &l2));
    }

    #[test]
    fn long1_sign_extends() {
        let p = [0x80, 2, 0x8a, 1, 0xff, b'.'];
        assert!(matches!(unpickle(&p, 0).unwrap().value, Value::Int(-1)));
        // torch's legacy magic number needs 10 bytes.
        let mut p = vec![0x80, 2, 0x8a, 10];
        p.extend_from_slice(&0x1950a86a20f9469cfc6cu128.to_le_bytes()[..10]);
        p.push(b'.');
        assert!(matches!(
            unpickle(&p, 0).unwrap().value,
            Value::Int(0x1950a86a20f9469cfc6c)
        ));
    }

    #[test]
    fn forbidden_global_is_named_and_never_called() {
        // Protocol 0 pickle of `os.system("touch x")`.
        let p = b"cposix\nsystem\n(S'touch x'\ntR.";
        assert_eq!(
            unpickle(p, 0).unwrap_err(),
            PickleError::Forbidden("posix.system".into())
        );
        let mut p = vec![0x80, 4];
        s(&mut p, "builtins");
        s(&mut p, "eval");
        p.extend_from_slice(&[0x93, b'.']);
        assert_eq!(
            unpickle(&p, 0).unwrap_err(),
            PickleError::Forbidden("builtins.eval".into())
        );
        // A torch attribute that is not a storage class is forbidden too.
        let p = b"\x80\x02ctorch\nload\n.";
        assert_eq!(
            unpickle(p, 0).unwrap_err(),
            PickleError::Forbidden("torch.load".into())
        );
    }

    #[test]
    fn truncated_and_malformed_input_are_errors() {
        let cases: &[&[u8]] = &[
            b"",
            b"\x80\x02",
            b"\x80\x02X\xff\xff\xff\x7fabc",
            b"\x80\x02}q",
            b"\x80\x02h\x05.",
            b"\x80\x02u.",
            b"\x80\x02.",
            b"\x80\x02\xff.",
            b"\x80\x09N.",
            b"\x80\x02K\x01K\x02R.",
        ];
        for case in cases {
            match unpickle(case, 0) {
                Err(PickleError::Malformed(msg)) => assert!(!msg.is_empty()),
                other => panic!("{case:?} gave {other:?}"),
            }
        }
    }

    #[test]
    fn rebuilds_tensor_spec_from_persistent_id() {
        let mut p = vec![0x80, 2, b'c'];
        p.extend_from_slice(b"torch._utils\n_rebuild_tensor_v2\n");
        p.extend_from_slice(b"((");
        s(&mut p, "storage");
        p.extend_from_slice(b"ctorch\nHalfStorage\n");
        s(&mut p, "0");
        s(&mut p, "cpu");
        p.extend_from_slice(&[
            b'K', 12, b't', b'Q', b'K', 2, b'K', 2, b'K', 3, 0x86, b'K', 1, b'K', 2,
        ]);
        p.extend_from_slice(&[0x86, 0x89, b'N', b't', b'R', b'.']);
        let u = unpickle(&p, 0).unwrap();
        let Value::Tensor(t) = u.value else {
            panic!("not a tensor")
        };
        assert_eq!(t.storage.kind, Kind::Half);
        assert_eq!(t.storage.key, "0");
        assert_eq!(t.storage.numel, 12);
        assert_eq!((t.offset, t.size, t.stride), (2, vec![2, 3], vec![1, 2]));
        assert_eq!(u.storages.len(), 1);
    }

    fn malformed_msg(p: &[u8]) -> String {
        match unpickle(p, 0) {
            Err(PickleError::Malformed(m)) => m,
            other => panic!("expected an error, got {other:?}"),
        }
    }

    #[test]
    fn deep_nesting_is_refused_without_recursing() {
        // Marks thousands deep: `((((...`.
        let mut p = vec![0x80, 2];
        p.extend(std::iter::repeat_n(b'(', 100_000));
        assert!(malformed_msg(&p).contains("nested MARKs"));
        // Lists appended into each other: `]]]...aaa`.
        let mut p = vec![0x80, 2];
        p.extend(std::iter::repeat_n(b']', 100_000));
        p.extend(std::iter::repeat_n(b'a', 99_999));
        p.push(b'.');
        assert!(malformed_msg(&p).contains("nest more than 200 deep"));
        // Tuples of tuples without marks: `)` then TUPLE1 repeatedly.
        let mut p = vec![0x80, 2, b')'];
        p.extend(std::iter::repeat_n(0x85, 100_000));
        p.push(b'.');
        assert!(malformed_msg(&p).contains("nest more than 200 deep"));
        // Dicts of dicts through SETITEM.
        let mut p = vec![0x80, 2];
        for _ in 0..1000 {
            p.extend_from_slice(b"}N");
        }
        p.push(b'}');
        p.extend(std::iter::repeat_n(b's', 1000));
        p.push(b'.');
        assert!(malformed_msg(&p).contains("nest more than 200 deep"));
    }

    #[test]
    fn nesting_linked_through_the_memo_drops_without_overflowing_the_stack() {
        // 100 000 empty lists in the memo, then list i appended into list i - 1 from the
        // bottom up: each append sees a flat child, so the result nests 100 000 deep. It
        // must still be dropped (and printed) without recursion.
        const N: u32 = 100_000;
        let mut p = vec![0x80, 2];
        for i in 0..N {
            p.push(b']');
            p.push(b'r');
            p.extend_from_slice(&i.to_le_bytes());
            p.push(b'0');
        }
        for i in 0..N - 1 {
            p.push(b'j');
            p.extend_from_slice(&i.to_le_bytes());
            p.push(b'j');
            p.extend_from_slice(&(i + 1).to_le_bytes());
            p.extend_from_slice(b"a0");
        }
        p.extend_from_slice(&[b'j', 0, 0, 0, 0, b'.']);
        // Run on a small stack, as a loader thread would have.
        std::thread::Builder::new()
            .stack_size(256 << 10)
            .spawn(move || {
                let u = unpickle(&p, 0).unwrap();
                assert!(format!("{:?}", u.value).len() < 100);
                drop(u);
            })
            .unwrap()
            .join()
            .unwrap();
    }

    #[test]
    fn shared_values_are_not_copied() {
        // t0 = (1,); t(i+1) = (t(i), t(i)): 2^60 leaves if each reference were a copy.
        let mut p = vec![0x80, 2, b'K', 1, 0x85, b'q', 0];
        for i in 0..60u8 {
            p.extend_from_slice(&[b'h', i, b'h', i, 0x86, b'q', i + 1]);
        }
        p.push(b'.');
        let start = std::time::Instant::now();
        let u = unpickle(&p, 0).unwrap();
        assert!(matches!(&u.value, Value::Tuple(t) if t.len() == 2));
        drop(u);
        assert!(start.elapsed().as_secs() < 5);
        // A long string duplicated many times is shared, not copied.
        let mut p = vec![0x80, 2, b'X'];
        p.extend_from_slice(&(1u32 << 20).to_le_bytes());
        p.extend(std::iter::repeat_n(b'a', 1 << 20));
        p.extend_from_slice(&[b'q', 0, b'(']);
        for _ in 0..100_000 {
            p.extend_from_slice(&[b'h', 0]);
        }
        p.extend_from_slice(b"l.");
        assert!(matches!(unpickle(&p, 0).unwrap().value, Value::List(_)));
    }

    #[test]
    fn object_count_is_bounded_and_cycles_are_harmless() {
        let mut p = vec![0x80, 2, b'('];
        p.extend(std::iter::repeat_n(b'N', MAX_OBJECTS + 1));
        assert!(malformed_msg(&p).contains("objects"));
        // OrderedDict over a big list, applied again and again, pays for every copy.
        let mut p = vec![0x80, 2, b'c'];
        p.extend_from_slice(b"collections\nOrderedDict\nq\x00](");
        for _ in 0..10_000 {
            p.extend_from_slice(&[b'N', b'N', 0x86]);
        }
        p.extend_from_slice(&[b'e', b'q', 1]);
        for _ in 0..1000 {
            p.extend_from_slice(&[b'h', 0, b'h', 1, 0x85, b'R', b'0']);
        }
        assert!(malformed_msg(&p).contains("objects"));
        // A list that contains itself reads (and prints) fine.
        let p = [0x80, 2, b']', b'q', 0, b'h', 0, b'a', b'.'];
        let u = unpickle(&p, 0).unwrap();
        assert_eq!(
            format!("{:?}", u.value),
            "List(RefCell { value: [1 items] })"
        );
    }
}
