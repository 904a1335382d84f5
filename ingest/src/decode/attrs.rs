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
#[inline]
pub fn key_value_raw(buf: &[u8]) -> Result<(&[u8], RawValue<'_>), DecodeError> {
    match key_value_plain(buf) {
        Some(kv) => Ok(kv),
        None => key_value_walk(buf),
    }
}

/// A `KeyValue` laid out as SDKs write a short one: the key, then an `AnyValue` holding only
/// a string or an integer, every length one byte. Read by matching that layout; None for any
/// other (then [`key_value_walk`] reads it, to the same result where both do). Inlined: as a
/// call, its result went back through memory, and reading it stalled the span's decoding.
#[inline(always)]
fn key_value_plain(buf: &[u8]) -> Option<(&[u8], RawValue<'_>)> {
    let key = leading_key(buf)?;
    let [0x12, len, any @ ..] = &buf[2 + key.len()..] else {
        return None;
    };
    if *len >= 0x80 || usize::from(*len) != any.len() {
        return None;
    }
    match any {
        [0x0a, n, s @ ..] if *n < 0x80 && usize::from(*n) == s.len() => {
            Some((key, RawValue::Str(s)))
        }
        // An integer: a varint that ends with the value (as `Reader` reads it: a tenth byte
        // carries only the 64th bit).
        [0x18, v @ ..]
            if (1..=10).contains(&v.len())
                && v[..v.len() - 1].iter().all(|b| b & 0x80 != 0)
                && v[v.len() - 1] & 0x80 == 0
                && v.get(9).is_none_or(|&last| last <= 1) =>
        {
            let x = v
                .iter()
                .enumerate()
                .fold(0u64, |x, (i, b)| x | (u64::from(b & 0x7f) << (7 * i)));
            Some((key, RawValue::Val(AttrValue::Int(x as i64))))
        }
        _ => None,
    }
}

/// Decodes one `KeyValue` message of any layout, field by field (the last of each wins).
fn key_value_walk(buf: &[u8]) -> Result<(&[u8], RawValue<'_>), DecodeError> {
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
    use proptest::prelude::*;
    use prost::Message;
    use trike_proto::common::v1::{AnyValue, KeyValue, any_value::Value as Av};

    fn any_value() -> impl Strategy<Value = Option<Av>> {
        prop_oneof![
            Just(None),
            ".{0,150}".prop_map(|s| Some(Av::StringValue(s))),
            any::<i64>().prop_map(|i| Some(Av::IntValue(i))),
            any::<bool>().prop_map(|b| Some(Av::BoolValue(b))),
            (-1e12f64..1e12).prop_map(|d| Some(Av::DoubleValue(d))),
            prop::collection::vec(any::<u8>(), 0..20).prop_map(|b| Some(Av::BytesValue(b))),
        ]
    }

    proptest! {
        /// Guarantees: every `KeyValue` an SDK may write (any key, any value, short or long,
        /// and the same with bytes appended or cut off) reads the same through the layout
        /// match as through the field walk.
        #[test]
        fn plain_layouts_read_as_the_walk_reads_them(
            key in ".{0,150}",
            value in prop::option::of(any_value()),
            tail in prop::collection::vec(any::<u8>(), 0..4),
            cut in 0usize..4,
        ) {
            let kv = KeyValue {
                key,
                value: value.map(|v| AnyValue { value: v }),
                ..Default::default()
            };
            let mut buf = kv.encode_to_vec();
            for b in [buf.clone(), [buf.clone(), tail].concat(), {
                buf.truncate(buf.len().saturating_sub(cut));
                buf
            }] {
                let walked = key_value_walk(&b).map_err(|e| e.to_string());
                let read = key_value_raw(&b).map_err(|e| e.to_string());
                prop_assert_eq!(&read, &walked);
                if let Some(plain) = key_value_plain(&b) {
                    prop_assert_eq!(Ok(plain), walked);
                }
            }
        }
    }

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
        // A value holding two fields (no SDK writes it): the last wins, as in the walk.
        let two = [0x0a, 1, b'k', 0x12, 5, 0x0a, 1, b'v', 0x18, 7];
        let int = (&b"k"[..], RawValue::Val(AttrValue::Int(7)));
        assert_eq!(key_value_raw(&two).unwrap(), int);
        // An integer of ten bytes: the tenth may carry the 64th bit, no more (both readers).
        for (last, ok) in [(0x01, true), (0x02, false), (0x7f, false)] {
            let mut kv = vec![0x0a, 1, b'k', 0x12, 11, 0x18];
            kv.extend([0xff; 9]);
            kv.push(last);
            assert_eq!(key_value_plain(&kv).is_some(), ok, "{last:#x}");
            assert_eq!(key_value_walk(&kv).is_ok(), ok, "{last:#x}");
        }
        let two = [0x0a, 1, b'k', 0x12, 5, 0x18, 7, 0x0a, 1, b'v'];
        assert_eq!(
            key_value_raw(&two).unwrap(),
            (&b"k"[..], RawValue::Str(b"v"))
        );
    }
}
