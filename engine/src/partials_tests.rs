//! Partials against the engine itself: whatever is fed to one engine directly, and to another
//! through gateways' partials, must come out the same.

use super::*;
use crate::engine::Engine;
use crate::observation::{CounterObs, HistogramObs, RequestObs};
use crate::sli::{SliQuery, SliRow};
use crate::time::{NANOS_PER_SEC, Span};

const S: u64 = NANOS_PER_SEC;
const T0: u64 = 1_800_000_000 * S;

fn cfg() -> Arc<EngineConfig> {
    Arc::new(EngineConfig {
        latency_thresholds_ms: vec![100.0, 250.0],
        ..EngineConfig::default()
    })
}

/// A deterministic generator (no dependency on rand's stream stability).
struct Lcg(u64);
impl Lcg {
    fn next(&mut self) -> u64 {
        self.0 = self
            .0
            .wrapping_mul(6_364_136_223_846_793_005)
            .wrapping_add(1_442_695_040_888_963_407);
        self.0 >> 33
    }
    fn f(&mut self) -> f64 {
        self.next() as f64 / (1u64 << 31) as f64
    }
}

/// Traffic of second `i`: spans of two services over a few routes and versions (some arriving
/// late, some from a clock ahead), a cumulative histogram and a counter from a third service.
fn traffic(rng: &mut Lcg, i: u64) -> Batch {
    let now = T0 + i * S;
    let mut b = Batch::default();
    for n in 0..40 {
        let service = ["checkout", "search"][n % 2];
        let route = ["/a", "/b", "/c"][(rng.next() % 3) as usize];
        let version = ["1.0", "1.1"][(rng.next() % 2) as usize];
        let key = b.key_index(SeriesKey::new(service, route, version));
        // Up to 3 s late, or 2 s ahead.
        let time = (now + 2 * S).saturating_sub(rng.next() % (5 * S));
        let latency_ms = 20.0 + 400.0 * rng.f().powi(3);
        b.requests.push(RequestObs {
            key,
            time,
            latency_ms,
            bad: rng.next().is_multiple_of(17),
        });
    }
    let key = b.key_index(SeriesKey::new("payments", "charge", "2.0"));
    let c = (i + 1) * 10;
    b.histograms.push(HistogramObs {
        key,
        stream: 7,
        time: now,
        start_time: T0 - 60 * S,
        temporality: Temporality::Cumulative,
        bounds_ms: Arc::from(vec![10.0, 100.0, 1000.0]),
        counts: vec![c, 2 * c, c / 2, i],
        min_ms: Some(1.0),
        max_ms: Some(2500.0),
        bad: false,
        exp: None,
    });
    b.counters.push(CounterObs {
        key,
        stream: 8,
        time: now,
        start_time: T0 - 60 * S,
        temporality: Temporality::Cumulative,
        value: i as f64,
        bad: true,
    });
    b
}

fn slis(e: &Engine, window: &str) -> Vec<SliRow> {
    e.slis(&SliQuery {
        service: None,
        window: window.parse().unwrap(),
    })
    .unwrap()
}

/// Guarantees: two gateways splitting the traffic between them, flushing every 250 ms, give a
/// processor the same counts as one engine fed directly — requests, errors and the counts
/// within each latency threshold exactly, in every window, for spans, cumulative histograms
/// and counters alike — and quantiles within the digest's error.
#[test]
fn two_gateways_equal_one_engine() {
    let mut direct = Engine::new(cfg());
    let mut processor = Engine::new(cfg());
    let mut gateways = [PartialBuilder::new(cfg()), PartialBuilder::new(cfg())];
    let mut rng = Lcg(42);
    for i in 0..120u64 {
        let b = traffic(&mut rng, i);
        let now = T0 + i * S;
        direct.ingest(&b, now);
        direct.advance(now);
        // Spans alternate between the gateways by request; metric streams stay on one.
        let (mut g0, mut g1) = (b.clone(), b.clone());
        g0.requests.retain(|r| r.time % 2 == 0);
        g1.requests.retain(|r| r.time % 2 == 1);
        g1.histograms.clear();
        g1.counters.clear();
        gateways[0].add(&g0, now);
        gateways[1].add(&g1, now + S / 2);
        // Flush each quarter second: some seconds are split across flushes.
        if i % 3 != 0 {
            for g in &mut gateways {
                for sp in g.take() {
                    processor.ingest(&sp.batch, now + S / 2);
                }
            }
        }
        processor.advance(now + S / 2);
    }
    for g in &mut gateways {
        for sp in g.take() {
            processor.ingest(&sp.batch, T0 + 120 * S);
        }
    }
    for window in ["10s", "1m", "5m", "1h"] {
        let (a, b) = (slis(&direct, window), slis(&processor, window));
        assert_eq!(a.len(), b.len(), "{window}");
        assert!(a.len() >= 13, "{window}: {}", a.len());
        for (a, b) in a.iter().zip(&b) {
            assert_eq!(a.key, b.key);
            assert_eq!(
                (a.requests, a.errors),
                (b.requests, b.errors),
                "{window} {}",
                a.key
            );
            assert_eq!(a.latency_good, b.latency_good, "{window} {}", a.key);
            if let (Some(qa), Some(qb)) = (a.latency_ms, b.latency_ms) {
                for (x, y) in [(qa.p50, qb.p50), (qa.p90, qb.p90), (qa.p99, qb.p99)] {
                    assert!(
                        (x - y).abs() <= 0.03 * x.max(1.0),
                        "{window} {}: {x} vs {y}",
                        a.key
                    );
                }
            }
        }
    }
    let (d, p) = (direct.stats(), processor.stats());
    assert_eq!(d.requests_applied, p.requests_applied);
    assert_eq!(d.metric_points_applied, p.metric_points_applied);
    assert_eq!(d.late_dropped, 0);
    assert_eq!(
        gateways[0].stats().metric_baselines,
        2,
        "one per cumulative stream"
    );
}

