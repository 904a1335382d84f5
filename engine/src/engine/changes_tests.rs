//! Change sets: a full state and the changes taken after it rebuild the engine that took them.

use super::*;
use crate::observation::{Batch, RequestObs, SeriesKey};
use crate::sli::SliQuery;
use crate::time::{NANOS_PER_SEC, Span};
use crate::{EngineConfig, UnixNanos};
use std::sync::Arc;

const S: u64 = NANOS_PER_SEC;
const T0: u64 = 1_800_000_000 * S;

fn engine() -> Engine {
    Engine::new(Arc::new(EngineConfig {
        idle_series_after: Some(Span::minutes(2)),
        latency_thresholds_ms: vec![100.0],
        ..EngineConfig::default()
    }))
}

/// Seconds `from..to` of traffic on `routes` of each service, applied at each second (plus
/// one request `late_s` seconds old each second when given).
fn feed(e: &mut Engine, from: u64, to: u64, services: &[&str], routes: &[&str], late_s: u64) {
    for i in from..to {
        let now: UnixNanos = T0 + i * S;
        let mut b = Batch::default();
        for (n, service) in services.iter().enumerate() {
            for (r, route) in routes.iter().enumerate() {
                let key = b.key_index(SeriesKey::new(service, route, "1.0"));
                for k in 0..(3 + n as u64 + r as u64) {
                    b.requests.push(RequestObs {
                        key,
                        time: now - (k % 2) * S,
                        latency_ms: 5.0 + (i * 7 + k * 13) as f64 % 200.0,
                        bad: (i + k) % 11 == 0,
                    });
                }
                if late_s > 0 {
                    b.requests.push(RequestObs {
                        key,
                        time: now - late_s * S,
                        latency_ms: 900.0,
                        bad: true,
                    });
                }
            }
        }
        e.ingest(&b, now);
        e.advance(now);
    }
}

fn same_answers(a: &Engine, b: &Engine) {
    for w in ["10s", "1m", "5m", "1h", "1d"] {
        let q = SliQuery {
            service: None,
            window: w.parse().unwrap(),
        };
        assert_eq!(a.slis(&q).unwrap(), b.slis(&q).unwrap(), "series over {w}");
        let w: Span = w.parse().unwrap();
        assert_eq!(
            a.version_slis(None, w).unwrap(),
            b.version_slis(None, w).unwrap(),
            "versions over {w}"
        );
    }
}

/// Scenario: a full state, then traffic with late data and a new route, a change set, then
/// minutes in which most series go idle and are folded into their version's aggregate (and
/// the aggregates take their history), another change set.
/// Guarantees: an empty engine that merges the full state and applies both change sets in
/// order answers every window exactly as the engine that took them, and holds the same state;
/// applying a change set again changes nothing; each change set is a fraction of the full
/// state's size.
#[test]
fn full_state_plus_changes_is_the_state() {
    let mut a = engine();
    a.track_changes();
    let all = ["checkout", "search", "payments"];
    feed(&mut a, 0, 400, &all, &["/a", "/b"], 0);
    let full = a.snapshot_of(|_| true);
    a.clear_changes(|_| true);

    feed(&mut a, 400, 410, &all, &["/a", "/b", "/c"], 45);
    let c1 = a.take_changes(|_| true);
    assert!(c1.removed.is_empty());
    feed(&mut a, 410, 600, &["checkout"], &["/a"], 0);
    let c2 = a.take_changes(|_| true);
    assert!(
        c2.removed.len() >= 6,
        "idle series folded: {:?}",
        c2.removed
    );
    assert!(a.take_changes(|_| true).series.is_empty(), "taken once");

    let size = |s: &Snapshot| serde_json::to_vec(s).unwrap().len();
    let (f, s1, s2) = (size(&full), size(&c1), size(&c2));
    assert!(
        s1 < f,
        "10 s of changes with data 45 s late: {s1} bytes, full state {f}"
    );

    let mut b = engine();
    b.merge(full).unwrap();
    b.apply_changes(c1.clone()).unwrap();
    b.apply_changes(c1).unwrap();
    b.apply_changes(c2).unwrap();
    same_answers(&a, &b);
    assert_eq!(b.snapshot_of(|_| true), a.snapshot_of(|_| true));
    assert!(s2 < f, "{s2} {f}");

    // 10 s of on-time traffic after 10 minutes of history: a small part of the state.
    feed(&mut a, 600, 610, &["checkout"], &["/a"], 0);
    let c3 = a.take_changes(|_| true);
    let whole = a.snapshot_of(|_| true);
    let (s3, f3) = (size(&c3), size(&whole));
    assert!(s3 * 3 < f3, "10 s of changes: {s3} bytes, full state {f3}");
    b.apply_changes(c3).unwrap();
    same_answers(&a, &b);
}

/// Guarantees: changes are taken per service: taking one service's leaves the others' to
/// be taken later, and clearing after a full snapshot leaves nothing to take.
#[test]
fn changes_are_taken_per_service() {
    let mut a = engine();
    a.track_changes();
    feed(&mut a, 0, 30, &["checkout", "search"], &["/a"], 0);
    let c = a.take_changes(|s| s == "checkout");
    assert_eq!(c.series.len(), 1);
    assert_eq!(c.versions.len(), 1);
    let c = a.take_changes(|_| true);
    assert_eq!(c.series.len(), 1);
    assert_eq!(&*c.series[0].0.service, "search");
    feed(&mut a, 30, 31, &["checkout", "search"], &["/a"], 0);
    a.clear_changes(|_| true);
    assert!(a.take_changes(|_| true).series.is_empty());
}

/// Scenario: traffic (some 12 s late) where the engine is not swept every second: changes
/// are taken after ingesting at a new second, before any sweep at it, and applied to a
/// replica (which sweeps at that second as it applies them).
/// Guarantees: the replica holds the same state (digests' buffers included) and answers every
/// window as the engine does after each change set: a version's 1 s digests are settled into
/// its coarser tiers once, and closed buckets are compressed alike on both sides.
#[test]
fn changes_taken_between_sweeps_settle_once() {
    let mut a = engine();
    a.track_changes();
    let mut b = engine();
    let all = ["checkout", "search"];
    for i in 0..120 {
        let now: UnixNanos = T0 + i * S;
        let mut batch = Batch::default();
        for service in all {
            let key = batch.key_index(SeriesKey::new(service, "/a", "1.0"));
            for k in 0..5u64 {
                batch.requests.push(RequestObs {
                    key,
                    time: now - if k == 4 { 12 * S } else { 0 },
                    latency_ms: 5.0 + (i * 7 + k * 13) as f64 % 200.0,
                    bad: (i + k) % 7 == 0,
                });
            }
        }
        a.ingest(&batch, now);
        b.apply_changes(a.take_changes(|_| true)).unwrap();
        same_answers(&a, &b);
        assert_eq!(
            b.snapshot_of(|_| true),
            a.snapshot_of(|_| true),
            "second {i}"
        );
        if i % 3 == 0 {
            a.advance(now);
        }
    }
}
