//! A small, safe unpickler for PyTorch checkpoints (pickle protocols 2–5).
//!
//! Nothing is ever executed: `GLOBAL` yields an opaque class marker, and calls
//! (`REDUCE`, `NEWOBJ`) build generic objects, except for the handful of torch
//! and collections callables that reconstruct tensors and ordered dicts.

use std::cell::RefCell;
use std::collections::HashMap;
use std::rc::Rc;

use anyhow::{bail, Context, Result};

/// Element type of a torch storage.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DType {
    F16,
    BF16,
    F32,
    F64,
    I64,
    I32,
    I16,
    I8,
    U8,
    Bool,
}

impl DType {
    fn from_storage_class(name: &str) -> Option<Self> {
        Some(match name {
            "HalfStorage" => Self::F16,
            "BFloat16Storage" => Self::BF16,
            "FloatStorage" => Self::F32,
            "DoubleStorage" => Self::F64,
            "LongStorage" => Self::I64,
            "IntStorage" => Self::I32,
            "ShortStorage" => Self::I16,
            "CharStorage" => Self::I8,
            "ByteStorage" => Self::U8,
            "BoolStorage" => Self::Bool,
            _ => return None,
        })
    }

    pub fn size(self) -> usize {
        match self {
            Self::F16 | Self::BF16 | Self::I16 => 2,
            Self::F32 | Self::I32 => 4,
            Self::F64 | Self::I64 => 8,
            Self::I8 | Self::U8 | Self::Bool => 1,
        }
    }

    pub fn is_float(self) -> bool {
        matches!(self, Self::F16 | Self::BF16 | Self::F32 | Self::F64)
    }
}

/// A strided view into a storage file of the checkpoint archive.
#[derive(Debug, Clone)]
pub struct TensorRef {
    pub storage: String,
    pub dtype: DType,
    pub offset: usize,
    pub shape: Vec<usize>,
    pub strides: Vec<usize>,
}

#[derive(Debug, Default)]
pub struct Object {
    pub class: String,
    pub args: Vec<Value>,
    pub state: Option<Value>,
}

#[derive(Debug, Clone)]
pub enum Value {
    None,
    Bool(bool),
    Int(i64),
    Float(f64),
    Str(String),
    Bytes(Vec<u8>),
    Tuple(Vec<Value>),
    List(Rc<RefCell<Vec<Value>>>),
    Dict(Rc<RefCell<Vec<(Value, Value)>>>),
    Global(String),
    Object(Rc<RefCell<Object>>),
    Storage { key: String, dtype: DType },
    Tensor(Rc<TensorRef>),
}

impl Value {
    pub fn as_str(&self) -> Option<&str> {
        match self {
            Value::Str(s) => Some(s),
            _ => None,
        }
    }

    /// Looks a string key up in a dict.
    pub fn get(&self, key: &str) -> Option<Value> {
        match self {
            Value::Dict(d) => d
                .borrow()
                .iter()
                .find(|(k, _)| k.as_str() == Some(key))
                .map(|(_, v)| v.clone()),
            _ => None,
        }
    }

    /// Attribute of a built object (its `__dict__` state), or a dict entry.
    pub fn attr(&self, key: &str) -> Option<Value> {
        match self {
            Value::Object(o) => o.borrow().state.as_ref().and_then(|s| s.get(key)),
            Value::Dict(_) => self.get(key),
            _ => None,
        }
    }

    pub fn dict_items(&self) -> Vec<(Value, Value)> {
        match self {
            Value::Dict(d) => d.borrow().clone(),
            _ => Vec::new(),
        }
    }

    pub fn items(&self) -> Vec<Value> {
        match self {
            Value::List(l) => l.borrow().clone(),
            Value::Tuple(t) => t.clone(),
            _ => Vec::new(),
        }
    }

    pub fn is_none(&self) -> bool {
        matches!(self, Value::None)
    }
}

