//! `trike demo`, headless with a shortened timeline: the whole loop on the embedded broker,
//! over real sockets, with the real actuator. Every scenario's story (canary, latency,
//! slow-burn, stale) also runs on a simulated clock in `demo_scenarios`, in about a second each.

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
/// The loop's metrics (`/api/v1/loop`) match the events: time to detect = the rollback's
/// `detected_at` − its evidence's `first_bad_at`, time to mitigate
/// = the outcome's `time` − `detected_at`, the control plane no faster than that.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn demo_rolls_the_canary_back_through_kafka() {
    let args = demo_args(trike::demo::Scenario::Canary, 2);
    let started_ns = trike_runtime::clock::now_nanos();
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

    // The loop's own metrics, against the events' timestamps (RFC 3339, to the millisecond).
    let at = |v: &serde_json::Value| trike_sinks::parse_rfc3339_nanos(v.as_str().unwrap()).unwrap();
    let detected = at(&event["data"]["detected_at"]);
    let onset = event["data"]["evidence"]["first_bad_at"]
        .as_u64()
        .expect("the rollback's evidence dates the fault");
    let outcome_at = at(&outcomes[0].1["time"]);
    // The canary served only a dozen clean requests before it degraded (2 s in): too few to
    // date the rise, so the fault is taken to be as old as the canary's traffic (the time to
    // detect is then an upper bound).
    assert!(
        onset >= started_ns && onset < detected,
        "the fault began after the start and before it was detected: {} s after the start",
        (onset as f64 - started_ns as f64) / 1e9
    );
    let waited = Instant::now();
    let lp = loop {
        let lp: serde_json::Value = reqwest::get(format!("http://{admin}/api/v1/loop"))
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        if lp["control_plane_s"]["count"] == 1 {
            break lp;
        }
        assert!(waited.elapsed() < Duration::from_secs(20), "{lp}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    let secs = |a: u64, b: u64| (a as f64 - b as f64) / 1e9;
    let near = |got: &serde_json::Value, want: f64| {
        let got = got.as_f64().unwrap();
        assert!((got - want).abs() <= 0.002, "{got} vs {want}: {lp}");
    };
    near(&lp["time_to_detect_s"]["mean"], secs(detected, onset));
    near(
        &lp["time_to_mitigate_s"]["mean"],
        secs(outcome_at, detected),
    );
    // The control-plane latency is the outcome's arrival here, which the record shows: after
    // the actuator wrote it, and within seconds.
    let received = lp["recent"][0]["received_at"]
        .as_u64()
        .expect("the record shows when the outcome arrived");
    assert_eq!(
        lp["recent"][0]["outcome_at"].as_u64(),
        Some(outcome_at),
        "{lp}"
    );
    assert!(
        received >= outcome_at && secs(received, detected) < 10.0,
        "received after it was written: {lp}"
    );
    near(&lp["control_plane_s"]["mean"], secs(received, detected));
    let control_plane = lp["control_plane_s"]["mean"].as_f64().unwrap();
    assert_eq!(lp["outcomes"]["succeeded"], 1, "{lp}");
    assert_eq!(lp["success_rate"], 1.0, "{lp}");
    assert_eq!(
        (lp["rollbacks"].clone(), lp["deploys"].clone()),
        (1.into(), 1.into()),
        "{lp}"
    );
    assert_eq!(lp["recent"][0]["decision_id"], event["id"], "{lp}");
    // The same figures on /metrics, read with the Prometheus project's parser.
    let text = reqwest::get(format!("http://{admin}/metrics"))
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    if let Some(samples) = trike_tests::parse_exposition(&text) {
        let value = |name: &str, label| trike_tests::prom_value(&samples, name, label);
        for (histogram, api) in [
            ("trike_loop_detect_seconds", "time_to_detect_s"),
            ("trike_loop_mitigate_seconds", "time_to_mitigate_s"),
            ("trike_loop_control_plane_seconds", "control_plane_s"),
        ] {
            assert_eq!(
                value(&format!("{histogram}_count"), None),
                1.0,
                "{histogram}"
            );
            near(&lp[api]["mean"], value(&format!("{histogram}_sum"), None));
        }
        assert_eq!(
            value("trike_loop_outcomes_total", Some(("outcome", "succeeded"))),
            1.0
        );
        assert_eq!(value("trike_loop_rollbacks_total", None), 1.0);
    }
    eprintln!(
        "loop: detected {:.2} s after the onset, mitigated {:.2} s after, control plane {:.2} s",
        secs(detected, onset),
        secs(outcome_at, detected),
        control_plane
    );
    demo.stop().await.unwrap();
}
