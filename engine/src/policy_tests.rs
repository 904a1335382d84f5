//! Policy tables with a simulated clock.

use super::*;
use crate::anomaly::{AnomalyPoint, SliMetric};
use crate::canary::{CanaryResult, MetricResult};

const S: u64 = NANOS_PER_SEC;
const T0: u64 = 1_800_000_000 * S;

fn rule(name: &str, when: &str, action: Action) -> Rule {
    Rule {
        max_actions: 100,
        severity: Severity::Page,
        ..Rule::new(name, when.parse().unwrap(), action)
    }
}

fn canary(verdict: Verdict) -> CanaryResult {
    CanaryResult {
        service: "checkout".into(),
        baseline: "1.4.0".into(),
        canary: "1.5.0".into(),
        verdict,
        score: 0.0,
        metrics: vec![MetricResult {
            metric: crate::canary::CanaryMetric::ErrorRatio,
            verdict,
            baseline: Some(0.001),
            canary: Some(0.05),
            effect: Some(0.049),
            auc: None,
            p_value: Some(1e-9),
            baseline_n: 9000,
            canary_n: 1000,
        }],
        sequential: None,
        attribution: vec![],
        first_bad_at: None,
    }
}

fn facts(verdict: Option<Verdict>, stale: bool) -> Vec<ServiceFacts> {
    vec![ServiceFacts {
        service: "checkout".into(),
        stale: stale.then_some(Evidence::Stale {
            silent_s: 90.0,
            lag_s: 0.0,
        }),
        slos: vec![],
        canaries: verdict.map(canary).into_iter().collect(),
        observed_until: T0,
        anomalies: vec![],
        forecast: None,
        ..Default::default()
    }]
}

/// Runs `steps` (second, canary verdict or None, stale) and returns (second, action) per decision.
fn run(p: &mut PolicyEngine, steps: &[(u64, Option<Verdict>, bool)]) -> Vec<(u64, Action)> {
    let mut out = Vec::new();
    for &(sec, v, stale) in steps {
        for d in p.step(T0 + sec * S, &facts(v, stale)) {
            out.push((sec, d.action));
        }
    }
    out
}

const F: Option<Verdict> = Some(Verdict::Fail);
const P: Option<Verdict> = Some(Verdict::Pass);

/// Table: `for` (30 s of hysteresis), one rollback per episode, resolved when it clears.
#[test]
fn hysteresis_dedupe_and_resolved() {
    let mut r = rule("rollback-bad-canary", "canary.fail", Action::Rollback);
    r.for_ = Span(30);
    let mut p = PolicyEngine::new(Policy::new(vec![r]));
    let got = run(
        &mut p,
        &[
            (0, F, false),
            (10, F, false),
            (20, P, false),
            (25, F, false),
            (54, F, false),
            (55, F, false),
            (56, F, false),
            (90, F, false),
            (100, P, false),
            (101, P, false),
        ],
    );
    // The flap at 20 s restarts the clock: 25 + 30 = 55.
    assert_eq!(got, vec![(55, Action::Rollback), (100, Action::Resolved)]);
}

/// Guarantees: ids are deterministic (same input, same ids), the resolved event names the
/// decision it resolves, and the decision carries revision, evidence and target.
#[test]
fn deterministic_ids_and_contents() {
    let mk = || {
        PolicyEngine::new(Policy::new(vec![rule(
            "r",
            "canary.fail",
            Action::Rollback,
        )]))
    };
    let (mut a, mut b) = (mk(), mk());
    let da = a.step(T0, &facts(F, false));
    let db = b.step(T0, &facts(F, false));
    assert_eq!(da, db);
    let d = &da[0];
    assert_eq!(
        d.target,
        Target {
            service: "checkout".into(),
            version: "1.5.0".into(),
            ..Target::default()
        }
    );
    assert_eq!(d.policy_revision, a.policy().revision);
    assert!(
        d.reason
            .contains("checkout 1.5.0 failed canary analysis against 1.4.0"),
        "{}",
        d.reason
    );
    assert!(matches!(d.evidence, Evidence::Canary(_)));
    let r = a.step(T0 + S, &facts(P, false));
    assert_eq!(r[0].action, Action::Resolved);
    assert_eq!(r[0].resolves.as_deref(), Some(d.decision_id.as_str()));
    assert_ne!(r[0].decision_id, d.decision_id);
    // A different policy gets a different revision.
    let other = Policy::new(vec![rule("r", "canary.fail", Action::Page)]);
    assert_ne!(other.revision, a.policy().revision);
}

