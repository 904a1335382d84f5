//! checkout → payments → db on a fleet of two processors: P1 owns checkout (its telemetry and
//! its edge to payments), P2 owns payments (its telemetry and its edge to db); db sends
//! nothing. The explanations go from one to the other through a log that delivers after a
//! delay, as the cause log on Kafka would.

use super::*;
use crate::config::EngineConfig;
use crate::facts::{StaleRule, gather};
use crate::observation::{Batch, EdgeObs, RequestObs, SeriesKey};
use crate::policy::{Action, Decision, Evidence, Policy, Rule, TierSelector, When};
use crate::slo::{BurnTier, Severity, Slo, SloSli};
use std::collections::VecDeque;
use std::sync::Arc;

const S: u64 = NS;
const T0: u64 = 1_800_000_000 * S;
const RATE: u64 = 20;
/// The tests decide once a second.
const DECIDE_STEP: u64 = S;

/// A 99.9 % availability SLO of `service` whose page tier fires at 14.4× over 5 m and 1 m
/// (shared with the inhibition tests).
pub(crate) fn slo(service: &str) -> Slo {
    Slo {
        name: format!("{service}-availability"),
        service: service.into(),
        objective: 0.999,
        period: Span::days(30),
        sli: SloSli::Availability,
        tiers: vec![BurnTier {
            name: "page_fast".into(),
            factor: 14.4,
            long: Span::minutes(5),
            short: Span::minutes(1),
            severity: Severity::Page,
            min_events: 100,
            min_coverage: 0.0,
        }],
        selector: Default::default(),
    }
}

/// Pages at once when a page tier fires (shared with the inhibition tests).
pub(crate) fn page_rule() -> Rule {
    let mut rule = Rule::new(
        "page-on-fast-burn",
        When::BurnRate(TierSelector::Severity(Severity::Page)),
        Action::Page,
    );
    rule.for_ = Span(0);
    rule
}

/// One second at `t` of `service`'s requests and its calls to `callee` (as a gateway
/// publishes them): each fails when db fails it.
fn second(service: &str, callee: &str, t: u64, db_fails: impl Fn(u64) -> bool) -> Batch {
    let mut b = Batch {
        keys: vec![SeriesKey::new(service, "/", "1")],
        ..Default::default()
    };
    let mut errors = 0;
    for i in 0..RATE {
        let bad = db_fails(t / S * RATE + i);
        errors += u64::from(bad);
        b.requests.push(RequestObs {
            key: 0,
            time: t + i * S / RATE,
            latency_ms: 30.0,
            bad,
        });
    }
    b.edges.push(EdgeObs {
        client: service.into(),
        server: callee.into(),
        second: t / S,
        requests: RATE,
        errors,
        digest: None,
    });
    b
}

/// One processor: its engine, policy and causes, and what it decided.
struct Processor {
    service: &'static str,
    callee: &'static str,
    slo: Slo,
    engine: Engine,
    policy: PolicyEngine,
    causes: Causes,
    decisions: Vec<Decision>,
}

impl Processor {
    fn new(service: &'static str, callee: &'static str) -> Self {
        Self::with_slo(service, callee, slo(service))
    }

    fn with_slo(service: &'static str, callee: &'static str, slo: Slo) -> Self {
        Self {
            service,
            callee,
            slo,
            engine: Engine::new(Arc::new(EngineConfig::default())),
            policy: PolicyEngine::new(Policy::new(vec![page_rule()])),
            causes: Causes::default(),
            decisions: Vec::new(),
        }
    }

    /// Ingests the second at `t`, explains, and returns what to publish.
    fn ingest(&mut self, t: u64, db_fails: impl Fn(u64) -> bool) -> Vec<Explanation> {
        self.engine
            .ingest(&second(self.service, self.callee, t, db_fails), t + S / 2);
        self.engine.advance(t + S);
        self.causes.explain(&self.engine);
        self.causes.take()
    }

    /// Decides at the engine's now, as the decide hook does.
    fn decide(&mut self) {
        let now = self.engine.now();
        let slos = [self.slo.clone()];
        let mut facts = gather(&self.engine, &slos, &[], StaleRule::default(), None);
        self.causes
            .apply_to(&self.engine, &mut self.policy, &mut facts);
        self.decisions.extend(self.policy.step(now, &facts));
        self.causes.mark_dependents(&self.policy, now);
    }

    fn own(&self) -> Option<&Decision> {
        self.decisions
            .iter()
            .find(|d| d.target.service == self.service && d.action == Action::Page)
    }

