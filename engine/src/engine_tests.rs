//! Engine table tests with a simulated clock.

use super::*;
use crate::observation::SecondObs;
use crate::observation::{CounterObs, HistogramObs, RequestObs};
use crate::sli::{SliQuery, SliRow};

const S: u64 = NANOS_PER_SEC;
const T0: u64 = 1_800_000_000 * S; // a round start time (minute- and hour-aligned)

fn engine() -> Engine {
    Engine::new(Arc::new(EngineConfig::default()))
}

fn batch(key: SeriesKey, reqs: &[(u64, f64, bool)]) -> Batch {
    Batch {
        keys: vec![key],
        requests: reqs
            .iter()
            .map(|&(time, latency_ms, bad)| RequestObs {
                key: 0,
                time,
                latency_ms,
                bad,
            })
            .collect(),
        ..Default::default()
    }
}

fn checkout() -> SeriesKey {
    SeriesKey::new("checkout", "/pay", "1.0")
}

fn sli(e: &Engine, window: &str) -> Vec<SliRow> {
    e.slis(&SliQuery {
        service: None,
        window: window.parse().unwrap(),
    })
    .unwrap()
}

/// Table: one request per second for 10 minutes with every 10th bad.
/// Guarantees: each window counts exactly the seconds it covers (its first second included,
/// second `now` included), and rate and error ratio follow.
#[test]
fn window_boundaries() {
    let mut e = engine();
    for i in 0..600u64 {
        let t = T0 + i * S + S / 2;
        e.ingest(&batch(checkout(), &[(t, 10.0, i % 10 == 0)]), t);
        e.advance(t);
    }
    // now = T0 + 599.5 s: the 1 m window holds seconds 540..=599.
    for (window, requests, errors) in [
        ("1s", 1, 0),
        ("10s", 10, 1),
        ("1m", 60, 6),
        ("5m", 300, 30),
        ("1h", 600, 60),
    ] {
        let rows = sli(&e, window);
        assert_eq!(rows.len(), 1, "{window}");
        assert_eq!(
            (rows[0].requests, rows[0].errors),
            (requests, errors),
            "{window}"
        );
    }
    let r = &sli(&e, "1m")[0];
    assert!(
        (r.rate_per_s - 60.0 / 59.5).abs() < 1e-9,
        "rate {}",
        r.rate_per_s
    );
    assert_eq!(r.error_ratio, Some(0.1));
    // Time passes with no data: the 1 m window empties, the 1 h window keeps everything.
    e.advance(T0 + 700 * S);
    assert!(sli(&e, "1m").is_empty());
    assert_eq!(sli(&e, "1h")[0].requests, 600);
    assert_eq!(sli(&e, "30d")[0].requests, 600);
    assert!(
        e.slis(&SliQuery {
            service: None,
            window: "31d".parse().unwrap()
        })
        .is_err()
    );
}

/// Table: late and early data.
/// Guarantees: data within the allowed lateness lands in its own second; older data is
/// counted and dropped; data from the future is clamped to now (and visible at once).
#[test]
fn lateness_and_clock_skew() {
    let mut e = engine(); // allowed lateness 5 m
    let now = T0 + 1000 * S;
    e.advance(now);
    let rows: Vec<(u64, bool)> = vec![
        (now - 10 * S, true),   // 10 s late: applied
        (now - 299 * S, true),  // within lateness
        (now - 301 * S, false), // beyond 5 m: dropped
        (now + 30 * S, true),   // 30 s in the future: clamped to now
    ];
    for (t, applied) in &rows {
        let rep = e.ingest(&batch(checkout(), &[(*t, 5.0, false)]), now);
        assert_eq!(rep.applied == 1, *applied, "event at {t}");
        assert_eq!(rep.late == 1, !*applied);
    }
    assert_eq!(e.stats().late_dropped, 1);
    assert_eq!(e.stats().clock_skew_clamped, 1);
    assert_eq!(
        sli(&e, "1s")[0].requests,
        1,
        "the clamped event is in the current second"
    );
    assert_eq!(sli(&e, "11s")[0].requests, 2);
    assert_eq!(sli(&e, "5m")[0].requests, 3);
}