/// Table: cool-down (10 min) keeps a new episode from acting again too soon.
#[test]
fn cooldown() {
    let mut p = PolicyEngine::new(Policy::new(vec![rule("r", "canary.fail", Action::Page)]));
    let got = run(
        &mut p,
        &[
            (0, F, false),
            (5, P, false),
            (60, F, false),
            (300, P, false),
            (700, F, false),
        ],
    );
    assert_eq!(
        got,
        vec![
            (0, Action::Page),
            (5, Action::Resolved),
            (700, Action::Page)
        ]
    );
    assert!(p.stats().cooled_down >= 1);
}

/// Guarantees: at most `max_actions` per window, across targets.
#[test]
fn cap_per_window() {
    let mut r = rule("r", "canary.fail", Action::Page);
    r.max_actions = 1;
    r.cooldown = Span(1);
    let mut p = PolicyEngine::new(Policy::new(vec![r]));
    let got = run(
        &mut p,
        &[
            (0, F, false),
            (2, P, false),
            (4, F, false),
            (3700, F, false),
        ],
    );
    assert_eq!(
        got,
        vec![
            (0, Action::Page),
            (2, Action::Resolved),
            (3700, Action::Page)
        ]
    );
    assert!(p.stats().capped >= 1);
}

/// Guarantees: two rules asking for the same action on the same target act once.
#[test]
fn dedupe_across_rules() {
    let mut p = PolicyEngine::new(Policy::new(vec![
        rule("a", "canary.fail", Action::Rollback),
        rule("b", "canary.fail", Action::Rollback),
        rule("c", "canary.fail", Action::Page),
    ]));
    let d = p.step(T0, &facts(F, false));
    let names: Vec<_> = d.iter().map(|d| (d.rule.as_str(), d.action)).collect();
    assert_eq!(names, vec![("a", Action::Rollback), ("c", Action::Page)]);
    assert!(p.step(T0 + S, &facts(F, false)).is_empty());
    assert!(p.stats().deduplicated >= 1);
}

/// Table: stale data holds actions (and resolutions) unless the rule allows it; a `stale` rule
/// fires on staleness itself.
#[test]
fn stale_hold() {
    let mut brave = rule("brave", "canary.fail", Action::Page);
    brave.act_on_stale = true;
    let mut p = PolicyEngine::new(Policy::new(vec![
        rule("careful", "canary.fail", Action::Rollback),
        brave,
        rule("hold-on-stale", "stale", Action::Page),
    ]));
    let d = p.step(T0, &facts(F, true));
    let got: Vec<_> = d.iter().map(|d| d.rule.as_str()).collect();
    assert_eq!(got, vec!["brave", "hold-on-stale"]);
    assert!(p.stats().held_stale >= 1);
    // Fresh again: the careful rule acts now; the stale rule resolves.
    let d = p.step(T0 + S, &facts(F, false));
    let got: Vec<_> = d.iter().map(|d| (d.rule.as_str(), d.action)).collect();
    assert_eq!(
        got,
        vec![
            ("careful", Action::Rollback),
            ("hold-on-stale", Action::Resolved)
        ]
    );
}

/// Scenario: a dry-run (shadow) rule is listed before a live rule with the same action.
/// Guarantees: the live rule still acts; the shadow rule still records its own decision; and
/// a shadow episode already open does not suppress a live rule that starts later (nor the
/// reverse).
#[test]
fn dry_run_rules_never_suppress_live_ones() {
    let mut shadow = rule("shadow", "canary.fail", Action::Rollback);
    shadow.dry_run = true;
    let live = rule("live", "canary.fail", Action::Rollback);
    let mut p = PolicyEngine::new(Policy::new(vec![shadow.clone(), live.clone()]));
    let d = p.step(T0, &facts(F, false));
    let got: Vec<_> = d.iter().map(|d| (d.rule.as_str(), d.dry_run)).collect();
    assert_eq!(got, vec![("shadow", true), ("live", false)]);
    assert_eq!(p.stats().deduplicated, 0);

    // The shadow episode opens first; the live rule's hysteresis ends a step later.
    let mut slow_live = live;
    slow_live.for_ = Span(1);
    let mut p = PolicyEngine::new(Policy::new(vec![shadow, slow_live]));
    assert_eq!(p.step(T0, &facts(F, false)).len(), 1, "the shadow decision");
    let d = p.step(T0 + S, &facts(F, false));
    assert_eq!(d.len(), 1);
    assert_eq!((d[0].rule.as_str(), d[0].dry_run), ("live", false));
    // Two live rules still deduplicate.
    let mut p = PolicyEngine::new(Policy::new(vec![
        rule("a", "canary.fail", Action::Rollback),
        rule("b", "canary.fail", Action::Rollback),
    ]));
    assert_eq!(p.step(T0, &facts(F, false)).len(), 1);
}

