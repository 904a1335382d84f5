//! End to end through a real Kafka-protocol broker (tansu, started by `scripts/test`): OTLP
//! protobuf spans written to a spans topic exactly as the Collector's Kafka exporter writes
//! them, for a baseline and a failing canary → Trike consumes them (group commits only what
//! was applied) → one signed `rollback` control event lands on the control topic.
//!
//! Needs `TRIKE_TEST_KAFKA_BROKERS`; without it the test says why and passes locally, and fails
//! under CI (`CI` set), where the broker must be there.

use prost::Message as _;
use rand::SeedableRng;
use rdkafka::Message;
use rdkafka::config::ClientConfig;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::producer::{BaseRecord, DefaultProducerContext, Producer, ThreadedProducer};
use rdkafka::{Offset, TopicPartitionList};
use std::time::{Duration, Instant};
use trike_sinks::kafka::{KafkaSinkConfig, ensure_topic};
use trike_tests::{start_trike, wait_for_requests};

fn brokers() -> Option<String> {
    match std::env::var("TRIKE_TEST_KAFKA_BROKERS") {
        Ok(b) if !b.is_empty() => Some(b),
        _ if std::env::var("CI").is_ok() => {
            panic!("CI must provide TRIKE_TEST_KAFKA_BROKERS (scripts/test starts tansu)")
        }
        _ => {
            eprintln!(
                "SKIPPED: set TRIKE_TEST_KAFKA_BROKERS to a Kafka-protocol broker (scripts/test starts one)"
            );
            None
        }
    }
}

use trike_tests::checkout as svc;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn spans_topic_to_signed_rollback_on_control_topic() {
    let Some(brokers) = brokers() else { return };
    // tansu keeps data between runs: unique names per run.
    let run = format!(
        "{}x{}",
        std::process::id(),
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_millis()
    );
    let spans_topic = format!("e2e{run}_otlp_spans");
    let control_topic = format!("trike.control.{run}");
    let topic = |name: &str| KafkaSinkConfig {
        brokers: brokers.clone(),
        topic: name.into(),
        partitions: 2,
        replication: 1,
    };
    ensure_topic(&topic(&spans_topic)).expect("the broker creates topics");

    let producer: ThreadedProducer<DefaultProducerContext> = ClientConfig::new()
        .set("bootstrap.servers", &brokers)
        .set("enable.idempotence", "true")
        .create()
        .unwrap();
    let mut rng = rand::rngs::StdRng::seed_from_u64(11);
    let mut messages = 0;
    for i in 0..30 {
        for (s, n) in [(svc("1.4.0", 0.001), 60), (svc("1.5.0", 0.5), 20)] {
            let body = s
                .request(n, trike::worker::now_nanos(), 1_000_000_000, &mut rng)
                .encode_to_vec();
            let key = format!("{i}");
            producer
                .send(BaseRecord::to(&spans_topic).key(&key).payload(&body))
                .unwrap();
            messages += 1;
        }
    }
    producer.flush(Duration::from_secs(30)).unwrap();
    drop(producer);

    let running = start_trike(&format!(
        r#"
kafka: {{ brokers: "{brokers}", control_topic: "{control_topic}", ingest: {{ topics: ["{spans_topic}"], group_id: "trike-{run}" }} }}
canary: [{{ service: checkout, baseline: "1.4.0", canary: "1.5.0", window: 5m, min_requests: 100 }}]
policies: [{{ name: rollback-bad-canary, when: canary.fail, action: rollback, for: 1s }}]
sinks: [{{ type: kafka }}]
signing: {{ key: real-broker-secret }}
instance: tansu-e2e
"#
    ))
    .await;
    assert_eq!(
        wait_for_requests(&running, "checkout", 2400, Duration::from_secs(60)).await,
        2400,
        "all spans consumed"
    );

    let reader: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", &brokers)
        .set("group.id", format!("reader-{run}"))
        .set("enable.auto.commit", "false")
        .create()
        .unwrap();
    let start = Instant::now();
    let mut rollbacks = Vec::new();
    let mut assigned = false;
    while start.elapsed() < Duration::from_secs(30) {
        if !assigned {
            // The control topic is created by Trike: assign once it exists.
            if let Ok(md) = reader.fetch_metadata(Some(&control_topic), Duration::from_secs(2))
                && md
                    .topics()
                    .first()
                    .is_some_and(|t| !t.partitions().is_empty())
            {
                let mut tpl = TopicPartitionList::new();
                for p in md.topics()[0].partitions() {
                    tpl.add_partition_offset(&control_topic, p.id(), Offset::Beginning)
                        .unwrap();
                }
                reader.assign(&tpl).unwrap();
                assigned = true;
            }
            continue;
        }
        if let Some(Ok(m)) = reader.poll(Duration::from_millis(200)) {
            let v: serde_json::Value = serde_json::from_slice(m.payload().unwrap()).unwrap();
            if v["type"] == "io.trike.control.rollback" {
                rollbacks.push((m.key().map(<[u8]>::to_vec), v));
            }
        } else if !rollbacks.is_empty() && start.elapsed() > Duration::from_secs(5) {
            break;
        }
    }
    assert_eq!(
        rollbacks.len(),
        1,
        "exactly one rollback on {control_topic}"
    );
    let (key, e) = &rollbacks[0];
    assert_eq!(key.as_deref(), Some(&b"checkout"[..]));
    assert_eq!(e["data"]["target"]["version"], "1.5.0");
    assert!(trike_sinks::signing::verify(e, b"real-broker-secret"));
    running.stop().await.unwrap();

    let committed: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", &brokers)
        .set("group.id", format!("trike-{run}"))
        .create()
        .unwrap();
    let mut tpl = TopicPartitionList::new();
    tpl.add_partition(&spans_topic, 0);
    tpl.add_partition(&spans_topic, 1);
    let offsets = committed
        .committed_offsets(tpl, Duration::from_secs(10))
        .unwrap();
    let total: i64 = offsets
        .elements()
        .iter()
        .map(|e| {
            if let Offset::Offset(o) = e.offset() {
                o
            } else {
                0
            }
        })
        .sum();
    assert_eq!(
        total, messages,
        "group committed exactly the applied messages"
    );
}