/// Guarantees: beyond the cap a service's new series fold into one overflow series, counted;
/// existing series and other services are unaffected.
#[test]
fn cardinality_overflow() {
    let cfg = EngineConfig {
        max_series_per_service: 3,
        ..Default::default()
    };
    let mut e = Engine::new(Arc::new(cfg));
    let now = T0;
    for op in 0..5 {
        let key = SeriesKey::new("svc", &format!("/op{op}"), "1");
        e.ingest(&batch(key, &[(now, 1.0, false), (now, 2.0, false)]), now);
    }
    e.ingest(
        &batch(SeriesKey::new("svc", "/op0", "1"), &[(now, 1.0, false)]),
        now,
    );
    e.ingest(
        &batch(SeriesKey::new("other", "/x", "1"), &[(now, 1.0, false)]),
        now,
    );
    let rows = sli(&e, "1m");
    let svc: Vec<_> = rows.iter().filter(|r| &*r.key.service == "svc").collect();
    assert_eq!(svc.len(), 4, "3 series + overflow");
    let overflow = svc.iter().find(|r| r.key.is_overflow()).unwrap();
    assert_eq!(overflow.requests, 4, "ops 3 and 4, two requests each");
    assert_eq!(e.stats().overflowed, 4);
    assert_eq!(
        svc.iter()
            .find(|r| &*r.key.operation == "/op0")
            .unwrap()
            .requests,
        3
    );
    assert_eq!(
        rows.iter().filter(|r| &*r.key.service == "other").count(),
        1
    );
}

/// Guarantees: window quantiles merge the right buckets: a slow minute long ago shows in the
/// 1 h window but not in the 1 m window; and p99 of uniform 1..=1000 ms is within 1 %.
#[test]
fn quantiles_per_window() {
    let mut e = engine();
    let key = checkout();
    // 10 minutes ago: 1000 requests at 5 s each.
    let old = T0 + 100 * S;
    let slow: Vec<_> = (0..1000).map(|_| (old, 5000.0, false)).collect();
    e.ingest(&batch(key.clone(), &slow), old);
    // Last 50 seconds: uniform 1..=1000 ms, 20 per second.
    let mut v = 0;
    for s in 0..50u64 {
        let t = T0 + 650 * S + s * S;
        let reqs: Vec<_> = (0..20)
            .map(|_| {
                v = v % 1000 + 1;
                (t, f64::from(v), false)
            })
            .collect();
        e.ingest(&batch(key.clone(), &reqs), t);
        e.advance(t);
    }
    let one_min = sli(&e, "1m")[0].latency_ms.unwrap();
    assert!(
        (one_min.p99 - 990.0).abs() / 990.0 < 0.01,
        "p99 {}",
        one_min.p99
    );
    assert!(
        (one_min.p50 - 500.0).abs() / 500.0 < 0.01,
        "p50 {}",
        one_min.p50
    );
    // A series keeps 5 minutes of digests; its service and version keep the hour.
    assert!(sli(&e, "5m")[0].latency_ms.unwrap().p999 <= 1000.0);
    assert!(sli(&e, "1h")[0].latency_ms.is_none());
    let hour = "1h".parse().unwrap();
    let by_service = e.service_slis(hour).unwrap()[0].latency_ms.unwrap();
    let by_version = e.version_slis(Some("checkout"), hour).unwrap()[0]
        .latency_ms
        .unwrap();
    let (requests, _, digest) = e.version_totals(&key.service, &key.version, hour);
    assert_eq!(requests, 2000);
    assert_eq!(digest.unwrap().count(), 2000);
    for q in [by_service, by_version] {
        assert_eq!(q.p999, 5000.0);
        assert!(
            q.p50 > 1000.0,
            "half the hour's requests were slow: {}",
            q.p50
        );
    }
    // Beyond the 1 h digest history, counts are known but quantiles are not.
    let day = &sli(&e, "1d")[0];
    assert_eq!(day.requests, 2000);
    assert!(day.latency_ms.is_none());
    assert!(
        e.service_slis("1d".parse().unwrap()).unwrap()[0]
            .latency_ms
            .is_none()
    );
    assert!(
        e.version_totals(&key.service, &key.version, "1d".parse().unwrap())
            .2
            .is_none()
    );
}

