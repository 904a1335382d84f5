//! SLO and burn-rate tests in event time.

use super::*;
use crate::config::EngineConfig;
use crate::observation::{Batch, CounterObs, SeriesKey, Temporality};
use std::sync::Arc;

const S: u64 = 1_000_000_000;
const T0: u64 = 1_800_000_000 * S;
const R: f64 = 10_000.0; // requests per second

fn slo() -> Slo {
    Slo {
        name: "checkout-availability".into(),
        service: "checkout".into(),
        objective: 0.999,
        period: Span::days(30),
        sli: SloSli::Availability,
        tiers: BurnTier::defaults(Span::days(30)),
        selector: Default::default(),
    }
}

/// One second (or minute) of traffic: `good` and `bad` requests at event time `t`.
fn traffic(e: &mut Engine, t: u64, good: f64, bad: f64) {
    let mut b = Batch {
        keys: vec![SeriesKey::new("checkout", "/pay", "1")],
        ..Default::default()
    };
    for (value, is_bad, stream) in [(good, false, 1), (bad, true, 2)] {
        if value > 0.0 {
            b.counters.push(delta(0, stream, t, value, is_bad));
        }
    }
    e.ingest(&b, t);
    e.advance(t);
}

/// A delta counter point of series `key`.
fn delta(key: u32, stream: u64, time: u64, value: f64, bad: bool) -> CounterObs {
    CounterObs {
        key,
        stream,
        time,
        start_time: 0,
        temporality: Temporality::Delta,
        value,
        bad,
    }
}

/// Three days of clean traffic before T0 (per minute, then per second for the last 2 hours).
fn clean_history(e: &mut Engine) {
    let mut t = T0 - (3 * 86_400 + 3600) * S;
    while t < T0 - 7200 * S {
        traffic(e, t + 30 * S, R * 60.0, 0.0);
        t += 60 * S;
    }
    while t < T0 {
        traffic(e, t + S / 2, R, 0.0);
        t += S;
    }
}

/// Table (SRE workbook, ch. 5): a 99.9 % SLO with the default tiers, clean traffic for the
/// 3 days before, then a constant error ratio from t = 0.
/// Guarantees: the first tier to fire and when, to ±1 s: (1 − SLO) × factor × long ÷ ratio.
#[test]
fn burn_rate_timing_matches_the_workbook() {
    let rows: [(f64, Option<&str>, f64); 6] = [
        (1.0, Some("page_fast"), 51.84),
        (0.10, Some("page_fast"), 8.64 * 60.0),
        (0.02, Some("page_fast"), 43.2 * 60.0),
        (0.01, Some("page_slow"), 3.6 * 3600.0),
        (0.005, Some("ticket"), 14.4 * 3600.0),
        (0.0005, None, 86_400.0),
    ];
    let cfg = Arc::new(EngineConfig::default());
    for (ratio, want_tier, want_s) in rows {
        let mut e = Engine::new(cfg.clone());
        clean_history(&mut e);
        let status = evaluate(&e, &slo());
        assert!(
            status.firing.is_empty(),
            "{ratio}: nothing fires on clean traffic"
        );
        assert!((status.budget_remaining - 1.0).abs() < 1e-12);
        let limit = (want_s + 120.0) as u64;
        let mut fired = None;
        for k in 0..limit {
            traffic(&mut e, T0 + k * S + S / 2, R * (1.0 - ratio), R * ratio);
            // Evaluate at the end of second k: k + 1 seconds of errors so far.
            e.advance(T0 + (k + 1) * S - 1);
            let st = evaluate(&e, &slo());
            if let Some(first) = st.firing.first() {
                fired = Some((first.clone(), (k + 1) as f64));
                break;
            }
        }
        match (want_tier, fired) {
            (Some(tier), Some((got, at))) => {
                assert_eq!(got, tier, "ratio {ratio}");
                assert!(
                    (at - want_s).abs() <= 1.0,
                    "ratio {ratio}: fired at {at} s, expected {want_s} s"
                );
            }
            (None, None) => {}
            (want, got) => panic!("ratio {ratio}: expected {want:?}, got {got:?}"),
        }
    }
}

