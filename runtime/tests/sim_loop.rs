//! The whole decision loop — engine, decide, outbox, checkpoint — on a simulated clock: ten
//! minutes of a canary going bad run in well under a second of wall time, deterministically.

use std::sync::Arc;
use std::sync::mpsc::Receiver;
use std::time::{Duration, Instant};
use trike_engine::canary::CanarySpec;
use trike_engine::facts::StaleRule;
use trike_engine::policy::{Action, Policy, Rule};
use trike_engine::{Batch, Engine, EngineConfig, RequestObs, SeriesKey, Span};
use trike_runtime::hooks::checkpoint::Checkpointer;
use trike_runtime::hooks::decide::{DecideSpec, Decider};
use trike_runtime::hooks::outbox::{DecisionStore, Outbox};
use trike_runtime::{Clock, Shard, SimClock};
use trike_sinks::ControlEvent;

const S: u64 = 1_000_000_000;
const T0: u64 = 1_800_000_000 * S;
/// The canary starts failing this far in.
const BAD_AFTER: Duration = Duration::from_secs(120);
/// Traffic starts this far in (before it, the service is silent).
const TRAFFIC_AFTER: Duration = Duration::from_secs(5);
const STEP: Duration = Duration::from_millis(100);

fn rule(name: &str, when: &str, action: Action, for_s: u64) -> Rule {
    Rule {
        for_: Span(for_s),
        ..Rule::new(name, when.parse().unwrap(), action)
    }
}

fn spec() -> DecideSpec {
    let mut canary = CanarySpec::new("checkout", "1.4.0", "1.5.0");
    canary.window = Span::minutes(1);
    canary.min_requests = 300;
    DecideSpec {
        slos: vec![],
        canaries: vec![canary],
        stale: StaleRule::default(),
        policy: Policy::new(vec![
            rule("rollback-bad-canary", "canary.fail", Action::Rollback, 5),
            rule("page-on-stale", "stale", Action::Page, 0),
        ]),
        watch: Default::default(),
        capacity: vec![],
        costs: vec![],
    }
}

/// A deterministic stream of uniform numbers in [0, 1).
struct Lcg(u64);

impl Lcg {
    fn next(&mut self) -> f64 {
        self.0 = self
            .0
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        (self.0 >> 11) as f64 / (1u64 << 53) as f64
    }
}

/// One step's traffic at `now`: 20 requests, every 10th to the canary; after [`BAD_AFTER`] the
/// canary fails 8 % and is three times slower.
fn traffic(rng: &mut Lcg, now: u64, bad: bool) -> Batch {
    let mut b = Batch::default();
    for i in 0..20 {
        let canary = i % 10 == 0;
        let key = b.key_index(SeriesKey::new(
            "checkout",
            "/pay",
            if canary { "1.5.0" } else { "1.4.0" },
        ));
        let slow = if canary && bad { 3.0 } else { 1.0 };
        let fail = if canary && bad { 0.08 } else { 0.001 };
        b.requests.push(RequestObs {
            key,
            time: now,
            latency_ms: (20.0 + 40.0 * rng.next()) * slow,
            bad: rng.next() < fail,
        });
    }
    b
}

/// Runs `minutes` of simulated time; returns the control events in order, each with the
/// simulated seconds since the start at which it was published, and the checkpoints written.
fn run(minutes: u64, ckpt: &std::path::Path) -> (Vec<(f64, ControlEvent)>, u64) {
    run_spec(minutes, ckpt, spec())
}

fn run_spec(
    minutes: u64,
    ckpt: &std::path::Path,
    spec: DecideSpec,
) -> (Vec<(f64, ControlEvent)>, u64) {
    let clock = SimClock::at(T0);
    let store = Arc::new(DecisionStore::default());
    let (tx, rx): (_, Receiver<ControlEvent>) = std::sync::mpsc::sync_channel(1000);
    let checkpointer = Checkpointer::start(ckpt.to_path_buf(), Duration::from_secs(30), None)
        .expect("checkpoint dir");
    let written = checkpointer.stats.clone();
    let mut shard = Shard::new(
        Engine::new(Arc::new(EngineConfig::default())),
        Arc::new(clock.clone()),
    )
    .with_hook(Decider::new(spec, store.clone()))
    .with_hook(Outbox::new("sim", None, store, tx, None))
    .with_hook(checkpointer);
    let mut rng = Lcg(7);
    let end = T0 + minutes * 60 * S;
    let mut events = Vec::new();
    while clock.now() < end {
        clock.advance(STEP);
        let since = Duration::from_nanos(clock.now() - T0);
        if since < TRAFFIC_AFTER {
            shard.tick();
        } else {
            shard.apply([traffic(&mut rng, clock.now(), since >= BAD_AFTER)]);
        }
        events.extend(rx.try_iter().map(|e| (since.as_secs_f64(), e)));
        // The writer thread runs on wall time: let it finish a round before simulated time
        // moves past the next one (a loaded machine's slow fsync must not merge rounds).
        let due = ((since.as_secs_f64() - 0.1) / 30.0).floor().max(0.0) as u64;
        let wait = Instant::now();
        while written.written.load(std::sync::atomic::Ordering::Relaxed) < due
            && wait.elapsed() < Duration::from_secs(5)
        {
            std::thread::sleep(Duration::from_millis(1));
        }
    }
    shard.finish();
    (
        events,
        written.written.load(std::sync::atomic::Ordering::Relaxed),
    )
}

