//! Validation of the sections that decide: `canary:` (pairs and detection templates),
//! `policies:` (each rule's condition and action checked for meaning) and `maintenance:`
//! windows, `anomaly:` (the watch's detector) and `capacity:`. Pure; every problem names its field.

use std::collections::BTreeSet;
use trike_engine::canary::{CanaryMetric, CanarySpec};
use trike_engine::policy::{Action, Rule, TierSelector, When};

pub(super) fn canaries(p: &mut Vec<String>, raw: Vec<super::RawCanary>) -> Vec<CanarySpec> {
    let mut out = Vec::new();
    for (i, c) in raw.into_iter().enumerate() {
        let f = format!("canary[{i}]");
        let mut spec = match (c.detect, c.baseline, c.canary) {
            (true, None, None) => CanarySpec::detect(&c.service),
            (true, _, _) => {
                p.push(format!(
                    "{f}: detect: true finds the versions itself; remove baseline and canary (or detect)"
                ));
                CanarySpec::detect(&c.service)
            }
            (false, Some(b), Some(v)) => {
                if b == v {
                    p.push(format!("{f}: baseline and canary are both {v:?}"));
                }
                CanarySpec::new(&c.service, &b, &v)
            }
            (false, b, v) => {
                p.push(format!(
                    "{f}: give baseline and canary versions (missing: {}), or detect: true",
                    [("baseline", b.is_none()), ("canary", v.is_none())]
                        .iter()
                        .filter(|x| x.1)
                        .map(|x| x.0)
                        .collect::<Vec<_>>()
                        .join(", ")
                ));
                CanarySpec::new(&c.service, "", "")
            }
        };
        if let Some(w) = c.window {
            if w.secs() > 3600 {
                p.push(format!(
                    "{f}.window: {w} is longer than the 1h of latency history"
                ));
            }
            spec.window = w;
        }
        if let Some(n) = c.min_requests {
            spec.min_requests = n;
        }
        if let Some(j) = c.judge {
            spec.judge = j;
        }
        if let Some(t) = c.error_tolerance {
            spec.error_tolerance = t;
        }
        if let Some(t) = c.latency_tolerance {
            spec.latency_tolerance = t;
        }
        if let Some(list) = c.metrics {
            if list.is_empty() {
                p.push(format!(
                    "{f}.metrics: name at least one metric: error_ratio, latency"
                ));
            }
            spec.metrics = Vec::new();
            for (j, m) in list.iter().enumerate() {
                match CanaryMetric::from_name(m) {
                    Some(m) if !spec.metrics.contains(&m) => spec.metrics.push(m),
                    Some(_) => p.push(format!("{f}.metrics[{j}]: {m:?} is listed twice")),
                    None => p.push(format!(
                        "{f}.metrics[{j}]: {m:?} is not a canary metric: write error_ratio or latency"
                    )),
                }
            }
        }
        out.push(spec);
    }
    out
}

/// The maintenance windows, each a silence `maintenance:<name>`.
pub(super) fn maintenance(
    p: &mut Vec<String>,
    raw: Vec<super::RawMaintenance>,
) -> Vec<trike_runtime::silences::Silence> {
    let mut out = Vec::new();
    let mut names = BTreeSet::new();
    for (i, w) in raw.into_iter().enumerate() {
        let f = format!("maintenance[{i}]");
        if !names.insert(w.name.clone()) {
            p.push(format!("{f}.name: {:?} is used twice", w.name));
        }
        let mut at = |field: &str, v: &str| match trike_sinks::parse_rfc3339(v) {
            Some(s) => s * 1_000_000_000,
            None => {
                p.push(format!("{f}.{field}: {v:?} is not an RFC 3339 time"));
                0
            }
        };
        let (starts_at, ends_at) = (at("start", &w.start), at("end", &w.end));
        let s = trike_runtime::silences::Silence {
            id: format!("maintenance:{}", w.name),
            matchers: w.matchers,
            starts_at,
            ends_at,
            created_by: "config".into(),
            comment: w.comment,
            origin: "maintenance".into(),
        };
        if let Err(e) = s.validate() {
            p.push(format!("{f}: {e}"));
        }
        out.push(s);
    }
    out
}

/// A rule's meaning: its condition names something that exists, and its action has the
/// parameters it needs.
fn check_rule(
    p: &mut Vec<String>,
    f: &str,
    r: &super::RawRule,
    when: &When,
    tiers: &BTreeSet<&str>,
) {
    match when {
        When::BurnRate(TierSelector::Named(n)) if !tiers.contains(n.as_str()) => {
            let known: Vec<&str> = tiers.iter().copied().collect();
            p.push(format!(
                "{f}.when: burn_rate.{n}: no SLO has a tier named {n:?} (tiers: {}); write burn_rate.page, burn_rate.ticket or one of those",
                if known.is_empty() { "none".to_string() } else { known.join(", ") }
            ));
        }
        When::BudgetBelow(x) if !(*x > 0.0 && *x <= 1.0) => p.push(format!(
            "{f}.when: budget < {x}: the threshold is a share of the budget, in (0, 1]; write budget < 0.2 for 20 %"
        )),
        _ => {}
    }
    match r.action {
        Action::SetWeight => match r.params.get("weight") {
            None => p.push(format!(
                "{f}.params.weight: set_weight needs a weight, 0 to 100 (percent of traffic), e.g. params: {{ weight: 0 }}"
            )),
            Some(w) if !(0.0..=100.0).contains(w) => p.push(format!(
                "{f}.params.weight: {w} is not a percentage (0 to 100)"
            )),
            _ => {}
        },
        Action::Throttle => match r.params.get("rate_limit") {
            None => p.push(format!(
                "{f}.params.rate_limit: throttle needs a rate limit (requests per second), e.g. params: {{ rate_limit: 100 }}"
            )),
            Some(x) if !(x.is_finite() && *x >= 0.0) => p.push(format!(
                "{f}.params.rate_limit: {x} is not a rate (requests per second, 0 or more)"
            )),
            _ => {}
        },
        _ => {}
    }
}

