//! The `trike.partials` record (DESIGN §6): one gateway flush of one service's partial state,
//! CBOR-encoded, keyed by service on the topic. Self-describing and versioned, so gateways and
//! processors of adjacent releases can run side by side during an upgrade.
//!
//! Layout (a CBOR map): `v` (format version, [`PARTIALS_VERSION`]), `gateway` (the instance that
//! built it), `keys` (the series keys), `partials` ([`trike_engine::PartialObs`], indexing
//! `keys`), and, when the flush saw failing requests, `exemplars` (their trace ids,
//! [`trike_engine::Exemplar`], indexing `keys`; an optional field, which readers of earlier
//! version-2 records ignore, so it needs no new version), and, when the flush completed calls
//! between services, `edges` (seconds of the calls from this service to others,
//! [`trike_engine::EdgeObs`]; optional in the same way), and, when its resources reported usage
//! metrics, `usage` ([`trike_engine::UsageObs`], cumulative sums already deltas; optional too). A service whose flush would exceed [`MAX_RECORD_BYTES`] is split across records, so
//! every record fits the broker's default 1 MiB message limit.

use super::{DecodeError, Decoded};
use serde::{Deserialize, Serialize};
use trike_engine::{Batch, EdgeObs, Exemplar, PartialObs, SeriesKey, UsageObs};

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
    #[serde(skip_serializing_if = "<[Exemplar]>::is_empty")]
    exemplars: &'a [Exemplar],
    #[serde(skip_serializing_if = "<[EdgeObs]>::is_empty")]
    edges: &'a [EdgeObs],
    #[serde(skip_serializing_if = "<[UsageObs]>::is_empty")]
    usage: &'a [UsageObs],
}

#[derive(Deserialize)]
struct RecordIn {
    v: u32,
    #[allow(dead_code)]
    gateway: String,
    keys: Vec<SeriesKey>,
    partials: Vec<PartialObs>,
    #[serde(default)]
    exemplars: Vec<Exemplar>,
    #[serde(default)]
    edges: Vec<EdgeObs>,
    #[serde(default)]
    usage: Vec<UsageObs>,
}

fn encode_one(gateway: &str, batch: &Batch) -> Vec<u8> {
    let mut out = Vec::with_capacity(256 + batch.partials.len() * 64);
    ciborium::into_writer(
        &RecordOut {
            v: PARTIALS_VERSION,
            gateway,
            keys: &batch.keys,
            partials: &batch.partials,
            exemplars: &batch.exemplars,
            edges: &batch.edges,
            usage: &batch.usage,
        },
        &mut out,
    )
    .expect("writing CBOR to a Vec cannot fail");
    out
}