    fn root_pages(&self) -> Vec<&Decision> {
        self.decisions
            .iter()
            .filter(|d| d.target.service != self.service && d.action == Action::Page)
            .collect()
    }
}

/// A log delivering each record `delay` seconds after it was published.
#[derive(Default)]
struct Log {
    delay: u64,
    in_flight: VecDeque<(u64, Explanation)>,
}

impl Log {
    fn publish(&mut self, at_s: u64, records: Vec<Explanation>) {
        self.in_flight
            .extend(records.into_iter().map(|e| (at_s + self.delay, e)));
    }

    fn deliver(&mut self, now_s: u64, to: &mut [&mut Processor]) {
        while self.in_flight.front().is_some_and(|(due, _)| *due <= now_s) {
            let (_, e) = self.in_flight.pop_front().expect("checked");
            for p in to.iter_mut() {
                p.causes.apply(e.clone());
            }
        }
    }
}

/// P1 owning checkout (which calls payments) and P2 owning payments (which calls db), and a
/// log between them delivering `delay` seconds after publication.
fn chain(delay: u64) -> (Processor, Processor, Log) {
    (
        Processor::new("checkout", "payments"),
        Processor::new("payments", "db"),
        Log {
            delay,
            ..Default::default()
        },
    )
}

/// Runs seconds `from..to` on both processors, the log delivering with `delay`.
fn run(
    p1: &mut Processor,
    p2: &mut Processor,
    log: &mut Log,
    seconds: std::ops::Range<u64>,
    db_fails: impl Fn(u64) -> bool + Copy,
) {
    run_apart(p1, p2, log, seconds, db_fails, db_fails);
}

/// Like [`run`], with P1's and P2's requests failing apart.
fn run_apart(
    p1: &mut Processor,
    p2: &mut Processor,
    log: &mut Log,
    seconds: std::ops::Range<u64>,
    fails1: impl Fn(u64) -> bool + Copy,
    fails2: impl Fn(u64) -> bool + Copy,
) {
    run_fleet(&mut [p1, p2], log, seconds, |i, n| {
        if i == 0 { fails1(n) } else { fails2(n) }
    });
}

/// Runs seconds `from..to` on every processor (the `i`th's request `n` fails when
/// `fails(i, n)`), the log delivering with its delay.
fn run_fleet(
    ps: &mut [&mut Processor],
    log: &mut Log,
    seconds: std::ops::Range<u64>,
    fails: impl Fn(usize, u64) -> bool,
) {
    for s in seconds {
        let t = T0 + s * S;
        for (i, p) in ps.iter_mut().enumerate() {
            let made = p.ingest(t, |n| fails(i, n));
            log.publish(s, made);
        }
        log.deliver(s, ps);
        for p in ps.iter_mut() {
            p.decide();
        }
    }
}

fn root_cause_of(d: &Decision) -> &RootCause {
    match &d.evidence {
        Evidence::BurnRate {
            root_cause: Some(rc),
            ..
        } => rc,
        e => panic!("no root cause in {e:?}"),
    }
}

