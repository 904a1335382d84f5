//! Sequential canary analysis: anytime-valid tests that may be looked at every 200 ms, so a
//! canary fails *and passes* as soon as the evidence is there, with the false decision rates
//! bounded however often the verdict is read (Lindon et al., "Rapid Regression Detection in
//! Software Deployments through Sequential Testing", KDD 2022, for the idea; the tests here
//! are conditional likelihood ratios, mixed over a grid of alternatives).
//!
//! The trick is the same for errors and latency: given that a request fell in some class (it
//! failed; its latency fell in decile j of the baseline's distribution), whether it came from
//! the canary is, when canary and baseline behave alike, a coin with the canary's share `s`
//! of the traffic of that moment. A canary `ψ` times as likely to land in the class shifts
//! the coin to `θ = ψs / (ψs + 1 − s)`. The likelihood ratio of the observed coins, multiplied
//! over time, is a test martingale under the null (whatever the traffic split, and whatever the
//! baseline's own rate or distribution), so by Ville's inequality it ever reaches `1/α` with
//! probability at most `α`. A mixture over alternatives (an average of martingales) is one too.
//!
//! - Errors, fail: the null is "the canary's error rate is the baseline's" (ψ = 1), the
//!   alternatives ψ ∈ {1.25 … 30}. A fail also needs the observed excess above the error
//!   tolerance (so a significant but harmless difference does not roll back).
//! - Errors, pass: either of two tests — the canary's rate is below `promote_error_ratio` × the
//!   baseline's (null ψ = that ratio, alternatives below it), or below the absolute
//!   `promote_error_floor` (a one-arm test on the canary's requests: it decides when neither
//!   arm has errors, where a ratio has no information).
//! - Latency: requests are placed in the deciles of the baseline's distribution, frozen once
//!   the baseline has [`FREEZE_AFTER`] requests. The alternatives tilt the canary's odds per
//!   decile: upwards (slower: `ψ_j = exp(β (r_j − ½))`), towards both tails (more spread),
//!   and towards the top decile (a slow tail). Fail at `1/α`; pass when a test against a
//!   canary slower by the margin (`promote_latency_beta`, ≈ AUC ½ + β/12) rejects it.
//!
//! The shares are those of each 200 ms update (a request's arm counts as a coin of that
//! update's split): an approximation of exchangeability inside an update, which the A/A runs
//! of the tests measure (their false-fail rate stays under α).

use crate::canary::Verdict;
use crate::sketch::TDigest;
use serde::{Deserialize, Serialize};

/// Baseline requests before the latency deciles are frozen.
pub const FREEZE_AFTER: u64 = 200;
/// Latency classes (deciles of the baseline).
pub const BINS: usize = 10;

const ERROR_FAIL_GRID: [f64; 7] = [1.25, 1.5, 2.0, 3.0, 5.0, 10.0, 30.0];
const RATIO_PASS_GRID: [f64; 4] = [0.75, 0.5, 0.33, 0.1];
const FLOOR_PASS_GRID: [f64; 4] = [0.5, 0.25, 0.1, 0.01];
const LATENCY_FAIL_BETAS: [f64; 4] = [0.5, 1.0, 2.0, 4.0];
const LATENCY_PASS_GRID: [f64; 4] = [0.5, 0.0, -0.5, -1.0];

/// Thresholds of the sequential test.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct SeqConfig {
    /// False-fail rate bound of each metric (errors, latency).
    pub alpha_fail: f64,
    /// False-pass rate bound of each metric (passing a canary worse than the margins).
    pub alpha_pass: f64,
    /// A fail needs the canary's error ratio above the baseline's by more than this (absolute).
    pub error_tolerance: f64,
    /// Errors pass when the canary's rate is shown below this many times the baseline's …
    pub promote_error_ratio: f64,
    /// … or below this absolute error ratio.
    pub promote_error_floor: f64,
    /// Latency passes when a canary slower by this tilt (≈ AUC ½ + β/12) is rejected.
    pub promote_latency_beta: f64,
    /// Requests each arm needs before a pass.
    pub min_requests: u64,
}

impl Default for SeqConfig {
    fn default() -> Self {
        Self {
            alpha_fail: 0.01,
            alpha_pass: 0.05,
            error_tolerance: 0.0005,
            promote_error_ratio: 3.0,
            promote_error_floor: 0.003,
            promote_latency_beta: 0.6,
            min_requests: 200,
        }
    }
}

/// What one arm added since the last update.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct ArmDelta {
    /// Requests.
    pub requests: u64,
    /// Failed requests.
    pub errors: u64,
    /// Requests per latency decile of the baseline (empty before the deciles are frozen).
    pub bins: Vec<u64>,
}

