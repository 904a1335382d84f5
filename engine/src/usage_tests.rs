use super::*;

const S: u64 = NANOS_PER_SEC;
const T0: u64 = 1_800_000_000 * S;

fn arc(s: &str) -> Arc<str> {
    Arc::from(s)
}

/// Scenario: a service burns 2 CPU seconds a second, exported every 60 s at second 30 of each
/// minute (so every point's interval straddles two minutes), for 20 minutes.
/// Guarantees: the rate is 2 over 1, 5 and 60 minutes (the hour read over the 20 minutes the
/// series covers), i.e. each amount is spread over its interval, and the amount in 5 minutes
/// is 600 CPU seconds.
#[test]
fn a_rate_is_spread_over_its_interval() {
    let mut u = Usage::new(10);
    let (svc, cpu) = (arc("search"), arc("process.cpu.time"));
    let start = T0 + 30 * S;
    let mut now = start;
    for i in 1..=20u64 {
        now = start + i * 60 * S;
        u.add_amount(&svc, &cpu, (now - 60 * S, now), 120.0, now);
    }
    for w in [Span::minutes(1), Span::minutes(5), Span::hours(1)] {
        let r = u.value("search", "process.cpu.time", w, now).unwrap();
        assert!((r - 2.0).abs() < 1e-9, "{w}: {r}");
    }
    let a = u
        .amount("search", "process.cpu.time", Span::minutes(5), now)
        .unwrap();
    assert!((a - 600.0).abs() < 1e-6, "{a}");
    assert_eq!(u.kind("search", "process.cpu.time"), Some(UsageKind::Rate));
    assert_eq!(u.dropped(), 0);
}

/// Scenario: amounts with no interval (a delta point without a start time), one stamped an
/// hour ahead of now, and one with an interval of two hours ending 20 s ago.
/// Guarantees: the first two count whole at their point's time (the future one at now); of
/// the long one, only its last hour's share is kept, spread: 40 of its 7 180 s are in the
/// last minute.
#[test]
fn amounts_without_a_usable_interval_count_at_their_time() {
    let mut u = Usage::new(10);
    let (svc, cpu) = (arc("a"), arc("cpu"));
    let now = T0 + 600 * S;
    u.add_amount(&svc, &cpu, (0, now - 10 * S), 5.0, now);
    u.add_amount(&svc, &cpu, (now, now + 3600 * S), 7.0, now);
    u.add_amount(&svc, &cpu, (now - 7200 * S, now - 20 * S), 11.0, now);
    let a = u.amount("a", "cpu", Span::minutes(1), now).unwrap();
    assert!((a - (12.0 + 11.0 * 40.0 / 7180.0)).abs() < 1e-9, "{a}");
}

/// Scenario: a memory gauge from two pods (100 and 300 MiB), the first reporting twice a
/// minute (100 then 200), over 10 minutes.
/// Guarantees: the level is the sum over streams of each stream's mean per minute: 150 + 300
/// = 450, over any window.
#[test]
fn a_level_sums_its_streams_means() {
    let mut u = Usage::new(10);
    let (svc, mem) = (arc("cart"), arc("process.memory.usage"));
    let mut now = T0;
    for m in 0..10u64 {
        now = T0 + m * 60 * S;
        u.add_level(&svc, &mem, 1, now + 5 * S, 100.0, now + 5 * S);
        u.add_level(&svc, &mem, 1, now + 35 * S, 200.0, now + 35 * S);
        u.add_level(&svc, &mem, 2, now + 20 * S, 300.0, now + 35 * S);
    }
    now += 40 * S;
    for w in [Span::minutes(1), Span::minutes(5), Span::hours(1)] {
        let v = u.value("cart", "process.memory.usage", w, now).unwrap();
        assert!((v - 450.0).abs() < 1e-9, "{w}: {v}");
    }
    assert_eq!(
        u.amount("cart", "process.memory.usage", Span::minutes(5), now),
        None
    );
    let rows = u.rows(Span::minutes(5), now);
    assert_eq!(rows.len(), 1);
    assert_eq!(rows[0].kind, UsageKind::Level);
}

/// Scenario: a store of two series gets a third; a metric sent as a rate then as a level; a
/// series silent for over an hour; a point older than the hour kept.
/// Guarantees: the third series and the changed kind are dropped (counted); the old point is
/// dropped; the silent series is forgotten at the sweep, the live one kept with its last hour.
#[test]
fn usage_is_bounded() {
    let mut u = Usage::new(2);
    let now = T0 + 7200 * S;
    u.add_amount(&arc("a"), &arc("cpu"), (0, now), 1.0, now);
    u.add_amount(&arc("b"), &arc("cpu"), (0, T0), 1.0, T0);
    u.add_amount(&arc("c"), &arc("cpu"), (0, now), 1.0, now);
    u.add_level(&arc("a"), &arc("cpu"), 1, now, 1.0, now);
    u.add_amount(&arc("a"), &arc("cpu"), (0, now - 7000 * S), 1.0, now);
    assert_eq!(u.dropped(), 3);
    assert_eq!(u.len(), 2);
    u.sweep(now);
    assert_eq!(u.len(), 1);
    assert_eq!(u.kind("a", "cpu"), Some(UsageKind::Rate));
    assert!(u.heap_bytes() > 0);
}

