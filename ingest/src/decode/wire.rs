//! A minimal protobuf wire-format reader: walks fields without allocating, so the decoders
//! can pick the handful of fields the SLIs need and skip everything else.

use super::DecodeError;

/// One field's value, borrowed from the buffer.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Value<'a> {
    /// Wire type 0.
    Varint(u64),
    /// Wire type 1.
    Fixed64(u64),
    /// Wire type 2.
    Bytes(&'a [u8]),
    /// Wire type 5.
    Fixed32(u32),
}

/// Iterates `(field number, value)` over one message's bytes.
#[derive(Clone, Debug)]
pub struct Reader<'a> {
    buf: &'a [u8],
    pos: usize,
}

impl<'a> Reader<'a> {
    /// Reads the fields of `buf`.
    pub fn new(buf: &'a [u8]) -> Self {
        Self { buf, pos: 0 }
    }

    fn varint(&mut self) -> Result<u64, DecodeError> {
        let mut out: u64 = 0;
        for i in 0..10 {
            let Some(&b) = self.buf.get(self.pos) else {
                return Err(DecodeError::Truncated);
            };
            self.pos += 1;
            out |= u64::from(b & 0x7f) << (7 * i);
            if b < 0x80 {
                return Ok(out);
            }
        }
        Err(DecodeError::Malformed("varint longer than 10 bytes".into()))
    }

    fn take(&mut self, n: usize) -> Result<&'a [u8], DecodeError> {
        let end = self.pos.checked_add(n).ok_or(DecodeError::Truncated)?;
        let s = self.buf.get(self.pos..end).ok_or(DecodeError::Truncated)?;
        self.pos = end;
        Ok(s)
    }

    /// The next field, `None` at the end of the message.
    #[allow(clippy::should_implement_trait)]
    pub fn next(&mut self) -> Result<Option<(u32, Value<'a>)>, DecodeError> {
        if self.pos >= self.buf.len() {
            return Ok(None);
        }
        let key = self.varint()?;
        let field = u32::try_from(key >> 3)
            .map_err(|_| DecodeError::Malformed(format!("field number {} too large", key >> 3)))?;
        if field == 0 {
            return Err(DecodeError::Malformed("field number 0".into()));
        }
        let v = match key & 7 {
            0 => Value::Varint(self.varint()?),
            1 => Value::Fixed64(u64::from_le_bytes(
                self.take(8)?.try_into().expect("8 bytes"),
            )),
            2 => {
                let len = usize::try_from(self.varint()?).map_err(|_| DecodeError::Truncated)?;
                Value::Bytes(self.take(len)?)
            }
            5 => Value::Fixed32(u32::from_le_bytes(
                self.take(4)?.try_into().expect("4 bytes"),
            )),
            wt => {
                return Err(DecodeError::Malformed(format!(
                    "wire type {wt} (field {field}) is not used by OTLP"
                )));
            }
        };
        Ok(Some((field, v)))
    }
}

/// Text of a string field.
pub fn utf8<'a>(b: &'a [u8], what: &str) -> Result<&'a str, DecodeError> {
    std::str::from_utf8(b).map_err(|_| DecodeError::Malformed(format!("{what} is not valid UTF-8")))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Guarantees: every wire type decodes; truncation anywhere is an error, never a panic.
    #[test]
    fn fields_and_truncation() {
        // field 1 varint 300, field 2 bytes "hi", field 3 fixed64 7, field 4 fixed32 9
        let mut msg = vec![0x08, 0xac, 0x02, 0x12, 0x02, b'h', b'i', 0x19];
        msg.extend_from_slice(&7u64.to_le_bytes());
        msg.push(0x25);
        msg.extend_from_slice(&9u32.to_le_bytes());
        let mut r = Reader::new(&msg);
        assert_eq!(r.next().unwrap(), Some((1, Value::Varint(300))));
        assert_eq!(r.next().unwrap(), Some((2, Value::Bytes(b"hi"))));
        assert_eq!(r.next().unwrap(), Some((3, Value::Fixed64(7))));
        assert_eq!(r.next().unwrap(), Some((4, Value::Fixed32(9))));
        assert_eq!(r.next().unwrap(), None);
        for cut in 1..msg.len() {
            let mut r = Reader::new(&msg[..cut]);
            let mut result = Ok(None);
            for _ in 0..5 {
                result = r.next();
                if !matches!(result, Ok(Some(_))) {
                    break;
                }
            }
            assert!(
                result.is_err() || cut == 3 || cut == 7 || cut == 16,
                "cut at {cut}: {result:?}"
            );
        }
        assert!(Reader::new(&[0x0b]).next().is_err(), "group wire type");
    }
}