/// Guarantees: dry-run rules decide and record, marked `dry_run`.
#[test]
fn dry_run_is_marked() {
    let mut r = rule("r", "canary.fail", Action::Rollback);
    r.dry_run = true;
    let mut p = PolicyEngine::new(Policy::new(vec![r]));
    let d = p.step(T0, &facts(F, false));
    assert!(d[0].dry_run);
}

/// Guarantees: the `when` grammar parses what DESIGN §5 writes, and rejects the rest.
#[test]
fn when_grammar() {
    for (text, want) in [
        (
            "burn_rate.page",
            When::BurnRate(TierSelector::Severity(Severity::Page)),
        ),
        (
            "burn_rate.page_fast",
            When::BurnRate(TierSelector::Named("page_fast".into())),
        ),
        ("canary.fail", When::Canary(Verdict::Fail)),
        ("stale", When::Stale),
        ("budget < 0.2", When::BudgetBelow(0.2)),
        ("anomaly", When::Anomaly(None)),
        (
            "anomaly.error_ratio",
            When::Anomaly(Some(SliMetric::ErrorRatio)),
        ),
    ] {
        assert_eq!(text.parse::<When>().unwrap(), want);
        assert_eq!(want.to_string(), text);
    }
    for bad in [
        "burn_rate.",
        "canary.maybe",
        "budget > 3",
        "anything",
        "anomaly.cpu",
    ] {
        assert!(bad.parse::<When>().is_err(), "{bad}");
    }
}

/// Guarantees: only firing (not inhibited) tiers of the selected severity trigger burn rules.
#[test]
fn burn_rate_rules_follow_firing_tiers() {
    use crate::slo::{SloStatus, TierStatus};
    let tier = |name: &str, severity, firing| TierStatus {
        name: name.into(),
        severity,
        factor: 14.4,
        long: Span::hours(1),
        short: Span::minutes(5),
        burn_long: 20.0,
        burn_short: 30.0,
        events_long: 1000.0,
        coverage_long: 1.0,
        coverage_short: 1.0,
        over: true,
        firing,
    };
    let slo = SloStatus {
        name: "checkout-availability".into(),
        service: "checkout".into(),
        objective: 0.999,
        period: Span::days(30),
        budget_remaining: 0.4,
        burn_rates: BTreeMap::new(),
        firing: vec!["page_fast".into()],
        exhaustion_eta_s: Some(100.0),
        tiers: vec![
            tier("page_fast", Severity::Page, true),
            tier("ticket", Severity::Ticket, false),
        ],
        period_events: (0.0, 0.0),
        attribution: vec![],
        root_cause: None,
        first_bad_at: None,
    };
    let f = vec![ServiceFacts {
        service: "checkout".into(),
        slos: vec![slo],
        observed_until: T0,
        ..Default::default()
    }];
    let mut p = PolicyEngine::new(Policy::new(vec![
        rule("page", "burn_rate.page", Action::Page),
        rule("ticket", "burn_rate.ticket", Action::Ticket),
        rule("budget", "budget < 0.5", Action::FreezeDeploys),
    ]));
    let d = p.step(T0, &f);
    let got: Vec<_> = d.iter().map(|d| d.rule.as_str()).collect();
    assert_eq!(
        got,
        vec!["page", "budget"],
        "the inhibited ticket tier does not act"
    );
    assert!(
        d[0].reason
            .contains("burning its error budget at 20.0x over 1h"),
        "{}",
        d[0].reason
    );
    assert_eq!(d[0].slo.as_deref(), Some("checkout-availability"));
}

