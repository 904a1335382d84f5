//! The `trike.partials` record (DESIGN §6): one gateway flush of one service's partial state,
//! CBOR-encoded, keyed by service on the topic. Self-describing and versioned, so gateways and
//! processors of adjacent releases can run side by side during an upgrade.
//!
//! Layout (a CBOR map): `v` (format version, [`PARTIALS_VERSION`]), `gateway` (the instance that
//! built it), `keys` (the series keys), `partials` ([`trike_engine::PartialObs`], indexing
//! `keys`). A service whose flush would exceed [`MAX_RECORD_BYTES`] is split across records, so
//! every record fits the broker's default 1 MiB message limit.

use super::{DecodeError, Decoded};
use serde::{Deserialize, Serialize};
use trike_engine::{Batch, PartialObs, SeriesKey};

/// Version of the record layout. 2: t-digests are byte strings (see `trike_engine::sketch`),
/// which a version-1 reader would not decode; version-1 records are read too.
pub const PARTIALS_VERSION: u32 = 2;

/// Largest record written, in bytes (under the broker's default `message.max.bytes`, 1 MiB,
/// with room for the record's headers and batch overhead).
pub const MAX_RECORD_BYTES: usize = 900 * 1024;

#[derive(Serialize)]
struct RecordOut<'a> {
    v: u32,
    gateway: &'a str,
    keys: &'a [SeriesKey],
    partials: &'a [PartialObs],
}

#[derive(Deserialize)]
struct RecordIn {
    v: u32,
    #[allow(dead_code)]
    gateway: String,
    keys: Vec<SeriesKey>,
    partials: Vec<PartialObs>,
}

fn encode_one(gateway: &str, keys: &[SeriesKey], partials: &[PartialObs]) -> Vec<u8> {
    let mut out = Vec::with_capacity(256 + partials.len() * 64);
    ciborium::into_writer(
        &RecordOut {
            v: PARTIALS_VERSION,
            gateway,
            keys,
            partials,
        },
        &mut out,
    )
    .expect("writing CBOR to a Vec cannot fail");
    out
}

/// Encodes one service's partials (a batch holding only partials) into records of at most
/// [`MAX_RECORD_BYTES`] each (one, unless the service has very many series).
pub fn encode_partials(gateway: &str, batch: &Batch) -> Vec<Vec<u8>> {
    let whole = encode_one(gateway, &batch.keys, &batch.partials);
    if whole.len() <= MAX_RECORD_BYTES || batch.partials.len() <= 1 {
        return vec![whole];
    }
    // Split the rows in two halves, each with only the keys it uses.
    let mid = batch.partials.len() / 2;
    let mut out = Vec::new();
    for rows in [&batch.partials[..mid], &batch.partials[mid..]] {
        let mut half = Batch::default();
        let mut map = std::collections::HashMap::new();
        for p in rows {
            let k = *map.entry(p.key).or_insert_with(|| {
                half.keys.push(batch.keys[p.key as usize].clone());
                (half.keys.len() - 1) as u32
            });
            let mut p = p.clone();
            p.key = k;
            half.partials.push(p);
        }
        out.extend(encode_partials(gateway, &half));
    }
    out
}

/// Decodes a `trike.partials` record into a batch of partials. Every key index is checked, so a
/// corrupt record is refused whole rather than applied in part.
pub fn partials(buf: &[u8]) -> Result<Decoded, DecodeError> {
    let r: RecordIn = ciborium::from_reader(buf)
        .map_err(|e| DecodeError::Malformed(format!("not a trike.partials record: {e}")))?;
    if !(1..=PARTIALS_VERSION).contains(&r.v) {
        return Err(DecodeError::Malformed(format!(
            "trike.partials record version {} (this processor reads versions 1 to {PARTIALS_VERSION})",
            r.v
        )));
    }
    if let Some(p) = r.partials.iter().find(|p| p.key as usize >= r.keys.len()) {
        return Err(DecodeError::Malformed(format!(
            "trike.partials record: key index {} of {} keys",
            p.key,
            r.keys.len()
        )));
    }
    let received = r.partials.len() as u64;
    Ok(Decoded {
        batch: Batch {
            keys: r.keys,
            partials: r.partials,
            ..Batch::default()
        },
        received,
        ..Decoded::default()
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;
    use trike_engine::partials::PartialBuilder;
    use trike_engine::{EngineConfig, RequestObs};

    fn batch(series: usize) -> Batch {
        let mut b = Batch::default();
        for i in 0..series {
            let key = b.keys.len() as u32;
            b.keys
                .push(SeriesKey::new("big", &format!("/route/{i}"), "1"));
            for j in 0..50u64 {
                b.requests.push(RequestObs {
                    key,
                    time: 1_800_000_000_000_000_000 + j,
                    latency_ms: (i as f64 + 1.0) * (j as f64 + 1.0),
                    bad: j % 7 == 0,
                });
            }
        }
        b
    }

    /// Guarantees: a record decodes to exactly the partials encoded; a service too big for one
    /// record is split into records under the 1 MiB limit that together hold every row.
    #[test]
    fn records_round_trip_and_split_under_the_limit() {
        for series in [3, 4000] {
            let mut g = PartialBuilder::new(Arc::new(EngineConfig::default()));
            g.add(&batch(series), 1_800_000_000_000_000_100);
            let sp = g.take().pop().unwrap();
            let records = encode_partials("gw-1", &sp.batch);
            assert_eq!(records.len() > 1, series > 3, "{series}: {}", records.len());
            let mut rows = 0;
            let mut requests = 0;
            for r in &records {
                assert!(r.len() <= MAX_RECORD_BYTES, "{}", r.len());
                let d = partials(r).unwrap();
                rows += d.batch.partials.len();
                requests += d.batch.partials.iter().map(|p| p.requests).sum::<u64>();
                if records.len() == 1 {
                    assert_eq!(d.batch, sp.batch);
                }
            }
            assert_eq!(rows, sp.batch.partials.len());
            assert_eq!(requests, series as u64 * 50);
        }
    }

    /// Guarantees: garbage, another version and a key index out of range are refused, naming why.
    #[test]
    fn bad_records_are_refused() {
        assert!(
            partials(b"\x01\x02garbage")
                .unwrap_err()
                .to_string()
                .contains("not a trike.partials record")
        );
        let mut g = PartialBuilder::new(Arc::new(EngineConfig::default()));
        g.add(&batch(1), 1_800_000_000_000_000_100);
        let mut sp = g.take().pop().unwrap();
        sp.batch.keys.clear();
        let e = partials(&encode_partials("gw", &sp.batch)[0]).unwrap_err();
        assert!(e.to_string().contains("key index 0 of 0 keys"), "{e}");
        let mut other = Vec::new();
        ciborium::into_writer(
            &RecordOut {
                v: 99,
                gateway: "gw",
                keys: &[],
                partials: &[],
            },
            &mut other,
        )
        .unwrap();
        assert!(
            partials(&other)
                .unwrap_err()
                .to_string()
                .contains("version 99")
        );
    }
}