/// Scenario: a pod at 2 cores reports cumulative CPU every 60 s; it is read 50 s after its
/// last export (over 5 minutes) and over 10 s, 30 s into a minute of steady points every 10 s.
/// Guarantees: the rate is read up to the newest point (2, not 2 × 250 / 300), and a window
/// shorter than a minute reads the part of the minute in progress it covers (2, not 4).
#[test]
fn rates_are_read_up_to_the_newest_point() {
    let mut u = Usage::new(10);
    let (svc, cpu) = (arc("a"), arc("cpu"));
    let mut last = T0;
    for i in 1..=10u64 {
        last = T0 + i * 60 * S;
        u.add_amount(&svc, &cpu, (last - 60 * S, last), 120.0, last);
    }
    let r = u
        .value("a", "cpu", Span::minutes(5), last + 50 * S)
        .unwrap();
    assert!((r - 2.0).abs() < 1e-9, "{r}");

    let mut v = Usage::new(10);
    let mut t = T0;
    for _ in 0..9 {
        t += 10 * S;
        v.add_amount(&svc, &cpu, (t - 10 * S, t), 20.0, t);
    }
    // t is 30 s into T0's second minute.
    let r = v.value("a", "cpu", Span(10), t).unwrap();
    assert!((r - 2.0).abs() < 1e-9, "{r}");
}

/// Scenario: two pods report memory only every other minute (100 and 300 MiB), one in even
/// minutes, the other in odd ones; read over 5 minutes and 2 minutes.
/// Guarantees: each stream counts with its mean over the window, reported or not in a given
/// minute: 400 either way.
#[test]
fn a_level_counts_streams_that_skip_minutes() {
    let mut u = Usage::new(10);
    let (svc, mem) = (arc("cart"), arc("mem"));
    let mut now = T0;
    for m in 0..10u64 {
        now = T0 + m * 60 * S + 30 * S;
        let (stream, value) = if m % 2 == 0 { (1, 100.0) } else { (2, 300.0) };
        u.add_level(&svc, &mem, stream, now, value, now);
    }
    for w in [Span::minutes(5), Span::minutes(2)] {
        let v = u.value("cart", "mem", w, now).unwrap();
        assert!((v - 400.0).abs() < 1e-9, "{w}: {v}");
    }
}

/// Scenario: a pod's CPU stream comes back after two days of silence with one point covering
/// them (2 cores: 345 600 CPU seconds), and a level minute is offered more streams than kept.
/// Guarantees: only the last hour's share of the long interval is counted (2 cores over any
/// window, not 345 600 CPU seconds in one minute); streams past the cap are dropped and
/// counted.
#[test]
fn long_intervals_and_many_streams_stay_bounded() {
    let mut u = Usage::new(10);
    let (svc, cpu) = (arc("a"), arc("cpu"));
    let now = T0 + 3 * 86_400 * S;
    u.add_amount(&svc, &cpu, (now - 2 * 86_400 * S, now), 345_600.0, now);
    for w in [Span::minutes(1), Span::minutes(5), Span::hours(1)] {
        let r = u.value("a", "cpu", w, now).unwrap();
        assert!((r - 2.0).abs() < 1e-6, "{w}: {r}");
    }
    let mem = arc("mem");
    for stream in 0..MAX_LEVEL_STREAMS as u64 + 100 {
        u.add_level(&svc, &mem, stream, now, 1.0, now);
    }
    assert_eq!(u.dropped(), 100);
    assert_eq!(
        u.value("a", "mem", Span::minutes(1), now),
        Some(MAX_LEVEL_STREAMS as f64)
    );
}

/// Scenario: two services' usage; one's partition moves away.
/// Guarantees: its series are forgotten, the other's kept, the count follows.
#[test]
fn usage_moves_with_its_services() {
    let mut u = Usage::new(10);
    let now = T0;
    u.add_amount(&arc("a"), &arc("cpu"), (0, now), 1.0, now);
    u.add_level(&arc("a"), &arc("mem"), 1, now, 1.0, now);
    u.add_amount(&arc("b"), &arc("cpu"), (0, now), 1.0, now);
    u.drop_services(|s| s == "a");
    assert_eq!(u.len(), 1);
    assert_eq!(u.services(), [arc("b")]);
}

