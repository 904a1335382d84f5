//! Cost-aware reliability (pattern 6): what a service's traffic costs and how fast it spends
//! its budget. `cost: [{service, per_request, per_cpu_second, cpu_metric, budget_per_day}]`
//! prices every request, and every CPU second its resources report (`cpu_metric`, default
//! `process.cpu.time`: a usage metric, [`crate::usage`]); the spend rate over a window,
//! projected to a day, over the daily budget is the **spend burn**
//! (1 = on budget), read over 1 h and 5 m like an SLO's fast tier, so a policy acts only on a
//! burn that is both sustained and still going on (`cost.spend_burn > 2`), e.g. throttling
//! low-value traffic (a rule's `selector`, such as `traffic.class: batch`).

use crate::engine::Engine;
use crate::time::Span;
use serde::{Deserialize, Serialize};

/// The CPU metric read by default: the OpenTelemetry semantic conventions' process CPU time
/// (seconds, a monotonic sum with a `cpu.mode` attribute; the SDKs' and the Collector's host
/// metrics receiver's `process` scraper export it).
pub const DEFAULT_CPU_METRIC: &str = "process.cpu.time";

/// One service's price and budget.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CostSpec {
    /// The service.
    pub service: String,
    /// Price of one request (any currency unit; default 0).
    #[serde(default)]
    pub per_request: f64,
    /// Price of one CPU second (same unit; default 0).
    #[serde(default)]
    pub per_cpu_second: f64,
    /// The monotonic sum of CPU seconds the service's resources export (default
    /// [`DEFAULT_CPU_METRIC`]).
    #[serde(default)]
    pub cpu_metric: Option<String>,
    /// What the service may spend in a day (same unit).
    pub budget_per_day: f64,
}

/// A service's spend now.
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
pub struct SpendPoint {
    /// What one request cost over the last hour: the spend over the requests (the request
    /// price alone when there were none).
    pub cost_per_request: f64,
    /// CPU seconds per second over the last hour (None when CPU is not priced or not reported).
    #[serde(default)]
    pub cpu_cores: Option<f64>,
    /// Spend per day at the last hour's rate.
    pub spend_per_day: f64,
    /// The daily budget.
    pub budget_per_day: f64,
    /// Spend over budget at the last hour's rate.
    pub burn_1h: f64,
    /// Spend over budget at the last 5 minutes' rate.
    pub burn_5m: f64,
}

impl CostSpec {
    /// The CPU metric this price reads, when it prices CPU.
    pub fn cpu_metric(&self) -> Option<&str> {
        (self.per_cpu_second > 0.0)
            .then(|| self.cpu_metric.as_deref().unwrap_or(DEFAULT_CPU_METRIC))
    }
}

impl SpendPoint {
    /// The spend burn a condition compares: the smaller of the two windows' (both must be
    /// over, as with an SLO's burn-rate tier).
    pub fn burn(&self) -> f64 {
        self.burn_1h.min(self.burn_5m)
    }
}