/// Guarantees: `anomaly` rules act on flagged streams (of the named metric) with the
/// detector's numbers as evidence.
#[test]
fn anomaly_rules() {
    let point = |metric, anomaly| AnomalyPoint {
        metric,
        value: 0.2,
        expected: 0.001,
        score: 0.97,
        anomaly,
        at_s: 1,
    };
    let f = vec![ServiceFacts {
        service: "checkout".into(),
        anomalies: vec![
            point(SliMetric::ErrorRatio, true),
            point(SliMetric::RequestRate, false),
        ],
        observed_until: T0,
        ..Default::default()
    }];
    let mut p = PolicyEngine::new(Policy::new(vec![
        rule("any", "anomaly", Action::Page),
        rule("errors", "anomaly.error_ratio", Action::Ticket),
        rule("rate", "anomaly.request_rate", Action::Throttle),
    ]));
    let d = p.step(T0, &f);
    let got: Vec<_> = d.iter().map(|d| d.rule.as_str()).collect();
    assert_eq!(got, vec!["any", "errors"]);
    assert!(matches!(
        d[0].evidence,
        Evidence::Anomaly(AnomalyPoint {
            metric: SliMetric::ErrorRatio,
            ..
        })
    ));
    assert!(
        d[0].reason.contains("checkout error_ratio is anomalous"),
        "{}",
        d[0].reason
    );
}

/// Guarantees: a policy restored from a snapshot (here through JSON, as a checkpoint would
/// store it) keeps the open episode: the ongoing condition is not acted on again, and its
/// `resolved` event carries the original decision's id. State of a removed rule is dropped.
#[test]
fn restored_state_keeps_episodes_and_ids() {
    let mut r = rule("rollback-bad-canary", "canary.fail", Action::Rollback);
    r.for_ = Span(5);
    let policy = Policy::new(vec![r.clone()]);
    let mut p = PolicyEngine::new(policy.clone());
    p.step(T0, &facts(F, false));
    let first = p.step(T0 + 6 * S, &facts(F, false));
    assert_eq!(first.len(), 1);
    let text = serde_json::to_string(&p.snapshot()).unwrap();

    let mut q = PolicyEngine::new(Policy::new(vec![
        r,
        rule("gone-tomorrow", "canary.fail", Action::Page),
    ]));
    let snap: PolicySnapshot = serde_json::from_str(&text).unwrap();
    assert!(q.restore(snap).is_empty());
    assert!(
        q.step(T0 + 20 * S, &facts(F, false))
            .iter()
            .all(|d| d.action != Action::Rollback)
    );
    let resolved = q.step(T0 + 30 * S, &facts(P, false));
    let rid = resolved
        .iter()
        .find(|d| d.action == Action::Resolved && d.rule == "rollback-bad-canary")
        .expect("resolved");
    assert_eq!(rid.resolves.as_deref(), Some(first[0].decision_id.as_str()));

    let mut only_other = PolicyEngine::new(Policy::new(vec![rule("x", "stale", Action::Page)]));
    let snap: PolicySnapshot = serde_json::from_str(&text).unwrap();
    assert_eq!(
        only_other.restore(snap),
        vec!["rollback-bad-canary".to_string()]
    );
}

/// Scenario: the service's partition moves: the old owner's episode travels in
/// `snapshot_of`, is merged into a new owner's policy and dropped from the old one.
/// Guarantees: the new owner does not act on the ongoing condition again and resolves it
/// under the original decision's id; the old owner keeps nothing of the service; state of
/// other services is not carried along.
#[test]
fn episodes_move_with_their_service() {
    let mut r = rule("rollback-bad-canary", "canary.fail", Action::Rollback);
    r.for_ = Span(5);
    let policy = Policy::new(vec![r]);
    let mut old = PolicyEngine::new(policy.clone());
    old.step(T0, &facts(F, false));
    let first = old.step(T0 + 6 * S, &facts(F, false));
    assert_eq!(first.len(), 1);

    let none = old.snapshot_of(|s| s == "search");
    assert!(none.rules.iter().all(|r| r.targets.is_empty()));
    let moving = old.snapshot_of(|s| s == "checkout");
    old.drop_services(|s| s == "checkout");
    assert!(old.snapshot().rules.iter().all(|r| r.targets.is_empty()));

    let mut new = PolicyEngine::new(policy);
    assert!(new.merge(moving).is_empty());
    assert!(new.step(T0 + 20 * S, &facts(F, false)).is_empty());
    let resolved = new.step(T0 + 30 * S, &facts(P, false));
    assert_eq!(resolved.len(), 1);
    assert_eq!(
        resolved[0].resolves.as_deref(),
        Some(first[0].decision_id.as_str())
    );
}