/// Scenario: 3 clean minutes, then db fails every other call for 4 minutes; the log delivers
/// 7 s after publication (after the burns first fire, before P1 would stop waiting).
/// Guarantees:
/// - P2 explains payments by db from the first failing second (`since`), and publishes it;
/// - P1's checkout decision names db as the root along checkout→payments→db (its own walk
///   stops at payments, owned elsewhere), with the share of the weakest hop, and is
///   inhibited; it was held until payments' explanation arrived, not decided on payments;
/// - P1 and P2 each page db under one and the same id, derived from `since`, and inhibit their
///   own service's page with it: the actuators' claims execute it once;
/// - when db recovers, both resolve the root page under one id after both dependents
///   resolved; 5 minutes later P2 says payments is no longer explained, and P1 stops extending
///   through payments.
#[test]
fn processors_page_one_root_under_one_id() {
    let (mut p1, mut p2, mut log) = chain(7);
    let fault = 180;
    let db_fails =
        move |n: u64| n / RATE >= T0 / S + fault && n / RATE < T0 / S + 420 && n.is_multiple_of(2);
    run(&mut p1, &mut p2, &mut log, 0..fault, db_fails);
    assert!(p1.decisions.is_empty() && p2.decisions.is_empty());
    assert_eq!(p2.causes.local().count(), 0);

    run(&mut p1, &mut p2, &mut log, fault..fault + 30, db_fails);
    let explained: Vec<&Explanation> = p2.causes.local().collect();
    assert_eq!(explained.len(), 1, "{explained:?}");
    assert_eq!(explained[0].path, ["payments", "db"]);
    assert_eq!(explained[0].since, T0 + (fault + 1) * S);
    assert!((explained[0].share - 1.0).abs() < 1e-9, "{explained:?}");

    let own1 = p1.own().expect("checkout's page is decided");
    let own2 = p2.own().expect("payments' page is decided");
    let rc1 = root_cause_of(own1);
    assert_eq!(rc1.path, ["checkout", "payments", "db"]);
    assert_eq!(
        (rc1.service.as_str(), rc1.edge.as_str()),
        ("db", "payments→db")
    );
    assert_eq!(rc1.since, Some(T0 + (fault + 1) * S));
    assert!((rc1.share - 1.0).abs() < 1e-9, "{rc1:?}");
    assert!(own1.reason.contains("dependency db"), "{}", own1.reason);
    // Both burns began to fire at the same second. P2 held payments' for HOLD (db has no
    // telemetry, and no explanation ever comes); P1 held checkout's until payments'
    // explanation came, 7 s after it was made, and decided it on db at once.
    assert_eq!(own1.detected_at, rc1.since.unwrap() + log.delay * S);
    assert!(own1.detected_at < own2.detected_at, "{own1:?} {own2:?}");
    let (st1, st2) = (p1.causes.stats(), p2.causes.stats());
    assert!(
        st1.held > 0 && st1.extended > 0 && st2.held > 0,
        "{st1:?} {st2:?}"
    );

    let (r1, r2) = (p1.root_pages(), p2.root_pages());
    assert_eq!((r1.len(), r2.len()), (1, 1), "{r1:?} {r2:?}");
    assert_eq!(r1[0].target.service, "db");
    assert_eq!(r1[0].decision_id, r2[0].decision_id);
    assert_eq!(
        own1.inhibited_by.as_deref(),
        Some(r1[0].decision_id.as_str())
    );
    assert_eq!(
        own2.inhibited_by.as_deref(),
        Some(r2[0].decision_id.as_str())
    );

    // db recovers at 420 s; 5 minutes later payments is no longer explained.
    run(&mut p1, &mut p2, &mut log, fault + 30..760, db_fails);
    assert_eq!(p2.causes.local().count(), 0);
    assert_resolved_after_the_last_dependent(&p1, &p2, &log);
    let mut rc = RootCause {
        service: "payments".into(),
        edge: "checkout→payments".into(),
        share: 1.0,
        path: vec!["checkout".into(), "payments".into()],
        since: None,
    };
    p1.causes
        .extend(&mut rc, |s| s == "checkout", p1.engine.now());
    assert_eq!(
        rc.path,
        ["checkout", "payments"],
        "an ended explanation is not followed"
    );
}

/// Each processor resolved the root page on db once, under one id, only after the fleet's
/// last dependent resolved (the other processor's, known from its explanation), and within
/// the log's delay and 2 s of it.
fn assert_resolved_after_the_last_dependent(p1: &Processor, p2: &Processor, log: &Log) {
    let resolved = |p: &Processor, service: &str| {
        p.decisions
            .iter()
            .filter(|d| d.target.service == service && d.action == Action::Resolved)
            .map(|d| (d.decision_id.clone(), d.detected_at))
            .collect::<Vec<_>>()
    };
    let (own1, own2) = (resolved(p1, "checkout"), resolved(p2, "payments"));
    assert_eq!((own1.len(), own2.len()), (1, 1), "{own1:?} {own2:?}");
    let last = own1[0].1.max(own2[0].1);
    let (root1, root2) = (resolved(p1, "db"), resolved(p2, "db"));
    assert_eq!((root1.len(), root2.len()), (1, 1), "{root1:?} {root2:?}");
    assert_eq!(root1[0].0, root2[0].0);
    for (_, at) in [&root1[0], &root2[0]] {
        assert!(
            *at >= last && *at <= last + (log.delay + 2) * S,
            "{own1:?} {own2:?} {root1:?} {root2:?}"
        );
    }
}

