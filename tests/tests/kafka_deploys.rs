//! Deploy events on a real Kafka-protocol broker (tansu, started by `scripts/test`): CloudEvents
//! `io.trike.deploy.started` written to the deploys topic start progressive rollouts (DESIGN §9).
//!
//! Needs `TRIKE_TEST_KAFKA_BROKERS`; without it the test says why and passes locally, and fails
//! under CI (`CI` set), where the broker must be there.

use rdkafka::config::ClientConfig;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::producer::{BaseRecord, DefaultProducerContext, Producer, ThreadedProducer};
use serde_json::{Value, json};
use std::time::{Duration, Instant};
use trike_sinks::kafka::{KafkaSinkConfig, ensure_topic};
use trike_tests::start_trike;

fn event(kind: &str, age_s: u64, data: Value) -> Vec<u8> {
    let at = trike_runtime::clock::now_nanos() - age_s * 1_000_000_000;
    serde_json::to_vec(&json!({
        "specversion": "1.0", "id": format!("deploy-{age_s}-{kind}"), "source": "ci://pipeline",
        "type": kind, "time": trike_sinks::rfc3339(at),
        "datacontenttype": "application/json", "data": data,
    }))
    .unwrap()
}

/// Scenario: six events on the deploys topic before Trike starts: a deploy of checkout 1.5,
/// the same deploy again, a deploy of checkout 1.6 (overlapping), an hour-old deploy of
/// payments, a deploy whose canary is its baseline, and an event of another type.
/// Guarantees: exactly one rollout starts (checkout 1.4 → 1.5, its first set_weight listed);
/// each other event is counted under its outcome in `trike_deploy_events_total`; the group's
/// committed offset covers all six (nothing is read twice after a restart).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn deploy_events_start_rollouts() {
    let Some(brokers) = trike_tests::real_brokers() else {
        return;
    };
    let run = trike_tests::run_id();
    let topic = format!("trike.deploys.{run}");
    let group = format!("trike-deploys-{run}");
    ensure_topic(&KafkaSinkConfig {
        brokers: brokers.clone(),
        topic: topic.clone(),
        partitions: 1,
        replication: 1,
        client: Default::default(),
    })
    .expect("the broker creates topics");
    let producer: ThreadedProducer<DefaultProducerContext> = ClientConfig::new()
        .set("bootstrap.servers", &brokers)
        .set("enable.idempotence", "true")
        .create()
        .unwrap();
    let deploy = |canary: &str| json!({"service": "checkout", "baseline": "1.4", "canary": canary, "steps": [25, 100], "step_min": "1m"});
    let started = "io.trike.deploy.started";
    for payload in [
        event(started, 5, deploy("1.5")),
        event(started, 4, deploy("1.5")),
        event(started, 3, deploy("1.6")),
        event(
            started,
            3600,
            json!({"service": "payments", "baseline": "2", "canary": "3"}),
        ),
        event(
            started,
            2,
            json!({"service": "payments", "baseline": "2", "canary": "2"}),
        ),
        event("dev.cdevents.service.deployed.0.1.1", 1, deploy("1.7")),
    ] {
        producer
            .send(
                BaseRecord::to(&topic)
                    .key("checkout")
                    .payload(&payload)
                    .headers(rdkafka::message::OwnedHeaders::new().insert(
                        rdkafka::message::Header {
                            key: "content-type",
                            value: Some("application/cloudevents+json"),
                        },
                    )),
            )
            .unwrap();
    }
    producer.flush(Duration::from_secs(30)).unwrap();
    drop(producer);

    let running = start_trike(&format!(
        "kafka: {{ brokers: \"{brokers}\", control_topic: \"trike.control.{run}\", deploys_topic: \"{topic}\", deploys_group: \"{group}\" }}\n"
    ))
    .await;
    let admin = running.admin_addr;
    let client = reqwest::Client::new();
    let waited = Instant::now();
    let metrics = loop {
        let text = client
            .get(format!("http://{admin}/metrics"))
            .send()
            .await
            .unwrap()
            .text()
            .await
            .unwrap();
        let outcome = |o: &str| {
            trike_tests::sample(
                &text,
                &format!("trike_deploy_events_total{{outcome=\"{o}\"}}"),
            )
            .unwrap_or(0.0)
        };
        let counts: Vec<(&str, f64)> = [
            "started",
            "duplicate",
            "overlapping",
            "stale",
            "invalid",
            "ignored",
        ]
        .into_iter()
        .map(|o| (o, outcome(o)))
        .collect();
        if counts.iter().map(|c| c.1).sum::<f64>() >= 6.0 {
            break counts;
        }
        assert!(
            waited.elapsed() < Duration::from_secs(30),
            "deploy events not all handled: {counts:?}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    assert_eq!(
        metrics,
        [
            ("started", 1.0),
            ("duplicate", 1.0),
            ("overlapping", 1.0),
            ("stale", 1.0),
            ("invalid", 1.0),
            ("ignored", 1.0)
        ]
    );
    let doc: Value = client
        .get(format!("http://{admin}/api/v1/rollouts"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let rollouts = doc["rollouts"].as_array().unwrap();
    assert_eq!(rollouts.len(), 1, "{doc}");
    assert_eq!(
        (
            rollouts[0]["service"].as_str(),
            rollouts[0]["canary"].as_str(),
            rollouts[0]["weight"].as_f64()
        ),
        (Some("checkout"), Some("1.5"), Some(25.0))
    );
    let first = rollouts[0]["decisions"][0].as_str().unwrap().to_string();
    let decisions: Value = client
        .get(format!("http://{admin}/api/v1/decisions?service=checkout"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert!(
        decisions["decisions"]
            .as_array()
            .unwrap()
            .iter()
            .any(|d| d["id"] == first.as_str() && d["data"]["action"] == "set_weight"),
        "{decisions}"
    );
    running.stop().await.unwrap();

    // Every event is committed: a reader in the same group starts past all six.
    let reader: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", &brokers)
        .set("group.id", &group)
        .create()
        .unwrap();
    let mut tpl = rdkafka::TopicPartitionList::new();
    tpl.add_partition(&topic, 0);
    let committed = tokio::task::spawn_blocking(move || {
        reader
            .committed_offsets(tpl, Duration::from_secs(10))
            .unwrap()
    })
    .await
    .unwrap();
    assert_eq!(committed.elements()[0].offset(), rdkafka::Offset::Offset(6));
}