/// Scenario: a service silent for its first 5 s, then 200 req/s with a 10 % canary that starts
/// failing (8 % errors, ×3 latency) 2 min in; 10 min of simulated time, stepped every 100 ms.
/// Guarantees: no stale page at start-up (silence is counted from the start, not from the
/// epoch); exactly one rollback of checkout 1.5.0, decided after the canary went bad plus the
/// rule's `for: 5s` and within a minute of it; checkpoints every 30 s of *simulated* time; the
/// same run gives byte-identical events; and it all takes a fraction of the simulated time.
#[test]
fn a_bad_canary_is_rolled_back_once_on_simulated_time() {
    let dir = std::env::temp_dir().join(format!("trike-sim-loop-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    let wall = Instant::now();
    let (events, checkpoints) = run(10, &dir.join("a"));
    let took = wall.elapsed();
    let actions: Vec<&str> = events.iter().map(|(_, e)| e.data.action.name()).collect();
    assert_eq!(actions, ["rollback"], "{events:?}");
    let (at, rollback) = &events[0];
    assert_eq!(rollback.data.target.service, "checkout");
    assert_eq!(rollback.version(), "1.5.0");
    let (at, bad) = (*at, BAD_AFTER.as_secs_f64());
    assert!(
        at >= bad + 5.0 && at <= bad + 60.0,
        "rollback {at} s in; the canary went bad at {bad} s"
    );
    // Rounds every 30 s of simulated time from the first tick (0.1 s): 30.1 … 570.1 s, 19 of
    // them, plus the final one at finish. A round the writer thread is still busy for stays
    // due for the next step, which can push the last one past the end.
    assert!(
        (19..=20).contains(&checkpoints),
        "{checkpoints} checkpoints written"
    );
    let (again, _) = run(10, &dir.join("b"));
    let json = |v: &[(f64, ControlEvent)]| v.iter().map(|(_, e)| e.to_json()).collect::<Vec<_>>();
    assert_eq!(json(&events), json(&again), "deterministic");
    println!("10 simulated minutes (6000 steps) took {took:?} of wall time");
    let _ = std::fs::remove_dir_all(&dir);
}

/// Scenario: the same service and canary, judged by the sequential test (`judge:
/// sequential`) with a rule that acts at once (`for: 0s`, which the exact test's repeated
/// looks could not afford).
/// Guarantees: no rollback while the canary behaves (the first 2 minutes, read every 100 ms);
/// exactly one after it goes bad, within 30 s, its evidence carrying the sequential test's
/// failing metric and e-value next to the exact test's numbers.
#[test]
fn the_sequential_judge_acts_at_once_and_only_on_a_bad_canary() {
    let dir = std::env::temp_dir().join(format!("trike-sim-seq-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    let mut spec = spec();
    spec.canaries[0].judge = trike_engine::canary::Judge::Sequential;
    spec.policy = Policy::new(vec![rule(
        "rollback-bad-canary",
        "canary.fail",
        Action::Rollback,
        0,
    )]);
    let (events, _) = run_spec(6, &dir, spec);
    let actions: Vec<&str> = events.iter().map(|(_, e)| e.data.action.name()).collect();
    assert_eq!(actions, ["rollback"], "{events:?}");
    let (at, rollback) = &events[0];
    let bad = BAD_AFTER.as_secs_f64();
    assert!(
        *at > bad && *at <= bad + 30.0,
        "rollback {at} s in; the canary went bad at {bad} s"
    );
    let seq = &rollback.data.evidence["sequential"];
    assert_eq!(seq["verdict"], "fail", "{}", rollback.data.evidence);
    let failed = ["errors", "latency"]
        .iter()
        .any(|m| seq[m]["verdict"] == "fail" && seq[m]["e_fail"].as_f64().unwrap() >= 100.0);
    assert!(failed, "{seq}");
    assert!(
        rollback.data.evidence["metrics"].is_array(),
        "the exact numbers too"
    );
    let _ = std::fs::remove_dir_all(&dir);
}