/// Scenario: as above, but checkout stops failing after a minute (it falls back to another
/// payment path) while payments fails for 4 minutes.
/// Guarantees: checkout's page resolves first, but P1 keeps its root page on db open while
/// payments' page (at P2) is inhibited by it, and both resolve it, under one id, once
/// payments' has resolved.
#[test]
fn a_root_page_stays_open_while_another_processor_depends_on_it() {
    let (mut p1, mut p2, mut log) = chain(2);
    let between = |from: u64, to: u64| {
        move |n: u64| n / RATE >= T0 / S + from && n / RATE < T0 / S + to && n.is_multiple_of(2)
    };
    run_apart(
        &mut p1,
        &mut p2,
        &mut log,
        0..800,
        between(180, 240),
        between(180, 420),
    );
    let done = |p: &Processor, service: &str| {
        p.decisions
            .iter()
            .find(|d| d.target.service == service && d.action == Action::Resolved)
            .map(|d| d.detected_at)
    };
    let (checkout_done, payments_done) = (done(&p1, "checkout"), done(&p2, "payments"));
    assert!(checkout_done.unwrap() + 60 * S < payments_done.unwrap());
    assert!(done(&p1, "db").unwrap() >= payments_done.unwrap());
    assert_resolved_after_the_last_dependent(&p1, &p2, &log);
}

/// Scenario: as above, but the log delivers nothing (P2's explanations never reach P1).
/// Guarantees: P1 holds checkout's burn for `HOLD`, then decides it on payments, the
/// farthest it can see, and pages payments under an id from its own explanation's `since`.
#[test]
fn without_an_explanation_the_walk_ends_where_it_can_see() {
    let (mut p1, mut p2) = (
        Processor::new("checkout", "payments"),
        Processor::new("payments", "db"),
    );
    let mut log = Log {
        delay: 100_000,
        ..Default::default()
    };
    let fault = 60;
    let db_fails = move |n: u64| n / RATE >= T0 / S + fault && n.is_multiple_of(2);
    run(&mut p1, &mut p2, &mut log, 0..fault + 20, db_fails);
    let own1 = p1.own().expect("checkout's page is decided");
    let rc = root_cause_of(own1);
    assert_eq!(rc.path, ["checkout", "payments"]);
    assert_eq!(rc.since, Some(T0 + (fault + 1) * S));
    // Held for HOLD, as payments' burn was (db has no telemetry): they decide together.
    let held = p1.causes.stats().held;
    assert_eq!(held, HOLD / DECIDE_STEP, "{held}");
    assert_eq!(
        own1.detected_at,
        p2.own().expect("payments' page").detected_at
    );
    let pages = p1.root_pages();
    assert_eq!(pages.len(), 1);
    assert_eq!(pages[0].target.service, "payments");
    assert_eq!(
        pages[0].decision_id,
        crate::policy::decision_id(
            "root_cause",
            &pages[0].target,
            Action::Page,
            T0 + (fault + 1) * S
        )
    );
}

/// Scenario: besides checkout → payments → db (P1, P2), orders → db on a third processor
/// P3; db fails from 180 s for payments' calls and from 200 s for orders'.
/// Guarantees: all three page db under one id, from the earliest explanation that ends at db
/// (payments', from 181 s), though orders' own began later.
#[test]
fn every_caller_of_a_root_pages_it_under_one_id() {
    let (mut p1, mut p2, mut p3) = (
        Processor::new("checkout", "payments"),
        Processor::new("payments", "db"),
        Processor::new("orders", "db"),
    );
    let mut log = Log {
        delay: 1,
        ..Default::default()
    };
    let from = |i: usize| if i == 2 { 200 } else { 180 };
    run_fleet(
        &mut [&mut p1, &mut p2, &mut p3],
        &mut log,
        0..260,
        |i, n| n / RATE >= T0 / S + from(i) && n.is_multiple_of(2),
    );
    let ids: Vec<Vec<&Decision>> = [&p1, &p2, &p3].iter().map(|p| p.root_pages()).collect();
    assert!(ids.iter().all(|p| p.len() == 1), "{ids:?}");
    assert!(
        ids.iter()
            .all(|p| p[0].decision_id == ids[0][0].decision_id),
        "{ids:?}"
    );
    assert_eq!(root_cause_of(p3.own().unwrap()).since, Some(T0 + 181 * S));
    let orders: Vec<&Explanation> = p3.causes.local().collect();
    assert_eq!(orders[0].since, T0 + 201 * S);
}

