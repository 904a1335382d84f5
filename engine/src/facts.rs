//! Gathering the facts the policy decides on: per service, its SLO status, its canary
//! comparisons and whether its telemetry is stale. Pure: reads the engine at its `now`.

use crate::anomaly::SliWatch;
use crate::canary::{CanarySpec, judge};
use crate::engine::Engine;
use crate::policy::{Evidence, ServiceFacts, seconds};
use crate::slo::{Slo, evaluate};
use crate::time::Span;
use serde::{Deserialize, Serialize};

/// When telemetry counts as stale.
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
pub struct StaleRule {
    /// No data for this long.
    pub after: Span,
    /// Or: the newest event time lags its arrival by more than this.
    pub max_lag: Span,
}

impl Default for StaleRule {
    fn default() -> Self {
        Self {
            after: Span::minutes(1),
            max_lag: Span::minutes(1),
        }
    }
}

/// Facts for every service that has data or appears in an SLO or canary spec (sorted).
pub fn gather(
    engine: &Engine,
    slos: &[Slo],
    canaries: &[CanarySpec],
    stale: StaleRule,
    watch: Option<&SliWatch>,
) -> Vec<ServiceFacts> {
    let canaries = &crate::canary::expand(engine, canaries);
    let mut names: Vec<String> = engine.services().iter().map(|s| s.to_string()).collect();
    names.extend(slos.iter().map(|s| s.service.clone()));
    names.extend(canaries.iter().map(|c| c.service.clone()));
    names.sort();
    names.dedup();
    let now = engine.now();
    // Every service's freshness in one pass over the series (not one pass per service).
    let freshness = engine.freshness_by_service();
    names
        .into_iter()
        .map(|service| {
            let (last_event, last_arrival) =
                freshness.get(service.as_str()).copied().unwrap_or((0, 0));
            // A service that never sent data has been silent since the engine began: at
            // start-up it is not stale until `after` has passed with nothing from it.
            let silent_s = if last_arrival == 0 {
                seconds(now, engine.history_start())
            } else {
                seconds(now, last_arrival)
            };
            let lag_s = seconds(last_arrival, last_event);
            let is_stale =
                silent_s > stale.after.secs() as f64 || lag_s > stale.max_lag.secs() as f64;
            ServiceFacts {
                stale: is_stale.then_some(Evidence::Stale { silent_s, lag_s }),
                slos: slos
                    .iter()
                    .filter(|s| s.service == service)
                    .map(|s| evaluate(engine, s))
                    .collect(),
                canaries: canaries
                    .iter()
                    .filter(|c| c.service == service)
                    .map(|c| judge(engine, c))
                    .collect(),
                observed_until: last_event,
                anomalies: watch
                    .map(|w| w.latest(&service, crate::time::secs(now)))
                    .unwrap_or_default(),
                forecast: None,
                regions: Vec::new(),
                spend: None,
                service,
            }
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::EngineConfig;
    use crate::observation::{Batch, RequestObs, SeriesKey};
    use crate::time::NANOS_PER_SEC;
    use std::sync::Arc;

    const S: u64 = NANOS_PER_SEC;
    const T0: u64 = 1_800_000_000 * S;

    fn stale_of(engine: &Engine, canaries: &[CanarySpec], service: &str) -> Option<Evidence> {
        gather(engine, &[], canaries, StaleRule::default(), None)
            .into_iter()
            .find(|f| f.service == service)
            .and_then(|f| f.stale)
    }

    /// Scenario: a processor starts with a canary spec for a service that has sent nothing yet.
    /// Guarantees: the service is not stale at start-up (it has been silent for no time); it
    /// turns stale once `stale.after` (1 min) passes with no data, its silence counted from
    /// the engine's start; data from it makes it fresh again.
    #[test]
    fn a_service_without_data_is_stale_only_after_the_grace() {
        let mut engine = Engine::new(Arc::new(EngineConfig::default()));
        let specs = [CanarySpec::new("checkout", "1.0", "1.1")];
        engine.advance(T0);
        assert_eq!(
            stale_of(&engine, &specs, "checkout"),
            None,
            "fresh at start"
        );
        engine.advance(T0 + 30 * S);
        assert_eq!(stale_of(&engine, &specs, "checkout"), None, "30 s in");
        engine.advance(T0 + 61 * S);
        assert_eq!(
            stale_of(&engine, &specs, "checkout"),
            Some(Evidence::Stale {
                silent_s: 61.0,
                lag_s: 0.0
            })
        );
        let t = T0 + 62 * S;
        let batch = Batch {
            keys: vec![SeriesKey::new("checkout", "/pay", "1.0")],
            requests: vec![RequestObs {
                key: 0,
                time: t,
                latency_ms: 10.0,
                bad: false,
            }],
            ..Default::default()
        };
        engine.ingest(&batch, t);
        assert_eq!(stale_of(&engine, &specs, "checkout"), None, "data arrived");
    }

    /// Scenario: checkout's 1.0 takes 200 requests a second for two minutes; a new 1.1 appears
    /// with 20 a second, failing half of them; 1.2 (configured as a pair) gets 10; payments
    /// has one version. The only canary config is `detect: true` for checkout.
    /// Guarantees: the facts judge 1.1 against 1.0 with the template's thresholds, and fail it;
    /// the configured pair stays as configured (not detected twice); payments, and a version
    /// whose traffic left the window, give no pair.
    #[test]
    fn a_new_version_is_judged_without_a_config_change() {
        let mut engine = Engine::new(Arc::new(EngineConfig::default()));
        let mut template = CanarySpec::detect("checkout");
        template.window = crate::time::Span::minutes(1);
        template.min_requests = 100;
        let specs = [template, CanarySpec::new("checkout", "1.0", "1.2")];
        let keys = vec![
            SeriesKey::new("checkout", "/pay", "1.0"),
            SeriesKey::new("checkout", "/pay", "1.1"),
            SeriesKey::new("checkout", "/pay", "1.2"),
            SeriesKey::new("payments", "/charge", "3"),
            SeriesKey::new("checkout", "/pay", "0.9"),
        ];
        for sec in 0..120u64 {
            let t = T0 + sec * S;
            let mut requests = Vec::new();
            for (key, n, bad_every) in [
                (0u32, 200u64, 1000u64),
                (1, 20, 2),
                (2, 10, 1000),
                (3, 50, 1000),
            ] {
                for i in 0..n {
                    requests.push(RequestObs {
                        key,
                        time: t + i * S / n,
                        latency_ms: 20.0 + (i % 10) as f64,
                        bad: i % bad_every == bad_every - 1,
                    });
                }
            }
            if sec < 10 {
                // An old version, gone a minute before now.
                requests.push(RequestObs {
                    key: 4,
                    time: t,
                    latency_ms: 20.0,
                    bad: false,
                });
            }
            let batch = Batch {
                keys: keys.clone(),
                requests,
                ..Default::default()
            };
            engine.ingest(&batch, t + S);
        }
        engine.advance(T0 + 120 * S);
        let facts = gather(&engine, &[], &specs, StaleRule::default(), None);
        let checkout = facts.iter().find(|f| f.service == "checkout").unwrap();
        let pairs: Vec<(&str, &str, crate::canary::Verdict)> = checkout
            .canaries
            .iter()
            .map(|c| (c.baseline.as_str(), c.canary.as_str(), c.verdict))
            .collect();
        use crate::canary::Verdict;
        assert_eq!(
            pairs,
            [("1.0", "1.2", Verdict::Pass), ("1.0", "1.1", Verdict::Fail)]
        );
        let payments = facts.iter().find(|f| f.service == "payments").unwrap();
        assert!(payments.canaries.is_empty());
        // Judged over the template's 1-minute window (not the default 10m): 59 whole seconds
        // of 20 requests before the second in progress.
        assert_eq!(checkout.canaries[1].metrics[0].canary_n, 59 * 20);
        // 1.1 failed from its first request: its errors began with the engine's history.
        let onset = checkout.canaries[1].first_bad_at.expect("dated");
        assert!((T0..=T0 + 2 * S).contains(&onset), "{}", onset - T0);
        assert_eq!(checkout.canaries[0].first_bad_at, None, "1.2 passes");
    }
}
