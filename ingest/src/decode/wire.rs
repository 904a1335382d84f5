//! A minimal protobuf wire-format reader: walks fields without allocating, so the decoders
//! can pick the handful of fields the SLIs need and skip everything else.

use super::DecodeError;

/// Why the wire walker stopped: small and `Copy`, so the hot path returns it in registers.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum WireError {
    /// The message ended inside a field.
    Truncated,
    /// A varint longer than 10 bytes, or whose tenth byte carries more than the 64th bit.
    LongVarint,
    /// Field number 0, or 2^29 and beyond.
    BadField(u64),
    /// A wire type OTLP never uses (groups, or 6/7).
    BadWireType(u8, u64),
}

impl From<WireError> for DecodeError {
    fn from(e: WireError) -> Self {
        match e {
            WireError::Truncated => DecodeError::Truncated,
            WireError::LongVarint => DecodeError::Malformed("varint longer than 64 bits".into()),
            WireError::BadField(f) => DecodeError::Malformed(format!("invalid field number {f}")),
            WireError::BadWireType(wt, f) => {
                DecodeError::Malformed(format!("wire type {wt} (field {f}) is not used by OTLP"))
            }
        }
    }
}

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

    /// A varint value (wire type 0).
    #[inline(always)]
    pub fn varint(&mut self) -> Result<u64, WireError> {
        // Fast paths: most keys and lengths fit in one byte, and the lengths of a span and of
        // the messages holding it (under 16 KiB) in two.
        match self.buf.get(self.pos..) {
            Some([b, ..]) if *b < 0x80 => {
                self.pos += 1;
                Ok(u64::from(*b))
            }
            Some([b0, b1, ..]) if *b1 < 0x80 => {
                self.pos += 2;
                Ok(u64::from(b0 & 0x7f) | (u64::from(*b1) << 7))
            }
            _ => self.varint_slow(),
        }
    }

    #[cold]
    fn varint_slow(&mut self) -> Result<u64, WireError> {
        let mut out: u64 = 0;
        for i in 0..10 {
            let Some(&b) = self.buf.get(self.pos) else {
                return Err(WireError::Truncated);
            };
            self.pos += 1;
            if i == 9 && b > 1 {
                // (Bits past the 64th: prost rejects such a varint too.)
                return Err(WireError::LongVarint);
            }
            out |= u64::from(b & 0x7f) << (7 * i);
            if b < 0x80 {
                return Ok(out);
            }
        }
        Err(WireError::LongVarint)
    }

    #[inline(always)]
    fn take(&mut self, n: usize) -> Result<&'a [u8], WireError> {
        let end = self.pos.checked_add(n).ok_or(WireError::Truncated)?;
        let s = self.buf.get(self.pos..end).ok_or(WireError::Truncated)?;
        self.pos = end;
        Ok(s)
    }

    /// The next field, `None` at the end of the message.
    #[allow(clippy::should_implement_trait)]
    #[inline(always)]
    pub fn next(&mut self) -> Result<Option<(u32, Value<'a>)>, WireError> {
        let Some(key) = self.key()? else {
            return Ok(None);
        };
        self.value(key).map(Some)
    }

    /// The next field's key (field number << 3 | wire type), `None` at the end of the
    /// message. Its value is read next: by [`Reader::bytes`], [`Reader::varint`],
    /// [`Reader::fixed64`] when the key says that is its type, or else by [`Reader::value`].
    /// (A hot loop matches whole keys, like `0x0a` for field 1's bytes, and reads just that.)
    #[inline(always)]
    pub fn key(&mut self) -> Result<Option<u64>, WireError> {
        if self.pos >= self.buf.len() {
            return Ok(None);
        }
        self.varint().map(Some)
    }

    /// The value of a field whose key was just read: checked as [`Reader::next`] checks it.
    #[inline(always)]
    pub fn value(&mut self, key: u64) -> Result<(u32, Value<'a>), WireError> {
        // (Field numbers are 1 to 2^29 - 1, as prost reads them.)
        let field = (key >> 3) as u32;
        if key >> 3 >= 1 << 29 || field == 0 {
            return Err(WireError::BadField(key >> 3));
        }
        let v = match key & 7 {
            0 => Value::Varint(self.varint()?),
            1 => Value::Fixed64(self.fixed64()?),
            2 => Value::Bytes(self.bytes()?),
            5 => Value::Fixed32(u32::from_le_bytes(
                self.take(4)?.try_into().expect("4 bytes"),
            )),
            wt => return Err(WireError::BadWireType(wt as u8, u64::from(field))),
        };
        Ok((field, v))
    }

    /// A length-delimited value (wire type 2).
    #[inline(always)]
    pub fn bytes(&mut self) -> Result<&'a [u8], WireError> {
        let len = usize::try_from(self.varint()?).map_err(|_| WireError::Truncated)?;
        self.take(len)
    }

    /// A fixed 64-bit value (wire type 1).
    #[inline(always)]
    pub fn fixed64(&mut self) -> Result<u64, WireError> {
        Ok(u64::from_le_bytes(
            self.take(8)?.try_into().expect("8 bytes"),
        ))
    }
}