/// Guarantees: requests within each configured latency threshold are counted per window.
#[test]
fn latency_threshold_good_ratio() {
    let cfg = EngineConfig {
        latency_thresholds_ms: vec![100.0, 300.0],
        ..Default::default()
    };
    let mut e = Engine::new(Arc::new(cfg));
    let reqs: Vec<_> = [50.0, 100.0, 150.0, 250.0, 400.0]
        .iter()
        .map(|&l| (T0, l, false))
        .collect();
    e.ingest(&batch(checkout(), &reqs), T0);
    let r = &sli(&e, "1m")[0];
    assert_eq!(
        r.latency_good.iter().map(|g| g.good).collect::<Vec<_>>(),
        vec![2, 4]
    );
    assert_eq!(r.latency_good[1].good_ratio, Some(0.8));
}

fn histogram(
    time: u64,
    start: u64,
    temporality: Temporality,
    counts: Vec<u64>,
    bad: bool,
) -> Batch {
    Batch {
        keys: vec![checkout()],
        histograms: vec![HistogramObs {
            key: 0,
            stream: 42 + u64::from(bad),
            time,
            start_time: start,
            temporality,
            bounds_ms: Arc::from(vec![10.0, 100.0, 1000.0]),
            counts,
            min_ms: Some(2.0),
            max_ms: Some(3000.0),
            bad,
            exp: None,
        }],
        ..Default::default()
    }
}

/// Table: a cumulative histogram stream with a baseline, growth, and a process restart.
/// Guarantees: only the deltas are counted, a reset counts the new totals, and the latency
/// distribution follows the buckets.
#[test]
fn cumulative_histograms_with_reset() {
    let mut e = engine();
    e.advance(T0);
    let rows: Vec<(u64, u64, Vec<u64>, u64)> = vec![
        // (time, start, cumulative counts, requests counted so far)
        (T0 + 10 * S, T0 - 3600 * S, vec![5, 10, 0, 0], 0), // baseline (started before us)
        (T0 + 20 * S, T0 - 3600 * S, vec![15, 20, 0, 0], 20),
        (T0 + 30 * S, T0 - 3600 * S, vec![15, 20, 0, 1], 21),
        (T0 + 40 * S, T0 + 35 * S, vec![3, 0, 0, 0], 24), // restart: counts since the new start
        (T0 + 50 * S, T0 + 35 * S, vec![4, 0, 0, 0], 25),
    ];
    for (i, (time, start, counts, want)) in rows.into_iter().enumerate() {
        e.ingest(
            &histogram(time, start, Temporality::Cumulative, counts, false),
            time,
        );
        let got = sli(&e, "5m").first().map_or(0, |r| r.requests);
        assert_eq!(got, want, "row {i}");
    }
    assert_eq!(e.stats().metric_resets, 1);
    assert_eq!(e.stats().metric_baselines, 1);
    let r = &sli(&e, "5m")[0];
    let q = r.latency_ms.unwrap();
    assert!(q.p50 < 100.0 && q.p999 > 1000.0, "{q:?}");
}

/// Guarantees: delta histograms and counters with a bad status count as errors.
#[test]
fn delta_metrics_and_counters() {
    let mut e = engine();
    e.ingest(
        &histogram(T0, T0 - S, Temporality::Delta, vec![1, 2, 3, 4], false),
        T0,
    );
    e.ingest(
        &histogram(T0, T0 - S, Temporality::Delta, vec![0, 0, 5, 0], true),
        T0,
    );
    let mut b = Batch {
        keys: vec![SeriesKey::new("api", "GET /", "")],
        ..Default::default()
    };
    b.counters.push(CounterObs {
        key: 0,
        stream: 9,
        time: T0,
        start_time: T0 + 1,
        temporality: Temporality::Cumulative,
        value: 40.0,
        bad: true,
    });
    e.ingest(&b, T0 + 2);
    let rows = sli(&e, "1m");
    let checkout = rows.iter().find(|r| &*r.key.service == "checkout").unwrap();
    assert_eq!((checkout.requests, checkout.errors), (15, 5));
    let api = rows.iter().find(|r| &*r.key.service == "api").unwrap();
    assert_eq!(
        (api.requests, api.errors),
        (40, 40),
        "a stream that began after us counts from its first point"
    );
    assert!(api.latency_ms.is_none());
}

