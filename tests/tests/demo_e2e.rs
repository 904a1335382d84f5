//! `trike demo`, headless with a shortened timeline: the whole loop on the embedded broker.

use std::sync::atomic::Ordering::Relaxed;
use std::time::{Duration, Instant};
use trike::demo::Demo;
use trike_tests::{demo_args, read_topic, wait_for_rollback};

/// Every record of the demo's control topic and of `trike.actions`, from its embedded broker.
async fn control_and_actions(demo: &Demo) -> (Vec<Record>, Vec<Record>) {
    let (brokers, topic) = (demo.brokers.clone(), demo.control_topic.clone());
    tokio::task::spawn_blocking(move || {
        (
            read_topic(&brokers, &topic, Duration::from_secs(2)),
            read_topic(&brokers, "trike.actions", Duration::from_secs(2)),
        )
    })
    .await
    .unwrap()
}

/// One record: key and JSON value.
type Record = (String, serde_json::Value);

/// Canary requests in the 10 s window, over all its series.
async fn canary_requests(admin: std::net::SocketAddr) -> u64 {
    let doc: serde_json::Value = reqwest::get(format!(
        "http://{admin}/api/v1/slis?service=checkout&window=10s"
    ))
    .await
    .unwrap()
    .json()
    .await
    .unwrap();
    doc["series"]
        .as_array()
        .into_iter()
        .flatten()
        .filter(|s| s["version"] == "1.5.0")
        .map(|s| s["requests"].as_u64().unwrap_or(0))
        .sum()
}

/// Scenario: the demo with the canary degrading 2 s in. Guarantees: exactly one signed
/// `rollback` for checkout 1.5.0 lands on the embedded broker's control topic; the actuator
/// calls the rollout controller once and writes a `succeeded` outcome naming that event to
/// `trike.actions`; the canary's traffic then stops (no canary request in the last 10 s).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn demo_rolls_the_canary_back_through_kafka() {
    let args = demo_args(trike::demo::Scenario::Canary, 2);
    let demo = Demo::start(&args).await.expect("the demo starts");
    let admin = demo.running.admin_addr;
    let start = Instant::now();
    wait_for_rollback(&demo).await;
    let rolled_back_after = start.elapsed();
    assert_eq!(
        demo.controller.calls.load(Relaxed),
        1,
        "the actuator called the rollout controller"
    );
    assert_eq!(demo.controller.canary_weight.load(Relaxed), 0);
    // The canary gets no more traffic: its 10 s window empties.
    let drained = loop {
        let n = canary_requests(admin).await;
        if n == 0 || start.elapsed() > rolled_back_after + Duration::from_secs(20) {
            break n;
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    };
    assert_eq!(drained, 0, "canary traffic stopped after the rollback");

    let (control, actions) = control_and_actions(&demo).await;
    let rollbacks: Vec<_> = control
        .iter()
        .filter(|(_, e)| e["type"] == "io.trike.control.rollback")
        .collect();
    assert_eq!(
        rollbacks.len(),
        1,
        "one rollback on the control topic: {control:?}"
    );
    let (key, event) = rollbacks[0];
    assert_eq!(key, "checkout");
    assert_eq!(event["data"]["target"]["version"], "1.5.0");
    assert!(trike_sinks::signing::verify(
        event,
        b"trike-demo-signing-key"
    ));
    assert_eq!(demo.controller.calls.load(Relaxed), 1, "called once, still");
    let outcomes: Vec<_> = actions
        .iter()
        .filter(|(_, o)| o["data"]["control_event_id"] == event["id"])
        .collect();
    assert_eq!(outcomes.len(), 1, "{actions:?}");
    assert_eq!(outcomes[0].1["type"], "io.trike.action.succeeded");
    demo.stop().await.unwrap();
}

/// What a scenario run left behind.
struct Ran {
    control: Vec<(String, serde_json::Value)>,
    actions: Vec<(String, serde_json::Value)>,
    held_stale: u64,
}