/// Text of a string field.
pub fn utf8<'a>(b: &'a [u8], what: &str) -> Result<&'a str, DecodeError> {
    std::str::from_utf8(b).map_err(|_| DecodeError::Malformed(format!("{what} is not valid UTF-8")))
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    proptest! {
        /// Guarantees: a varint of any length, 1 to 10 bytes (one and two bytes take fast
        /// paths), reads as the value prost wrote, and the field after it is read from where
        /// it ends; cut anywhere inside, it is an error, never a value.
        #[test]
        fn varints_of_every_length_read_as_written(value: u64, bits in 0u32..=64) {
            // Top bit set, then shifted: every bit length as often as any other (0 included).
            let value = (value | 1 << 63).checked_shr(bits).unwrap_or(0);
            let mut msg = vec![0x08];
            prost::encoding::encode_varint(value, &mut msg);
            msg.extend([0x10, 0x01]);
            let mut r = Reader::new(&msg);
            prop_assert_eq!(r.next().unwrap(), Some((1, Value::Varint(value))));
            prop_assert_eq!(r.next().unwrap(), Some((2, Value::Varint(1))));
            prop_assert_eq!(r.next().unwrap(), None);
            let varint_end = msg.len() - 2;
            for cut in 1..varint_end {
                prop_assert_eq!(Reader::new(&msg[..cut]).next(), Err(WireError::Truncated));
            }
        }
    }

    /// Guarantees: the fast paths read what the byte-by-byte path reads, for every buffer of
    /// one and two bytes (non-canonical ones like `[0x80, 0x00]` included), alone and followed
    /// by a byte.
    #[test]
    fn fast_varints_read_as_the_slow_path_reads() {
        for b0 in 0..=255u8 {
            for b1 in (0..=255u8).map(Some).chain([None]) {
                for tail in [None, Some(0x00), Some(0x80)] {
                    let buf: Vec<u8> = [Some(b0), b1, tail].into_iter().flatten().collect();
                    let (mut fast, mut slow) = (Reader::new(&buf), Reader::new(&buf));
                    assert_eq!(fast.varint(), slow.varint_slow(), "{buf:?}");
                    assert_eq!(fast.pos, slow.pos, "{buf:?}");
                }
            }
        }
    }

    /// Guarantees: a varint is read as prost reads it, or rejected where prost rejects it: ten
    /// bytes whose last carries more than the 64th bit, and eleven bytes or more.
    #[test]
    fn varints_past_64_bits_are_rejected_as_prost_rejects_them() {
        let mut ones = vec![0xff; 9];
        for last in [0x00, 0x01, 0x02, 0x7f, 0x80] {
            ones.truncate(9);
            ones.push(last);
            ones.push(0x00);
            let ours = Reader::new(&ones).varint();
            let prosts = prost::encoding::decode_varint(&mut &ones[..]);
            match prosts {
                Ok(v) => assert_eq!(ours, Ok(v), "{ones:?}"),
                Err(_) => assert_eq!(ours, Err(WireError::LongVarint), "{ones:?}"),
            }
        }
        assert_eq!(Reader::new(&[0xff; 9]).varint(), Err(WireError::Truncated));
    }

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
        // The largest field number, and one past it.
        for (field, ok) in [((1u64 << 29) - 1, true), (1 << 29, false), (1 << 32, false)] {
            let mut buf = vec![];
            prost::encoding::encode_varint(field << 3, &mut buf);
            buf.push(0x01);
            let read = Reader::new(&buf).next();
            match ok {
                true => assert_eq!(read, Ok(Some((field as u32, Value::Varint(1))))),
                false => assert_eq!(read, Err(WireError::BadField(field))),
            }
        }
    }
}