/// Guarantees: a faster firing tier inhibits slower ones; budget and exhaustion follow.
#[test]
fn inhibition_budget_and_eta() {
    let mut e = Engine::new(Arc::new(EngineConfig::default()));
    clean_history(&mut e);
    // 100 % errors for 8 hours: every tier is over; only the fastest fires.
    let mut t = T0;
    while t < T0 + 8 * 3600 * S {
        traffic(&mut e, t + 30 * S, 0.0, R * 60.0);
        t += 60 * S;
    }
    let st = evaluate(&e, &slo());
    assert!(st.tiers.iter().all(|t| t.over), "{:?}", st.tiers);
    assert_eq!(st.firing, vec!["page_fast".to_string()]);
    // 8 h of 100 % errors at a 0.1 % budget over (3 d + 8 h) of traffic: spent many times over.
    assert!(st.budget_remaining < 0.0);
    assert_eq!(st.exhaustion_eta_s, Some(0.0));
    assert!(
        (st.burn_rates["1h"] - 1000.0).abs() < 1e-6,
        "{:?}",
        st.burn_rates
    );
}

/// Guarantees: below the minimum events a tier cannot fire (3 failed requests of 3 do not page).
#[test]
fn minimum_events_guard() {
    let mut e = Engine::new(Arc::new(EngineConfig::default()));
    traffic(&mut e, T0, 0.0, 3.0);
    let st = evaluate(&e, &slo());
    assert!(st.tiers[0].burn_long > 14.4);
    assert!(st.firing.is_empty());
    assert_eq!(st.tiers[0].events_long, 3.0);
}

/// Scenario: a fresh engine (no history) sees one minute of 0.17 % errors, which burns a
/// 99.9 % budget at 1.7× over every window it has data for.
/// Guarantees: no tier fires until its long window is covered to its `min_coverage`: the
/// 3-day ticket tier does not fire on one minute of data, each tier reports how much of its
/// windows is covered, and a tier with a short long window fires once that is covered.
#[test]
fn tiers_wait_until_their_long_window_is_covered() {
    let mut e = Engine::new(Arc::new(EngineConfig::default()));
    let ratio = 0.0017;
    let mut slo = slo();
    // Besides the defaults, a tier over 2 minutes at 1.5×.
    slo.tiers.push(BurnTier {
        name: "short".into(),
        factor: 1.5,
        long: Span::minutes(2),
        short: Span(30),
        severity: Severity::Ticket,
        min_events: 100,
        min_coverage: DEFAULT_MIN_COVERAGE,
    });
    slo.tiers
        .retain(|t| t.name != "page_fast" && t.name != "page_slow");
    for k in 0..60 {
        traffic(&mut e, T0 + k * S, R * (1.0 - ratio), R * ratio);
    }
    let st = evaluate(&e, &slo);
    let ticket = &st.tiers[0];
    assert_eq!(ticket.name, "ticket");
    assert!(
        ticket.burn_long > 1.6 && ticket.burn_short > 1.6,
        "{ticket:?}"
    );
    assert!(st.firing.is_empty(), "{:?}", st.firing);
    assert!(
        ticket.coverage_long < 0.001,
        "59 s of 3 d: {}",
        ticket.coverage_long
    );
    assert!(ticket.coverage_short < 0.01);
    let short = &st.tiers[1];
    assert!(
        (short.coverage_long - 59.0 / 120.0).abs() < 1e-9,
        "{short:?}"
    );
    assert!((short.coverage_short - 1.0).abs() < 1e-9);
    // Another minute: the 2-minute tier is covered (≥ 90 %) and fires; the 3-day one still not.
    for k in 60..110 {
        traffic(&mut e, T0 + k * S, R * (1.0 - ratio), R * ratio);
    }
    let st = evaluate(&e, &slo);
    assert_eq!(st.firing, vec!["short".to_string()]);
    assert!(!st.tiers[0].over);
    // A tier that accepts any coverage is over on what there is (and inhibited by the faster).
    slo.tiers[0].min_coverage = 0.0;
    let st = evaluate(&e, &slo);
    assert!(st.tiers[0].over && !st.tiers[0].firing, "{:?}", st.tiers[0]);
}

