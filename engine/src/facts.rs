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
    let mut names: Vec<String> = engine.services().iter().map(|s| s.to_string()).collect();
    names.extend(slos.iter().map(|s| s.service.clone()));
    names.extend(canaries.iter().map(|c| c.service.clone()));
    names.sort();
    names.dedup();
    let now = engine.now();
    names
        .into_iter()
        .map(|service| {
            let (last_event, last_arrival) = engine.service_freshness(&service).unwrap_or((0, 0));
            let silent_s = if last_arrival == 0 {
                f64::INFINITY
            } else {
                seconds(now, last_arrival)
            };
            let lag_s = seconds(last_arrival, last_event);
            let is_stale =
                silent_s > stale.after.secs() as f64 || lag_s > stale.max_lag.secs() as f64;
            ServiceFacts {
                stale: is_stale.then_some(Evidence::Stale {
                    silent_s: silent_s.min(1e12),
                    lag_s,
                }),
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
                service,
            }
        })
        .collect()
}
