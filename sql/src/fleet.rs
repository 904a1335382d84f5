//! The live tables of a fleet: each processor holds the state of its own partitions' services,
//! so SQL asked of any member runs over the union of every live processor's live tables. A
//! processor sends its `slis` and `slo_status` as Arrow IPC streams ([`encode`]); the member
//! asked puts them together ([`union`]) with the fleet's decisions (gathered once per id).

use crate::query::LiveTables;
use crate::{Error, Result};
use datafusion::arrow::array::RecordBatch;
use datafusion::arrow::compute::concat_batches;
use datafusion::arrow::ipc::reader::StreamReader;
use datafusion::arrow::ipc::writer::StreamWriter;

/// The content type of [`encode`]'s bytes.
pub const CONTENT_TYPE: &str = "application/vnd.trike.live-tables";

fn ipc(batch: &RecordBatch) -> Result<Vec<u8>> {
    let mut out = Vec::new();
    let mut w = StreamWriter::try_new(&mut out, &batch.schema())?;
    w.write(batch)?;
    w.finish()?;
    drop(w);
    Ok(out)
}

fn from_ipc(bytes: &[u8]) -> Result<RecordBatch> {
    let reader = StreamReader::try_new(bytes, None)?;
    let schema = reader.schema();
    let batches = reader.collect::<std::result::Result<Vec<_>, _>>()?;
    Ok(concat_batches(&schema, &batches)?)
}

/// A processor's `slis` and `slo_status`, framed: for each, its length (u64, big-endian) and
/// its Arrow IPC stream.
pub fn encode(live: &LiveTables) -> Result<Vec<u8>> {
    let mut out = Vec::new();
    for batch in [&live.slis, &live.slo_status] {
        let bytes = ipc(batch)?;
        out.extend_from_slice(&(bytes.len() as u64).to_be_bytes());
        out.extend_from_slice(&bytes);
    }
    Ok(out)
}

/// The `slis` and `slo_status` of [`encode`]'s bytes.
pub fn decode(mut bytes: &[u8]) -> Result<(RecordBatch, RecordBatch)> {
    let mut next = || -> Result<RecordBatch> {
        let bad = || Error::Fleet("cut short".into());
        let len: [u8; 8] = bytes
            .get(..8)
            .ok_or_else(bad)?
            .try_into()
            .map_err(|_| bad())?;
        let len = usize::try_from(u64::from_be_bytes(len)).map_err(|_| bad())?;
        let body = bytes.get(8..8 + len).ok_or_else(bad)?;
        bytes = &bytes[8 + len..];
        from_ipc(body)
    };
    Ok((next()?, next()?))
}

/// The fleet's live tables: every member's `slis` and `slo_status` (`parts`, this member's
/// own first), and `decisions` built from the fleet's control events (`decisions`, oldest
/// first, once per id).
pub fn union(
    parts: Vec<(RecordBatch, RecordBatch)>,
    decisions: &[serde_json::Value],
) -> Result<LiveTables> {
    let (slis, slos): (Vec<RecordBatch>, Vec<RecordBatch>) = parts.into_iter().unzip();
    let empty = LiveTables::empty()?;
    let cat = |batches: Vec<RecordBatch>, like: &RecordBatch| -> Result<RecordBatch> {
        Ok(concat_batches(&like.schema(), &batches)?)
    };
    Ok(LiveTables {
        slis: cat(slis, &empty.slis)?,
        slo_status: cat(slos, &empty.slo_status)?,
        decisions: crate::archive::schema::decisions_batch(decisions)?,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;
    use trike_engine::observation::{Batch, RequestObs, SeriesKey};
    use trike_engine::{Engine, EngineConfig};

    fn engine_with(services: &[&str]) -> Engine {
        let mut e = Engine::new(Arc::new(EngineConfig::default()));
        let now = 1_800_000_000_000_000_000;
        let mut b = Batch::default();
        for s in services {
            let key = b.key_index(SeriesKey::new(s, "/a", "1.0"));
            for k in 0..10 {
                b.requests.push(RequestObs {
                    key,
                    time: now,
                    latency_ms: 10.0 + k as f64,
                    bad: k == 0,
                });
            }
        }
        e.ingest(&b, now);
        e.advance(now);
        e
    }

    /// Scenario: two processors, each with its own services, send their live tables; the
    /// member asked puts them together with the fleet's decisions.
    /// Guarantees: the tables survive the wire unchanged, and SQL over the union sees every
    /// service's rows once (the sums over both equal the sums of each).
    #[tokio::test]
    async fn sql_over_two_members_live_tables() {
        let a = LiveTables::snapshot(&engine_with(&["checkout", "cart"]), &[], &[]).unwrap();
        let b = LiveTables::snapshot(&engine_with(&["search"]), &[], &[]).unwrap();
        let (slis_a, slos_a) = decode(&encode(&a).unwrap()).unwrap();
        assert_eq!(slis_a, a.slis);
        assert_eq!(slos_a, a.slo_status);
        let parts = vec![(slis_a, slos_a), decode(&encode(&b).unwrap()).unwrap()];
        let decision = serde_json::json!({"id": "d1", "time": "2026-12-05T00:00:00Z",
            "data": {"action": "page", "target": {"service": "search"}}});
        let live = union(parts, &[decision]).unwrap();
        let ctx = crate::query::session(Some(live), None).unwrap();
        let out = crate::query::run(
            &ctx,
            "SELECT service, SUM(requests) AS n FROM slis WHERE time_window = '5m' GROUP BY service ORDER BY service",
            crate::query::Limits {
                max_rows: 100,
                timeout: std::time::Duration::from_secs(10),
            },
        )
        .await
        .unwrap();
        let rows = out.json_rows().unwrap();
        assert_eq!(
            rows,
            vec![
                serde_json::json!({"service": "cart", "n": 10}),
                serde_json::json!({"service": "checkout", "n": 10}),
                serde_json::json!({"service": "search", "n": 10}),
            ]
        );
        let out = crate::query::run(
            &ctx,
            "SELECT COUNT(*) AS n FROM decisions",
            crate::query::Limits {
                max_rows: 10,
                timeout: std::time::Duration::from_secs(10),
            },
        )
        .await
        .unwrap();
        assert_eq!(out.json_rows().unwrap(), vec![serde_json::json!({"n": 1})]);
        assert!(decode(&[0, 0, 0]).is_err(), "cut short");
    }
}