/// Guarantees: factors for other periods follow budget share × period ÷ long window.
#[test]
fn derived_factors() {
    let f = |p: Span| {
        BurnTier::defaults(p)
            .iter()
            .map(|t| t.factor)
            .collect::<Vec<_>>()
    };
    let close = |a: Vec<f64>, b: [f64; 3]| a.iter().zip(b).all(|(x, y)| (x - y).abs() < 1e-9);
    assert!(close(f(Span::days(30)), [14.4, 6.0, 1.0]));
    assert!(close(f(Span::days(7)), [3.36, 1.4, 7.0 * 0.1 / 3.0]));
    assert!(close(f(Span::days(28)), [13.44, 5.6, 28.0 * 0.1 / 3.0]));
}

/// Table: the deploy gate's strategy from the budget left.
#[test]
fn gate_strategies() {
    for (budget, want) in [
        (1.0, Strategy::Aggressive),
        (0.51, Strategy::Aggressive),
        (0.5, Strategy::Conservative),
        (0.2, Strategy::Conservative),
        (0.19, Strategy::UltraConservative),
        (0.05, Strategy::UltraConservative),
        (0.049, Strategy::Frozen),
        (-3.0, Strategy::Frozen),
    ] {
        assert_eq!(Strategy::for_budget(budget), want, "{budget}");
    }
}

/// Guarantees: a latency SLO counts requests over the threshold as bad, among timed requests.
#[test]
fn latency_slo() {
    let cfg = EngineConfig {
        latency_thresholds_ms: vec![300.0],
        ..Default::default()
    };
    let mut e = Engine::new(Arc::new(cfg));
    let mut b = Batch {
        keys: vec![SeriesKey::new("checkout", "/pay", "1")],
        ..Default::default()
    };
    for i in 0..1000 {
        let latency_ms = if i % 100 == 0 { 900.0 } else { 50.0 };
        b.requests.push(crate::RequestObs {
            key: 0,
            time: T0,
            latency_ms,
            bad: false,
        });
    }
    e.ingest(&b, T0);
    let s = Slo {
        sli: SloSli::Latency {
            threshold_ms: 300.0,
        },
        objective: 0.99,
        ..slo()
    };
    let st = evaluate(&e, &s);
    assert!(
        (st.burn_rates["5m"] - 1.0).abs() < 1e-9,
        "1 % slow at a 1 % budget burns at 1×"
    );
    assert_eq!(st.period_events, (990.0, 1000.0));
}

/// Scenario: checkout serves prod and staging (dimension `deployment.environment`) on two
/// routes; staging fails half its requests, prod's `/cart` fails 10 %, prod's `/pay` none.
/// Guarantees: an SLO with `selector: {deployment.environment: prod}` counts prod's requests
/// alone, one with `{operation: /pay, deployment.environment: prod}` only that route, and the
/// service-wide SLO everything (selectors never change what the others count).
#[test]
fn selectors_take_part_of_a_service() {
    use crate::observation::RequestObs;
    let mut e = Engine::new(Arc::new(EngineConfig::default()));
    let key = |op: &str, env: &str| SeriesKey {
        dims: vec![("deployment.environment".into(), env.into())].into(),
        ..SeriesKey::new("checkout", op, "1")
    };
    let t = T0;
    let mut b = Batch {
        keys: vec![
            key("/pay", "prod"),
            key("/cart", "prod"),
            key("/pay", "staging"),
        ],
        ..Default::default()
    };
    for (k, n, bad_every) in [(0u32, 1000u64, 0u64), (1, 1000, 10), (2, 1000, 2)] {
        for i in 0..n {
            b.requests.push(RequestObs {
                key: k,
                time: t,
                latency_ms: 10.0,
                bad: bad_every > 0 && i % bad_every == 0,
            });
        }
    }
    e.ingest(&b, t);
    e.advance(t + S);
    let with = |sel: &[(&str, &str)]| Slo {
        selector: sel
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect(),
        ..slo()
    };
    let ratio = |s: &Slo| error_ratio(&e, s, Span::minutes(5));
    assert_eq!(ratio(&slo()), 600.0 / 3000.0);
    assert_eq!(
        ratio(&with(&[("deployment.environment", "prod")])),
        100.0 / 2000.0
    );
    assert_eq!(
        ratio(&with(&[
            ("deployment.environment", "prod"),
            ("operation", "/pay")
        ])),
        0.0
    );
    assert_eq!(ratio(&with(&[("operation", "/cart")])), 100.0 / 1000.0);
    assert_eq!(
        ratio(&with(&[("deployment.environment", "dev")])),
        0.0,
        "no series: no events"
    );
    let json = serde_json::to_value(slo()).unwrap();
    assert!(
        json.get("selector").is_none(),
        "unset selectors are not written"
    );
}