/// Starts `scenario` with its trouble 1 s in, waits (at most 120 s) until `done` says so, and
/// returns the control and actions topics of the embedded broker.
async fn run_scenario(scenario: trike::demo::Scenario, done: impl Fn(&Demo) -> bool) -> Ran {
    let args = demo_args(scenario, 1);
    let demo = Demo::start(&args).await.expect("the demo starts");
    let start = Instant::now();
    while !done(&demo) && start.elapsed() < Duration::from_secs(120) {
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    // Room for the actuator to write its outcomes.
    tokio::time::sleep(Duration::from_secs(3)).await;
    let (control, actions) = control_and_actions(&demo).await;
    assert_eq!(
        demo.controller.calls.load(Relaxed),
        0,
        "nothing rolled back"
    );
    let held_stale = demo.running.state.decisions.policy_stats.lock().held_stale;
    demo.stop().await.unwrap();
    Ran {
        control,
        actions,
        held_stale,
    }
}

fn decided(demo: &Demo, action: &str) -> bool {
    demo.running
        .state
        .decisions
        .recent(None, 100)
        .iter()
        .any(|e| e.data.action.name() == action)
}

/// Scenario: `--scenario slow-burn` (one version failing 0.4 %: a 4× burn). Guarantees: a
/// `ticket` from the ticket tier reaches the control topic, no page and no rollback, and the
/// actuator records a `succeeded` outcome for it (its log executor).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slow_burn_scenario_raises_a_ticket() {
    let ran = run_scenario(trike::demo::Scenario::SlowBurn, |d| decided(d, "ticket")).await;
    let control = &ran.control;
    let actions_of = |a: &str| {
        control
            .iter()
            .filter(|(_, e)| e["data"]["action"] == a)
            .count()
    };
    assert_eq!(actions_of("ticket"), 1, "{control:?}");
    assert_eq!(
        (actions_of("page"), actions_of("rollback")),
        (0, 0),
        "{control:?}"
    );
    let ticket = &control
        .iter()
        .find(|(_, e)| e["data"]["action"] == "ticket")
        .unwrap()
        .1;
    assert_eq!(ticket["data"]["rule"], "ticket-slow-burn");
    assert!(
        ran.actions
            .iter()
            .any(|(_, o)| o["data"]["control_event_id"] == ticket["id"]
                && o["type"] == "io.trike.action.succeeded"),
        "{:?}",
        ran.actions
    );
}

/// Scenario: `--scenario stale` (the pipeline stalls, then delivers 20 s behind, while the
/// canary fails). Guarantees: a `page` from the stale-telemetry rule reaches the control topic
/// with the stale evidence; the failing canary's rollback is held on the stale data (the
/// policy counts it) and never emitted.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stale_scenario_pages_and_holds_the_rollback() {
    // Done once the page is out and the canary has been failing for longer than the rollback
    // rule's `for: 5s`: a rollback would have been emitted by then, were it not held.
    let failing_since = std::sync::Mutex::new(None::<Instant>);
    let ran = run_scenario(trike::demo::Scenario::Stale, |d| {
        let state = &d.running.state;
        let verdict = {
            let engine = state.worker.engine().lock();
            trike_engine::canary::judge(&engine, &state.canaries[0]).verdict
        };
        let mut since = failing_since.lock().unwrap();
        if verdict == trike_engine::canary::Verdict::Fail {
            since.get_or_insert_with(Instant::now);
        }
        decided(d, "page") && since.is_some_and(|t| t.elapsed() > Duration::from_secs(8))
    })
    .await;
    assert!(
        failing_since.lock().unwrap().is_some(),
        "the canary failed while its data was stale"
    );
    let control = &ran.control;
    let pages: Vec<_> = control
        .iter()
        .filter(|(_, e)| e["data"]["action"] == "page")
        .collect();
    assert_eq!(pages.len(), 1, "{control:?}");
    assert_eq!(pages[0].1["data"]["rule"], "page-on-stale-telemetry");
    assert!(
        pages[0].1["data"]["evidence"]
            .to_string()
            .contains("silent_s"),
        "{}",
        pages[0].1
    );
    assert!(ran.held_stale > 0, "the failing canary's rollback was held");
    assert!(
        control
            .iter()
            .all(|(_, e)| e["data"]["action"] != "rollback"),
        "{control:?}"
    );
}
