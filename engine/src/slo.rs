//! SLOs: error budgets and multi-window, multi-burn-rate alerting (the SRE workbook, ch. 5).
//!
//! Burn rate = bad ratio ÷ (1 − objective). A tier fires when the burn rate over its long
//! window AND over its short window reach its factor, and the long window holds at least
//! `min_events` events. The default tiers are the workbook's for 30 days (page 14.4× over
//! 1 h / 5 m, page 6× over 6 h / 30 m, ticket 1× over 3 d / 6 h); for other periods the factor
//! is derived as budget fraction × period ÷ long window. A faster firing tier inhibits slower
//! ones. Pure: reads the engine's windows at the engine's `now`.
//!
//! A tier never fires on history that is not there: a window is *covered* as far as the
//! engine has been collecting (since its start, restored from a checkpoint across restarts),
//! and a tier may fire only once its long window is covered to at least `min_coverage`
//! (default [`DEFAULT_MIN_COVERAGE`]). One minute of data at 1.7× says nothing about 3 days.
//! Each tier's status reports the coverage of both its windows.

use crate::engine::Engine;
use crate::time::Span;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

/// What counts as good.
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum SloSli {
    /// Good = not bad.
    Availability,
    /// Good = latency ≤ threshold (requests with a known latency only).
    Latency {
        /// Threshold in milliseconds.
        threshold_ms: f64,
    },
}

/// Who is told when a tier fires.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Severity {
    /// Someone is woken up.
    Page,
    /// Someone looks next working day.
    Ticket,
}

/// One alerting tier.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct BurnTier {
    /// Name, as reported in `firing` (e.g. `page_fast`).
    pub name: String,
    /// Burn-rate threshold.
    pub factor: f64,
    /// Long window.
    pub long: Span,
    /// Short window (confirms the burn is still going on).
    pub short: Span,
    /// Severity.
    pub severity: Severity,
    /// Events the long window must hold before the tier may fire.
    pub min_events: u64,
    /// Share of the long window the engine must have been collecting for before the tier may
    /// fire (0 to 1).
    #[serde(default = "default_min_coverage")]
    pub min_coverage: f64,
}

/// Share of a tier's long window that must be covered by history before it may fire.
pub const DEFAULT_MIN_COVERAGE: f64 = 0.9;

const fn default_min_coverage() -> f64 {
    DEFAULT_MIN_COVERAGE
}

/// Events a long window must hold, by default, before a tier may fire.
pub const DEFAULT_MIN_EVENTS: u64 = 100;

/// The workbook's tiers for `period`: (name, severity, share of the budget, long, short).
const DEFAULT_TIERS: [(&str, Severity, f64, Span, Span); 3] = [
    (
        "page_fast",
        Severity::Page,
        0.02,
        Span::hours(1),
        Span::minutes(5),
    ),
    (
        "page_slow",
        Severity::Page,
        0.05,
        Span::hours(6),
        Span::minutes(30),
    ),
    (
        "ticket",
        Severity::Ticket,
        0.10,
        Span::days(3),
        Span::hours(6),
    ),
];

impl BurnTier {
    /// The default tiers, their factors derived for `period` (14.4 / 6 / 1 for 30 d).
    pub fn defaults(period: Span) -> Vec<BurnTier> {
        DEFAULT_TIERS
            .iter()
            .map(|&(name, severity, share, long, short)| BurnTier {
                name: name.to_string(),
                factor: share * period.secs() as f64 / long.secs() as f64,
                long,
                short,
                severity,
                min_events: DEFAULT_MIN_EVENTS,
                min_coverage: DEFAULT_MIN_COVERAGE,
            })
            .collect()
    }
}

/// One SLO.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Slo {
    /// Unique name.
    pub name: String,
    /// Service.
    pub service: String,
    /// Target good ratio in (0, 1).
    pub objective: f64,
    /// Rolling period.
    pub period: Span,
    /// What is measured.
    pub sli: SloSli,
    /// Alerting tiers, fastest first.
    pub tiers: Vec<BurnTier>,
    /// Only the series whose `operation`, `version` or configured dimensions have these values
    /// (all of them); every series of the service when empty. Written only when set, so the
    /// revision of a rule set without selectors is what it was before they existed.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub selector: BTreeMap<String, String>,
}

/// The state of one tier.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct TierStatus {
    /// Tier name.
    pub name: String,
    /// Severity.
    pub severity: Severity,
    /// Threshold.
    pub factor: f64,
    /// Long window.
    pub long: Span,
    /// Short window.
    pub short: Span,
    /// Burn rate over the long window.
    pub burn_long: f64,
    /// Burn rate over the short window.
    pub burn_short: f64,
    /// Events in the long window.
    pub events_long: f64,
    /// Share of the long window covered by history (0 to 1).
    #[serde(default = "one")]
    pub coverage_long: f64,
    /// Share of the short window covered by history (0 to 1).
    #[serde(default = "one")]
    pub coverage_short: f64,
    /// Both windows at or over the factor, with enough events and enough coverage.
    pub over: bool,
    /// Over, and not inhibited by a faster tier of the same SLO.
    pub firing: bool,
}