/// Scenario: three routes of a service, 1 000 requests a second each, with 3 days of clean
/// history; then /pay fails 30 % of its requests (the other two 0.1 %) until the page tier fires.
/// Guarantees: the SLO's attribution names operation /pay first, with its share of the bad
/// events and its lift; the version (one value) is not listed; a burn-rate decision carries
/// the attribution in its evidence and names the route in its reason.
#[test]
fn a_failing_route_is_named_in_the_evidence() {
    use crate::policy::{Action, Evidence, Policy, PolicyEngine, Rule, ServiceFacts};
    let mut e = Engine::new(Arc::new(EngineConfig::default()));
    let routes = ["/pay", "/cart", "/ship"];
    let second = |e: &mut Engine, t: u64, failing: bool| {
        let mut b = Batch {
            keys: routes
                .iter()
                .map(|r| SeriesKey::new("checkout", r, "1"))
                .collect(),
            ..Default::default()
        };
        for (i, route) in routes.iter().enumerate() {
            let bad_share = if failing && *route == "/pay" {
                0.3
            } else {
                0.001
            };
            for (value, is_bad, stream) in [
                (1000.0 * (1.0 - bad_share), false, 2 * i as u64 + 1),
                (1000.0 * bad_share, true, 2 * i as u64 + 2),
            ] {
                b.counters.push(delta(i as u32, stream, t, value, is_bad));
            }
        }
        e.ingest(&b, t);
        e.advance(t);
    };
    let mut t = T0 - 7200 * S;
    while t < T0 {
        second(&mut e, t + S / 2, false);
        t += S;
    }
    let slo = slo();
    let mut status = evaluate(&e, &slo);
    while status.firing.is_empty() {
        second(&mut e, t + S / 2, true);
        t += S;
        status = evaluate(&e, &slo);
        assert!(t < T0 + 600 * S, "never fired");
    }
    let top = &status.attribution[0];
    assert_eq!(
        (top.dimension.as_str(), top.value.as_str()),
        ("operation", "/pay")
    );
    assert!(top.share_of_bad > 0.95, "{top:?}");
    assert!(top.lift > 2.5, "{top:?}");
    assert!(status.attribution.iter().all(|a| a.dimension != "version"));

    let mut policy = PolicyEngine::new(Policy::new(vec![Rule::new(
        "page",
        "burn_rate.page".parse().unwrap(),
        Action::Page,
    )]));
    let facts = vec![ServiceFacts {
        service: "checkout".into(),
        observed_until: t,
        slos: vec![status.clone()],
        ..Default::default()
    }];
    let d = policy.step(t, &facts).pop().expect("a page");
    assert!(d.reason.contains("mostly operation /pay ("), "{}", d.reason);
    match &d.evidence {
        Evidence::BurnRate { attribution, .. } => assert_eq!(attribution, &status.attribution),
        other => panic!("{other:?}"),
    }
    eprintln!("{}", d.reason);
}

/// Guarantees: a burn over a window without events is unknown (None), not 0: the loop's
/// false-positive estimate counts an action resolved over silence as unknown.
#[test]
fn no_events_no_burn() {
    let mut e = Engine::new(Arc::new(EngineConfig::default()));
    e.advance(T0);
    assert_eq!(burn_over(&e, &slo(), Span::minutes(5)), None);
    traffic(&mut e, T0 + S, 900.0, 100.0);
    let b = burn_over(&e, &slo(), Span::minutes(5)).unwrap();
    assert!((b - 100.0).abs() < 1e-9, "{b}");
}