/// Scenario: shop's eu-west region is unhealthy (0.8 good, the service 0.93), us-east healthy,
/// ap-south unhealthy but with too few requests; then search spends 3× its budget over both
/// windows, and a rule throttles its batch traffic.
/// Guarantees: `region.health < 0.9` targets eu-west alone (the control event's
/// `target.region`), with its numbers in the evidence, an id of its own and a resolution
/// when it recovers; `cost.spend_burn > 2` fires on the smaller window's burn, its target
/// carrying the rule's selector (`traffic.class: batch`), named in the reason; a burn over 2
/// over 1 h but not over 5 m does not fire; both conditions parse and print back.
#[test]
fn region_and_spend_rules() {
    use crate::cost::SpendPoint;
    use crate::regions::RegionHealth;
    for (text, want) in [
        ("region.health < 0.9", When::RegionHealthBelow(0.9)),
        ("cost.spend_burn > 2", When::SpendBurnAbove(2.0)),
    ] {
        assert_eq!(text.parse::<When>().unwrap(), want);
        assert_eq!(want.to_string(), text);
    }
    assert!("region.health > 0.9".parse::<When>().is_err());
    assert!("cost.spend_burn > -1".parse::<When>().is_err());
    let region = |name: &str, requests: f64, health: f64| RegionHealth {
        region: name.into(),
        requests,
        error_ratio: 1.0 - health,
        health,
        relative: health / 0.93,
        service_health: 0.93,
    };
    let shop = |eu: f64| ServiceFacts {
        service: "shop".into(),
        regions: vec![
            region("ap-south", 20.0, 0.5),
            region("eu-west", 1200.0, eu),
            region("us-east", 1200.0, 0.99),
        ],
        ..Default::default()
    };
    let mut throttle = rule("throttle-batch", "cost.spend_burn > 2", Action::Throttle);
    throttle.selector = BTreeMap::from([("traffic.class".into(), "batch".into())]);
    throttle.params = BTreeMap::from([("rate_limit".into(), 0.5)]);
    let mut p = PolicyEngine::new(Policy::new(vec![
        rule("drain-region", "region.health < 0.9", Action::SetWeight),
        throttle,
    ]));
    let spend = |burn_1h: f64, burn_5m: f64| ServiceFacts {
        service: "search".into(),
        spend: Some(SpendPoint {
            cost_per_request: 0.001,
            cpu_cores: None,
            spend_per_day: 864.0 * burn_1h,
            budget_per_day: 864.0,
            burn_1h,
            burn_5m,
        }),
        ..Default::default()
    };
    let d = p.step(T0, &[shop(0.8), spend(3.0, 1.5)]);
    assert_eq!(d.len(), 1, "{d:#?}");
    assert_eq!(
        (d[0].target.service.as_str(), d[0].target.region.as_str()),
        ("shop", "eu-west")
    );
    assert!(
        d[0].reason
            .contains("shop in eu-west is unhealthy: 80.00 %"),
        "{}",
        d[0].reason
    );
    let Evidence::Region { region, below, .. } = &d[0].evidence else {
        panic!("{:?}", d[0].evidence)
    };
    assert_eq!((region.region.as_str(), *below), ("eu-west", 0.9));
    let plain = Target {
        service: "shop".into(),
        ..Target::default()
    };
    assert_ne!(
        d[0].decision_id,
        decision_id("drain-region", &plain, Action::SetWeight, T0),
        "the region is part of the id"
    );
    let event = d[0].decision_id.clone();
    let d = p.step(T0 + S, &[shop(0.97), spend(3.0, 2.5)]);
    assert_eq!(d.len(), 2, "{d:#?}");
    assert_eq!(d[0].action, Action::Resolved);
    assert_eq!(d[0].resolves.as_deref(), Some(event.as_str()));
    let t = &d[1];
    assert_eq!(t.action, Action::Throttle);
    assert_eq!(
        t.target.selector.get("traffic.class").map(String::as_str),
        Some("batch")
    );
    assert!(
        t.reason.contains("acting on traffic.class=batch traffic"),
        "{}",
        t.reason
    );
    assert!(
        t.reason.contains("3.0x too fast over 1h and 2.5x over 5m"),
        "{}",
        t.reason
    );
    assert!(matches!(t.evidence, Evidence::Spend { above, .. } if above == 2.0));
}