/// Guarantees: the builder keeps only what arrived since the last take (its memory does not
/// grow with history), and one service's partials come out as one batch holding only partials.
#[test]
fn take_empties_the_builder_and_groups_by_service() {
    let mut g = PartialBuilder::new(cfg());
    let mut rng = Lcg(7);
    for i in 0..3 {
        g.add(&traffic(&mut rng, i), T0 + i * S);
    }
    assert!(g.cells() > 0 && g.series() > 0);
    let out = g.take();
    assert_eq!((g.cells(), g.series()), (0, 0));
    let names: Vec<&str> = out.iter().map(|s| &*s.service).collect();
    assert_eq!(names, ["checkout", "payments", "search"]);
    for sp in &out {
        assert!(sp.batch.requests.is_empty() && sp.batch.histograms.is_empty());
        assert!(sp.batch.keys.iter().all(|k| k.service == sp.service));
        assert_eq!(
            sp.points,
            sp.batch.partials.iter().map(|p| p.points).sum::<u64>()
        );
        for p in &sp.batch.partials {
            assert_eq!(p.thresholds_ms, [100.0, 250.0]);
            assert!(p.within.iter().all(|&w| w <= p.timed) && p.errors <= p.requests);
        }
    }
    assert!(g.take().is_empty());
}

/// Guarantees: a processor keeps one signal per service from partials as from observations —
/// a service sending spans and metrics is counted once, from its spans — and data older than
/// the allowed lateness is dropped and counted at the processor.
#[test]
fn the_processor_keeps_one_signal_and_drops_late_partials() {
    let mut g = PartialBuilder::new(cfg());
    let mut p = Engine::new(cfg());
    let mut b = Batch::default();
    let key = b.key_index(SeriesKey::new("api", "GET /", "1"));
    b.requests.push(RequestObs {
        key,
        time: T0,
        latency_ms: 5.0,
        bad: false,
    });
    b.counters.push(CounterObs {
        key,
        stream: 1,
        time: T0,
        start_time: 0,
        temporality: Temporality::Delta,
        value: 100.0,
        bad: false,
    });
    // The service's spans arrive first (as in the engine, the signal is chosen per batch).
    let mut spans_only = b.clone();
    spans_only.counters.clear();
    g.add(&spans_only, T0);
    for sp in g.take() {
        p.ingest(&sp.batch, T0);
    }
    g.add(&b, T0);
    for sp in g.take() {
        p.ingest(&sp.batch, T0);
    }
    let r = &slis(&p, "1m")[0];
    assert_eq!(r.requests, 2);
    assert_eq!(p.stats().signal_deduplicated, 1);
    // A partial of a second 10 minutes old (the default lateness is 5 minutes).
    g.add(&spans_only, T0);
    let late = g.take();
    p.advance(T0 + 600 * S);
    let rep = p.ingest(&late[0].batch, T0 + 600 * S);
    assert_eq!(rep.late, 1, "{rep:?}");
}