/// The spend of `spec`'s service at the engine's now. Windows longer than the engine's history
/// are read over the history it has (so a burn is not diluted by time it never saw).
pub fn spend(engine: &Engine, spec: &CostSpec) -> SpendPoint {
    let had_s = engine.now().saturating_sub(engine.history_start()) / crate::time::NANOS_PER_SEC;
    let secs = |w: Span| w.secs().min(had_s.max(1)) as f64;
    let requests = |w: Span| engine.service_sums_prorated(&spec.service, w).requests;
    // CPU seconds per second over the window (read up to the newest point: a window between
    // two exports is not diluted by the time since the last one).
    let cores = |w: Span| {
        spec.cpu_metric()
            .and_then(|m| engine.usage().value(&spec.service, m, w, engine.now()))
    };
    let spent = |w: Span| {
        requests(w) * spec.per_request + cores(w).unwrap_or(0.0) * secs(w) * spec.per_cpu_second
    };
    let per_day = |w: Span| spent(w) * 86_400.0 / secs(w);
    let hour = Span::hours(1);
    let (day_1h, day_5m) = (per_day(hour), per_day(Span::minutes(5)));
    let burn = |d: f64| {
        if spec.budget_per_day > 0.0 {
            d / spec.budget_per_day
        } else {
            0.0
        }
    };
    let requests_1h = requests(hour);
    SpendPoint {
        cost_per_request: if requests_1h > 0.0 {
            spent(hour) / requests_1h
        } else {
            spec.per_request
        },
        cpu_cores: cores(hour),
        spend_per_day: day_1h,
        budget_per_day: spec.budget_per_day,
        burn_1h: burn(day_1h),
        burn_5m: burn(day_5m),
    }
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

    /// `n` good requests of search, spread over the second from `t`.
    fn requests(t: u64, n: u64) -> Batch {
        let mut b = Batch::default();
        let k = b.key_index(SeriesKey::new("search", "/q", "1"));
        for i in 0..n {
            b.requests.push(RequestObs {
                key: k,
                time: t + i * S / n,
                latency_ms: 3.0,
                bad: false,
            });
        }
        b
    }

    /// Scenario: a service priced at 0.001 a request with a budget of 864 a day (10 requests a
    /// second on budget) takes 10 requests a second for 50 minutes, then 60 for 10.
    /// Guarantees: the spend per day and both burns follow: on budget (1.0) before the surge;
    /// 6.0 over 5 minutes and (50×10 + 10×60)/(60×10) ≈ 1.83 over the hour after it; the
    /// condition's burn is the smaller.
    #[test]
    fn spend_burns_like_an_error_budget() {
        let mut e = Engine::new(Arc::new(EngineConfig::default()));
        let spec = CostSpec {
            service: "search".into(),
            per_request: 0.001,
            per_cpu_second: 0.0,
            cpu_metric: None,
            budget_per_day: 864.0,
        };
        let mut before = None;
        for sec in 0..3600u64 {
            let t = T0 + sec * S;
            let n = if sec < 3000 { 10 } else { 60 };
            let b = requests(t, n);
            e.ingest(&b, t);
            e.advance(t + S);
            if sec == 2999 {
                before = Some(spend(&e, &spec));
            }
        }
        let before = before.unwrap();
        assert!((before.burn_1h - 1.0).abs() < 0.01, "{before:?}");
        assert!((before.burn_5m - 1.0).abs() < 0.01, "{before:?}");
        let now = spend(&e, &spec);
        assert!((now.burn_5m - 6.0).abs() < 0.05, "{now:?}");
        assert!((now.burn_1h - 1100.0 / 600.0).abs() < 0.02, "{now:?}");
        assert_eq!(now.burn(), now.burn_1h);
        assert!((now.spend_per_day - 864.0 * now.burn_1h).abs() < 1e-6);
    }

    /// Scenario: `search` is priced per CPU second (0.01) with a budget of 432 a day (half a
    /// core on budget) and takes 10 free requests a second; its one process reports cumulative
    /// `process.cpu.time` every 10 s: half a core for 50 minutes, then 3 cores for 10.
    /// Guarantees: the spend follows the CPU, converted from cumulative points: on budget
    /// before the surge; 6.0 over 5 minutes and (50×0.5 + 10×3)/(60×0.5) ≈ 1.83 over the hour
    /// after it; the cores and the cost of a request are read over the hour.
    #[test]
    fn cpu_seconds_are_priced() {
        use crate::observation::Temporality;
        use crate::usage::{UsageKind, UsageObs};
        let mut e = Engine::new(Arc::new(EngineConfig::default()));
        let spec = CostSpec {
            service: "search".into(),
            per_request: 0.0,
            per_cpu_second: 0.01,
            cpu_metric: None,
            budget_per_day: 432.0,
        };
        let (mut cpu, mut before) = (0.0, None);
        for sec in 0..3600u64 {
            let t = T0 + sec * S;
            let mut b = requests(t, 10);
            cpu += if sec < 3000 { 0.5 } else { 3.0 };
            if sec % 10 == 9 {
                b.usage.push(UsageObs {
                    service: "search".into(),
                    metric: DEFAULT_CPU_METRIC.into(),
                    stream: 7,
                    time: t + S,
                    start_time: T0 - 100 * S,
                    temporality: Temporality::Cumulative,
                    kind: UsageKind::Rate,
                    value: cpu,
                });
            }
            e.ingest(&b, t + S);
            e.advance(t + S);
            if sec == 2999 {
                before = Some(spend(&e, &spec));
            }
        }
        let before = before.unwrap();
        assert!((before.burn_5m - 1.0).abs() < 0.01, "{before:?}");
        assert!((before.burn_1h - 1.0).abs() < 0.01, "{before:?}");
        let now = spend(&e, &spec);
        assert!((now.burn_5m - 6.0).abs() < 0.05, "{now:?}");
        assert!((now.burn_1h - 55.0 / 30.0).abs() < 0.02, "{now:?}");
        let cores = now.cpu_cores.unwrap();
        assert!((cores - 55.0 / 60.0).abs() < 0.01, "{now:?}");
        assert!(
            (now.cost_per_request - cores * 0.01 / 10.0).abs() < 1e-5,
            "{now:?}"
        );
    }
}