/// The state of one SLO.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct SloStatus {
    /// Name.
    pub name: String,
    /// Service.
    pub service: String,
    /// Objective.
    pub objective: f64,
    /// Period.
    pub period: Span,
    /// Share of the period's error budget left (1 = untouched, ≤ 0 = spent).
    pub budget_remaining: f64,
    /// Burn rates over the standard windows (`5m`, `30m`, `1h`, `6h`, `3d`).
    pub burn_rates: BTreeMap<String, f64>,
    /// Names of the firing tiers.
    pub firing: Vec<String>,
    /// Seconds until the budget is spent at the 1 h burn rate (None when not burning).
    pub exhaustion_eta_s: Option<f64>,
    /// Every tier's numbers.
    pub tiers: Vec<TierStatus>,
    /// Good and total events over the period.
    pub period_events: (f64, f64),
    /// While a tier fires: which versions, operations and dimensions carry the bad events
    /// over the shortest firing tier's short window (empty otherwise).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub attribution: Vec<crate::attribution::Attribution>,
    /// While a tier of an availability SLO fires: the dependency whose failed calls carry
    /// the bad events over the same window, when the service graph shows one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub root_cause: Option<crate::graph::RootCause>,
    /// While a tier fires: when the rise in bad events began (see [`crate::onset`]), engine
    /// time in nanoseconds.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub first_bad_at: Option<crate::time::UnixNanos>,
}

/// The standard windows reported in `burn_rates`.
pub const REPORTED_WINDOWS: [Span; 5] = [
    Span::minutes(5),
    Span::minutes(30),
    Span::hours(1),
    Span::hours(6),
    Span::days(3),
];

/// Bad and total events of `slo` over `window`.
fn bad_total(engine: &Engine, slo: &Slo, window: Span) -> (f64, f64) {
    let s = if slo.selector.is_empty() {
        engine.service_sums_prorated(&slo.service, window)
    } else {
        engine.service_sums_prorated_where(&slo.service, window, |k| k.matches(&slo.selector))
    };
    match slo.sli {
        SloSli::Availability => (s.errors, s.requests),
        SloSli::Latency { threshold_ms } => {
            let i = engine
                .config()
                .thresholds_for(&slo.service)
                .iter()
                .position(|t| *t == threshold_ms);
            match i {
                Some(i) => ((s.timed - s.within[i]).max(0.0), s.timed),
                // The threshold is not tracked: nothing can be said.
                None => (0.0, 0.0),
            }
        }
    }
}

/// Bad ÷ all events of `slo` over `window` ending now; 0 without events (as the burn rates
/// read then).
pub fn error_ratio(engine: &Engine, slo: &Slo, window: Span) -> f64 {
    let (bad, total) = bad_total(engine, slo, window);
    if total <= 0.0 { 0.0 } else { bad / total }
}

/// The burn rate of `slo` over `window` ending now; None without events.
pub fn burn_over(engine: &Engine, slo: &Slo, window: Span) -> Option<f64> {
    let (bad, total) = bad_total(engine, slo, window);
    (total > 0.0).then(|| burn(bad, total, slo.objective))
}

const fn one() -> f64 {
    1.0
}

/// Share of `window` (ending at the engine's now) that the engine's history covers.
pub fn coverage(engine: &Engine, window: Span) -> f64 {
    let start = engine.history_start();
    if start == 0 || window.secs() == 0 {
        return 0.0;
    }
    let have = engine.now().saturating_sub(start) as f64 / window.nanos() as f64;
    have.clamp(0.0, 1.0)
}

fn burn(bad: f64, total: f64, objective: f64) -> f64 {
    if total <= 0.0 {
        0.0
    } else {
        bad / total / (1.0 - objective)
    }
}