pub(super) fn rules(
    p: &mut Vec<String>,
    raw: Vec<super::RawRule>,
    tiers: &BTreeSet<&str>,
) -> Vec<Rule> {
    let mut out: Vec<Rule> = Vec::new();
    for (i, r) in raw.into_iter().enumerate() {
        let f = format!("policies[{i}]");
        if out.iter().any(|o| o.name == r.name) {
            p.push(format!("{f}.name: {:?} is used by another rule", r.name));
        }
        let when: When = match r.when.parse() {
            Ok(w) => w,
            Err(e) => {
                p.push(format!("{f}.when: {e}"));
                When::Stale
            }
        };
        check_rule(p, &f, &r, &when, tiers);
        if r.action == Action::Resolved {
            p.push(format!(
                "{f}.action: resolved is emitted by Trike, not a rule's action"
            ));
        }
        let d = Rule::new(&r.name, when, r.action);
        out.push(Rule {
            for_: r.for_.unwrap_or(d.for_),
            cooldown: r.cooldown.unwrap_or(d.cooldown),
            max_actions: r.max_actions.unwrap_or(d.max_actions),
            max_actions_window: r.max_actions_window.unwrap_or(d.max_actions_window),
            severity: r.severity.unwrap_or(d.severity),
            dry_run: r.dry_run,
            params: r.params,
            services: r.services,
            act_on_stale: r.act_on_stale,
            selector: r.selector,
            ..d
        });
    }
    out
}

/// `anomaly:`: the watch's detector settings; problems go to `p` (the defaults stand in).
pub(super) fn anomaly(
    p: &mut Vec<String>,
    raw: &super::RawAnomaly,
) -> trike_runtime::hooks::decide::WatchSettings {
    let mut w = trike_runtime::hooks::decide::WatchSettings::default();
    let d = &mut w.detector;
    if let Some(t) = raw.threshold {
        d.threshold = t;
    }
    match raw.season.as_deref() {
        None => {}
        Some("none") => d.season_s = 0,
        Some(text) => match text.parse::<trike_engine::Span>() {
            Ok(span) => d.season_s = span.secs(),
            Err(e) => p.push(format!("anomaly.season: {e} (or none)")),
        },
    }
    if let Some(b) = raw.season_bins {
        d.season_bins = b;
    }
    if let Some(m) = raw.memory {
        d.memory = m;
    }
    if let Some(s) = raw.silence {
        d.silence = s;
    }
    if let Err(e) = d.check() {
        p.push(format!("anomaly.{e}"));
        *d = trike_runtime::hooks::decide::WatchSettings::default().detector;
    }
    if let Some(every) = raw.every {
        w.every_s = every.secs();
    }
    w
}

/// `capacity:`: each service's limits (its request rate's, its usage metrics'); problems go
/// to `p`.
pub(super) fn capacity(
    p: &mut Vec<String>,
    raw: &[super::RawCapacity],
) -> Vec<trike_engine::forecast::CapacityLimit> {
    use trike_engine::forecast::REQUEST_RATE;
    let mut out: Vec<trike_engine::forecast::CapacityLimit> = Vec::new();
    for (i, c) in raw.iter().enumerate() {
        if c.service.trim().is_empty() {
            p.push(format!("capacity[{i}].service: give the service's name"));
        }
        let metric = c.metric.as_deref().unwrap_or(REQUEST_RATE);
        if metric.trim().is_empty() {
            p.push(format!(
                "capacity[{i}].metric: write request_rate or a usage metric's name (e.g. process.cpu.time)"
            ));
        }
        if !(c.limit.is_finite() && c.limit > 0.0) {
            let unit = if metric == REQUEST_RATE {
                "requests per second"
            } else {
                "the metric's unit (per second for a counter)"
            };
            p.push(format!(
                "capacity[{i}].limit: {} is not a positive number, in {unit}",
                c.limit
            ));
        }
        if out
            .iter()
            .any(|o| o.service == c.service && o.metric == metric)
        {
            p.push(format!(
                "capacity[{i}]: {:?} has a limit on {metric} already",
                c.service
            ));
        }
        out.push(trike_engine::forecast::CapacityLimit {
            service: c.service.clone(),
            metric: metric.to_string(),
            limit: c.limit,
        });
    }
    out
}
