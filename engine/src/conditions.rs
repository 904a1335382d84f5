//! Each kind of rule condition against one service's facts: which targets it holds for, with
//! the evidence and the reason sentence of the decision it would make.

use super::*;

impl PolicyEngine {
    /// The rule's conditions that hold for `f`: (target, evidence, reason, slo).
    pub(super) fn conditions(
        rule: &Rule,
        f: &ServiceFacts,
    ) -> Vec<(Target, Evidence, String, Option<String>)> {
        let svc = |version: &str| Target {
            service: f.service.clone(),
            version: version.to_string(),
            ..Target::default()
        };
        match &rule.when {
            When::BurnRate(sel) => f
                .slos
                .iter()
                .find_map(|s| {
                    let tier = s.tiers.iter().find(|t| {
                        t.firing
                            && match sel {
                                TierSelector::Severity(sev) => t.severity == *sev,
                                TierSelector::Named(n) => &t.name == n,
                            }
                    })?;
                    let reason = format!(
                        "{} is burning its error budget at {:.1}x over {} and {:.1}x over {} (tier {} fires at {:.1}x; history covers {} of the {} window); {} of the budget left{}",
                        s.name, tier.burn_long, tier.long, tier.burn_short, tier.short, tier.name, tier.factor, pct(tier.coverage_long), tier.long, pct(s.budget_remaining.max(0.0)),
                        crate::attribution::phrase(&s.attribution, "the service's")
                    ) + &inhibition::phrase(s.root_cause.as_ref());
                    let ev = Evidence::BurnRate {
                        slo: s.name.clone(),
                        objective: s.objective,
                        budget_remaining: s.budget_remaining,
                        tier: tier.clone(),
                        attribution: s.attribution.clone(),
                        root_cause: s.root_cause.clone(),
                        first_bad_at: s.first_bad_at,
                    };
                    Some((svc(""), ev, reason, Some(s.name.clone())))
                })
                .into_iter()
                .collect(),
            When::Canary(v) => f
                .canaries
                .iter()
                .filter(|c| c.verdict == *v)
                .map(|c| {
                    let detail: Vec<String> = c
                        .metrics
                        .iter()
                        .filter(|m| m.verdict == *v)
                        .map(|m| match m.metric {
                            crate::canary::CanaryMetric::ErrorRatio => format!(
                                "error ratio {} vs {} (p = {:.1e})",
                                pct(m.canary.unwrap_or(0.0)),
                                pct(m.baseline.unwrap_or(0.0)),
                                m.p_value.unwrap_or(1.0)
                            ),
                            crate::canary::CanaryMetric::Latency => format!(
                                "median latency {:.1} ms vs {:.1} ms (p = {:.1e})",
                                m.canary.unwrap_or(0.0),
                                m.baseline.unwrap_or(0.0),
                                m.p_value.unwrap_or(1.0)
                            ),
                        })
                        .collect();
                    let reason = format!(
                        "{} {} {} canary analysis against {}: {}",
                        c.service,
                        c.canary,
                        match v {
                            Verdict::Fail => "failed",
                            Verdict::Pass => "passed",
                            Verdict::Inconclusive => "is inconclusive in",
                        },
                        c.baseline,
                        if detail.is_empty() { "no metric decided".to_string() } else { detail.join(", ") }
                    ) + &crate::attribution::phrase(&c.attribution, "the baseline's");
                    (svc(&c.canary), Evidence::Canary(c.clone()), reason, None)
                })
                .collect(),
            When::Stale => f
                .stale
                .iter()
                .map(|ev| {
                    let reason = match ev {
                        Evidence::Stale { silent_s, lag_s } => format!(
                            "{} telemetry is stale: no data for {silent_s:.0} s, newest event {lag_s:.0} s behind its arrival",
                            f.service
                        ),
                        _ => format!("{} telemetry is stale", f.service),
                    };
                    (svc(""), ev.clone(), reason, None)
                })
                .collect(),
            When::Anomaly(metric) => f
                .anomalies
                .iter()
                .find(|p| p.anomaly && metric.is_none_or(|m| m == p.metric))
                .map(|p| {
                    let reason = format!(
                        "{} {} is anomalous: {:.4} where {:.4} was expected (score {:.2})",
                        f.service,
                        p.metric.name(),
                        p.value,
                        p.expected,
                        p.score
                    );
                    (svc(""), Evidence::Anomaly(*p), reason, None)
                })
                .into_iter()
                .collect(),
            When::ForecastWithin(x) => f
                .forecast
                .as_ref()
                .filter(|p| p.days_to_limit.is_some_and(|d| d < *x))
                .map(|p| {
                    let what = if &*p.metric == crate::forecast::REQUEST_RATE {
                        "request rate".to_string()
                    } else {
                        p.metric.to_string()
                    };
                    let per_s = if &*p.metric == crate::forecast::REQUEST_RATE { "/s" } else { "" };
                    let reason = format!(
                        "{} {what} ({:.1}{per_s}, {:+.2}{per_s} a day) is forecast to reach its capacity limit of {}{per_s} in {:.1} days, within {x}",
                        f.service,
                        p.value,
                        p.trend_per_day,
                        p.limit.unwrap_or(f64::NAN),
                        p.days_to_limit.unwrap_or(f64::NAN)
                    );
                    let ev = Evidence::Forecast { forecast: p.clone(), within_days: *x };
                    (svc(""), ev, reason, None)
                })
                .into_iter()
                .collect(),
            When::RegionHealthBelow(x) => {
                let whole = f.regions.first().map_or(1.0, |r| r.service_health);
                f.regions
                    .iter()
                    .filter(|r| r.requests >= crate::regions::MIN_REQUESTS && r.health < *x && r.relative < 1.0)
                    .map(|r| {
                        let reason = format!(
                            "{} in {} is unhealthy: {} of its requests good and fast (the service {}), error ratio {}, over {}",
                            f.service, r.region, pct(r.health), pct(whole), pct(r.error_ratio), crate::regions::WINDOW
                        );
                        let t = Target { region: r.region.clone(), ..svc("") };
                        let ev = Evidence::Region { region: r.clone(), service_health: whole, below: *x };
                        (t, ev, reason, None)
                    })
                    .collect()
            }
            When::SpendBurnAbove(x) => f
                .spend
                .filter(|s| s.burn() > *x)
                .map(|s| {
                    let cores = s
                        .cpu_cores
                        .map(|c| format!(", {c:.2} cores"))
                        .unwrap_or_default();
                    let reason = format!(
                        "{} spends its budget {:.1}x too fast over 1h and {:.1}x over 5m (over {x}x): {:.2} a day at {:.6} a request{cores} against {:.2}",
                        f.service, s.burn_1h, s.burn_5m, s.spend_per_day, s.cost_per_request, s.budget_per_day
                    );
                    (svc(""), Evidence::Spend { spend: s, above: *x }, reason, None)
                })
                .into_iter()
                .collect(),
            When::BudgetBelow(x) => f
                .slos
                .iter()
                .find(|s| s.budget_remaining < *x)
                .map(|s| {
                    let reason = format!("{} has {} of its error budget left, below {}", s.name, pct(s.budget_remaining.max(0.0)), pct(*x));
                    let ev = Evidence::Budget { slo: s.name.clone(), budget_remaining: s.budget_remaining, below: *x };
                    (svc(""), ev, reason, Some(s.name.clone()))
                })
                .into_iter()
                .collect(),
        }
    }
}