/// Scenario: a pod at 2 cores exports every 60 s at second 30 of each minute; read 20 s into
/// a minute (50 s after its last export) over 1 minute, 2 minutes and 5 minutes.
/// Guarantees: 2 cores over each: the window is read up to the newest point, amount and time
/// alike (not 40 CPU seconds over 10 s).
#[test]
fn a_short_window_between_exports_reads_right() {
    let mut u = Usage::new(10);
    let (svc, cpu) = (arc("a"), arc("cpu"));
    let mut last = T0;
    for i in 1..=10u64 {
        last = T0 + 30 * S + i * 60 * S;
        u.add_amount(&svc, &cpu, (last - 60 * S, last), 120.0, last);
    }
    let now = last + 50 * S;
    for w in [Span::minutes(1), Span::minutes(2), Span::minutes(5)] {
        let r = u.value("a", "cpu", w, now).unwrap();
        assert!((r - 2.0).abs() < 1e-9, "{w}: {r}");
    }
}

/// Scenario: a rolling deploy: ten pods of 1 GiB report every minute for half an hour, then
/// ten new pods replace them for the next half hour.
/// Guarantees: over 5 minutes, ten pods' worth (the old ones gone for longer than they stay
/// present after their last point); over the hour, between ten and eleven (the old pods fade
/// out five minutes after their last point) — never the twenty a sum of every stream's mean
/// would say.
#[test]
fn replaced_streams_fade_out() {
    let mut u = Usage::new(10);
    let (svc, mem) = (arc("cart"), arc("mem"));
    let mut now = T0;
    for m in 0..60u64 {
        now = T0 + m * 60 * S + 30 * S;
        let pods = if m < 30 { 0..10 } else { 10..20 };
        for pod in pods {
            u.add_level(&svc, &mem, pod, now, 1.0, now);
        }
    }
    let five = u.value("cart", "mem", Span::minutes(5), now).unwrap();
    assert!((five - 10.0).abs() < 1e-9, "{five}");
    let hour = u.value("cart", "mem", Span::hours(1), now).unwrap();
    assert!((10.0..11.0).contains(&hour), "{hour}");
}

/// Scenario: a process's engine holds a service's CPU rate (delta points every 10 s for 5
/// minutes) and its memory level; it checkpoints (CBOR, as `engine.ckpt`) and restarts.
/// Guarantees: the restarted engine reads the same usage over 1, 5 and 60 minutes (cost and
/// forecasts do not start again from nothing); a snapshot of only some services (the
/// changelog's) carries no usage.
#[test]
fn usage_survives_a_checkpoint() {
    use crate::config::EngineConfig;
    use crate::engine::{Engine, Snapshot};
    use crate::observation::{Batch, Temporality};
    let cfg = Arc::new(EngineConfig::default());
    let mut e = Engine::new(cfg.clone());
    let point = |metric: &str, kind, t: u64, start: u64, value| UsageObs {
        service: arc("worker"),
        metric: arc(metric),
        stream: 7,
        time: t,
        start_time: start,
        temporality: Temporality::Delta,
        kind,
        value,
    };
    for i in 1..=30u64 {
        let t = T0 + i * 10 * S;
        let b = Batch {
            usage: vec![
                point("process.cpu.time", UsageKind::Rate, t, t - 10 * S, 15.0),
                point("process.memory.usage", UsageKind::Level, t, 0, 5e8),
            ],
            ..Default::default()
        };
        e.ingest(&b, t);
    }
    let now = e.now();
    let mut bytes = Vec::new();
    ciborium::into_writer(&e.snapshot(), &mut bytes).unwrap();
    let snap: Snapshot = ciborium::from_reader(bytes.as_slice()).unwrap();
    let restarted = Engine::restore(cfg, snap).unwrap();
    for w in [Span::minutes(1), Span::minutes(5), Span::hours(1)] {
        let rows = restarted.usage().rows(w, now);
        assert_eq!(rows.len(), 2, "{rows:?}");
        assert_eq!(rows, e.usage().rows(w, now));
    }
    assert!(
        (restarted
            .usage()
            .value("worker", "process.cpu.time", Span::minutes(5), now)
            .unwrap()
            - 1.5)
            .abs()
            < 1e-9
    );
    let part = e.snapshot_of(|s| s == "worker");
    let mut bytes = Vec::new();
    ciborium::into_writer(&part, &mut bytes).unwrap();
    let part: Snapshot = ciborium::from_reader(bytes.as_slice()).unwrap();
    assert!(
        Engine::restore(Arc::new(EngineConfig::default()), part)
            .unwrap()
            .usage()
            .is_empty()
    );
}
