//! The canary judge: compares a canary version of a service with its baseline over the same
//! time range, per metric, and says pass, fail or inconclusive.
//!
//! - Error ratio: a one-sided exact test, conditional on the total errors (valid for the
//!   sparse counts canaries have), of "the canary's error rate exceeds the baseline's".
//! - Latency: a Mann-Whitney test computed from the two arms' t-digests (probability that a
//!   canary request is slower than a baseline one), one-sided.
//!
//! A metric fails only when the test is significant AND the effect exceeds its tolerance; it is
//! inconclusive while either arm has fewer than `min_requests`. Two one-sided tests at
//! α = 0.02 and 0.01 keep the A/A failure rate near 2 % (the tests in this module measure it).

use crate::engine::Engine;
use crate::sketch::TDigest;
use crate::stats::{error_rate_excess_p, mann_whitney_digests};
use crate::time::Span;
use serde::{Deserialize, Serialize};

/// A metric the canary judge compares.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum CanaryMetric {
    /// The error ratio (a one-sided test of rates suited to sparse counts).
    ErrorRatio,
    /// The latency distribution (Mann-Whitney U over the merged digests; effect on the median).
    Latency,
}

impl CanaryMetric {
    /// Every metric, in the judge's order.
    pub const ALL: [CanaryMetric; 2] = [CanaryMetric::ErrorRatio, CanaryMetric::Latency];

    /// The name in configs and evidence.
    pub const fn name(self) -> &'static str {
        match self {
            CanaryMetric::ErrorRatio => "error_ratio",
            CanaryMetric::Latency => "latency",
        }
    }

    /// The metric named `name`, if any.
    pub fn from_name(name: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|m| m.name() == name)
    }
}

fn all_metrics() -> Vec<CanaryMetric> {
    CanaryMetric::ALL.to_vec()
}

/// The test that decides a comparison.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Judge {
    /// [`crate::canary_seq`]: anytime-valid, so its verdict may be read every 200 ms and it
    /// fails or passes as soon as the evidence is there. (A rollout's step at 100 % leaves the
    /// baseline no traffic to compare at the same time: the exact test judges it.)
    #[default]
    Sequential,
    /// [`judge_arms`] over the window: a fixed-horizon test (read continuously, a rule on it
    /// needs a `for:` delay).
    Exact,
}

fn exact() -> Judge {
    Judge::Exact
}

fn is_exact(j: &Judge) -> bool {
    *j == Judge::Exact
}

/// What to compare and how strictly.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct CanarySpec {
    /// Service.
    pub service: String,
    /// Baseline version.
    pub baseline: String,
    /// Canary version.
    pub canary: String,
    /// Time range compared (ending now).
    pub window: Span,
    /// Requests each arm needs before a verdict.
    pub min_requests: u64,
    /// Significance level of the error-ratio test.
    pub error_alpha: f64,
    /// Significance level of the latency test.
    pub latency_alpha: f64,
    /// Error-ratio increase (absolute, e.g. 0.0005 = 0.05 points) tolerated.
    pub error_tolerance: f64,
    /// Median latency increase (relative, e.g. 0.05 = 5 %) tolerated.
    pub latency_tolerance: f64,
    /// The metrics compared (default: all).
    #[serde(default = "all_metrics")]
    pub metrics: Vec<CanaryMetric>,
    /// A template, not a pair: every version of the service beside the one carrying the most
    /// traffic over `window` is judged against it (baseline and canary are empty here; see
    /// [`expand`]). Written only when set, so the revision of a rule set without templates
    /// is what it was before templates existed.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub detect: bool,
    /// The test that decides its verdict (default `exact` here; the evidence carries the
    /// sequential test's numbers when it is `sequential`). Written only when not `exact`.
    #[serde(default = "exact", skip_serializing_if = "is_exact")]
    pub judge: Judge,
}

impl CanarySpec {
    /// A spec with the default thresholds.
    pub fn new(service: &str, baseline: &str, canary: &str) -> Self {
        Self {
            service: service.into(),
            baseline: baseline.into(),
            canary: canary.into(),
            window: Span::minutes(10),
            min_requests: 500,
            error_alpha: 0.02,
            latency_alpha: 0.01,
            error_tolerance: 0.0005,
            latency_tolerance: 0.05,
            metrics: all_metrics(),
            detect: false,
            judge: Judge::Exact,
        }
    }

    /// A template that detects canaries of `service` from its telemetry.
    pub fn detect(service: &str) -> Self {
        Self {
            detect: true,
            ..Self::new(service, "", "")
        }
    }
}