/// Guarantees: failing requests' trace ids ride the partials to the processor, each with its
/// own series, and the processor lists them for the service as a single engine would; a
/// flush carries at most the newest [`EXEMPLARS_PER_SERVICE`] of a service, so a gateway's
/// memory stays bounded however many requests fail.
#[test]
fn failing_traces_reach_the_processor_through_partials() {
    let mut g = PartialBuilder::new(cfg());
    let mut processor = Engine::new(cfg());
    let mut single = Engine::new(cfg());
    let mut b = Batch::default();
    for i in 0..30u64 {
        let route = if i % 2 == 0 { "/pay" } else { "/refund" };
        let key = b.key_index(SeriesKey::new("checkout", route, "1.2"));
        b.requests.push(RequestObs {
            key,
            time: T0 + i,
            latency_ms: 40.0,
            bad: true,
        });
        b.exemplars.push(Exemplar {
            key,
            trace_id: [i as u8; 16],
            time: T0 + i,
            latency_ms: 40.0,
        });
    }
    let ok = b.key_index(SeriesKey::new("search", "/q", "7"));
    b.requests.push(RequestObs {
        key: ok,
        time: T0,
        latency_ms: 3.0,
        bad: false,
    });
    g.add(&b, T0 + S);
    single.ingest(&b, T0 + S);
    let out = g.take();
    let checkout = out.iter().find(|s| &*s.service == "checkout").unwrap();
    assert_eq!(checkout.batch.exemplars.len(), EXEMPLARS_PER_SERVICE);
    for x in &checkout.batch.exemplars {
        let want = if x.trace_id[0] % 2 == 0 {
            "/pay"
        } else {
            "/refund"
        };
        assert_eq!(&*checkout.batch.keys[x.key as usize].operation, want);
    }
    assert!(
        out.iter()
            .all(|s| s.service == checkout.service || s.batch.exemplars.is_empty())
    );
    for sp in &out {
        processor.ingest(&sp.batch, T0 + S);
    }
    assert_eq!(
        processor.exemplars("checkout"),
        single.exemplars("checkout")
    );
    assert_eq!(processor.exemplars("checkout")[0].trace_id, "1d".repeat(16));
    assert!(g.take().is_empty());
}

/// Scenario: for 2 minutes, 30 requests a second go checkout → payments → db (db sends no
/// spans; payments names it by `peer.service`), every 7th failing; a trace's halves all reach
/// the gateway its number picks, the payments half one second after checkout's, often in the
/// next flush; the gateways flush every second and one is often idle (it only advances).
/// Guarantees: the processor's graph, built from both gateways' partials, equals the graph of
/// one engine fed the same halves: every edge's calls and errors, in every window; its p99
/// within 3 %. Between flushes a gateway holds only waiting halves and the calls since.
#[test]
fn calls_through_two_gateways_equal_one_engine() {
    use crate::observation::{CallObs, CallSide};
    let mut direct = Engine::new(cfg());
    let mut processor = Engine::new(cfg());
    let mut gateways = [PartialBuilder::new(cfg()), PartialBuilder::new(cfg())];
    let half = |service: &str, side: CallSide, n: u64, span: u8, t: u64, bad: bool| CallObs {
        service: service.into(),
        side,
        trace_id: {
            let mut id = [0; 16];
            id[..8].copy_from_slice(&n.to_be_bytes());
            id
        },
        span_id: [span; 8],
        time: t,
        latency_ms: 5.0 + (n % 40) as f64,
        bad,
    };
    let mut pending: Vec<(usize, CallObs)> = Vec::new();
    for i in 0..140u64 {
        let now = T0 + i * S;
        let mut batches = [Batch::default(), Batch::default()];
        // Halves held back a second arrive now.
        for (g, c) in pending.drain(..) {
            batches[g].calls.push(c);
        }
        if i < 120 {
            for k in 0..30u64 {
                let n = i * 30 + k;
                let bad = n.is_multiple_of(7);
                let g = (n % 2) as usize;
                let t = now + k * S / 30;
                batches[g].calls.push(half(
                    "checkout",
                    CallSide::Client {
                        peer: Some("payments.internal".into()),
                    },
                    n,
                    1,
                    t,
                    bad,
                ));
                pending.push((g, half("payments", CallSide::Server, n, 1, t, bad)));
                pending.push((
                    g,
                    half(
                        "payments",
                        CallSide::Client {
                            peer: Some("db".into()),
                        },
                        n,
                        2,
                        t,
                        bad,
                    ),
                ));
            }
        }
        for (g, b) in gateways.iter_mut().zip(&batches) {
            direct.ingest(b, now);
            if b.calls.is_empty() {
                g.advance(now);
            } else {
                g.add(b, now);
            }
            // Most seconds end with a flush; every fifth does not.
            if i % 5 != 4 {
                for sp in g.take() {
                    assert!(sp.batch.partials.is_empty() && !sp.batch.edges.is_empty());
                    assert!(sp.batch.edges.iter().all(|e| *e.client == *sp.service));
                    processor.ingest(&sp.batch, now);
                }
            }
            // At most the last second's halves, and the first 10 s of db calls, wait.
            assert!(g.calls_waiting() <= 30 * 11, "{}", g.calls_waiting());
        }
        direct.advance(now);
        processor.advance(now);
    }
    let now = T0 + 140 * S;
    for window in [Span::minutes(1), Span::minutes(5), Span::hours(1)] {
        let (a, b) = (
            direct.graph().edges(window, now),
            processor.graph().edges(window, now),
        );
        assert_eq!(a.len(), 2, "{a:?}");
        for (a, b) in a.iter().zip(&b) {
            assert_eq!(
                (&a.client, &a.server, a.requests, a.errors),
                (&b.client, &b.server, b.requests, b.errors),
                "{window}"
            );
            let (x, y) = (a.p99_ms.unwrap(), b.p99_ms.unwrap());
            assert!((x - y).abs() <= 0.03 * x, "{window}: {x} vs {y}");
        }
        if window == Span::hours(1) {
            assert_eq!(a[0].requests, 3600);
            assert_eq!(
                (a[1].client.as_str(), a[1].server.as_str()),
                ("payments", "db")
            );
            assert_eq!(a[1].errors, 3600_u64.div_ceil(7));
        }
    }
}