/// Evaluates `slo` at the engine's `now`.
pub fn evaluate(engine: &Engine, slo: &Slo) -> SloStatus {
    let mut cache: BTreeMap<Span, (f64, f64)> = BTreeMap::new();
    let mut window = |w: Span| *cache.entry(w).or_insert_with(|| bad_total(engine, slo, w));
    let mut tiers: Vec<TierStatus> = slo
        .tiers
        .iter()
        .map(|t| {
            let (bl, tl) = window(t.long);
            let (bs, ts) = window(t.short);
            let burn_long = burn(bl, tl, slo.objective);
            let burn_short = burn(bs, ts, slo.objective);
            let coverage_long = coverage(engine, t.long);
            let over = tl >= t.min_events as f64
                && coverage_long >= t.min_coverage
                && burn_long >= t.factor
                && burn_short >= t.factor;
            TierStatus {
                name: t.name.clone(),
                severity: t.severity,
                factor: t.factor,
                long: t.long,
                short: t.short,
                burn_long,
                burn_short,
                events_long: tl,
                coverage_long,
                coverage_short: coverage(engine, t.short),
                over,
                firing: over,
            }
        })
        .collect();
    // A faster tier (shorter long window) that is over inhibits the slower ones.
    let fastest_over = tiers.iter().filter(|t| t.over).map(|t| t.long).min();
    if let Some(fast) = fastest_over {
        for t in tiers.iter_mut().filter(|t| t.long > fast) {
            t.firing = false;
        }
    }
    let burn_rates = REPORTED_WINDOWS
        .iter()
        .map(|&w| {
            let (b, t) = window(w);
            (w.to_string(), burn(b, t, slo.objective))
        })
        .collect();
    let (bad_p, total_p) = window(slo.period);
    let budget = (1.0 - slo.objective) * total_p;
    let budget_remaining = if total_p <= 0.0 {
        1.0
    } else {
        1.0 - bad_p / budget
    };
    let (b1, t1) = window(Span::hours(1));
    let burn_1h = burn(b1, t1, slo.objective);
    let exhaustion_eta_s = if burn_1h <= 0.0 {
        None
    } else {
        Some((budget_remaining.max(0.0) * slo.period.secs() as f64 / burn_1h).max(0.0))
    };
    let firing_short = tiers.iter().filter(|t| t.firing).map(|t| t.short).min();
    let attribution = firing_short
        .map(|w| attribute(engine, slo, w))
        .unwrap_or_default();
    let root_cause = match (firing_short, &slo.sli) {
        (Some(w), SloSli::Availability) => {
            let own_bad = |s: &str| {
                let sums = engine.service_sums_prorated(s, w);
                (sums.requests > 0.0).then_some(sums.errors)
            };
            crate::graph::root_cause(
                engine.graph(),
                &slo.service,
                window(w).0,
                w,
                engine.now(),
                own_bad,
            )
        }
        _ => None,
    };
    let first_bad_at = firing_short.and_then(|_| first_bad(engine, slo));
    SloStatus {
        name: slo.name.clone(),
        service: slo.service.clone(),
        objective: slo.objective,
        period: slo.period,
        budget_remaining,
        burn_rates,
        firing: tiers
            .iter()
            .filter(|t| t.firing)
            .map(|t| t.name.clone())
            .collect(),
        exhaustion_eta_s,
        tiers,
        period_events: (total_p - bad_p, total_p),
        attribution,
        root_cause,
        first_bad_at,
    }
}

/// When the SLO's bad events began to rise (see [`crate::onset`]).
fn first_bad(engine: &Engine, slo: &Slo) -> Option<crate::time::UnixNanos> {
    let threshold = match slo.sli {
        SloSli::Availability => None,
        SloSli::Latency { threshold_ms } => Some(
            engine
                .config()
                .thresholds_for(&slo.service)
                .iter()
                .position(|t| *t == threshold_ms)?,
        ),
    };
    crate::onset::onset(
        engine,
        &slo.service,
        |k| slo.selector.is_empty() || k.matches(&slo.selector),
        |s| match threshold {
            None => (s.errors, s.requests),
            Some(i) => ((s.timed - s.within[i]).max(0.0), s.timed),
        },
    )
}

/// The SLO's bad events over `window`, attributed to versions, operations and dimensions.
fn attribute(engine: &Engine, slo: &Slo, window: Span) -> Vec<crate::attribution::Attribution> {
    let threshold = match slo.sli {
        SloSli::Availability => None,
        SloSli::Latency { threshold_ms } => {
            let Some(i) = engine
                .config()
                .thresholds_for(&slo.service)
                .iter()
                .position(|t| *t == threshold_ms)
            else {
                return Vec::new();
            };
            Some(i)
        }
    };
    let rows = engine.series_sums(&slo.service, window);
    let counted = rows
        .iter()
        .filter(|(key, _)| slo.selector.is_empty() || key.matches(&slo.selector))
        .map(|(key, s)| {
            let (bad, events) = match threshold {
                None => (s.errors, s.requests),
                Some(i) => ((s.timed - s.within[i]).max(0.0), s.timed),
            };
            (*key, events.round() as u64, bad.round() as u64)
        });
    crate::attribution::attribute(counted)
}

/// Rollout strategy allowed by the error budget left (DESIGN §3).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Strategy {
    /// More than 50 % of the budget left.
    Aggressive,
    /// 20–50 % left.
    Conservative,
    /// 5–20 % left.
    UltraConservative,
    /// Less than 5 % left: no deploys.
    Frozen,
}

impl Strategy {
    /// The strategy for `budget_remaining` (a share of the budget, 1 = untouched).
    pub fn for_budget(budget_remaining: f64) -> Strategy {
        if budget_remaining > 0.5 {
            Strategy::Aggressive
        } else if budget_remaining >= 0.2 {
            Strategy::Conservative
        } else if budget_remaining >= 0.05 {
            Strategy::UltraConservative
        } else {
            Strategy::Frozen
        }
    }
}

#[cfg(test)]
#[path = "slo_tests.rs"]
mod tests;