/// The pairs `specs` ask for at the engine's now: configured pairs as they are, and for each
/// template (`detect`), one pair per version of the service that had requests over the
/// template's window beside the version with the most (the baseline). A version configured
/// as a pair is not detected again.
pub fn expand(engine: &Engine, specs: &[CanarySpec]) -> Vec<CanarySpec> {
    let mut out: Vec<CanarySpec> = specs.iter().filter(|s| !s.detect).cloned().collect();
    for t in specs.iter().filter(|s| s.detect) {
        let versions = engine.versions_of(&t.service, t.window);
        let Some((baseline, _)) = versions.first() else {
            continue;
        };
        for (canary, _) in &versions[1..] {
            if out
                .iter()
                .any(|c| c.service == t.service && &c.canary == canary)
            {
                continue;
            }
            out.push(CanarySpec {
                baseline: baseline.clone(),
                canary: canary.clone(),
                detect: false,
                ..t.clone()
            });
        }
    }
    out
}

/// A verdict.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Verdict {
    /// No evidence the canary is worse.
    Pass,
    /// Not enough data.
    Inconclusive,
    /// The canary is worse beyond tolerance, significantly.
    Fail,
}

/// One metric's comparison (the evidence).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct MetricResult {
    /// `error_ratio` or `latency`.
    pub metric: CanaryMetric,
    /// Verdict.
    pub verdict: Verdict,
    /// Baseline value (error ratio, or median ms).
    pub baseline: Option<f64>,
    /// Canary value.
    pub canary: Option<f64>,
    /// Effect: canary − baseline (error ratio) or canary ÷ baseline − 1 (median latency);
    /// for latency also the AUC in `auc`.
    pub effect: Option<f64>,
    /// P(canary request slower than a baseline one), latency only.
    pub auc: Option<f64>,
    /// One-sided p-value.
    pub p_value: Option<f64>,
    /// Requests in the baseline arm.
    pub baseline_n: u64,
    /// Requests in the canary arm.
    pub canary_n: u64,
}

/// The judge's result.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct CanaryResult {
    /// Service.
    pub service: String,
    /// Baseline version.
    pub baseline: String,
    /// Canary version.
    pub canary: String,
    /// Overall: fail if any metric fails, else inconclusive if any is, else pass.
    pub verdict: Verdict,
    /// Share of metrics passing, 0–100.
    pub score: f64,
    /// Per metric.
    pub metrics: Vec<MetricResult>,
    /// The sequential test's evidence, when it runs beside the exact one (a rollout's steps).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sequential: Option<crate::canary_seq::SeqEvidence>,
    /// When the error ratio fails: which of the canary's operations and dimensions carry its
    /// excess errors over the baseline's (see [`crate::attribution::attribute_against`]).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub attribution: Vec<crate::attribution::Attribution>,
    /// When the error ratio fails: when the canary's errors began to rise (engine time, ns;
    /// see [`crate::onset`]).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub first_bad_at: Option<crate::time::UnixNanos>,
}

/// One arm's data.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Arm {
    /// Requests.
    pub requests: u64,
    /// Bad requests.
    pub errors: u64,
    /// Latency digest (None when the window is longer than the digest history).
    pub digest: Option<TDigest>,
}

/// Reads one version's arm from the engine: all its series over the window ending now.
pub fn arm(engine: &Engine, service: &str, version: &str, window: Span) -> Arm {
    let (requests, errors, digest) = engine.version_totals(service, version, window);
    Arm {
        requests,
        errors,
        digest,
    }
}

/// Judges the canary of `spec` at the engine's now.
pub fn judge(engine: &Engine, spec: &CanarySpec) -> CanaryResult {
    let b = arm(engine, &spec.service, &spec.baseline, spec.window);
    let c = arm(engine, &spec.service, &spec.canary, spec.window);
    let mut result = judge_arms(spec, &b, &c);
    let errors_failed = result
        .metrics
        .iter()
        .any(|m| m.metric == CanaryMetric::ErrorRatio && m.verdict == Verdict::Fail);
    if errors_failed {
        result.attribution = attribute_errors(engine, spec);
        result.first_bad_at = crate::onset::onset(
            engine,
            &spec.service,
            |k| *k.version == *spec.canary,
            |s| (s.errors, s.requests),
        );
    }
    result
}

/// The canary's errors over the window, attributed against the baseline's.
fn attribute_errors(engine: &Engine, spec: &CanarySpec) -> Vec<crate::attribution::Attribution> {
    let rows = engine.series_sums(&spec.service, spec.window);
    let of = |version: &str| -> Vec<(&crate::observation::SeriesKey, u64, u64)> {
        rows.iter()
            .filter(|(key, _)| &*key.version == version)
            .map(|(key, s)| (*key, s.requests.round() as u64, s.errors.round() as u64))
            .collect()
    };
    crate::attribution::attribute_against(of(&spec.canary), of(&spec.baseline))
}