/// Containers give their children to a worklist when dropped: a hostile pickle
/// can nest values deeper than a recursive drop's stack would allow.
impl Drop for Value {
    fn drop(&mut self) {
        let mut work = Vec::new();
        take_children(self, &mut work);
        while let Some(mut v) = work.pop() {
            take_children(&mut v, &mut work);
        }
    }
}

/// Moves the children of a container this value owns alone into `out`.
fn take_children(v: &mut Value, out: &mut Vec<Value>) {
    match v {
        Value::Tuple(items) => out.append(items),
        Value::List(l) => {
            if let Some(cell) = Rc::get_mut(l) {
                out.append(cell.get_mut());
            }
        }
        Value::Dict(d) => {
            if let Some(cell) = Rc::get_mut(d) {
                out.extend(cell.get_mut().drain(..).flat_map(|(k, v)| [k, v]));
            }
        }
        Value::Object(o) => {
            if let Some(cell) = Rc::get_mut(o) {
                let o = cell.get_mut();
                out.append(&mut o.args);
                out.extend(o.state.take());
            }
        }
        _ => {}
    }
}

fn new_dict(items: Vec<(Value, Value)>) -> Value {
    Value::Dict(Rc::new(RefCell::new(items)))
}

fn new_list(items: Vec<Value>) -> Value {
    Value::List(Rc::new(RefCell::new(items)))
}

struct Reader<'a> {
    data: &'a [u8],
    pos: usize,
}

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize) -> Result<&'a [u8]> {
        let end = self.pos.checked_add(n).filter(|&e| e <= self.data.len());
        let Some(end) = end else {
            bail!("pickle stream ends unexpectedly at byte {} ({n} more bytes announced)", self.pos);
        };
        let s = &self.data[self.pos..end];
        self.pos = end;
        Ok(s)
    }
    fn u8(&mut self) -> Result<u8> {
        Ok(self.take(1)?[0])
    }
    fn u16(&mut self) -> Result<u16> {
        Ok(u16::from_le_bytes(self.take(2)?.try_into()?))
    }
    fn u32(&mut self) -> Result<u32> {
        Ok(u32::from_le_bytes(self.take(4)?.try_into()?))
    }
    fn i32(&mut self) -> Result<i32> {
        Ok(i32::from_le_bytes(self.take(4)?.try_into()?))
    }
    fn u64(&mut self) -> Result<u64> {
        Ok(u64::from_le_bytes(self.take(8)?.try_into()?))
    }
    /// A newline-terminated argument (text opcodes such as GLOBAL and INT).
    fn line(&mut self) -> Result<String> {
        let rest = &self.data[self.pos..];
        let Some(n) = rest.iter().position(|&b| b == b'\n') else {
            bail!("pickle stream ends inside a text argument at byte {}", self.pos);
        };
        let s = String::from_utf8_lossy(&rest[..n]).into_owned();
        self.pos += n + 1;
        Ok(s)
    }
    /// The length prefix (or memo index) an opcode carries: u8 for LONG1,
    /// SHORT_BINUNICODE, SHORT_BINBYTES and BINPUT/BINGET, u32 for BINUNICODE,
    /// BINBYTES and LONG_BINPUT/LONG_BINGET, a signed i32 that must not be
    /// negative for LONG4 and u64 for BINUNICODE8/BINBYTES8.
    fn len(&mut self, op: u8) -> Result<usize> {
        let at = self.pos;
        Ok(match op {
            0x8a | 0x8c | b'C' | b'q' | b'h' => self.u8()? as usize,
            b'X' | b'B' | b'r' | b'j' => self.u32()? as usize,
            0x8b => {
                let n = self.i32()?;
                usize::try_from(n).map_err(|_| anyhow::anyhow!("negative length {n} in pickle at byte {at}"))?
            }
            _ => {
                let n = self.u64()?;
                usize::try_from(n).map_err(|_| anyhow::anyhow!("length {n} in pickle is too large"))?
            }
        })
    }
    /// The bytes of a length-prefixed argument.
    fn sized(&mut self, op: u8) -> Result<&'a [u8]> {
        let n = self.len(op)?;
        self.take(n)
    }
}

