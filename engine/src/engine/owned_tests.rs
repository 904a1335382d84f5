//! Moving services between engines: what leaves one engine and enters another is the same
//! state, and what stays is untouched.

use super::*;
use crate::observation::{Batch, RequestObs, SeriesKey};
use crate::sli::{SliQuery, SliRow};
use crate::time::NANOS_PER_SEC;
use crate::{EngineConfig, Span, UnixNanos};
use std::sync::Arc;

const S: u64 = NANOS_PER_SEC;
const T0: u64 = 1_800_000_000 * S;

fn engine(max_series: usize) -> Engine {
    Engine::new(Arc::new(EngineConfig {
        max_series,
        ..EngineConfig::default()
    }))
}

/// 60 s of spans of three services over two routes, applied at `T0 + i s`.
fn feed(e: &mut Engine) {
    for i in 0..60u64 {
        let now: UnixNanos = T0 + i * S;
        let mut b = Batch::default();
        for (n, service) in ["checkout", "search", "payments"].iter().enumerate() {
            for (r, route) in ["/a", "/b"].iter().enumerate() {
                let key = b.key_index(SeriesKey::new(service, route, "1.0"));
                for k in 0..(5 + n as u64 + r as u64) {
                    b.requests.push(RequestObs {
                        key,
                        time: now,
                        latency_ms: 10.0 + (i * 7 + k * 13) as f64 % 300.0,
                        bad: (i + k) % 11 == 0,
                    });
                }
            }
        }
        e.ingest(&b, now);
        e.advance(now);
    }
}

fn rows(e: &Engine, service: &str) -> Vec<SliRow> {
    e.slis(&SliQuery {
        service: Some(service.into()),
        window: "5m".parse().unwrap(),
    })
    .unwrap()
}

/// Scenario: one engine's services split by owner into two snapshots, each merged into an
/// empty engine (a partition moving to another processor), and dropped from the first.
/// Guarantees: the new owner answers exactly what the old one did for the services it took
/// (every SLI row equal); the old owner keeps the rest untouched and no longer knows the
/// services it gave away; merging the pieces back together gives the whole state again.
#[test]
fn services_move_between_engines_unchanged() {
    let mut a = engine(10_000);
    feed(&mut a);
    let moving = |s: &str| s == "checkout" || s == "payments";
    let (checkout, search) = (rows(&a, "checkout"), rows(&a, "search"));
    assert!(!checkout.is_empty() && !search.is_empty());

    let piece = a.snapshot_of(moving);
    assert_eq!(piece.series.len(), 4);
    assert_eq!(
        piece.versions.len(),
        2,
        "each moving service's version digests"
    );
    let mut b = engine(10_000);
    assert_eq!(b.merge(piece.clone()).unwrap(), 4);
    assert_eq!(b.now(), a.now());
    assert_eq!(rows(&b, "checkout"), checkout);
    assert_eq!(rows(&b, "payments"), rows(&a, "payments"));
    assert!(rows(&b, "search").is_empty());
    let hour = "1h".parse().unwrap();
    assert_eq!(
        b.version_slis(Some("checkout"), hour).unwrap(),
        a.version_slis(Some("checkout"), hour).unwrap(),
        "the hour's quantiles moved with the service"
    );

    assert_eq!(a.drop_services(moving), 4);
    assert_eq!(a.series_count(), 2);
    assert_eq!(a.snapshot_of(|_| true).versions.len(), 1);
    assert!(rows(&a, "checkout").is_empty());
    assert_eq!(rows(&a, "search"), search);
    assert!(!a.services().iter().any(|s| moving(s)));

    // Both halves merged into a third engine are the original engine's state.
    let mut whole = engine(10_000);
    whole.merge(a.snapshot_of(|_| true)).unwrap();
    whole.merge(piece).unwrap();
    let mut original = engine(10_000);
    feed(&mut original);
    assert_eq!(
        whole.snapshot_of(|_| true),
        original.snapshot_of(|_| true),
        "split and merged back: the same state"
    );
}

/// Guarantees: a merge replaces series the engine already holds under the same key (a
/// restore is not added to data that arrived first), respects the series cap, and refuses a
/// snapshot of another layout version.
#[test]
fn merge_replaces_same_keys_and_respects_the_cap() {
    let mut a = engine(10_000);
    feed(&mut a);
    let snap = a.snapshot_of(|s| s == "checkout");
    let mut b = engine(10_000);
    b.merge(snap.clone()).unwrap();
    b.merge(snap.clone()).unwrap();
    assert_eq!(rows(&b, "checkout"), rows(&a, "checkout"), "not doubled");

    let mut small = engine(1);
    assert_eq!(small.merge(snap.clone()).unwrap(), 1);
    assert_eq!(small.series_count(), 1);
    assert_eq!(small.stats().series_evicted, 1);

    let mut other = snap;
    other.version += 1;
    assert!(engine(10).merge(other).is_err());
}