/// Scenario: two pods of `worker` report cumulative `process.cpu.time` (half a core and one
/// and a half) and a memory gauge every 10 s for 6 minutes, each pod's streams through its own
/// gateway; the second pod restarts at minute 3 (a new start time, its total from zero); the
/// gateways flush every second, and a processor applies their partials.
/// Guarantees: the processor's usage equals that of one engine fed the points directly: the
/// CPU's amount and rate, and the memory's level, over 1 minute, 5 minutes and the hour;
/// cumulative sums arrive as deltas (converted where their stream's points arrive).
#[test]
fn usage_through_gateways_equals_one_engine() {
    use crate::usage::{UsageKind, UsageObs};
    let mut direct = Engine::new(cfg());
    let mut processor = Engine::new(cfg());
    let mut gateways = [PartialBuilder::new(cfg()), PartialBuilder::new(cfg())];
    let mut totals = [0.0f64, 0.0];
    let mut starts = [T0 - 100 * S, T0 - 100 * S];
    for i in 0..360u64 {
        let now = T0 + i * S;
        for (pod, g) in gateways.iter_mut().enumerate() {
            let mut b = Batch::default();
            totals[pod] += [0.5, 1.5][pod];
            if pod == 1 && i == 180 {
                starts[1] = now;
                totals[1] = 1.5;
            }
            if i % 10 == 9 {
                let point = |metric: &str, kind, value, stream| UsageObs {
                    service: "worker".into(),
                    metric: metric.into(),
                    stream,
                    time: now,
                    start_time: starts[pod],
                    temporality: Temporality::Cumulative,
                    kind,
                    value,
                };
                b.usage.push(point(
                    "process.cpu.time",
                    UsageKind::Rate,
                    totals[pod],
                    pod as u64,
                ));
                let mem = 1e8 * (pod + 1) as f64 + (i % 60) as f64;
                b.usage.push(point(
                    "process.memory.usage",
                    UsageKind::Level,
                    mem,
                    10 + pod as u64,
                ));
            }
            direct.ingest(&b, now);
            g.add(&b, now);
            for sp in g.take() {
                assert!(
                    sp.batch
                        .usage
                        .iter()
                        .all(|u| u.kind == UsageKind::Level || u.temporality == Temporality::Delta)
                );
                processor.ingest(&sp.batch, now);
            }
        }
        direct.advance(now);
        processor.advance(now);
    }
    let now = direct.now();
    for w in [Span::minutes(1), Span::minutes(5), Span::hours(1)] {
        let (a, b) = (direct.usage(), processor.usage());
        let cpu = |u: &crate::usage::Usage| u.amount("worker", "process.cpu.time", w, now).unwrap();
        assert!(
            (cpu(a) - cpu(b)).abs() < 1e-9,
            "{w}: {} vs {}",
            cpu(a),
            cpu(b)
        );
        assert!(cpu(a) > 0.0);
        for m in ["process.cpu.time", "process.memory.usage"] {
            let (x, y) = (
                a.value("worker", m, w, now).unwrap(),
                b.value("worker", m, w, now).unwrap(),
            );
            assert!((x - y).abs() <= 1e-9 * x.abs(), "{w} {m}: {x} vs {y}");
        }
    }
    // Two cores over the last minute (both pods' whole intervals inside it).
    let cores = processor
        .usage()
        .value("worker", "process.cpu.time", Span::minutes(1), now)
        .unwrap();
    assert!((cores - 2.0).abs() < 0.05, "{cores}");
}