/// Guarantees: in `auto` mode a service's metrics are ignored while it sends spans, so its
/// requests are not counted twice; a metrics-only service is counted from metrics.
#[test]
fn one_signal_per_service() {
    let mut e = engine();
    e.ingest(&batch(checkout(), &[(T0, 10.0, false)]), T0);
    let rep = e.ingest(
        &histogram(T0, T0 - S, Temporality::Delta, vec![1, 2, 3, 4], false),
        T0,
    );
    assert_eq!(rep.deduplicated, 1);
    assert_eq!(sli(&e, "1m")[0].requests, 1);
    // After `spans_preferred_for` (10 m) without spans, metrics count again.
    let later = T0 + 11 * 60 * S;
    e.ingest(
        &histogram(
            later,
            later - S,
            Temporality::Delta,
            vec![1, 2, 3, 4],
            false,
        ),
        later,
    );
    assert_eq!(sli(&e, "1m")[0].requests, 10);
}

/// Guarantees: a snapshot restored into a new engine answers every query identically and
/// keeps cumulative baselines (no double count after restore).
#[test]
fn snapshot_restore_roundtrip() {
    let mut e = engine();
    for i in 0..120u64 {
        let t = T0 + i * S;
        let cart = SeriesKey::new("cart", "/add", "2.0");
        e.ingest(&batch(cart, &[(t, (i % 37) as f64, i % 7 == 0)]), t);
    }
    e.ingest(
        &histogram(
            T0 + 100 * S,
            1,
            Temporality::Cumulative,
            vec![1, 1, 1, 1],
            false,
        ),
        T0 + 100 * S,
    );
    let json = serde_json::to_string(&e.snapshot()).unwrap();
    let snap: Snapshot = serde_json::from_str(&json).unwrap();
    let mut r = Engine::restore(Arc::new(EngineConfig::default()), snap).unwrap();
    for w in ["1m", "5m", "1h"] {
        assert_eq!(sli(&e, w), sli(&r, w), "{w}");
    }
    assert_eq!(e.stats(), r.stats());
    let t = T0 + 121 * S;
    r.ingest(
        &histogram(t, 1, Temporality::Cumulative, vec![2, 1, 1, 1], false),
        t,
    );
    assert_eq!(r.stats().metric_points_applied, 1);
    let rows = sli(&r, "1m");
    let checkout = rows.iter().find(|r| &*r.key.service == "checkout").unwrap();
    assert_eq!(
        checkout.requests, 1,
        "the delta of 1, not the cumulative total of 5"
    );
}

/// Guarantees: series whose buckets all expired are removed and stop counting against the cap.
#[test]
fn idle_series_are_evicted() {
    let cfg = EngineConfig {
        max_series_per_service: 1,
        ..Default::default()
    };
    let mut e = Engine::new(Arc::new(cfg));
    e.ingest(&batch(checkout(), &[(T0, 1.0, false)]), T0);
    assert_eq!(e.series_count(), 1);
    e.advance(T0 + 31 * 86_400 * S);
    assert_eq!(e.series_count(), 0);
    assert_eq!(e.stats().series_evicted, 1);
    let now = T0 + 31 * 86_400 * S + S;
    let rep = e.ingest(
        &batch(
            SeriesKey::new("checkout", "/new", "2"),
            &[(now, 1.0, false)],
        ),
        now,
    );
    assert_eq!(rep.overflowed, 0);
}

