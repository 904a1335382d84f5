//! The capacity forecast on synthetic growth, and a policy acting on it.

use super::*;
use crate::policy::{Action, Policy, PolicyEngine, Rule, ServiceFacts};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

const H0: u64 = 480_000; // a Unix hour (2024-10-04)

/// 100/s growing 2/s a day, ±20/s over the day, +10/s on one day of the week, noise ±3/s.
fn rate(h: u64, rng: &mut StdRng) -> f64 {
    let day = (h - H0) as f64 / 24.0;
    let phase = 2.0 * std::f64::consts::PI * (h % 24) as f64 / 24.0;
    let weekly = if (h / 24) % 7 == 2 { 10.0 } else { 0.0 };
    100.0 + 2.0 * day + 20.0 * phase.sin() + weekly + rng.random_range(-3.0..3.0)
}

/// Guarantees: after four weeks of hourly samples of a growing, daily and weekly seasonal
/// rate, the trend is learned within 15 % and the next week is forecast within 5 % (MAPE on
/// the held-back tail); a flat series has no `days_to_limit` for a limit above it.
#[test]
fn growth_and_seasons_are_learned() {
    let mut rng = StdRng::seed_from_u64(1);
    let values: Vec<(u64, f64)> = (H0..H0 + 35 * 24).map(|h| (h, rate(h, &mut rng))).collect();
    let mut m = Forecaster::default();
    for &(h, v) in &values[..28 * 24] {
        m.observe(h, v);
    }
    assert!(
        (m.trend_per_day() - 2.0).abs() < 0.3,
        "{}",
        m.trend_per_day()
    );
    let mape = holdout_errors(&values, 0.2).unwrap().mape;
    eprintln!(
        "trend {:.2}/s a day, MAPE of the last week {:.2} %",
        m.trend_per_day(),
        100.0 * mape
    );
    assert!(mape < 0.05, "{mape}");

    let mut flat = Forecaster::default();
    for h in H0..H0 + 14 * 24 {
        flat.observe(h, 50.0 + rng.random_range(-1.0..1.0));
    }
    assert_eq!(flat.days_to_limit(100.0, 50.0), None);
    assert_eq!(flat.days_to_limit(40.0, 50.0), Some(0.0));
}

/// Scenario: the growing rate above against a capacity limit of 220/s (its daily peak, 120 +
/// 2/s a day, reaches 220 on day 50); a rule `forecast.days_to_limit < 14` → ticket.
/// Guarantees: the ticket fires once, on day 36 ± 1 (14 days before the limit), naming the
/// service, the limit and the days left.
#[test]
fn a_ticket_fires_two_weeks_before_the_limit() {
    let mut rng = StdRng::seed_from_u64(2);
    let mut f = Forecasts::new(
        &[CapacityLimit {
            service: "checkout".into(),
            metric: "request_rate".into(),
            limit: 220.0,
        }],
        10,
    );
    let rule = Rule::new(
        "scale-now",
        "forecast.days_to_limit < 14".parse().unwrap(),
        Action::Ticket,
    );
    assert_eq!(rule.when.to_string(), "forecast.days_to_limit < 14");
    let mut policy = PolicyEngine::new(Policy::new(vec![rule]));
    let mut tickets = Vec::new();
    for h in H0..H0 + 60 * 24 {
        f.learn("checkout", "request_rate", h, rate(h, &mut rng));
        let now = (h + 1) * 3600 * 1_000_000_000;
        let facts = vec![ServiceFacts {
            service: "checkout".into(),
            observed_until: now,
            forecast: f.most_urgent("checkout"),
            ..Default::default()
        }];
        for d in policy.step(now, &facts) {
            if d.action == Action::Ticket {
                tickets.push(((h - H0) as f64 / 24.0, d.reason));
            }
        }
    }
    eprintln!("{tickets:?}");
    assert_eq!(tickets.len(), 1, "{tickets:?}");
    let (day, reason) = &tickets[0];
    assert!((35.0..=37.0).contains(day), "ticket on day {day}");
    assert!(
        reason.contains("checkout request rate") && reason.contains("limit of 220/s"),
        "{reason}"
    );
}

