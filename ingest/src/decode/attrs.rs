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

/// An attribute value whose string is not yet UTF-8 validated: the trace decoder validates
/// only the values it uses.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum RawValue<'a> {
    /// `string_value`, unvalidated.
    Str(&'a [u8]),
    /// Any other value.
    Val(AttrValue<'a>),
}

impl<'a> RawValue<'a> {
    /// Validates a string value.
    pub fn check(self) -> Result<AttrValue<'a>, DecodeError> {
        match self {
            RawValue::Str(b) => Ok(AttrValue::Str(utf8(b, "attribute value")?)),
            RawValue::Val(v) => Ok(v),
        }
    }
}

/// Decodes one `KeyValue` message without validating strings (keys are compared as bytes).
pub fn key_value_raw(buf: &[u8]) -> Result<(&[u8], RawValue<'_>), DecodeError> {
    let mut r = Reader::new(buf);
    let mut key: &[u8] = b"";
    let mut value = RawValue::Val(AttrValue::Other);
    while let Some((f, v)) = r.next()? {
        match (f, v) {
            (1, Value::Bytes(b)) => key = b,
            (2, Value::Bytes(b)) => {
                let mut ar = Reader::new(b);
                while let Some((f, v)) = ar.next()? {
                    value = match (f, v) {
                        (1, Value::Bytes(s)) => RawValue::Str(s),
                        (2, Value::Varint(x)) => RawValue::Val(AttrValue::Bool(x != 0)),
                        (3, Value::Varint(x)) => RawValue::Val(AttrValue::Int(x as i64)),
                        (4, Value::Fixed64(x)) => {
                            RawValue::Val(AttrValue::Double(f64::from_bits(x)))
                        }
                        _ => RawValue::Val(AttrValue::Other),
                    };
                }
            }
            _ => {}
        }
    }
    Ok((key, value))
}
