//! The fault matrix's broker outage (issue: "the broker stopped for 20 s while a decision is
//! made — the control event arrives after it returns"), on a real Kafka-protocol broker: this
//! test starts its own tansu (the binary `.ci/run` installs) so it can stop and restart it.
//!
//! Without the tansu binary the test says SKIPPED locally and fails under CI (`CI` set).

use std::time::{Duration, Instant};
use trike_tests::tansu::{free_port, start_broker, stop_broker, tansu};
use trike_tests::{post_spans, read_topic, start_trike};

/// Scenario: Trike publishes control events to a broker that is stopped; while it is down a
/// canary fails and Trike decides to roll it back; the broker comes back 20 s after it stopped.
/// Guarantees: the decision is made during the outage (the API shows it); after the broker
/// returns, its control event lands on the control topic, signed, and only under that one
/// decision id.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_decision_made_while_the_broker_is_down_arrives_after_it_returns() {
    let Some(bin) = tansu() else { return };
    let dir = std::env::temp_dir().join(format!("trike-outage-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let port = free_port();
    let brokers = format!("127.0.0.1:{port}");
    let broker = start_broker(&bin, &dir, port, &[]);
    let control = "trike.control.outage";
    let b = brokers.clone();
    tokio::task::spawn_blocking(move || {
        trike_sinks::kafka::ensure_topic(&trike_sinks::kafka::KafkaSinkConfig {
            brokers: b,
            topic: control.into(),
            partitions: 1,
            replication: 1,
            client: Default::default(),
        })
    })
    .await
    .unwrap()
    .expect("the broker creates topics");
    let running = start_trike(&format!(
        r#"
kafka: {{ brokers: "{brokers}", control_topic: "{control}" }}
canary: [{{ service: checkout, baseline: "1.4.0", canary: "1.5.0", window: 5m, min_requests: 100 }}]
policies: [{{ name: rollback-bad-canary, when: canary.fail, action: rollback, for: 1s }}]
sinks: [{{ type: kafka }}]
signing: {{ key: outage-secret }}
instance: outage
"#
    ))
    .await;

    tokio::task::spawn_blocking(move || stop_broker(broker))
        .await
        .unwrap();
    // Timed from when the broker is gone (its shutdown can take seconds on a loaded machine).
    let stopped_at = Instant::now();
    let client = reqwest::Client::new();
    let mut rng = rand::rng();
    let (baseline, canary) = (
        trike_tests::checkout("1.4.0", 0.001),
        trike_tests::checkout("1.5.0", 0.5),
    );
    let (decided, decided_after) = loop {
        assert!(
            stopped_at.elapsed() < Duration::from_secs(15),
            "no decision while the broker was down"
        );
        post_spans(&client, &running, &baseline, 200, 500_000_000, &mut rng).await;
        post_spans(&client, &running, &canary, 100, 500_000_000, &mut rng).await;
        let doc: serde_json::Value =
            trike_tests::get_json(&running, "/api/v1/decisions?service=checkout").await;
        let ids: Vec<String> = doc["decisions"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|e| e["type"] == "io.trike.control.rollback")
            .map(|e| e["id"].as_str().unwrap().to_string())
            .collect();
        if let Some(id) = ids.first() {
            break (id.clone(), stopped_at.elapsed());
        }
        tokio::time::sleep(Duration::from_millis(300)).await;
    };
    // The outage lasts 20 s from the stop.
    if let Some(left) = Duration::from_secs(20).checked_sub(stopped_at.elapsed()) {
        tokio::time::sleep(left).await;
    }
    let broker = start_broker(&bin, &dir, port, &[]);
    let returned = Instant::now();
    let b = brokers.clone();
    let events = tokio::task::spawn_blocking(move || {
        loop {
            let got = read_topic(&b, control, Duration::from_secs(2));
            if got
                .iter()
                .any(|(_, e)| e["type"] == "io.trike.control.rollback")
                || returned.elapsed() > Duration::from_secs(60)
            {
                return got;
            }
        }
    })
    .await
    .unwrap();
    let rollbacks: Vec<&serde_json::Value> = events
        .iter()
        .map(|(_, e)| e)
        .filter(|e| e["type"] == "io.trike.control.rollback")
        .collect();
    assert!(!rollbacks.is_empty(), "the rollback never arrived");
    for e in &rollbacks {
        assert_eq!(
            e["id"].as_str(),
            Some(decided.as_str()),
            "one decision, one id"
        );
        assert!(trike_sinks::signing::verify(e, b"outage-secret"));
    }
    eprintln!(
        "decided {:.1} s into the outage; delivered {:.1} s after the broker returned ({} cop{})",
        decided_after.as_secs_f64(),
        returned.elapsed().as_secs_f64(),
        rollbacks.len(),
        if rollbacks.len() == 1 { "y" } else { "ies" }
    );
    running.stop().await.unwrap();
    tokio::task::spawn_blocking(move || stop_broker(broker))
        .await
        .unwrap();
    let _ = std::fs::remove_dir_all(&dir);
}
