//! Rollouts on the simulated clock: a service takes 400 requests a second (20 a second on the
//! canary at its first step), split between baseline and canary by the weight of the
//! rollout's current step; the policy is stepped every second of engine time.

use super::*;
use crate::EngineConfig;
use crate::observation::{Batch, RequestObs, SeriesKey};
use crate::policy::{Policy, PolicyEngine};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use rand_distr::{Distribution, LogNormal};
use std::sync::Arc;

const S: u64 = NANOS_PER_SEC;
const T0: u64 = 1_800_000_000 * S;
const RATE: u64 = 400;

/// How a version behaves: one request in `error_every` fails (on average); latency is scaled.
#[derive(Clone, Copy)]
struct Behaviour {
    error_every: u64,
    latency_scale: f64,
}

const GOOD: Behaviour = Behaviour {
    error_every: 1000,
    latency_scale: 1.0,
};

struct Sim {
    engine: Engine,
    policy: PolicyEngine,
    now: UnixNanos,
    /// Latencies (log-normal, 50 ms median) and errors, seeded.
    rng: StdRng,
    decisions: Vec<Decision>,
    /// Canary requests get no traffic at all (a canary nobody routes to).
    canary_dark: bool,
}

impl Sim {
    fn new() -> Self {
        let mut engine = Engine::new(Arc::new(EngineConfig::default()));
        engine.advance(T0);
        Self {
            engine,
            policy: PolicyEngine::new(Policy::new(vec![])),
            now: T0,
            rng: StdRng::seed_from_u64(3),
            decisions: Vec::new(),
            canary_dark: false,
        }
    }

    fn start(&mut self, spec: RolloutSpec) -> String {
        let (r, created) = self.policy.start_rollout(spec, self.now).unwrap();
        assert!(created);
        r.id.clone()
    }

    fn rollout(&self) -> &Rollout {
        self.policy.rollouts().all().last().unwrap()
    }

    /// The canary's current weight, as the last `set_weight` set it (0 before any).
    fn weight(&self) -> f64 {
        self.decisions
            .iter()
            .rev()
            .find(|d| matches!(d.action, Action::SetWeight | Action::Rollback))
            .map_or(0.0, |d| d.params["weight"])
    }

    /// One second of traffic, then a policy step.
    fn second(&mut self, canary: Behaviour) {
        let w = if self.canary_dark { 0.0 } else { self.weight() };
        let to_canary = (RATE as f64 * w / 100.0).round() as u64;
        let mut batch = Batch {
            keys: vec![
                SeriesKey::new("checkout", "/pay", "1.0"),
                SeriesKey::new("checkout", "/pay", "1.1"),
            ],
            ..Default::default()
        };
        for (arm, n, b) in [(0, RATE - to_canary, GOOD), (1, to_canary, canary)] {
            for i in 0..n {
                let latency = LogNormal::new(50f64.ln(), 0.5)
                    .unwrap()
                    .sample(&mut self.rng);
                batch.requests.push(RequestObs {
                    key: arm as u32,
                    time: self.now + i * S / n.max(1),
                    latency_ms: latency * b.latency_scale,
                    bad: self.rng.random_bool(1.0 / b.error_every as f64),
                });
            }
        }
        self.now += S;
        self.engine.ingest(&batch, self.now);
        self.engine.advance(self.now);
        let mut d = self.policy.step_rollouts(&self.engine);
        self.decisions.append(&mut d);
    }

    fn run(&mut self, seconds: u64, canary: Behaviour) {
        for _ in 0..seconds {
            self.second(canary);
        }
    }

    fn actions(&self) -> Vec<(String, Option<f64>)> {
        self.decisions
            .iter()
            .map(|d| (d.action.name().to_string(), d.params.get("weight").copied()))
            .collect()
    }
}

fn spec() -> RolloutSpec {
    RolloutSpec::new("checkout", "1.0", "1.1")
}