/// Scenario: for six days, an engine sees `worker` use 2 cores growing a quarter of a core a
/// day (delta `process.cpu.time` every minute) and one request a minute; its limits are 4
/// cores and 1000 requests a second; the forecasts sample the engine each hour; a rule
/// `forecast.days_to_limit < 14` → ticket.
/// Guarantees: the CPU is forecast from the engine's usage: the last hour's cores (3.5 ± 0.05)
/// and the trend (0.25 ± 0.03 a day), 2 ± 0.3 days to the limit; the request rate has no days
/// to its far limit; the policy reads the CPU's forecast (the nearer) and its reason names the
/// metric.
#[test]
fn a_usage_metric_is_forecast_against_its_limit() {
    use crate::config::EngineConfig;
    use crate::engine::Engine;
    use crate::observation::{Batch, RequestObs, SeriesKey, Temporality};
    use crate::usage::{UsageKind, UsageObs};
    const S: u64 = 1_000_000_000;
    let limits = [
        CapacityLimit {
            service: "worker".into(),
            metric: "process.cpu.time".into(),
            limit: 4.0,
        },
        CapacityLimit {
            service: "worker".into(),
            metric: REQUEST_RATE.into(),
            limit: 1000.0,
        },
    ];
    let mut f = Forecasts::new(&limits, 10);
    let mut e = Engine::new(std::sync::Arc::new(EngineConfig::default()));
    let t0 = H0 * 3600 * S;
    for minute in 0..6 * 24 * 60u64 {
        let t = t0 + (minute + 1) * 60 * S;
        let cores = 2.0 + 0.25 * minute as f64 / 1440.0;
        let mut b = Batch::default();
        let k = b.key_index(SeriesKey::new("worker", "job", "1"));
        b.requests.push(RequestObs {
            key: k,
            time: t - S,
            latency_ms: 10.0,
            bad: false,
        });
        b.usage.push(UsageObs {
            service: "worker".into(),
            metric: "process.cpu.time".into(),
            stream: 1,
            time: t,
            start_time: t - 60 * S,
            temporality: Temporality::Delta,
            kind: UsageKind::Rate,
            value: cores * 60.0,
        });
        e.ingest(&b, t);
        e.advance(t);
        f.sample(&e);
    }
    let cpu = f.get("worker", "process.cpu.time").unwrap();
    assert!((cpu.value - 3.5).abs() < 0.05, "{cpu:?}");
    assert!((cpu.trend_per_day - 0.25).abs() < 0.03, "{cpu:?}");
    let days = cpu.days_to_limit.unwrap();
    assert!((1.7..2.3).contains(&days), "{cpu:?}");
    let rate = f.get("worker", REQUEST_RATE).unwrap();
    assert_eq!(rate.days_to_limit, None, "{rate:?}");
    assert_eq!(f.most_urgent("worker"), Some(cpu));
    assert_eq!(f.all().count(), 2);

    let rule = Rule::new(
        "scale-now",
        "forecast.days_to_limit < 14".parse().unwrap(),
        Action::Ticket,
    );
    let mut policy = PolicyEngine::new(Policy::new(vec![rule]));
    let facts = vec![ServiceFacts {
        service: "worker".into(),
        observed_until: e.now(),
        forecast: f.most_urgent("worker"),
        ..Default::default()
    }];
    let d = policy.step(e.now(), &facts);
    assert_eq!(d.len(), 1);
    assert!(
        d[0].reason.contains("worker process.cpu.time (3.5") && d[0].reason.contains("limit of 4 "),
        "{}",
        d[0].reason
    );
}

/// Scenario: forecasts of two services learned for five days (one with a limit), snapshotted
/// for one of them and merged into fresh forecasts whose limit changed; then dropped.
/// Guarantees: the snapshot carries only the service asked for; merged, its forecast goes on
/// from where it was (same model, same hours, the same forecast ahead) with today's limit;
/// dropping forgets it.
#[test]
fn forecasts_survive_a_snapshot() {
    let limit = |l: f64| CapacityLimit {
        service: "checkout".into(),
        metric: REQUEST_RATE.into(),
        limit: l,
    };
    let mut f = Forecasts::new(&[limit(500.0)], 10);
    let mut rng = StdRng::seed_from_u64(3);
    for h in H0..H0 + 5 * 24 {
        f.learn("checkout", REQUEST_RATE, h, rate(h, &mut rng));
        f.learn("search", REQUEST_RATE, h, 40.0);
    }
    let snap = f.snapshot_of(|s| s == "checkout");
    assert_eq!(snap.models.len(), 1);
    let mut g = Forecasts::new(&[limit(150.0)], 10);
    g.merge(snap);
    let (a, b) = (
        f.get("checkout", REQUEST_RATE).unwrap(),
        g.get("checkout", REQUEST_RATE).unwrap(),
    );
    assert_eq!(
        (a.hours, a.value, a.trend_per_day),
        (b.hours, b.value, b.trend_per_day)
    );
    assert_eq!(b.limit, Some(150.0));
    assert!(b.days_to_limit.unwrap() < a.days_to_limit.unwrap_or(f64::INFINITY));
    g.learn("checkout", REQUEST_RATE, H0 + 5 * 24, 110.0);
    f.learn("checkout", REQUEST_RATE, H0 + 5 * 24, 110.0);
    assert_eq!(
        f.get("checkout", REQUEST_RATE).unwrap().trend_per_day,
        g.get("checkout", REQUEST_RATE).unwrap().trend_per_day
    );
    assert!(g.get("search", REQUEST_RATE).is_none());
    g.drop_services(|s| s == "checkout");
    assert_eq!(g.all().count(), 0);
}

/// Scenario: a forecast point as releases before usage metrics wrote it (in a ticket's
/// evidence, kept in `policy.ckpt` and the changelog): `rate_per_s`, no `metric`.
/// Guarantees: it still reads, as the request rate's, with its value.
#[test]
fn points_written_before_usage_metrics_still_read() {
    let old =
        r#"{"rate_per_s":12.5,"trend_per_day":1.0,"limit":100.0,"days_to_limit":9.0,"hours":80}"#;
    let p: ForecastPoint = serde_json::from_str(old).unwrap();
    assert_eq!((&*p.metric, p.value, p.hours), (REQUEST_RATE, 12.5, 80));
    let back: ForecastPoint = serde_json::from_str(&serde_json::to_string(&p).unwrap()).unwrap();
    assert_eq!(back, p);
}

/// Scenario: a saved forecast snapshot with one model as this release writes it and one as
/// another release might (a different model layout).
/// Guarantees: the snapshot reads; the model of this release is kept, the other left out
/// (it learns afresh), so a checkpoint never fails over a forecast.
#[test]
fn models_of_another_release_are_left_out() {
    let mut f = Forecasts::new(&[], 10);
    for h in H0..H0 + 80 {
        f.learn("checkout", REQUEST_RATE, h, 10.0);
    }
    let snap = f.snapshot_of(|_| true);
    let mut v = serde_json::to_value(&snap).unwrap();
    let models = v["models"].as_array_mut().unwrap();
    models.push(serde_json::json!(["cart", "request_rate", {"a_new_layout": 1}, {"value": 1.0}]));
    let back: ForecastSnapshot = serde_json::from_value(v).unwrap();
    assert_eq!(back, snap);
}