/// An e-process: the log of a mixture of likelihood ratios, one per alternative.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
struct Mixture {
    log_lr: Vec<f64>,
    /// Set once the mixture reached its threshold (a decision stands).
    crossed: bool,
    /// The largest e-value seen.
    max_e: f64,
}

impl Mixture {
    fn new(alternatives: usize) -> Self {
        Self {
            log_lr: vec![0.0; alternatives],
            crossed: false,
            max_e: 1.0,
        }
    }

    /// The e-value: the average of the alternatives' likelihood ratios.
    fn e(&self) -> f64 {
        let m = self
            .log_lr
            .iter()
            .copied()
            .fold(f64::NEG_INFINITY, f64::max);
        if !m.is_finite() {
            return 0.0;
        }
        let s: f64 = self.log_lr.iter().map(|l| (l - m).exp()).sum();
        (m + (s / self.log_lr.len() as f64).ln()).exp()
    }

    fn settle(&mut self, threshold: f64) -> bool {
        let e = self.e();
        self.max_e = self.max_e.max(e);
        self.crossed |= e >= threshold;
        self.crossed
    }
}

fn odds(psi: f64, s: f64) -> f64 {
    psi * s / (psi * s + 1.0 - s)
}

/// Adds to `lr` the log-likelihood ratio of `in_canary` of `total` requests of one class
/// coming from the canary, alternative odds `theta1` against null odds `theta0`.
fn coin(lr: &mut f64, in_canary: u64, total: u64, theta1: f64, theta0: f64) {
    if total == 0 {
        return;
    }
    let out = total - in_canary;
    if in_canary > 0 {
        *lr += in_canary as f64 * (theta1 / theta0).ln();
    }
    if out > 0 {
        *lr += out as f64 * ((1.0 - theta1) / (1.0 - theta0)).ln();
    }
}

/// The shape of a latency alternative over the deciles.
fn shape(kind: usize, j: usize) -> f64 {
    let r = (j as f64 + 0.5) / BINS as f64 - 0.5;
    match kind {
        0 => r,                                        // slower
        1 => r.abs() - 0.25,                           // more spread
        _ => f64::from(u8::from(j == BINS - 1)) - 0.1, // a slow tail
    }
}

/// One metric's sequential evidence.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct SeqMetric {
    /// `fail` once the fail test crossed, `pass` once the pass test did, else `inconclusive`.
    pub verdict: Verdict,
    /// The fail test's e-value now (reject "the canary is no worse" at ≥ 1/α).
    pub e_fail: f64,
    /// The pass test's e-value now.
    pub e_pass: f64,
    /// Anytime-valid p-value of "no worse": 1 / the largest fail e-value seen.
    pub p_value: f64,
}

/// The sequential test's state for one canary against its baseline.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Sequential {
    cfg: SeqConfig,
    err_fail: Mixture,
    err_pass_ratio: Mixture,
    err_pass_floor: Mixture,
    lat_fail: Mixture,
    lat_pass: Mixture,
    /// Canary requests, canary errors, baseline requests, baseline errors.
    totals: [u64; 4],
    /// The baseline's latency deciles, once frozen.
    deciles: Option<Vec<f64>>,
}

impl Sequential {
    /// A fresh test.
    pub fn new(cfg: SeqConfig) -> Self {
        Self {
            cfg,
            err_fail: Mixture::new(ERROR_FAIL_GRID.len()),
            err_pass_ratio: Mixture::new(RATIO_PASS_GRID.len()),
            err_pass_floor: Mixture::new(FLOOR_PASS_GRID.len()),
            lat_fail: Mixture::new(LATENCY_FAIL_BETAS.len() * 3),
            lat_pass: Mixture::new(LATENCY_PASS_GRID.len()),
            totals: [0; 4],
            deciles: None,
        }
    }

    /// The baseline's deciles, when frozen: the caller places new requests in them.
    pub fn deciles(&self) -> Option<&[f64]> {
        self.deciles.as_deref()
    }

    /// Freezes the deciles from the baseline's distribution once it holds [`FREEZE_AFTER`]
    /// requests (no-op before, and after).
    pub fn freeze_from(&mut self, baseline: &TDigest) {
        if self.deciles.is_none() && baseline.count() >= FREEZE_AFTER {
            let qs: Vec<f64> = (1..BINS).map(|i| i as f64 / BINS as f64).collect();
            self.deciles = Some(baseline.quantiles(&qs));
        }
    }

