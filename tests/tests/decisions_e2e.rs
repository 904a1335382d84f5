//! End to end: spans over OTLP/HTTP from a baseline and a canary; the canary starts failing;
//! a `rollback` control event for that version is written to the sink with its evidence,
//! within the rule's `for` plus detection plus one second, exactly once; when the canary's
//! traffic is gone, `resolved` follows.

use prost::Message;
use rand::SeedableRng;
use std::time::{Duration, Instant};
use trike_tests::start_trike;

use trike_tests::checkout as svc;

fn events(path: &std::path::Path) -> Vec<serde_json::Value> {
    std::fs::read_to_string(path)
        .unwrap_or_default()
        .lines()
        .map(|l| serde_json::from_str(l).expect("each line is one JSON control event"))
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn canary_rollback_then_resolved() {
    let dir = std::env::temp_dir().join(format!("trike-e2e-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let sink = dir.join("control.jsonl");
    let _ = std::fs::remove_file(&sink);
    let running = start_trike(&format!(
        r#"
canary: [{{ service: checkout, baseline: "1.4.0", canary: "1.5.0", window: 10s, min_requests: 100 }}]
policies:
  - {{ name: rollback-bad-canary, when: canary.fail, action: rollback, for: 2s, params: {{ weight: 0 }} }}
sinks: [{{ type: file, path: "{}" }}]
instance: e2e
signing: {{ key: e2e-secret }}
"#,
        sink.display()
    ))
    .await;
    let url = format!("http://{}/v1/traces", running.http_addr);
    let client = reqwest::Client::new();
    let mut rng = rand::rngs::StdRng::seed_from_u64(42);
    let send = |svc: trike::synth::Service, n: usize, rng: &mut rand::rngs::StdRng| {
        let body = svc
            .request(n, trike_runtime::clock::now_nanos(), 50_000_000, rng)
            .encode_to_vec();
        client
            .post(&url)
            .header("content-type", "application/x-protobuf")
            .body(body)
            .send()
    };
    let start = Instant::now();
    let mut failing_since = None;
    let mut rollback_seen_at = None;
    let mut last_canary_post = Instant::now();
    let mut resolved_seen_at = None;
    while start.elapsed() < Duration::from_secs(40) {
        let t = start.elapsed();
        let canary_err = if t < Duration::from_secs(2) { 0.0 } else { 0.5 };
        if canary_err > 0.0 && failing_since.is_none() {
            failing_since = Some(Instant::now());
        }
        assert!(
            send(svc("1.4.0", 0.001), 60, &mut rng)
                .await
                .unwrap()
                .status()
                .is_success()
        );
        // The canary disappears 3 s after the rollback (the actuator would have rolled it back).
        let canary_gone =
            rollback_seen_at.is_some_and(|at: Instant| at.elapsed() > Duration::from_secs(3));
        if !canary_gone {
            assert!(
                send(svc("1.5.0", canary_err), 20, &mut rng)
                    .await
                    .unwrap()
                    .status()
                    .is_success()
            );
            last_canary_post = Instant::now();
        }
        let ev = events(&sink);
        if rollback_seen_at.is_none() && ev.iter().any(|e| e["type"] == "io.trike.control.rollback")
        {
            rollback_seen_at = Some(Instant::now());
        }
        if ev.iter().any(|e| e["type"] == "io.trike.control.resolved") {
            resolved_seen_at = Some(Instant::now());
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let detect = rollback_seen_at.expect("a rollback was emitted") - failing_since.unwrap();
    // The judge needs a few hundred failing requests in its window, then `for: 2s`, plus 1 s
    // (and 2 s for a loaded machine: the bound is about the design, not the machine's speed).
    assert!(
        detect < Duration::from_secs(8),
        "rollback {detect:?} after the canary started failing"
    );
    let ev = events(&sink);
    let rollbacks: Vec<_> = ev
        .iter()
        .filter(|e| e["type"] == "io.trike.control.rollback")
        .collect();
    assert_eq!(rollbacks.len(), 1, "exactly one rollback: {ev:#?}");
    let r = rollbacks[0];
    assert_eq!(r["specversion"], "1.0");
    assert!(
        trike_sinks::signing::verify(r, b"e2e-secret"),
        "valid trikesignature"
    );
    assert!(!trike_sinks::signing::verify(r, b"forged"));
    assert_eq!(r["source"], "trike://e2e");
    assert_eq!(r["subject"], "checkout");
    assert_eq!(r["data"]["target"]["version"], "1.5.0");
    assert_eq!(r["data"]["params"]["weight"], 0.0);
    assert_eq!(r["data"]["rule"], "rollback-bad-canary");
    assert_eq!(r["data"]["evidence"]["kind"], "canary");
    let errors = &r["data"]["evidence"]["metrics"][0];
    assert_eq!(errors["metric"], "error_ratio");
    assert!(errors["p_value"].as_f64().unwrap() < 0.02);
    assert!(errors["canary_n"].as_u64().unwrap() >= 100);
    assert!(
        r["data"]["reason"]
            .as_str()
            .unwrap()
            .contains("checkout 1.5.0 failed canary analysis against 1.4.0")
    );
    let resolved: Vec<_> = ev
        .iter()
        .filter(|e| e["type"] == "io.trike.control.resolved")
        .collect();
    assert_eq!(resolved.len(), 1, "{ev:#?}");
    assert_eq!(resolved[0]["data"]["resolves"], r["id"]);
    // Resolved once fewer than `min_requests` of the canary's are left in its 10 s window (about
    // 9 s after its last request at this test's rate), at the next 1 s bucket and decision.
    let gone = resolved_seen_at.expect("resolved") - last_canary_post;
    assert!(
        gone < Duration::from_secs(14),
        "resolved {gone:?} after the canary went away (window 10 s)"
    );
    // The API mirrors the sink, newest first.
    let api: serde_json::Value =
        trike_tests::get_json(&running, "/api/v1/decisions?service=checkout").await;
    let d = api["decisions"].as_array().unwrap();
    assert_eq!(d.len(), 2);
    assert_eq!(d[0]["type"], "io.trike.control.resolved");
    assert_eq!(d[1], *r);
    running.stop().await.unwrap();
    let _ = std::fs::remove_dir_all(&dir);
}