/// Scenario: a snapshot written when every series kept its own fine digests (rings of 1 s,
/// 10 s and 5 min per series, no version digests) and 30 days of 6 h counters, and (every
/// other series) 5 minutes of 1 s counters and no 10 s counter tier. Each version's digests are given to one of its series, the others have
/// empty rings (a version's digests are the sum of its series' rings).
/// Guarantees: it still restores and merges; the series' rings add up in their version, so
/// the version's quantiles over 1 h, 5 min and 10 s after the upgrade are those of the old
/// snapshot, the series' minutes are rebuilt from its 10 s digests, and the 10 s counters
/// from the seconds (every SLI row's counts equal). A snapshot of neither layout is refused
/// with the reason.
#[test]
fn snapshots_of_the_old_layout_hand_the_fine_digests_to_the_version() {
    let mut a = engine(10_000);
    feed(&mut a);
    let windows: Vec<Span> = ["1h", "5m", "10s"].map(|w| w.parse().unwrap()).to_vec();
    let slis = |e: &Engine| -> Vec<_> {
        windows
            .iter()
            .map(|&w| e.version_slis(Some("checkout"), w).unwrap())
            .collect()
    };
    let counts = |e: &Engine, service| -> Vec<_> {
        rows(e, service)
            .into_iter()
            .map(|r| (r.key, r.requests, r.errors, r.latency_good))
            .collect()
    };
    let expected = slis(&a);
    let mut json = serde_json::to_value(a.snapshot()).unwrap();
    json.as_object_mut().unwrap().remove("versions");
    let fed: Vec<_> = a
        .versions
        .iter()
        .map(|v| (&v.key, v.digests.every_tier_fed()))
        .collect();
    let versions = serde_json::to_value(fed).unwrap();
    let mut given = std::collections::HashSet::new();
    let series = json["series"].as_array_mut().unwrap();
    for (i, s) in series.iter_mut().enumerate() {
        let state = s[1].as_object_mut().unwrap();
        // The 30 days were in `counts`, by 6 h: each 12 h bucket as its first half.
        let mut days = state.remove("days").unwrap();
        for slot in days["slots"].as_array_mut().unwrap() {
            slot[0] = (slot[0].as_u64().unwrap() * 2).into();
        }
        let counts = state["counts"].as_array_mut().unwrap();
        counts.push(days);
        if i % 2 == 0 {
            // At first counters had no 10 s tier: its buckets are sums of the 1 s ones.
            counts.remove(1);
        }
        state.remove("minutes");
        let key = (s[0]["service"].clone(), s[0]["version"].clone());
        let rings = if given.insert(key.clone()) {
            versions
                .as_array()
                .unwrap()
                .iter()
                .find(|v| v[0][0] == key.0 && v[0][1] == key.1)
                .unwrap()[1]["rings"]
                .clone()
        } else {
            serde_json::json!([{"slots": []}, {"slots": []}, {"slots": []}])
        };
        s[1]["digests"] = rings;
    }
    let old: Snapshot = serde_json::from_value(json).unwrap();
    assert!(old.versions.is_empty());

    let restored = Engine::restore(a.config().clone().into(), old.clone()).unwrap();
    assert_eq!(slis(&restored), expected);
    assert_eq!(counts(&restored, "checkout"), counts(&a, "checkout"));
    let with_latency = |e: &Engine| {
        rows(e, "checkout")
            .iter()
            .filter(|r| r.latency_ms.is_some())
            .count()
    };
    assert_eq!(
        with_latency(&restored),
        1,
        "the series given the 10 s rings"
    );
    let mut merged = engine(10_000);
    merged.merge(old).unwrap();
    assert_eq!(slis(&merged), expected);
    assert_eq!(counts(&merged, "search"), counts(&a, "search"));

    let mut json = serde_json::to_value(a.snapshot()).unwrap();
    json["series"][0][1]["counts"]
        .as_array_mut()
        .unwrap()
        .truncate(2);
    let err = serde_json::from_value::<Snapshot>(json).unwrap_err();
    assert!(err.to_string().contains("2 counter tiers"), "{err}");
}
