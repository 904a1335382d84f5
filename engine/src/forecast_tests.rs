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
        f.learn("checkout", h, rate(h, &mut rng));
        let now = (h + 1) * 3600 * 1_000_000_000;
        let facts = vec![ServiceFacts {
            service: "checkout".into(),
            observed_until: now,
            forecast: f.get("checkout"),
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