/// Encodes one service's partials (a batch holding partials and exemplars) into records of at
/// most [`MAX_RECORD_BYTES`] each (one, unless the service has very many series).
pub fn encode_partials(gateway: &str, batch: &Batch) -> Vec<Vec<u8>> {
    let whole = encode_one(gateway, batch);
    let small = batch.partials.len() <= 1 && batch.edges.len() <= 1 && batch.usage.len() <= 1;
    if whole.len() <= MAX_RECORD_BYTES || small {
        return vec![whole];
    }
    // Split the rows in two halves, each with only the keys it uses; the exemplars (a few)
    // go with the first, the edges' seconds and the usage points are split too.
    let mid = batch.partials.len() / 2;
    let edges_mid = batch.edges.len() / 2;
    let usage_mid = batch.usage.len() / 2;
    let mut out = Vec::new();
    for (i, rows) in [&batch.partials[..mid], &batch.partials[mid..]]
        .into_iter()
        .enumerate()
    {
        let mut half = Batch::default();
        let mut map = std::collections::HashMap::new();
        let mut key = |k: u32, half: &mut Batch| {
            *map.entry(k).or_insert_with(|| {
                half.keys.push(batch.keys[k as usize].clone());
                (half.keys.len() - 1) as u32
            })
        };
        for p in rows {
            let mut p = p.clone();
            p.key = key(p.key, &mut half);
            half.partials.push(p);
        }
        if i == 0 {
            for x in &batch.exemplars {
                let k = key(x.key, &mut half);
                half.exemplars.push(Exemplar { key: k, ..*x });
            }
            half.edges = batch.edges[..edges_mid].to_vec();
            half.usage = batch.usage[..usage_mid].to_vec();
        } else {
            half.edges = batch.edges[edges_mid..].to_vec();
            half.usage = batch.usage[usage_mid..].to_vec();
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
    let indices = r.partials.iter().map(|p| p.key);
    if let Some(k) = indices
        .chain(r.exemplars.iter().map(|x| x.key))
        .find(|&k| k as usize >= r.keys.len())
    {
        return Err(DecodeError::Malformed(format!(
            "trike.partials record: key index {k} of {} keys",
            r.keys.len()
        )));
    }
    let received = r.partials.len() as u64;
    Ok(Decoded {
        batch: Batch {
            keys: r.keys,
            partials: r.partials,
            exemplars: r.exemplars,
            edges: r.edges,
            usage: r.usage,
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
    use trike_engine::{EngineConfig, Exemplar, RequestObs};

    fn batch(series: usize) -> Batch {
        let mut b = Batch::default();
        for i in 0..series {
            let key = b.keys.len() as u32;
            b.keys
                .push(SeriesKey::new("big", &format!("/route/{i}"), "1"));
            for j in 0..50u64 {
                let time = 1_800_000_000_000_000_000 + j;
                let latency_ms = (i as f64 + 1.0) * (j as f64 + 1.0);
                b.requests.push(RequestObs {
                    key,
                    time,
                    latency_ms,
                    bad: j % 7 == 0,
                });
                if j % 7 == 0 {
                    let mut trace_id = [0; 16];
                    trace_id[..8].copy_from_slice(&(i as u64).to_be_bytes());
                    b.exemplars.push(Exemplar {
                        key,
                        trace_id,
                        time,
                        latency_ms,
                    });
                }
            }
        }
        b
    }

    /// Guarantees: a record decodes to exactly the partials and exemplars encoded; a service too
    /// big for one record is split into records under the 1 MiB limit that together hold every
    /// row and every exemplar, each exemplar still naming its own series.
    #[test]
    fn records_round_trip_and_split_under_the_limit() {
        for series in [3, 4000] {
            let mut g = PartialBuilder::new(Arc::new(EngineConfig::default()));
            g.add(&batch(series), 1_800_000_000_000_000_100);
            let sp = g.take().pop().unwrap();
            let records = encode_partials("gw-1", &sp.batch);
            assert_eq!(records.len() > 1, series > 3, "{series}: {}", records.len());
            assert_eq!(sp.batch.exemplars.len(), 20);
            let mut rows = 0;
            let mut requests = 0;
            let mut exemplars = Vec::new();
            for r in &records {
                assert!(r.len() <= MAX_RECORD_BYTES, "{}", r.len());
                let d = partials(r).unwrap();
                rows += d.batch.partials.len();
                requests += d.batch.partials.iter().map(|p| p.requests).sum::<u64>();
                for x in &d.batch.exemplars {
                    let route = &d.batch.keys[x.key as usize].operation;
                    let series = u64::from_be_bytes(x.trace_id[..8].try_into().unwrap());
                    assert_eq!(**route, format!("/route/{series}"));
                    exemplars.push(*x);
                }
                if records.len() == 1 {
                    assert_eq!(d.batch, sp.batch);
                }
            }
            assert_eq!(rows, sp.batch.partials.len());
            assert_eq!(exemplars.len(), sp.batch.exemplars.len());
            assert_eq!(requests, series as u64 * 50);
        }
    }

    /// Scenario: a flush with calls from `big` to two peers and 40 CPU points of it (4 000
    /// series, so the record is split). Guarantees: the edges' seconds and the usage points
    /// survive encoding and splitting: every call, error and CPU second is in exactly one
    /// record, each edge still from `big`.
    #[test]
    fn edges_ride_along_and_split() {
        use trike_engine::{CallObs, CallSide};
        let t = 1_800_000_000_000_000_100;
        let mut g = PartialBuilder::new(Arc::new(EngineConfig::default()));
        let mut b = batch(4000);
        for n in 0..300u64 {
            let mut trace_id = [0; 16];
            trace_id[..8].copy_from_slice(&n.to_be_bytes());
            b.calls.push(CallObs {
                service: "big".into(),
                side: CallSide::Client {
                    peer: Some(["db", "cache"][(n % 2) as usize].into()),
                },
                trace_id,
                span_id: [1; 8],
                time: t - n * 1_000_000_000,
                latency_ms: n as f64,
                bad: n % 3 == 0,
            });
        }
        for n in 0..40u64 {
            b.usage.push(trike_engine::UsageObs {
                service: "big".into(),
                metric: "process.cpu.time".into(),
                stream: n,
                time: t,
                start_time: t - 10_000_000_000,
                temporality: trike_engine::Temporality::Delta,
                kind: trike_engine::UsageKind::Rate,
                value: 0.5,
            });
        }
        g.add(&b, t);
        g.advance(t + 11_000_000_000);
        let sp = g.take().pop().unwrap();
        assert_eq!(sp.batch.edges.len(), 300, "one second each");
        assert_eq!(sp.batch.usage.len(), 40);
        let records = encode_partials("gw-1", &sp.batch);
        assert!(records.len() > 1);
        let (mut calls, mut errors, mut cpu) = (0, 0, 0.0);
        for r in &records {
            let d = partials(r).unwrap();
            for e in &d.batch.edges {
                assert_eq!(&*e.client, "big");
                calls += e.requests;
                errors += e.errors;
            }
            cpu += d.batch.usage.iter().map(|u| u.value).sum::<f64>();
        }
        assert_eq!((calls, errors), (300, 100));
        assert_eq!(cpu, 20.0);
    }

    /// Guarantees: garbage, another version and a key index out of range (of a partial or of
    /// an exemplar) are refused, naming why; a version-2 record without exemplars (as written
    /// before they were carried) is read.
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
        let mut sp = {
            g.add(&batch(1), 1_800_000_000_000_000_100);
            g.take().pop().unwrap()
        };
        sp.batch.exemplars[0].key = 9;
        let e = partials(&encode_partials("gw", &sp.batch)[0]).unwrap_err();
        assert!(e.to_string().contains("key index 9 of 1 keys"), "{e}");
        sp.batch.exemplars.clear();
        let mut earlier = Vec::new();
        ciborium::into_writer(
            &ciborium::Value::Map(vec![
                ("v".into(), 2.into()),
                ("gateway".into(), "gw".into()),
                (
                    "keys".into(),
                    ciborium::Value::serialized(&sp.batch.keys).unwrap(),
                ),
                (
                    "partials".into(),
                    ciborium::Value::serialized(&sp.batch.partials).unwrap(),
                ),
            ]),
            &mut earlier,
        )
        .unwrap();
        assert_eq!(partials(&earlier).unwrap().batch, sp.batch);
        let mut other = Vec::new();
        ciborium::into_writer(
            &RecordOut {
                v: 99,
                gateway: "gw",
                keys: &[],
                partials: &[],
                exemplars: &[],
                edges: &[],
                usage: &[],
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