/// Unpickles `data`. Returns the value left by STOP.
pub fn unpickle(data: &[u8]) -> Result<Value> {
    let mut r = Reader { data, pos: 0 };
    let mut stack: Vec<Value> = Vec::new();
    let mut marks: Vec<usize> = Vec::new();
    let mut memo: HashMap<u32, Value> = HashMap::new();

    macro_rules! pop {
        () => {
            stack.pop().context("pickle stack underflow")?
        };
    }
    let pop_mark = |stack: &mut Vec<Value>, marks: &mut Vec<usize>| -> Result<Vec<Value>> {
        let m = marks.pop().context("pickle MARK missing")?;
        if m > stack.len() {
            bail!("pickle stack popped below its MARK");
        }
        Ok(stack.split_off(m))
    };

    loop {
        let op = r.u8()?;
        match op {
            0x80 => {
                r.u8()?; // PROTO
            }
            0x95 => {
                r.u64()?; // FRAME
            }
            b'.' => return stack.pop().context("empty pickle"),
            b'(' => marks.push(stack.len()),
            b'}' => stack.push(new_dict(Vec::new())),
            b']' | 0x8f => stack.push(new_list(Vec::new())), // 0x8f: EMPTY_SET as a list
            b')' => stack.push(Value::Tuple(Vec::new())),
            b'N' => stack.push(Value::None),
            0x88 => stack.push(Value::Bool(true)),
            0x89 => stack.push(Value::Bool(false)),
            b'J' => stack.push(Value::Int(r.i32()? as i64)),
            b'K' => stack.push(Value::Int(r.u8()? as i64)),
            b'M' => stack.push(Value::Int(r.u16()? as i64)),
            0x8a | 0x8b => stack.push(Value::Int(long_from_le(r.sized(op)?)?)), // LONG1, LONG4
            b'I' => {
                let l = r.line()?;
                stack.push(match l.as_str() {
                    "00" => Value::Bool(false),
                    "01" => Value::Bool(true),
                    s => Value::Int(s.trim().parse().context("bad INT opcode")?),
                });
            }
            b'G' => stack.push(Value::Float(f64::from_be_bytes(r.take(8)?.try_into()?))),
            b'X' | 0x8c | 0x8d => stack.push(Value::Str(String::from_utf8_lossy(r.sized(op)?).into_owned())),
            b'V' => stack.push(Value::Str(r.line()?)),
            b'B' | b'C' | 0x8e => stack.push(Value::Bytes(r.sized(op)?.to_vec())),
            b'q' | b'r' | 0x94 => {
                let k = if op == 0x94 { memo.len() as u32 } else { r.len(op)? as u32 };
                memo.insert(k, stack.last().context("memo of empty stack")?.clone());
            }
            b'h' | b'j' => {
                let k = r.len(op)? as u32;
                stack.push(memo.get(&k).context("pickle memo key missing")?.clone());
            }
            b't' | b'l' | b'd' | 0x91 => {
                let items = pop_mark(&mut stack, &mut marks)?;
                stack.push(match op {
                    b't' => Value::Tuple(items),
                    b'd' => new_dict(pairs(items)),
                    _ => new_list(items), // LIST, FROZENSET
                });
            }
            0x85..=0x87 => {
                // TUPLE1..TUPLE3
                let at = stack.len().checked_sub(usize::from(op - 0x84)).context("pickle stack underflow")?;
                let items = stack.split_off(at);
                stack.push(Value::Tuple(items));
            }
            b'a' => {
                let v = pop!();
                match stack.last() {
                    Some(Value::List(l)) => l.borrow_mut().push(v),
                    _ => bail!("APPEND on a non-list"),
                }
            }
            b'e' | 0x90 => {
                // APPENDS, ADDITEMS; set.update via APPENDS-like opcodes is not used by torch; ignore others
                let items = pop_mark(&mut stack, &mut marks)?;
                if let Some(Value::List(l)) = stack.last() {
                    l.borrow_mut().extend(items);
                }
            }
            b's' => {
                let v = pop!();
                let k = pop!();
                match stack.last() {
                    Some(Value::Dict(d)) => d.borrow_mut().push((k, v)),
                    _ => bail!("SETITEM on a non-dict"),
                }
            }
            b'u' => {
                let items = pop_mark(&mut stack, &mut marks)?;
                match stack.last() {
                    Some(Value::Dict(d)) => d.borrow_mut().extend(pairs(items)),
                    _ => bail!("SETITEMS on a non-dict"),
                }
            }
            b'c' => {
                let module = r.line()?;
                let name = r.line()?;
                stack.push(Value::Global(format!("{module}.{name}")));
            }
            0x93 => {
                let name = pop!();
                let module = pop!();
                stack.push(Value::Global(format!(
                    "{}.{}",
                    module.as_str().unwrap_or("?"),
                    name.as_str().unwrap_or("?")
                )));
            }
            b'R' | 0x81 | 0x92 => {
                // REDUCE, NEWOBJ, NEWOBJ_EX (whose kwargs are ignored)
                if op == 0x92 {
                    pop!();
                }
                let args = pop!();
                let func = pop!();
                stack.push(call(func, args)?);
            }
            b'b' => {
                let state = pop!();
                match stack.last() {
                    Some(Value::Object(o)) => o.borrow_mut().state = Some(state),
                    // BUILD on an OrderedDict or other container: merge dict state if any
                    Some(Value::Dict(d)) => {
                        if let Value::Dict(s) = &state {
                            d.borrow_mut().extend(s.borrow().iter().cloned());
                        }
                    }
                    _ => {}
                }
            }
            b'Q' => {
                let pid = pop!();
                stack.push(persistent(pid)?);
            }
            b'0' => {
                pop!();
            }
            b'2' => {
                let v = stack.last().context("DUP of empty stack")?.clone();
                stack.push(v);
            }
            b'1' => {
                pop_mark(&mut stack, &mut marks)?;
            }
            other => bail!("unsupported pickle opcode 0x{other:02x} at byte {}", r.pos - 1),
        }
    }
}