    /// Freezes the deciles to `deciles` (9 increasing values).
    pub fn freeze(&mut self, deciles: Vec<f64>) {
        if self.deciles.is_none() {
            self.deciles = Some(deciles);
        }
    }

    /// The decile of a latency.
    pub fn bin_of(deciles: &[f64], latency_ms: f64) -> usize {
        deciles.partition_point(|&d| d < latency_ms)
    }

    /// Requests so far: canary, baseline.
    pub fn requests(&self) -> (u64, u64) {
        (self.totals[0], self.totals[2])
    }

    /// Takes what both arms added since the last update.
    pub fn update(&mut self, canary: &ArmDelta, baseline: &ArmDelta) {
        let n = canary.requests + baseline.requests;
        self.totals[0] += canary.requests;
        self.totals[1] += canary.errors;
        self.totals[2] += baseline.requests;
        self.totals[3] += baseline.errors;
        if n == 0 {
            return;
        }
        // The canary's share of this update's traffic.
        let s = canary.requests as f64 / n as f64;
        if s > 0.0 && s < 1.0 {
            let (kc, k) = (canary.errors, canary.errors + baseline.errors);
            for (lr, psi) in self.err_fail.log_lr.iter_mut().zip(ERROR_FAIL_GRID) {
                coin(lr, kc, k, odds(psi, s), s);
            }
            let null = odds(self.cfg.promote_error_ratio, s);
            for (lr, f) in self.err_pass_ratio.log_lr.iter_mut().zip(RATIO_PASS_GRID) {
                coin(lr, kc, k, odds(self.cfg.promote_error_ratio * f, s), null);
            }
            if canary.bins.len() == BINS && baseline.bins.len() == BINS {
                for j in 0..BINS {
                    let (c, m) = (canary.bins[j], canary.bins[j] + baseline.bins[j]);
                    if m == 0 {
                        continue;
                    }
                    for (a, lr) in self.lat_fail.log_lr.iter_mut().enumerate() {
                        let (kind, beta) = (
                            a / LATENCY_FAIL_BETAS.len(),
                            LATENCY_FAIL_BETAS[a % LATENCY_FAIL_BETAS.len()],
                        );
                        coin(lr, c, m, odds((beta * shape(kind, j)).exp(), s), s);
                    }
                    let margin = self.cfg.promote_latency_beta;
                    let null = odds((margin * shape(0, j)).exp(), s);
                    for (lr, beta) in self.lat_pass.log_lr.iter_mut().zip(LATENCY_PASS_GRID) {
                        coin(lr, c, m, odds((beta * shape(0, j)).exp(), s), null);
                    }
                }
            }
        }
        // One arm: the canary's error rate against the floor.
        let p0 = self.cfg.promote_error_floor;
        for (lr, f) in self.err_pass_floor.log_lr.iter_mut().zip(FLOOR_PASS_GRID) {
            let p1 = p0 * f;
            let (k, ok) = (canary.errors, canary.requests - canary.errors);
            *lr += k as f64 * (p1 / p0).ln() + ok as f64 * ((1.0 - p1) / (1.0 - p0)).ln();
        }
        self.settle();
    }

    fn settle(&mut self) {
        let (fail, pass) = (1.0 / self.cfg.alpha_fail, 1.0 / self.cfg.alpha_pass);
        let excess = self.error_ratio(0) - self.error_ratio(2);
        if excess > self.cfg.error_tolerance {
            self.err_fail.settle(fail);
        } else {
            self.err_fail.max_e = self.err_fail.max_e.max(self.err_fail.e());
        }
        self.lat_fail.settle(fail);
        let enough =
            self.totals[0] >= self.cfg.min_requests && self.totals[2] >= self.cfg.min_requests;
        if enough {
            self.err_pass_ratio.settle(pass);
            self.err_pass_floor.settle(pass);
            self.lat_pass.settle(pass);
        }
    }

    fn error_ratio(&self, arm: usize) -> f64 {
        self.totals[arm + 1] as f64 / self.totals[arm].max(1) as f64
    }

    /// The errors' evidence.
    pub fn errors(&self) -> SeqMetric {
        let passed = self.err_pass_ratio.crossed || self.err_pass_floor.crossed;
        SeqMetric {
            verdict: verdict(self.err_fail.crossed, passed),
            e_fail: self.err_fail.e(),
            e_pass: self.err_pass_ratio.e().max(self.err_pass_floor.e()),
            p_value: (1.0 / self.err_fail.max_e).min(1.0),
        }
    }

    /// The latency's evidence.
    pub fn latency(&self) -> SeqMetric {
        SeqMetric {
            verdict: verdict(self.lat_fail.crossed, self.lat_pass.crossed),
            e_fail: self.lat_fail.e(),
            e_pass: self.lat_pass.e(),
            p_value: (1.0 / self.lat_fail.max_e).min(1.0),
        }
    }