/// Scenario: db fails for a minute from 180 s, the services recover and their pages
/// resolve; db fails again from 900 s.
/// Guarantees: payments' explanation ends after a quiet minute (its failed calls are still in
/// the 5-minute window); the second incident is paged under a new id (`since` began again),
/// by both processors alike.
#[test]
fn a_root_that_fails_again_is_paged_again() {
    let (mut p1, mut p2, mut log) = chain(1);
    let fails = |n: u64| {
        let s = n / RATE - T0 / S;
        ((180..240).contains(&s) || (900..960).contains(&s)) && n.is_multiple_of(2)
    };
    run(&mut p1, &mut p2, &mut log, 0..320, fails);
    // A quiet minute (not yet five) ends the explanation.
    assert_eq!(p2.causes.local().count(), 0);
    run(&mut p1, &mut p2, &mut log, 320..1000, fails);
    assert_paged_twice(&p1, &p2, T0 + 900 * S);
}

/// Scenario: db fails every other call for a minute from 180 s; payments' SLO fires on a
/// 5-minute short window (so its page stays open for minutes after the failures stop),
/// checkout's on 1 minute.
/// Guarantees: payments' explanation outlives its failures while payments depends on the
/// root (a quiet minute would end it otherwise), so P1 keeps its root page open after
/// checkout resolved, until payments resolved; both resolve it under one id.
#[test]
fn a_dependent_keeps_its_explanation_after_the_failures_stop() {
    let mut slow = slo("payments");
    slow.tiers[0].long = Span::hours(1);
    slow.tiers[0].short = Span::minutes(5);
    let (mut p1, mut p2) = (
        Processor::new("checkout", "payments"),
        Processor::with_slo("payments", "db", slow),
    );
    let mut log = Log {
        delay: 1,
        ..Default::default()
    };
    let fails = |n: u64| {
        let s = n / RATE - T0 / S;
        (180..240).contains(&s) && n.is_multiple_of(2)
    };
    run(&mut p1, &mut p2, &mut log, 0..400, fails);
    // 160 s after the failures stopped: payments still depends on db, its explanation kept.
    let kept: Vec<&Explanation> = p2.causes.local().collect();
    assert_eq!(kept.len(), 1, "{kept:?}");
    assert_eq!(kept[0].depends_on, ["db"]);
    run(&mut p1, &mut p2, &mut log, 400..1000, fails);
    let done = |p: &Processor, service: &str| {
        p.decisions
            .iter()
            .find(|d| d.target.service == service && d.action == Action::Resolved)
            .map(|d| d.detected_at)
            .unwrap_or_else(|| panic!("{service} resolved at {}", p.service))
    };
    assert!(done(&p1, "checkout") + 120 * S < done(&p2, "payments"));
    assert_resolved_after_the_last_dependent(&p1, &p2, &log);
    assert_eq!(p2.causes.local().count(), 0);
}

/// Scenario: db fails every other call for a minute from 180 s, then one call every 10 s
/// until 900 s (payments' failures are all db's, so its explanation holds all along, but the
/// SLOs resolve), then every other call again for a minute.
/// Guarantees: once no service depends on db, its incident is closed and the explanation
/// begins again, so the second burn pages db under a new id, at both processors alike.
#[test]
fn a_root_failing_a_little_meanwhile_is_paged_again_under_a_new_id() {
    let (mut p1, mut p2, mut log) = chain(1);
    let fails = |n: u64| {
        let s = n / RATE - T0 / S;
        ((180..240).contains(&s) || (900..960).contains(&s)) && n.is_multiple_of(2)
            || (240..900).contains(&s) && n.is_multiple_of(10 * RATE)
    };
    run(&mut p1, &mut p2, &mut log, 0..1000, fails);
    let explained: Vec<&Explanation> = p2.causes.local().collect();
    assert_eq!(explained.len(), 1);
    assert!(explained[0].since > T0 + 300 * S, "{explained:?}");
    assert_paged_twice(&p1, &p2, T0 + 900 * S);
}

/// Both processors paged db twice, the second time after `second`, under two ids, the same
/// at both.
fn assert_paged_twice(p1: &Processor, p2: &Processor, second: u64) {
    let ids = |p: &Processor| {
        let pages = p.root_pages();
        assert_eq!(pages.len(), 2, "{pages:?}");
        assert!(pages[1].detected_at > second, "{pages:?}");
        pages
            .iter()
            .map(|d| d.decision_id.clone())
            .collect::<Vec<_>>()
    };
    let ids1 = ids(p1);
    assert_ne!(ids1[0], ids1[1]);
    assert_eq!(ids1, ids(p2));
}