/// Scenario: one series with its whole history (a request a minute for 30 days, so every
/// counter bucket exists), then an hour at 200 requests per second with spread latencies.
/// Guarantees: the series (windows, key and index entry, by the engine's own accounting)
/// fits in 16 KiB with every default window; its version's digests are counted apart, once
/// per version. BENCHMARKS.md has the curve over rates (the `memory` bench).
#[test]
fn memory_per_series_fits_16_kib() {
    let mut e = engine();
    let start = T0 - 30 * 86_400 * S;
    let mut t = start;
    while t < T0 - 3600 * S {
        e.ingest(&batch(checkout(), &[(t, 20.0, false)]), t);
        e.advance(t);
        t += 60 * S;
    }
    for s in 0..3600u64 {
        let t = T0 - 3600 * S + s * S;
        let reqs: Vec<_> = (0..200)
            .map(|i| (t, 1.0 + ((s * 200 + i) * 7919 % 997) as f64, false))
            .collect();
        e.ingest(&batch(checkout(), &reqs), t);
        e.advance(t);
    }
    let series = e.heap_bytes() - e.version_heap_bytes();
    assert!(series <= 16 * 1024, "{series} bytes for one series");
}

/// Guarantees: service SLIs add up the service's series and merge their latency digests.
#[test]
fn service_level_aggregation() {
    let mut e = engine();
    e.ingest(
        &batch(
            SeriesKey::new("svc", "/a", "1"),
            &[(T0, 10.0, false), (T0, 20.0, true)],
        ),
        T0,
    );
    e.ingest(
        &batch(SeriesKey::new("svc", "/b", "2"), &[(T0, 1000.0, false)]),
        T0,
    );
    e.ingest(
        &batch(SeriesKey::new("zed", "/z", "1"), &[(T0, 5.0, false)]),
        T0,
    );
    let rows = e.service_slis("1m".parse().unwrap()).unwrap();
    assert_eq!(
        rows.iter().map(|r| r.service.as_str()).collect::<Vec<_>>(),
        vec!["svc", "zed"]
    );
    let svc = &rows[0];
    assert_eq!((svc.requests, svc.errors), (3, 1));
    let q = svc.latency_ms.unwrap();
    assert_eq!((q.p50, q.p999), (20.0, 1000.0));
}

/// Guarantees: version SLIs add up the series of one service version (across operations) and
/// keep versions apart.
#[test]
fn version_level_aggregation() {
    let mut e = engine();
    for (op, version, latency, bad) in [
        ("/a", "1", 10.0, false),
        ("/b", "1", 30.0, true),
        ("/a", "2", 500.0, false),
    ] {
        e.ingest(
            &batch(SeriesKey::new("svc", op, version), &[(T0, latency, bad)]),
            T0,
        );
    }
    e.ingest(
        &batch(SeriesKey::new("other", "/a", "1"), &[(T0, 1.0, false)]),
        T0,
    );
    let rows = e.version_slis(Some("svc"), "1m".parse().unwrap()).unwrap();
    let got: Vec<_> = rows
        .iter()
        .map(|r| {
            (
                r.service.as_str(),
                r.version.as_deref(),
                r.requests,
                r.errors,
            )
        })
        .collect();
    assert_eq!(got, [("svc", Some("1"), 2, 1), ("svc", Some("2"), 1, 0)]);
    assert_eq!(rows[1].latency_ms.unwrap().p50, 500.0);
    assert!(
        e.service_slis("1m".parse().unwrap()).unwrap()[0]
            .version
            .is_none()
    );
}

/// Guarantees: cumulative metrics ignored while the service sends spans still move their
/// baseline, so when spans stop, the metrics count what happened since, not a burst of
/// everything held back.
#[test]
fn deduplicated_metrics_keep_their_baseline() {
    let mut e = engine();
    e.advance(T0);
    e.ingest(&batch(checkout(), &[(T0, 10.0, false)]), T0);
    let start = T0 - 3600 * S;
    for (t, total) in [(T0 + 10 * S, 10), (T0 + 60 * S, 20)] {
        let rep = e.ingest(
            &histogram(
                t,
                start,
                Temporality::Cumulative,
                vec![total, 0, 0, 0],
                false,
            ),
            t,
        );
        assert_eq!(rep.deduplicated, 1);
    }
    let later = T0 + 11 * 60 * S;
    e.ingest(
        &histogram(
            later,
            start,
            Temporality::Cumulative,
            vec![25, 0, 0, 0],
            false,
        ),
        later,
    );
    assert_eq!(
        sli(&e, "1m")[0].requests,
        5,
        "only the 5 requests since the last point"
    );
}

