//! How a [`TDigest`] is serialised. Binary formats (CBOR checkpoints, changelog records,
//! gateway partials) hold one byte string: 37 bytes of header and 8 per centroid and per
//! buffered sample, as they are (nothing is merged to write it, and it reads back equal). As a
//! CBOR map of named fields (how they were written before) a centroid took about 21 bytes, and
//! digests were most of a busy series' change set. Human-readable formats (JSON) keep the
//! named fields. Reading accepts both forms in binary formats, so older checkpoints and
//! records still restore.
//!
//! The bytes, little-endian: format (2), compression (f32), count (u64), min and max (f64),
//! the centroid count (u32) and each centroid's mean (f32) and weight (u32), then the buffer's
//! length (u32) and its entries alike. (Format 1 is [`TDigest::to_bytes`], the archive's.)

use super::{Centroid, TDigest};
use serde::de::{self, MapAccess, Visitor};
use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// The named fields, as written (borrowed).
#[derive(Serialize)]
#[serde(rename = "TDigest")]
struct FieldsOut<'a> {
    compression: f32,
    centroids: &'a [Centroid],
    #[serde(skip_serializing_if = "<[Centroid]>::is_empty")]
    buffer: &'a [Centroid],
    count: u64,
    min: f64,
    max: f64,
}

/// The named fields, as read.
#[derive(Deserialize)]
#[serde(rename = "TDigest")]
struct FieldsIn {
    compression: f32,
    centroids: Vec<Centroid>,
    #[serde(default)]
    buffer: Vec<Centroid>,
    count: u64,
    min: f64,
    max: f64,
}

impl From<FieldsIn> for TDigest {
    fn from(f: FieldsIn) -> Self {
        Self {
            compression: f.compression,
            centroids: f.centroids,
            buffer: f.buffer,
            count: f.count,
            min: f.min,
            max: f.max,
        }
    }
}

impl Serialize for TDigest {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        if s.is_human_readable() {
            FieldsOut {
                compression: self.compression,
                centroids: &self.centroids,
                buffer: &self.buffer,
                count: self.count,
                min: self.min,
                max: self.max,
            }
            .serialize(s)
        } else {
            s.serialize_bytes(&to_wire(self))
        }
    }
}

impl<'de> Deserialize<'de> for TDigest {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        if d.is_human_readable() {
            FieldsIn::deserialize(d).map(Into::into)
        } else {
            d.deserialize_any(Either)
        }
    }
}

/// Bytes ([`TDigest::to_bytes`]) or the named fields.
struct Either;

impl<'de> Visitor<'de> for Either {
    type Value = TDigest;

    fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
        f.write_str("a t-digest (its bytes, or a map of its fields)")
    }

    fn visit_bytes<E: de::Error>(self, b: &[u8]) -> Result<TDigest, E> {
        from_wire(b).ok_or_else(|| E::custom("bytes that are not a t-digest"))
    }

    fn visit_map<A: MapAccess<'de>>(self, map: A) -> Result<TDigest, A::Error> {
        FieldsIn::deserialize(de::value::MapAccessDeserializer::new(map)).map(Into::into)
    }
}

const FORMAT: u8 = 2;
const HEAD: usize = 1 + 4 + 8 + 8 + 8 + 4;

fn to_wire(d: &TDigest) -> Vec<u8> {
    let mut out = Vec::with_capacity(HEAD + 4 + 8 * (d.centroids.len() + d.buffer.len()));
    out.push(FORMAT);
    out.extend_from_slice(&d.compression.to_le_bytes());
    out.extend_from_slice(&d.count.to_le_bytes());
    out.extend_from_slice(&d.min.to_le_bytes());
    out.extend_from_slice(&d.max.to_le_bytes());
    for list in [&d.centroids, &d.buffer] {
        out.extend_from_slice(&(list.len() as u32).to_le_bytes());
        for c in list {
            out.extend_from_slice(&c.mean.to_le_bytes());
            out.extend_from_slice(&c.weight.to_le_bytes());
        }
    }
    out
}