fn pairs(items: Vec<Value>) -> Vec<(Value, Value)> {
    let mut out = Vec::with_capacity(items.len() / 2);
    let mut it = items.into_iter();
    while let (Some(k), Some(v)) = (it.next(), it.next()) {
        out.push((k, v));
    }
    out
}

fn long_from_le(bytes: &[u8]) -> Result<i64> {
    if bytes.is_empty() {
        return Ok(0);
    }
    if bytes.len() > 8 {
        bail!("integer too large in pickle");
    }
    let neg = bytes[bytes.len() - 1] & 0x80 != 0;
    let mut buf = if neg { [0xffu8; 8] } else { [0u8; 8] };
    buf[..bytes.len()].copy_from_slice(bytes);
    Ok(i64::from_le_bytes(buf))
}

fn persistent(pid: Value) -> Result<Value> {
    let items = pid.items();
    // ('storage', <class>, key, location, numel)
    if items.len() >= 3 && items[0].as_str() == Some("storage") {
        let class = match &items[1] {
            Value::Global(g) => g.rsplit('.').next().unwrap_or("").to_string(),
            _ => String::new(),
        };
        let dtype = DType::from_storage_class(&class)
            .with_context(|| format!("unsupported storage type {class}"))?;
        let key = match &items[2] {
            Value::Str(s) => s.clone(),
            Value::Int(i) => i.to_string(),
            _ => bail!("bad storage key"),
        };
        return Ok(Value::Storage { key, dtype });
    }
    bail!("unsupported persistent id in pickle")
}

