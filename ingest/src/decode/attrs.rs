//! Reading OTLP `KeyValue` / `AnyValue` messages from the wire without allocating.

use super::DecodeError;
use super::wire::{Reader, Value, utf8};

/// An attribute value as the SLI decoders need it.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum AttrValue<'a> {
    /// `string_value`.
    Str(&'a str),
    /// `int_value`.
    Int(i64),
    /// `bool_value`.
    Bool(bool),
    /// `double_value`.
    Double(f64),
    /// Arrays, maps and bytes: present, but not usable as a dimension.
    Other,
}

impl<'a> AttrValue<'a> {
    /// The value as text, for series keys: strings are borrowed, others formatted.
    pub fn into_text(self) -> std::borrow::Cow<'a, str> {
        match self {
            AttrValue::Str(s) => s.into(),
            AttrValue::Int(i) => i.to_string().into(),
            AttrValue::Bool(b) => if b { "true" } else { "false" }.into(),
            AttrValue::Double(d) => d.to_string().into(),
            AttrValue::Other => "".into(),
        }
    }

    /// The value as an integer, when it is one (or a string holding one).
    pub fn as_int(&self) -> Option<i64> {
        match *self {
            AttrValue::Int(i) => Some(i),
            AttrValue::Str(s) => s.trim().parse().ok(),
            AttrValue::Double(d) if d.fract() == 0.0 => Some(d as i64),
            _ => None,
        }
    }
}

/// Decodes one `KeyValue` message.
pub fn key_value(buf: &[u8]) -> Result<(&str, AttrValue<'_>), DecodeError> {
    let mut r = Reader::new(buf);
    let mut key = "";
    let mut value = AttrValue::Other;
    while let Some((f, v)) = r.next()? {
        match (f, v) {
            (1, Value::Bytes(b)) => key = utf8(b, "attribute key")?,
            (2, Value::Bytes(b)) => value = any_value(b)?,
            _ => {}
        }
    }
    Ok((key, value))
}

fn any_value(buf: &[u8]) -> Result<AttrValue<'_>, DecodeError> {
    let mut r = Reader::new(buf);
    let mut out = AttrValue::Other;
    while let Some((f, v)) = r.next()? {
        out = match (f, v) {
            (1, Value::Bytes(b)) => AttrValue::Str(utf8(b, "attribute value")?),
            (2, Value::Varint(x)) => AttrValue::Bool(x != 0),
            (3, Value::Varint(x)) => AttrValue::Int(x as i64),
            (4, Value::Fixed64(x)) => AttrValue::Double(f64::from_bits(x)),
            _ => AttrValue::Other,
        };
    }
    Ok(out)
}