/// Guarantees: a pre-aggregated count beyond what a centroid holds is absorbed in bounded
/// memory and time (it saturates), never a loop per 2^32 requests.
#[test]
fn huge_weights_are_bounded() {
    let mut d = crate::sketch::TDigest::default();
    d.add_weighted(5.0, u64::MAX);
    d.add_weighted(7.0, 3);
    assert!(d.heap_bytes() < 64 * 1024);
    assert_eq!(d.quantile(0.0), 5.0);
}

/// Guarantees: beyond `max_services`, new services fold into one shared overflow series
/// (bounded memory against a client inventing service names); known services still count.
#[test]
fn service_cap() {
    let cfg = EngineConfig {
        max_services: 2,
        ..Default::default()
    };
    let mut e = Engine::new(Arc::new(cfg));
    for svc in ["a", "b", "c", "d"] {
        e.ingest(
            &batch(SeriesKey::new(svc, "/", "1"), &[(T0, 1.0, false)]),
            T0,
        );
    }
    e.ingest(
        &batch(SeriesKey::new("a", "/x", "1"), &[(T0, 1.0, false)]),
        T0,
    );
    let rows = sli(&e, "1m");
    let services: Vec<&str> = rows.iter().map(|r| &*r.key.service).collect();
    assert_eq!(services, vec!["__trike_overflow__", "a", "a", "b"]);
    assert_eq!(rows[0].requests, 2);
    assert_eq!(e.stats().overflowed, 2);
}

/// Scenario: a global cap of 50 series; service `a` has 10 series, then a flood of 2 000 new
/// routes across 40 new services and `a` itself, then more traffic to `a`'s series.
/// Guarantees: series stay within the cap plus one overflow series per known service and the
/// shared one; `a`'s existing series keep exactly their own counts; the flood is counted as
/// overflowed, never dropped.
#[test]
fn global_series_cap_holds_under_a_flood() {
    let cfg = EngineConfig {
        max_series: 50,
        ..Default::default()
    };
    let mut e = Engine::new(Arc::new(cfg));
    for i in 0..10 {
        let key = SeriesKey::new("a", &format!("/r{i}"), "1");
        e.ingest(&batch(key, &[(T0, 1.0, false), (T0, 2.0, true)]), T0);
    }
    for i in 0..2000 {
        let svc = if i % 50 == 0 {
            "a".to_string()
        } else {
            format!("s{}", i % 40)
        };
        let key = SeriesKey::new(&svc, &format!("/flood/{i}"), "1");
        e.ingest(&batch(key, &[(T0, 1.0, false)]), T0);
    }
    for i in 0..10 {
        let key = SeriesKey::new("a", &format!("/r{i}"), "1");
        e.ingest(&batch(key, &[(T0, 3.0, false)]), T0);
    }
    let services = e.services().len();
    assert!(
        e.series_count() <= 50 + services + 1,
        "{} series for {services} services",
        e.series_count()
    );
    let rows = sli(&e, "1m");
    for i in 0..10 {
        let r = rows
            .iter()
            .find(|r| &*r.key.service == "a" && *r.key.operation == format!("/r{i}"))
            .unwrap();
        assert_eq!((r.requests, r.errors), (3, 1), "/r{i}");
    }
    let total: u64 = rows.iter().map(|r| r.requests).sum();
    assert_eq!(total, 30 + 2000, "nothing dropped");
    assert!(
        e.stats().overflowed >= 2000 - 40,
        "{}",
        e.stats().overflowed
    );
}

