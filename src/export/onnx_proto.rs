//! A minimal protobuf wire-format encoder and reader, enough for the ONNX
//! messages the exporter writes (field numbers from onnx.proto, IR 8).
//!
//! Repeated scalar fields are written unpacked (the proto2 default that
//! onnx.proto declares); the reader accepts both packed and unpacked forms.

use anyhow::{bail, Result};

/// One protobuf message being built.
#[derive(Debug, Default, Clone)]
pub struct Msg {
    pub buf: Vec<u8>,
}

fn put_varint(buf: &mut Vec<u8>, mut v: u64) {
    while v >= 0x80 {
        buf.push((v as u8) | 0x80);
        v >>= 7;
    }
    buf.push(v as u8);
}

impl Msg {
    pub fn new() -> Self {
        Self::default()
    }
    fn tag(&mut self, field: u32, wire: u8) {
        put_varint(&mut self.buf, ((field as u64) << 3) | wire as u64);
    }
    /// A varint field (int32/int64/enum; negatives take ten bytes, as protobuf does).
    pub fn int(&mut self, field: u32, v: i64) -> &mut Self {
        self.tag(field, 0);
        put_varint(&mut self.buf, v as u64);
        self
    }
    /// A 32-bit float field.
    pub fn float(&mut self, field: u32, v: f32) -> &mut Self {
        self.tag(field, 5);
        self.buf.extend_from_slice(&v.to_le_bytes());
        self
    }
    /// A length-delimited field (bytes, string, embedded message).
    pub fn bytes(&mut self, field: u32, v: &[u8]) -> &mut Self {
        self.tag(field, 2);
        put_varint(&mut self.buf, v.len() as u64);
        self.buf.extend_from_slice(v);
        self
    }
    pub fn string(&mut self, field: u32, v: &str) -> &mut Self {
        self.bytes(field, v.as_bytes())
    }
    pub fn msg(&mut self, field: u32, m: &Msg) -> &mut Self {
        self.bytes(field, &m.buf)
    }
    /// Repeated varints, one tag each (unpacked).
    pub fn ints(&mut self, field: u32, vs: &[i64]) -> &mut Self {
        for &v in vs {
            self.int(field, v);
        }
        self
    }
    /// Repeated varints in one length-delimited (packed) field.
    pub fn packed_ints(&mut self, field: u32, vs: &[i64]) -> &mut Self {
        let mut b = Vec::new();
        for &v in vs {
            put_varint(&mut b, v as u64);
        }
        self.bytes(field, &b)
    }
}

/// A field value as read from the wire.
#[derive(Debug, Clone, Copy)]
pub enum Value<'a> {
    Varint(u64),
    Fixed64(u64),
    Bytes(&'a [u8]),
    Fixed32(u32),
}

impl<'a> Value<'a> {
    pub fn as_bytes(&self) -> Result<&'a [u8]> {
        match self {
            Value::Bytes(b) => Ok(b),
            other => bail!("expected a length-delimited field, got {other:?}"),
        }
    }
    pub fn as_str(&self) -> Result<&'a str> {
        Ok(std::str::from_utf8(self.as_bytes()?)?)
    }
    pub fn as_int(&self) -> Result<i64> {
        match self {
            Value::Varint(v) => Ok(*v as i64),
            other => bail!("expected a varint field, got {other:?}"),
        }
    }
    /// The varints of a repeated field entry, packed or not.
    pub fn ints(&self) -> Result<Vec<i64>> {
        match self {
            Value::Varint(v) => Ok(vec![*v as i64]),
            Value::Bytes(b) => {
                let mut out = Vec::new();
                let mut pos = 0;
                while pos < b.len() {
                    out.push(read_varint(b, &mut pos)? as i64);
                }
                Ok(out)
            }
            other => bail!("expected varints, got {other:?}"),
        }
    }
}

fn read_varint(b: &[u8], pos: &mut usize) -> Result<u64> {
    let mut v = 0u64;
    for shift in (0..64).step_by(7) {
        let Some(&byte) = b.get(*pos) else { bail!("truncated varint") };
        *pos += 1;
        v |= ((byte & 0x7f) as u64) << shift;
        if byte < 0x80 {
            return Ok(v);
        }
    }
    bail!("varint longer than ten bytes")
}

/// Splits one message into its (field number, value) entries, in wire order.
pub fn read_fields(b: &[u8]) -> Result<Vec<(u32, Value<'_>)>> {
    let mut out = Vec::new();
    let mut pos = 0;
    while pos < b.len() {
        let key = read_varint(b, &mut pos)?;
        let field = (key >> 3) as u32;
        let v = match key & 7 {
            0 => Value::Varint(read_varint(b, &mut pos)?),
            1 => {
                let Some(s) = b.get(pos..pos + 8) else { bail!("truncated fixed64") };
                pos += 8;
                Value::Fixed64(u64::from_le_bytes(s.try_into()?))
            }
            2 => {
                let n = read_varint(b, &mut pos)? as usize;
                let Some(s) = b.get(pos..pos + n) else { bail!("truncated length-delimited field {field}") };
                pos += n;
                Value::Bytes(s)
            }
            5 => {
                let Some(s) = b.get(pos..pos + 4) else { bail!("truncated fixed32") };
                pos += 4;
                Value::Fixed32(u32::from_le_bytes(s.try_into()?))
            }
            w => bail!("unsupported wire type {w} (field {field})"),
        };
        out.push((field, v));
    }
    Ok(out)
}