/// Guarantees: while the log is read from the start, nothing is explained and a burn that
/// stops at a service owned elsewhere waits (however long); once read, explaining begins.
#[test]
fn nothing_is_explained_before_the_log_is_read() {
    let mut p2 = Processor::new("payments", "db");
    p2.causes.wait_for_log();
    let fails = |n: u64| n.is_multiple_of(2);
    let mut made = Vec::new();
    for s in 0..30 {
        made.extend(p2.ingest(T0 + s * S, fails));
        p2.decide();
    }
    assert!(made.is_empty() && p2.causes.local().count() == 0);
    assert!(p2.decisions.is_empty(), "{:?}", p2.decisions);
    assert!(p2.causes.stats().held >= 20);
    p2.causes.log_read();
    made.extend(p2.ingest(T0 + 30 * S, fails));
    assert_eq!(made.len(), 1);
    assert_eq!(made[0].path, ["payments", "db"]);
}

fn explanation(path: &[&str], since: u64, at: u64) -> Explanation {
    Explanation {
        service: path[0].into(),
        path: path.iter().map(|s| s.to_string()).collect(),
        share: 0.8,
        since,
        at,
        depends_on: Vec::new(),
    }
}

/// Guarantees: explanations are followed as far as they go (a → b from b's, b → c → d from
/// c's), never through a service twice (d's explanation leads back to b); the share is the
/// weakest hop's; `since` is that of the last hop's caller; a stale explanation (older than
/// `FRESH`) or an older record than one held is not followed.
#[test]
fn explanations_chain_without_cycles_while_fresh() {
    let now = T0 + 100 * S;
    let mut c = Causes::default();
    c.apply(explanation(&["b", "c"], T0 + 5 * S, now));
    c.apply(explanation(&["c", "d"], T0 + 7 * S, now - S));
    c.apply(explanation(&["d", "b", "c"], T0, now));
    let mut rc = RootCause {
        service: "b".into(),
        edge: "a→b".into(),
        share: 0.9,
        path: vec!["a".into(), "b".into()],
        since: None,
    };
    c.extend(&mut rc, |s| s == "a", now);
    assert_eq!(rc.path, ["a", "b", "c", "d"]);
    assert_eq!((rc.service.as_str(), rc.edge.as_str()), ("d", "c→d"));
    assert!((rc.share - 0.8).abs() < 1e-12);
    assert_eq!(rc.since, Some(T0 + 7 * S));

    // An older record of c does not replace the newer.
    c.apply(explanation(&["c", "x"], T0, now - 10 * S));
    let mut again = RootCause {
        path: vec!["a".into(), "b".into()],
        since: None,
        ..rc.clone()
    };
    c.extend(&mut again, |s| s == "a", now);
    assert_eq!(again.path, ["a", "b", "c", "d"]);
    // 31 s later c's (made at now - 1 s) is stale; b's is too.
    let mut rc = RootCause {
        path: vec!["a".into(), "b".into()],
        since: None,
        ..rc
    };
    c.extend(&mut rc, |s| s == "a", now + FRESH + S);
    assert_eq!(rc.path, ["a", "b"]);
    assert_eq!(rc.since, None);
}

/// Scenario: payments' partition moves from P2 to a new processor P3 after 60 s of failing
/// calls; P3 has read P2's explanations from the log, and restores payments' requests from
/// the changelog but not its edges (the graph is not in the changelog).
/// Guarantees: P3 explains payments only once its own edges carry half the bad requests, 60 s
/// later, when P2's last record is no longer fresh; its explanation still keeps P2's `since`
/// (the root is the same), so a root page decided after the move has the same id.
#[test]
fn a_moved_service_keeps_its_explanations_since() {
    let mut p2 = Processor::new("payments", "db");
    let mut p3 = Processor::new("payments", "db");
    let fails = |n: u64| n.is_multiple_of(2);
    let mut published = Vec::new();
    for s in 0..60 {
        published.extend(p2.ingest(T0 + s * S, fails));
    }
    assert_eq!(published[0].since, T0 + S);
    assert!(published.iter().all(|e| e.since == T0 + S));
    for e in published {
        p3.causes.apply(e);
    }
    for s in 0..60 {
        let mut requests_only = second("payments", "db", T0 + s * S, fails);
        requests_only.edges.clear();
        p3.engine.ingest(&requests_only, T0 + s * S);
    }
    let mut made = Vec::new();
    for s in 60..150 {
        made.extend(p3.ingest(T0 + s * S, fails));
    }
    let first = made.first().expect("P3 explains payments");
    assert!(first.at > T0 + 60 * S + FRESH, "{first:?}");
    assert_eq!(first.since, T0 + S);
}