/// Scenario: service `a` with routes `/x`, `/y` of version 1 and `/z` of version 2, each with
/// traffic at T0; `/x` keeps receiving data, the others go quiet for 16 minutes (idle after 15).
/// Guarantees: the quiet series fold into one aggregate per version, the active one stays; the
/// service's and each version's counts over 5 m, 1 h and 1 d are exactly what they were before
/// the fold; a folded route that sends again comes back as its own series.
#[test]
fn idle_series_fold_into_aggregates_without_changing_counts() {
    let mut e = Engine::new(Arc::new(EngineConfig::default()));
    for (route, version, errors) in [("/x", "1", 1), ("/y", "1", 2), ("/z", "2", 3)] {
        let mut obs: Vec<(u64, f64, bool)> =
            (0..10).map(|i| (T0, 10.0 + i as f64, false)).collect();
        for o in obs.iter_mut().take(errors) {
            o.2 = true;
        }
        e.ingest(&batch(SeriesKey::new("a", route, version), &obs), T0);
    }
    let totals = |e: &Engine, w: Span| {
        e.version_slis(Some("a"), w)
            .unwrap()
            .iter()
            .map(|v| (v.version.clone(), v.requests, v.errors))
            .collect::<Vec<_>>()
    };
    let now = T0 + 16 * 60 * NANOS_PER_SEC;
    for t in (T0..=now).step_by(60 * NANOS_PER_SEC as usize) {
        e.ingest(
            &batch(SeriesKey::new("a", "/x", "1"), &[(t, 5.0, false)]),
            t,
        );
    }
    e.advance(now - 2 * 60 * NANOS_PER_SEC);
    assert_eq!(e.series_count(), 3, "nothing idle for 15 minutes yet");
    let before: Vec<_> = [Span::hours(1), Span::days(1)]
        .map(|w| totals(&e, w))
        .to_vec();
    e.advance(now);
    assert_eq!(e.stats().series_folded, 2);
    assert_eq!(e.series_count(), 3, "/x, and one aggregate per version");
    let after: Vec<_> = [Span::hours(1), Span::days(1)]
        .map(|w| totals(&e, w))
        .to_vec();
    assert_eq!(before, after);
    assert_eq!(
        after[0],
        vec![(Some("1".into()), 37, 3), (Some("2".into()), 10, 3)]
    );
    e.ingest(
        &batch(SeriesKey::new("a", "/y", "1"), &[(now, 1.0, false)]),
        now,
    );
    assert_eq!(e.series_count(), 4, "/y is back as its own series");
}

/// Scenario: memory is short (shedding on) while service `a` has two series and new routes and
/// a new service arrive; then memory recovers (shedding off).
/// Guarantees: while shedding, no new series is created (the newcomers fold into `a`'s overflow
/// series and the shared one) and every observation is counted; existing series keep their
/// exact counts; once it is off, new series are created again.
#[test]
fn shedding_folds_new_series_and_counts_everything() {
    let mut e = Engine::new(Arc::new(EngineConfig::default()));
    for r in ["/x", "/y"] {
        e.ingest(&batch(SeriesKey::new("a", r, "1"), &[(T0, 1.0, false)]), T0);
    }
    e.set_shedding(true);
    for i in 0..100 {
        let key = SeriesKey::new("a", &format!("/new/{i}"), "1");
        e.ingest(&batch(key, &[(T0, 1.0, true)]), T0);
        let key = SeriesKey::new(&format!("n{i}"), "/", "1");
        e.ingest(&batch(key, &[(T0, 1.0, false)]), T0);
    }
    e.ingest(
        &batch(SeriesKey::new("a", "/x", "1"), &[(T0, 1.0, false)]),
        T0,
    );
    assert_eq!(
        e.series_count(),
        2 + 2,
        "a's two, a's overflow, the shared overflow"
    );
    let rows = sli(&e, "1m");
    let x = rows.iter().find(|r| &*r.key.operation == "/x").unwrap();
    assert_eq!(x.requests, 2);
    assert_eq!(rows.iter().map(|r| r.requests).sum::<u64>(), 2 + 200 + 1);
    let a: (u64, u64) = rows
        .iter()
        .filter(|r| &*r.key.service == "a")
        .fold((0, 0), |s, r| (s.0 + r.requests, s.1 + r.errors));
    assert_eq!(a, (103, 100), "a's SLO counts are whole");
    e.set_shedding(false);
    e.ingest(
        &batch(SeriesKey::new("a", "/z", "1"), &[(T0, 1.0, false)]),
        T0,
    );
    assert_eq!(e.series_count(), 5);
}