fn step_of(d: &Decision) -> usize {
    match &d.evidence {
        Evidence::Rollout { step, .. } => *step,
        e => panic!("not rollout evidence: {e:?}"),
    }
}

/// Scenario: a canary that behaves like its baseline, steps [5, 25, 50, 100], step_min 2m.
/// Guarantees: one set_weight per step in order, then promote after the last step passed; each
/// step lasts step_min (to the second it first passes); the decisions carry the step, the judge's
/// numbers and the rule `rollout`.
#[test]
fn a_good_canary_is_promoted_through_four_steps() {
    let mut sim = Sim::new();
    let id = sim.start(spec());
    sim.run(15 * 60, GOOD);
    let some = |w: f64| Some(w);
    assert_eq!(
        sim.actions(),
        [
            ("set_weight".into(), some(5.0)),
            ("set_weight".into(), some(25.0)),
            ("set_weight".into(), some(50.0)),
            ("set_weight".into(), some(100.0)),
            ("promote".into(), some(100.0)),
        ]
    );
    let r = sim.rollout();
    assert_eq!((r.id.as_str(), r.phase), (id.as_str(), Phase::Promoted));
    assert_eq!(r.passed.len(), 4);
    // Each step ran step_min at least, and passed as soon as the sequential test did after
    // that (well before step_max); the step at 100 % has no baseline traffic of its own and is
    // judged by the exact test against the rollout's baseline requests, at step_min.
    let took: Vec<u64> = r
        .passed
        .iter()
        .map(|s| (s.ended_at - s.started_at) / S)
        .collect();
    eprintln!("steps took {took:?} s");
    assert!(took.iter().all(|&t| (120..600).contains(&t)), "{took:?}");
    assert!((120..=125).contains(&took[3]), "{took:?}");
    let promote = sim.decisions.last().unwrap();
    assert_eq!(step_of(promote), 4);
    assert_eq!(promote.rule, RULE);
    assert_eq!(promote.target.version, "1.1");
    let Evidence::Rollout {
        canary: Some(c), ..
    } = &promote.evidence
    else {
        panic!("{:?}", promote.evidence)
    };
    assert_eq!(c.verdict, Verdict::Pass);
    // At 100 % the baseline arm is the baseline's requests since the rollout began.
    assert!(c.metrics[0].baseline_n > 10_000, "{c:?}");
    assert!(promote.reason.contains("promoted"), "{}", promote.reason);
    let ids: std::collections::BTreeSet<_> = sim.decisions.iter().map(|d| &d.decision_id).collect();
    assert_eq!(ids.len(), 5, "distinct ids");
    assert_eq!(
        sim.decisions[0].decision_id,
        Rollouts::first_decision_id(sim.rollout())
    );
}

/// Scenario: the canary is good for two steps and fails 5 % of its requests from the third.
/// Guarantees: rolled back during step 3 (not before, not after), with weight 0 and the
/// failing error ratio in its evidence; nothing follows.
#[test]
fn a_bad_canary_is_rolled_back_at_the_step_where_it_goes_bad() {
    let mut sim = Sim::new();
    sim.start(spec());
    while sim.rollout().step < 2 {
        sim.second(GOOD);
    }
    let went_bad = sim.now;
    sim.run(
        15 * 60,
        Behaviour {
            error_every: 20,
            latency_scale: 1.0,
        },
    );
    let actions = sim.actions();
    assert_eq!(
        actions,
        [
            ("set_weight".into(), Some(5.0)),
            ("set_weight".into(), Some(25.0)),
            ("set_weight".into(), Some(50.0)),
            ("rollback".into(), Some(0.0)),
        ]
    );
    let rollback = sim.decisions.last().unwrap();
    assert_eq!(step_of(rollback), 3);
    assert_eq!(rollback.severity, Severity::Page);
    let took = (rollback.detected_at - went_bad) / S;
    assert!(took <= 60, "rolled back {took} s after it went bad");
    let Evidence::Rollout {
        canary: Some(c), ..
    } = &rollback.evidence
    else {
        panic!()
    };
    // Decided by the sequential test's errors; the exact test's numbers ride along.
    let seq = c.sequential.as_ref().unwrap();
    assert_eq!(seq.errors.verdict, Verdict::Fail, "{seq:?}");
    assert!(seq.errors.e_fail >= 100.0, "{seq:?}");
    assert!(c.metrics[0].canary.unwrap() > 0.03, "{c:?}");
    assert_eq!(sim.rollout().phase, Phase::RolledBack);
    assert!(!sim.policy.rollouts().any_active());
}

