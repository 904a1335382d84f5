//! Every `trike demo --scenario` story on a simulated clock (`trike::demo::sim`): the demo's
//! traffic, config, OTLP decoding, runtime shard, decide and outbox hooks, and a stand-in for
//! the actuator and rollout controller. Three simulated minutes take about a second each, and
//! the outcome is the same on every run. `demo_e2e` runs the canary story live over sockets,
//! the embedded broker and the real actuator.

use std::time::{Duration, Instant};
use trike::demo::Scenario;
use trike::demo::sim::{SimRun, simulate};

const DEGRADE_AFTER: Duration = Duration::from_secs(30);
const RUN: Duration = Duration::from_secs(180);

fn run(scenario: Scenario) -> SimRun {
    let wall = Instant::now();
    let run = simulate(scenario, DEGRADE_AFTER, RUN);
    println!(
        "{scenario:?}: {} s simulated in {:?}; decided {:?}",
        RUN.as_secs(),
        wall.elapsed(),
        run.events
            .iter()
            .map(|(t, e)| format!("{t:.1}s {} {}", e.data.action.name(), e.data.rule))
            .collect::<Vec<_>>()
    );
    run
}

fn after_trouble(at: f64) -> f64 {
    at - DEGRADE_AFTER.as_secs_f64()
}

/// Scenario: `canary` (the canary fails 8 % and slows ×3 from 30 s). Guarantees: no page at
/// start-up or ever; exactly one signed rollback of checkout 1.5.0, 5–60 s after the trouble
/// began (the rule's `for: 5s` plus the judge's evidence); the controller is called once, the
/// canary's traffic drops to 0 % and none of it arrives in the last 10 s; the same run twice
/// gives byte-identical events.
#[test]
fn canary_is_rolled_back_once() {
    let r = run(Scenario::Canary);
    assert!(r.of("page").is_empty(), "{:?}", r.events);
    let rollbacks = r.of("rollback");
    assert_eq!(rollbacks.len(), 1, "{:?}", r.events);
    let (at, event) = r
        .events
        .iter()
        .find(|(_, e)| e.data.action.name() == "rollback")
        .unwrap();
    assert_eq!(event.version(), "1.5.0");
    assert_eq!(event.data.rule, "rollback-bad-canary");
    assert!(trike_sinks::signing::verify(
        &event.to_value(),
        b"trike-demo-signing-key"
    ));
    let after = after_trouble(*at);
    assert!((5.0..=60.0).contains(&after), "rolled back {after} s after");
    assert_eq!((r.controller_calls, r.canary_weight), (1, 0));
    assert_eq!(r.canary_requests_last_10s, 0, "canary traffic stopped");
    let again = simulate(Scenario::Canary, DEGRADE_AFTER, RUN);
    let json = |r: &SimRun| {
        r.events
            .iter()
            .map(|(_, e)| e.to_json())
            .collect::<Vec<_>>()
    };
    assert_eq!(json(&r), json(&again), "deterministic");
}

/// Scenario: `latency` (the canary's median goes 40 → 100 ms, errors unchanged). Guarantees:
/// the latency comparison alone fails it: one rollback of 1.5.0 whose evidence names the
/// latency metric, and the canary's traffic stops.
#[test]
fn slower_canary_is_rolled_back_on_latency() {
    let r = run(Scenario::Latency);
    let rollbacks = r.of("rollback");
    assert_eq!(rollbacks.len(), 1, "{:?}", r.events);
    let evidence = rollbacks[0].data.evidence.to_string();
    assert!(evidence.contains("latency"), "{evidence}");
    assert_eq!((r.controller_calls, r.canary_weight), (1, 0));
}

/// Scenario: `slow-burn` (one version fails 0.4 %: a 4× burn of the 99.9 % SLO). Guarantees:
/// exactly one ticket from `ticket-slow-burn`, after the ticket tier's 1 m window is covered
/// and the trouble began; no page, no rollback.
#[test]
fn slow_burn_raises_one_ticket() {
    let r = run(Scenario::SlowBurn);
    let tickets = r.of("ticket");
    assert_eq!(tickets.len(), 1, "{:?}", r.events);
    assert_eq!(tickets[0].data.rule, "ticket-slow-burn");
    let at = r
        .events
        .iter()
        .find(|(_, e)| e.data.action.name() == "ticket")
        .unwrap()
        .0;
    assert!(after_trouble(at) > 0.0, "ticket {at} s in");
    assert!(r.of("page").is_empty() && r.of("rollback").is_empty());
    assert_eq!(r.controller_calls, 0);
}

/// Scenario: `stale` (the pipeline stalls, then runs 20 s behind, while the canary fails).
/// Guarantees: one page from `page-on-stale-telemetry` with the stale evidence; the failing
/// canary's rollback is held on the stale data (the policy counts it) and never emitted.
#[test]
fn stale_data_pages_and_holds_the_rollback() {
    let r = run(Scenario::Stale);
    let pages = r.of("page");
    assert_eq!(pages.len(), 1, "{:?}", r.events);
    assert_eq!(pages[0].data.rule, "page-on-stale-telemetry");
    assert!(
        pages[0].data.evidence.to_string().contains("silent_s"),
        "{:?}",
        pages[0].data.evidence
    );
    assert!(r.of("rollback").is_empty(), "{:?}", r.events);
    assert!(r.held_stale > 0, "the failing canary's rollback was held");
    assert_eq!(r.controller_calls, 0);
}