/// Scenario: live traffic over 3 seconds in two series, archived a few seconds later with
/// `second_rows`, then replayed into a fresh engine with `apply_seconds`. Guarantees: the
/// replayed engine answers the same counts, error ratios, latency-threshold counts and
/// quantiles as the live one; a replay under other latency thresholds estimates its
/// within-counts from the digests. Without `keep_second_digests` the rows have no digests.
#[test]
fn archived_seconds_replay_to_the_same_slis() {
    let cfg = || {
        let mut c = EngineConfig::default();
        c.latency_thresholds_per_service
            .insert("checkout".into(), vec![50.0]);
        c.keep_second_digests = true;
        Arc::new(c)
    };
    let mut live = Engine::new(cfg());
    let other = SeriesKey::new("checkout", "/cart", "1.0");
    for s in 0..3u64 {
        let t = T0 + s * S + S / 2;
        let reqs: Vec<(u64, f64, bool)> = (0..100)
            .map(|i| (t, 10.0 + f64::from(i) * (1.0 + s as f64), i % 10 == 0))
            .collect();
        live.ingest(&batch(checkout(), &reqs), t);
        live.ingest(&batch(other.clone(), &reqs[..20]), t);
    }
    live.advance(T0 + 5 * S);
    let rows: Vec<SecondObs> = (T0 / S..T0 / S + 3)
        .flat_map(|s| live.second_rows(s))
        .collect();
    assert_eq!(rows.len(), 6);
    assert!(
        rows.iter()
            .all(|r| r.digest.is_some() && r.thresholds_ms == [50.0])
    );
    let mut lean = Engine::new(Arc::new(EngineConfig::default()));
    lean.ingest(&batch(checkout(), &[(T0, 10.0, false)]), T0);
    let lean_rows = lean.second_rows(T0 / S);
    assert!(lean_rows.len() == 1 && lean_rows[0].digest.is_none());

    let mut replay = Engine::new(cfg());
    for s in 0..3u64 {
        let second: Vec<SecondObs> = rows
            .iter()
            .filter(|r| r.second == T0 / S + s)
            .cloned()
            .collect();
        replay.apply_seconds(&second, T0 + (s + 1) * S);
    }
    replay.advance(T0 + 5 * S);
    let (a, b) = (sli(&live, "1m"), sli(&replay, "1m"));
    assert_eq!(a.len(), b.len());
    for (x, y) in a.iter().zip(&b) {
        assert_eq!(
            (&x.key, x.requests, x.errors),
            (&y.key, y.requests, y.errors)
        );
        assert_eq!(x.latency_good, y.latency_good);
        let (qx, qy) = (x.latency_ms.unwrap(), y.latency_ms.unwrap());
        assert!((qx.p99 - qy.p99).abs() / qx.p99 < 0.01, "{qx:?} vs {qy:?}");
        assert!((qx.p50 - qy.p50).abs() / qx.p50 < 0.01, "{qx:?} vs {qy:?}");
    }

    // Other thresholds: estimated from the digests (exact counts at or under 100 ms: 1.0 → all
    // of second 0 and half of second 1, ...).
    let mut c = EngineConfig::default();
    c.latency_thresholds_per_service
        .insert("checkout".into(), vec![100.0]);
    let mut other_cfg = Engine::new(Arc::new(c));
    other_cfg.apply_seconds(&rows, T0 + 3 * S);
    let exact: u64 = (0..3u64)
        .map(|s| {
            (0..100)
                .filter(|&i| 10.0 + f64::from(i) * (1.0 + s as f64) <= 100.0)
                .count() as u64
        })
        .sum();
    let got = sli(&other_cfg, "1m")
        .iter()
        .find(|r| r.key == checkout())
        .unwrap()
        .latency_good[0]
        .good;
    assert!(got.abs_diff(exact) <= 3, "{got} vs {exact}");
}