/// Scenario: nobody routes to the canary; 30 minutes pass.
/// Guarantees: step 1 is held at step_max (15m) with one page naming the missing traffic,
/// never promoted nor advanced; when traffic arrives the step passes, the page is resolved
/// and the rollout goes on.
#[test]
fn a_canary_with_no_traffic_is_held_and_paged_never_promoted() {
    let mut sim = Sim::new();
    sim.canary_dark = true;
    sim.start(spec());
    sim.run(30 * 60, GOOD);
    assert_eq!(
        sim.actions(),
        [("set_weight".into(), Some(5.0)), ("page".into(), None)]
    );
    let page = sim.decisions[1].clone();
    assert_eq!((page.detected_at - T0) / S, 15 * 60);
    assert!(
        page.reason.contains("held at step 1 of 4") && page.reason.contains("0 canary"),
        "{}",
        page.reason
    );
    assert_eq!(sim.rollout().phase, Phase::Holding);
    assert_eq!(sim.rollout().step, 0);
    // Traffic arrives: the held step passes, its page resolves, step 2 begins.
    sim.canary_dark = false;
    sim.run(3 * 60, GOOD);
    let names: Vec<String> = sim.actions().into_iter().map(|a| a.0).collect();
    assert_eq!(names[2..], ["resolved", "set_weight"]);
    assert_eq!(
        sim.decisions[2].resolves.as_deref(),
        Some(page.decision_id.as_str())
    );
    assert_eq!(sim.rollout().phase, Phase::Running);
    assert_eq!(sim.rollout().step, 1);
}

/// Guarantees: a second rollout of a service with one active is refused, naming the active
/// one; the same versions again return the active rollout (a redelivered deploy event);
/// another service is independent; a finished rollout frees its service.
#[test]
fn rollouts_of_one_service_never_overlap() {
    let mut sim = Sim::new();
    let id = sim.start(spec());
    let (again, created) = sim.policy.start_rollout(spec(), sim.now + S).unwrap();
    assert_eq!((again.id.as_str(), created), (id.as_str(), false));
    let err = sim
        .policy
        .start_rollout(RolloutSpec::new("checkout", "1.0", "1.2"), sim.now)
        .unwrap_err();
    assert!(
        err.to_string().contains(&id) && err.to_string().contains("never overlap"),
        "{err}"
    );
    assert!(
        sim.policy
            .start_rollout(RolloutSpec::new("payments", "2", "3"), sim.now)
            .is_ok()
    );
    let mut fast = spec();
    fast.steps = vec![50.0];
    fast.step_min = Span(30);
    let mut sim = Sim::new();
    sim.start(fast);
    sim.run(60, GOOD);
    assert_eq!(sim.rollout().phase, Phase::Promoted);
    assert!(
        sim.policy
            .start_rollout(RolloutSpec::new("checkout", "1.1", "1.2"), sim.now)
            .unwrap()
            .1
    );
}

