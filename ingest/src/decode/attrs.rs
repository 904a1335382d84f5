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

/// The key of a `KeyValue` message written key first with a key shorter than 128 bytes (as
/// every SDK writes it), read without decoding the rest; None otherwise (decode it whole).
#[inline]
pub fn leading_key(buf: &[u8]) -> Option<&[u8]> {
    match buf {
        [0x0a, len, rest @ ..] if *len < 0x80 && rest.len() >= usize::from(*len) => {
            Some(&rest[..usize::from(*len)])
        }
        _ => None,
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

#[cfg(test)]
mod tests {
    use super::*;

    /// Guarantees: the key of a key-first `KeyValue` is read without the rest; any other
    /// layout (value first, a long key, a cut-off message) is left to the full decoder, which
    /// reads it the same.
    #[test]
    fn the_leading_key_or_the_full_decoder() {
        // key "k" = "v", key first, as SDKs write it.
        let key_first = [0x0a, 1, b'k', 0x12, 3, 0x0a, 1, b'v'];
        assert_eq!(leading_key(&key_first), Some(&b"k"[..]));
        // The same, value first: not read here; the full decoder reads it.
        let value_first = [0x12, 3, 0x0a, 1, b'v', 0x0a, 1, b'k'];
        assert_eq!(leading_key(&value_first), None);
        let (k, v) = key_value_raw(&value_first).unwrap();
        assert_eq!((k, v), (&b"k"[..], RawValue::Str(b"v")));
        assert_eq!(key_value_raw(&key_first).unwrap(), (k, v));
        // Cut off inside the key, and a key of 128 bytes (two-byte length).
        assert_eq!(leading_key(&[0x0a, 5, b'k']), None);
        let mut long = vec![0x0a, 0x80, 0x01];
        long.extend([b'x'; 128]);
        assert_eq!(leading_key(&long), None);
        assert_eq!(key_value_raw(&long).unwrap().0.len(), 128);
    }
}