/// Reads [`to_wire`]'s bytes; `None` when they are not such a digest (wrong format or
/// lengths, unsorted centroids, a non-finite mean).
fn from_wire(b: &[u8]) -> Option<TDigest> {
    let mut r = Reader(b);
    if r.take(1)?[0] != FORMAT {
        return None;
    }
    let compression = f32::from_le_bytes(r.array()?);
    let count = u64::from_le_bytes(r.array()?);
    let min = f64::from_le_bytes(r.array()?);
    let max = f64::from_le_bytes(r.array()?);
    let mut lists = [Vec::new(), Vec::new()];
    for list in &mut lists {
        let n = u32::from_le_bytes(r.array()?) as usize;
        let bytes = r.take(n.checked_mul(8)?)?;
        *list = bytes
            .chunks_exact(8)
            .map(|c| Centroid {
                mean: f32::from_le_bytes([c[0], c[1], c[2], c[3]]),
                weight: u32::from_le_bytes([c[4], c[5], c[6], c[7]]),
            })
            .collect();
    }
    let [centroids, buffer] = lists;
    let sorted = centroids.windows(2).all(|w| w[0].mean <= w[1].mean);
    let finite = centroids.iter().chain(&buffer).all(|c| c.mean.is_finite());
    if !r.0.is_empty() || !sorted || !finite || !compression.is_finite() {
        return None;
    }
    let mut d = TDigest::new(compression);
    (d.centroids, d.buffer, d.count, d.min, d.max) = (centroids, buffer, count, min, max);
    Some(d)
}

/// Reads a byte string front to back.
struct Reader<'a>(&'a [u8]);

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize) -> Option<&'a [u8]> {
        let (head, rest) = (self.0.get(..n)?, self.0.get(n..)?);
        self.0 = rest;
        Some(head)
    }

    fn array<const N: usize>(&mut self) -> Option<[u8; N]> {
        self.take(N)?.try_into().ok()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn digest() -> TDigest {
        let mut d = TDigest::new(200.0);
        for i in 0..5000u32 {
            d.add(f64::from(i % 977) * 1.5 + 0.25);
        }
        d
    }

    fn cbor<T: Serialize>(v: &T) -> Vec<u8> {
        let mut out = Vec::new();
        ciborium::into_writer(v, &mut out).unwrap();
        out
    }

    /// Guarantees: in CBOR a digest is its bytes (37 + 8 per centroid and buffered sample,
    /// a few bytes of framing) and reads back equal, buffer included; one written as named
    /// fields (the old form) still reads; in JSON it keeps its named fields and round-trips
    /// exactly; bytes that are not a digest are refused with the reason.
    #[test]
    fn binary_formats_hold_the_bytes_and_read_the_old_fields() {
        let d = digest();
        assert!(!d.buffer.is_empty() && !d.centroids.is_empty());
        let bytes = cbor(&d);
        let n = d.centroids.len() + d.buffer.len();
        assert!(
            bytes.len() <= 41 + 8 * n + 5,
            "{} bytes, {n} entries",
            bytes.len()
        );
        let back: TDigest = ciborium::from_reader(&bytes[..]).unwrap();
        assert_eq!(back, d);
        let empty = TDigest::new(50.0);
        let back: TDigest = ciborium::from_reader(&cbor(&empty)[..]).unwrap();
        assert_eq!(back, empty);

        let old = cbor(&FieldsOut {
            compression: d.compression,
            centroids: &d.centroids,
            buffer: &d.buffer,
            count: d.count,
            min: d.min,
            max: d.max,
        });
        assert!(
            old.len() > 2 * bytes.len(),
            "{} vs {}",
            old.len(),
            bytes.len()
        );
        let back: TDigest = ciborium::from_reader(&old[..]).unwrap();
        assert_eq!(back, d);

        let json = serde_json::to_string(&d).unwrap();
        assert!(json.contains("\"centroids\""));
        assert_eq!(serde_json::from_str::<TDigest>(&json).unwrap(), d);

        let junk = cbor(&serde_bytes_like(b"not a digest at all, no no no"));
        let err = ciborium::from_reader::<TDigest, _>(&junk[..]).unwrap_err();
        assert!(err.to_string().contains("not a t-digest"), "{err}");
    }

    /// A CBOR byte string of `b`.
    fn serde_bytes_like(b: &'static [u8]) -> impl Serialize {
        struct B(&'static [u8]);
        impl Serialize for B {
            fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
                s.serialize_bytes(self.0)
            }
        }
        B(b)
    }
}