/// Guarantees: specs that cannot run are refused with the field to change.
#[test]
fn invalid_specs_say_what_to_change() {
    type Edit = fn(&mut RolloutSpec);
    let cases: [(Edit, &str); 6] = [
        (|s| s.service.clear(), "service is empty"),
        (|s| s.canary = "1.0".into(), "both \"1.0\""),
        (|s| s.steps.clear(), "steps is empty"),
        (|s| s.steps = vec![5.0, 5.0], "above the one before"),
        (|s| s.steps = vec![50.0, 150.0], "at most 100"),
        (
            |s| s.step_min = Span::hours(1),
            "step_min 1h is longer than step_max 15m",
        ),
    ];
    for (edit, want) in cases {
        let mut s = spec();
        edit(&mut s);
        let err = s.validate().unwrap_err().to_string();
        assert!(err.contains(want), "{err} should contain {want:?}");
    }
    let json = r#"{"service":"checkout","baseline":"1.0","canary":"1.1","steps":[10,100],"step_min":"1m","step_max":"5m"}"#;
    let s: RolloutSpec = serde_json::from_str(json).unwrap();
    assert_eq!(
        (s.steps.len(), s.step_min, s.step_max),
        (2, Span(60), Span(300))
    );
    assert!(
        serde_json::from_str::<RolloutSpec>(
            r#"{"service":"a","baseline":"1","canary":"2","stepz":[1]}"#
        )
        .is_err()
    );
}

/// Scenario: the process restarts in the middle of step 2 (policy snapshot through JSON, a
/// fresh policy restored from it, the same engine data).
/// Guarantees: the restored rollout goes on from where it stood: the same decisions, with the
/// same ids, as a run without the restart.
#[test]
fn a_restored_rollout_goes_on_with_the_same_ids() {
    let mut straight = Sim::new();
    straight.start(spec());
    straight.run(12 * 60, GOOD);

    let mut restarted = Sim::new();
    restarted.start(spec());
    restarted.run(3 * 60, GOOD);
    let text = serde_json::to_string(&restarted.policy.snapshot()).unwrap();
    let mut fresh = PolicyEngine::new(Policy::new(vec![]));
    fresh.restore(serde_json::from_str(&text).unwrap());
    restarted.policy = fresh;
    restarted.run(9 * 60, GOOD);

    let ids = |s: &Sim| -> Vec<(String, String)> {
        s.decisions
            .iter()
            .map(|d| (d.action.name().to_string(), d.decision_id.clone()))
            .collect()
    };
    assert_eq!(ids(&restarted), ids(&straight));
    assert_eq!(restarted.rollout().phase, Phase::Promoted);
    // A fleet move: the rollout goes with its service.
    let snap = straight.policy.snapshot_of(|s| s == "checkout");
    let mut other = PolicyEngine::new(Policy::new(vec![]));
    other.merge(snap);
    assert_eq!(other.rollouts().all(), straight.policy.rollouts().all());
    other.drop_services(|s| s == "checkout");
    assert!(other.rollouts().all().is_empty());
}

/// Scenario: the good canary of the first test, with `judge: exact`, for ten minutes.
/// Guarantees: the fixed-horizon judge decides every step (each judged decision's verdict is
/// the worst of the exact metrics' verdicts), and the evidence still carries the sequential
/// test's numbers below 100 %. (Read every second, the exact judge may roll a good canary
/// back: `canary_seq`'s tests measure how often.)
#[test]
fn the_exact_judge_is_an_option() {
    let mut sim = Sim::new();
    let mut s = spec();
    s.judge = Judge::Exact;
    sim.start(s);
    sim.run(10 * 60, GOOD);
    let mut judged = 0;
    for d in &sim.decisions {
        let Evidence::Rollout {
            canary: Some(c),
            weight,
            ..
        } = &d.evidence
        else {
            continue;
        };
        judged += 1;
        let worst = c.metrics.iter().map(|m| m.verdict).max().unwrap();
        assert_eq!(c.verdict, worst, "{d:?}");
        assert_eq!(c.sequential.is_some(), *weight < 100.0, "{d:?}");
    }
    assert!(judged >= 1, "{:?}", sim.actions());
    let r = sim.rollout();
    assert!(!r.phase.active(), "decided within ten minutes: {r:?}");
    let json = serde_json::to_value(&r.spec).unwrap();
    assert_eq!(json["judge"], "exact");
}