    /// Fail when a metric failed; pass when both passed; else inconclusive.
    pub fn verdict(&self) -> Verdict {
        let (e, l) = (self.errors().verdict, self.latency().verdict);
        if e == Verdict::Fail || l == Verdict::Fail {
            Verdict::Fail
        } else if e == Verdict::Pass && l == Verdict::Pass {
            Verdict::Pass
        } else {
            Verdict::Inconclusive
        }
    }
}

/// What the evidence of a judged comparison carries of the sequential test.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct SeqEvidence {
    /// Its verdict (fail, pass, or inconclusive until one test crossed).
    pub verdict: Verdict,
    /// Errors.
    pub errors: SeqMetric,
    /// Latency (its deciles freeze after the baseline's first [`FREEZE_AFTER`] requests).
    pub latency: SeqMetric,
    /// Canary requests it has seen.
    pub canary_n: u64,
    /// Baseline requests it has seen.
    pub baseline_n: u64,
    /// Its thresholds.
    pub alpha_fail: f64,
    /// Its thresholds.
    pub alpha_pass: f64,
}

impl Sequential {
    /// The evidence now.
    pub fn evidence(&self) -> SeqEvidence {
        SeqEvidence {
            verdict: self.verdict(),
            errors: self.errors(),
            latency: self.latency(),
            canary_n: self.totals[0],
            baseline_n: self.totals[2],
            alpha_fail: self.cfg.alpha_fail,
            alpha_pass: self.cfg.alpha_pass,
        }
    }
}

impl ArmDelta {
    /// `requests` and `errors` with their latency `digest` placed in `deciles` (per decile:
    /// the digest's share, rounded).
    pub fn of(
        requests: u64,
        errors: u64,
        digest: Option<&TDigest>,
        deciles: Option<&[f64]>,
    ) -> Self {
        let bins = match (digest, deciles) {
            (Some(d), Some(q)) if d.count() > 0 => {
                let n = d.count() as f64;
                let at: Vec<f64> = q.iter().map(|&x| d.cdf(x) * n).chain([n]).collect();
                (0..BINS)
                    .map(|j| {
                        let below = if j == 0 { 0.0 } else { at[j - 1] };
                        (at[j] - below).round().max(0.0) as u64
                    })
                    .collect()
            }
            (_, Some(_)) => vec![0; BINS],
            _ => Vec::new(),
        };
        Self {
            requests,
            errors,
            bins,
        }
    }
}

/// A sequential test fed from the engine: each second of the two versions once it is complete.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Running {
    test: Sequential,
    done_s: u64,
}

/// Seconds one look takes in, at most (after a restore it catches up over a few looks).
pub const CATCH_UP_S: u64 = 60;

impl Running {
    /// A test of the seconds from `from` (engine time) on.
    pub fn new(cfg: SeqConfig, from: crate::UnixNanos) -> Self {
        Self {
            test: Sequential::new(cfg),
            done_s: (from / crate::time::NANOS_PER_SEC).saturating_sub(1),
        }
    }

    /// Takes the seconds of `canary` and `baseline` of `service` completed since the last
    /// look (the deciles freeze from `baseline_digest` once it is large enough), and returns
    /// the evidence.
    pub fn look(
        &mut self,
        engine: &crate::Engine,
        service: &str,
        baseline: &str,
        canary: &str,
        baseline_digest: Option<&TDigest>,
    ) -> SeqEvidence {
        if let Some(d) = baseline_digest {
            self.test.freeze_from(d);
        }
        // The second in progress waits for the next look.
        let last = (engine.now() / crate::time::NANOS_PER_SEC).saturating_sub(1);
        let q = self.test.deciles().map(<[f64]>::to_vec);
        for second in self.done_s + 1..=last.min(self.done_s + CATCH_UP_S) {
            let arm_at = |version: &str| {
                let (n, e, d) = engine.version_totals_at(service, version, second, crate::Span(1));
                ArmDelta::of(n, e, d.as_ref(), q.as_deref())
            };
            self.test.update(&arm_at(canary), &arm_at(baseline));
            self.done_s = second;
        }
        self.test.evidence()
    }
}

const fn verdict(failed: bool, passed: bool) -> Verdict {
    if failed {
        Verdict::Fail
    } else if passed {
        Verdict::Pass
    } else {
        Verdict::Inconclusive
    }
}

#[cfg(test)]
#[path = "canary_seq_tests.rs"]
mod tests;