/// Judges two arms.
pub fn judge_arms(spec: &CanarySpec, baseline: &Arm, canary: &Arm) -> CanaryResult {
    let enough = baseline.requests >= spec.min_requests && canary.requests >= spec.min_requests;
    let ratio = |a: &Arm| (a.requests > 0).then(|| a.errors as f64 / a.requests as f64);
    let (rb, rc) = (ratio(baseline), ratio(canary));
    let errors = {
        let p = error_rate_excess_p(
            canary.errors,
            canary.requests,
            baseline.errors,
            baseline.requests,
            1.0,
        );
        let effect = rc.zip(rb).map(|(c, b)| c - b);
        let verdict = if !enough {
            Verdict::Inconclusive
        } else if p < spec.error_alpha && effect.is_some_and(|e| e > spec.error_tolerance) {
            Verdict::Fail
        } else {
            Verdict::Pass
        };
        MetricResult {
            metric: CanaryMetric::ErrorRatio,
            verdict,
            baseline: rb,
            canary: rc,
            effect,
            auc: None,
            p_value: Some(p),
            baseline_n: baseline.requests,
            canary_n: canary.requests,
        }
    };
    let latency = match (&baseline.digest, &canary.digest) {
        (Some(db), Some(dc)) if !db.is_empty() && !dc.is_empty() => {
            let (auc, p) = mann_whitney_digests(dc, db);
            let (mb, mc) = (db.quantile(0.5), dc.quantile(0.5));
            let effect = if mb > 0.0 { mc / mb - 1.0 } else { 0.0 };
            let (nb, nc) = (db.count(), dc.count());
            let verdict = if nb < spec.min_requests || nc < spec.min_requests {
                Verdict::Inconclusive
            } else if p < spec.latency_alpha && effect > spec.latency_tolerance {
                Verdict::Fail
            } else {
                Verdict::Pass
            };
            MetricResult {
                metric: CanaryMetric::Latency,
                verdict,
                baseline: Some(mb),
                canary: Some(mc),
                effect: Some(effect),
                auc: Some(auc),
                p_value: Some(p),
                baseline_n: nb,
                canary_n: nc,
            }
        }
        _ => MetricResult {
            metric: CanaryMetric::Latency,
            verdict: Verdict::Inconclusive,
            baseline: None,
            canary: None,
            effect: None,
            auc: None,
            p_value: None,
            baseline_n: baseline.digest.as_ref().map_or(0, TDigest::count),
            canary_n: canary.digest.as_ref().map_or(0, TDigest::count),
        },
    };
    let metrics: Vec<MetricResult> = [errors, latency]
        .into_iter()
        .filter(|m| spec.metrics.contains(&m.metric))
        .collect();
    let verdict = metrics
        .iter()
        .map(|m| m.verdict)
        .max()
        .unwrap_or(Verdict::Inconclusive);
    let score = 100.0
        * metrics
            .iter()
            .filter(|m| m.verdict == Verdict::Pass)
            .count() as f64
        / metrics.len().max(1) as f64;
    CanaryResult {
        service: spec.service.clone(),
        baseline: spec.baseline.clone(),
        canary: spec.canary.clone(),
        verdict,
        score,
        metrics,
        sequential: None,
        attribution: Vec::new(),
        first_bad_at: None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::rngs::StdRng;
    use rand::{Rng, SeedableRng};
    use rand_distr::{Distribution, LogNormal};

    fn simulate(rng: &mut StdRng, n: u64, median_ms: f64, error_ratio: f64) -> Arm {
        let dist = LogNormal::new(median_ms.ln(), 0.6).unwrap();
        let mut d = TDigest::default();
        let mut errors = 0;
        for _ in 0..n {
            d.add(dist.sample(rng));
            errors += u64::from(rng.random_bool(error_ratio));
        }
        Arm {
            requests: n,
            errors,
            digest: Some(d),
        }
    }

    fn spec() -> CanarySpec {
        CanarySpec::new("checkout", "1.4.0", "1.5.0")
    }

    /// Scenario: 200 seeded A/A runs, 2000 requests per arm, identical distributions.
    /// Guarantees: the judge fails ≤ 5 % of them.
    #[test]
    fn aa_false_failures() {
        let mut fails = 0;
        for seed in 0..200 {
            let mut rng = StdRng::seed_from_u64(seed);
            let b = simulate(&mut rng, 2000, 50.0, 0.001);
            let c = simulate(&mut rng, 2000, 50.0, 0.001);
            fails += u32::from(judge_arms(&spec(), &b, &c).verdict == Verdict::Fail);
        }
        eprintln!("A/A failures: {fails}/200");
        assert!(fails <= 10, "A/A failures {fails}/200");
    }

    /// Scenario: 200 seeded A/B runs, canary median 20 % higher.
    /// Guarantees: ≥ 95 % caught, by the latency metric.
    #[test]
    fn ab_latency_regression() {
        let mut caught = 0;
        for seed in 0..200 {
            let mut rng = StdRng::seed_from_u64(1000 + seed);
            let b = simulate(&mut rng, 2000, 50.0, 0.001);
            let c = simulate(&mut rng, 2000, 60.0, 0.001);
            let r = judge_arms(&spec(), &b, &c);
            caught += u32::from(r.metrics[1].verdict == Verdict::Fail);
        }
        eprintln!("latency +20 %: caught {caught}/200");
        assert!(caught >= 190, "caught {caught}/200");
    }

    /// Scenario: 200 seeded A/B runs, error ratio 0.1 % → 1 %.
    /// Guarantees: ≥ 95 % caught, by the error metric.
    #[test]
    fn ab_error_regression() {
        let mut caught = 0;
        for seed in 0..200 {
            let mut rng = StdRng::seed_from_u64(5000 + seed);
            let b = simulate(&mut rng, 2000, 50.0, 0.001);
            let c = simulate(&mut rng, 2000, 50.0, 0.01);
            let r = judge_arms(&spec(), &b, &c);
            caught += u32::from(r.metrics[0].verdict == Verdict::Fail);
        }
        eprintln!("errors 0.1 % -> 1 %: caught {caught}/200");
        assert!(caught >= 190, "caught {caught}/200");
    }

    /// Guarantees: below the minimum sample size the verdict is inconclusive, even for a
    /// canary that fails every request; evidence still carries the numbers.
    #[test]
    fn inconclusive_below_minimum() {
        let mut rng = StdRng::seed_from_u64(9);
        let b = simulate(&mut rng, 2000, 50.0, 0.001);
        let c = simulate(&mut rng, 100, 500.0, 1.0);
        let r = judge_arms(&spec(), &b, &c);
        assert_eq!(r.verdict, Verdict::Inconclusive);
        assert_eq!(r.metrics[0].canary, Some(1.0));
        assert_eq!(r.metrics[0].canary_n, 100);
        assert_eq!(r.score, 0.0);
        // With enough requests the same canary fails both metrics.
        let c = simulate(&mut rng, 600, 500.0, 1.0);
        let r = judge_arms(&spec(), &b, &c);
        assert_eq!(r.verdict, Verdict::Fail);
        assert!(r.metrics.iter().all(|m| m.verdict == Verdict::Fail));
    }

    /// Scenario: baseline 1.4.0 and canary 1.5.0 serve /pay and /cart, 2 000 requests each a
    /// minute; the canary's /pay fails 20 %, everything else 0.1 %.
    /// Guarantees: the canary fails on its error ratio, and its evidence attributes the
    /// excess errors to operation /pay (almost all of them, against the baseline's /pay),
    /// which the decision's reason names.
    #[test]
    fn a_failing_canary_route_is_attributed() {
        use crate::observation::{Batch, RequestObs, SeriesKey};
        let mut e = Engine::new(std::sync::Arc::new(crate::config::EngineConfig::default()));
        let mut rng = StdRng::seed_from_u64(4);
        let t0 = 1_800_000_000_000_000_000u64;
        let mut b = Batch::default();
        for (i, (version, route)) in [
            ("1.4.0", "/pay"),
            ("1.4.0", "/cart"),
            ("1.5.0", "/pay"),
            ("1.5.0", "/cart"),
        ]
        .into_iter()
        .enumerate()
        {
            let key = b.key_index(SeriesKey::new("checkout", route, version));
            let bad = if version == "1.5.0" && route == "/pay" {
                0.2
            } else {
                0.001
            };
            for j in 0..2000u64 {
                b.requests.push(RequestObs {
                    key,
                    time: t0 + (j * 30 + i as u64) * 1_000_000,
                    latency_ms: 20.0,
                    bad: rng.random_bool(bad),
                });
            }
        }
        e.ingest(&b, t0 + 60_000_000_000);
        let r = judge(&e, &spec());
        assert_eq!(r.verdict, Verdict::Fail, "{r:?}");
        let top = &r.attribution[0];
        assert_eq!(
            (top.dimension.as_str(), top.value.as_str()),
            ("operation", "/pay")
        );
        assert!(top.share_of_bad > 0.95 && top.lift > 10.0, "{top:?}");
        let reason = crate::attribution::phrase(&r.attribution, "the baseline's");
        assert!(reason.starts_with("; mostly operation /pay ("), "{reason}");
    }
}