fn as_usizes(v: &Value) -> Result<Vec<usize>> {
    v.items()
        .iter()
        .map(|x| match x {
            Value::Int(i) if *i >= 0 => Ok(*i as usize),
            _ => bail!("bad tensor size/stride"),
        })
        .collect()
}

/// Applies a callable. Only tensor/ordered-dict constructors are interpreted.
fn call(func: Value, args: Value) -> Result<Value> {
    let name = match &func {
        Value::Global(g) => g.clone(),
        _ => String::from("<object>"),
    };
    let a = args.items();
    match name.as_str() {
        "torch._utils._rebuild_tensor_v2" | "torch._utils._rebuild_tensor" => {
            let (key, dtype) = match a.first() {
                Some(Value::Storage { key, dtype }) => (key.clone(), *dtype),
                _ => bail!("tensor without storage"),
            };
            let offset = match a.get(1) {
                Some(Value::Int(i)) => usize::try_from(*i).context("negative storage offset")?,
                _ => 0,
            };
            let shape = as_usizes(a.get(2).context("tensor without size")?)?;
            let strides = as_usizes(a.get(3).context("tensor without stride")?)?;
            Ok(Value::Tensor(Rc::new(TensorRef { storage: key, dtype, offset, shape, strides })))
        }
        "torch._utils._rebuild_parameter" | "torch._utils._rebuild_parameter_with_state" => {
            Ok(a.into_iter().next().context("parameter without tensor")?)
        }
        "collections.OrderedDict" => Ok(new_dict(Vec::new())),
        "builtins.set" | "__builtin__.set" | "builtins.frozenset" => {
            Ok(new_list(a.first().map(|v| v.items()).unwrap_or_default()))
        }
        _ => Ok(Value::Object(Rc::new(RefCell::new(Object {
            class: name,
            args: a,
            state: None,
        })))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn memoised_dict_sees_later_items() {
        // {} BINPUT 0, MARK 'a' 1 SETITEMS, then a list holding the memoised dict
        let mut p = vec![0x80, 2, b'}', b'q', 0, b'(', 0x8c, 1, b'a', b'K', 1, b'u', b'0'];
        p.extend([b'(', b'h', 0, b'l', b'.']);
        let v = unpickle(&p).unwrap();
        let items = v.items();
        assert_eq!(items.len(), 1);
        assert!(matches!(items[0].get("a"), Some(Value::Int(1))));
    }

    #[test]
    fn truncated_stream_is_an_error() {
        assert!(unpickle(&[0x80, 2, b'X', 5, 0]).is_err());
    }

    fn error_of(p: &[u8]) -> String {
        format!("{:#}", unpickle(p).err().expect("an error"))
    }

    #[test]
    fn global_without_newline_at_the_end_is_an_error() {
        assert!(error_of(b"\x80\x02ctorch\nFloatStorage").contains("ends inside a text argument"));
        assert!(error_of(b"\x80\x02ctorch").contains("ends inside a text argument"));
    }

    #[test]
    fn pop_below_a_mark_is_an_error() {
        // N N MARK POP POP TUPLE: the mark now lies above the stack
        assert!(error_of(b"\x80\x02NN(00t.").contains("below its MARK"));
    }

    #[test]
    fn negative_and_huge_lengths_are_errors() {
        let long4 = [&[0x80, 2, 0x8b][..], &(-5i32).to_le_bytes(), b"."].concat();
        assert!(error_of(&long4).contains("negative length"));
        let unicode8 = [&[0x80, 2, 0x8d][..], &u64::MAX.to_le_bytes(), b"."].concat();
        assert!(error_of(&unicode8).contains("ends unexpectedly"));
        let bytes8 = [&[0x80, 2, 0x8e][..], &(u64::MAX - 3).to_le_bytes(), b"."].concat();
        assert!(error_of(&bytes8).contains("ends unexpectedly"));
    }
}
