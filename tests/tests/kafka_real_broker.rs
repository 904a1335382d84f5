//! End to end through a real Kafka-protocol broker (tansu, started by `scripts/test`): OTLP
//! protobuf spans written to a spans topic exactly as the Collector's Kafka exporter writes
//! them, for a baseline and a failing canary → Trike consumes them (group commits only what
//! was applied) → one signed `rollback` control event lands on the control topic →
//! `trike actuate` calls a test webhook exactly once → its `succeeded` outcome event lands on
//! the actions topic, referencing the control event.
//!
//! Needs `TRIKE_TEST_KAFKA_BROKERS`; without it the test says why and passes locally, and fails
//! under CI (`CI` set), where the broker must be there.

use axum::Router;
use axum::http::StatusCode;
use axum::routing::post;
use prost::Message as _;
use rand::SeedableRng;
use rdkafka::Message;
use rdkafka::config::ClientConfig;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::producer::{BaseRecord, DefaultProducerContext, Producer, ThreadedProducer};
use rdkafka::{Offset, TopicPartitionList};
use std::sync::atomic::{AtomicBool, Ordering::Relaxed};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use trike_actuate::ActuatorSettings;
use trike_actuate::config::ActuatorConfig;
use trike_sinks::kafka::{KafkaSinkConfig, ensure_topic};
use trike_tests::{start_trike, wait_for_requests};

use trike_tests::checkout as svc;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn spans_topic_to_signed_rollback_to_webhook_and_outcome() {
    let Some(brokers) = trike_tests::real_brokers() else {
        return;
    };
    // tansu keeps data between runs: unique names per run.
    let run = trike_tests::run_id();
    let spans_topic = format!("e2e{run}_otlp_spans");
    let control_topic = format!("trike.control.{run}");
    let topic = |name: &str| KafkaSinkConfig {
        brokers: brokers.clone(),
        topic: name.into(),
        partitions: 2,
        replication: 1,
        client: Default::default(),
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
                .request(
                    n,
                    trike_runtime::clock::now_nanos(),
                    1_000_000_000,
                    &mut rng,
                )
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

    // The actuator: group trike-actuators (unique here), a webhook executor for rollbacks.
    let calls = Arc::new(Mutex::new(Vec::<String>::new()));
    let web = {
        let calls = calls.clone();
        let app = Router::new().route(
            "/rollback",
            post(move |body: String| {
                let calls = calls.clone();
                async move {
                    calls.lock().unwrap().push(body);
                    StatusCode::OK
                }
            }),
        );
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
        addr
    };
    let actions_topic = format!("trike.actions.{run}");
    let state = std::env::temp_dir().join(format!("trike-e2e-actuator-{run}"));
    let actuator: ActuatorConfig = serde_yaml_ng::from_str(&format!(
        r#"
group_id: "trike-actuators-{run}"
actions_topic: "{actions_topic}"
claims_topic: "trike.actuator.claims.{run}"
state_dir: "{}"
executors:
  - {{ name: rollouts, type: webhook, actions: [rollback], url: "http://{web}/rollback",
       body: '{{"rollout": "{{{{service}}}}", "version": "{{{{version}}}}"}}', retries: 0 }}
"#,
        state.display()
    ))
    .unwrap();
    let settings = ActuatorSettings {
        brokers: brokers.clone(),
        control_topic: control_topic.clone(),
        keys: trike_sinks::signing::VerifyKeys::single(b"real-broker-secret".to_vec()),
        instance: "tansu-e2e-actuator".into(),
        actuator: actuator.validate("actuator").unwrap(),
        client: Default::default(),
    };
    let stop = Arc::new(AtomicBool::new(false));
    let worker = {
        let stop = stop.clone();
        std::thread::spawn(move || trike_actuate::run(settings, stop))
    };
    let outcomes: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", &brokers)
        .set("group.id", format!("outcomes-{run}"))
        .set("enable.auto.commit", "false")
        .create()
        .unwrap();
    let start = Instant::now();
    let mut outcome = None;
    let mut assigned = false;
    while outcome.is_none() && start.elapsed() < Duration::from_secs(60) {
        if !assigned {
            // The actions topic is created by the actuator: assign once it exists.
            if let Ok(md) = outcomes.fetch_metadata(Some(&actions_topic), Duration::from_secs(2))
                && md
                    .topics()
                    .first()
                    .is_some_and(|t| !t.partitions().is_empty())
            {
                let mut tpl = TopicPartitionList::new();
                for p in md.topics()[0].partitions() {
                    tpl.add_partition_offset(&actions_topic, p.id(), Offset::Beginning)
                        .unwrap();
                }
                outcomes.assign(&tpl).unwrap();
                assigned = true;
            } else {
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
            continue;
        }
        if let Some(Ok(m)) =
            tokio::task::block_in_place(|| outcomes.poll(Duration::from_millis(200)))
        {
            outcome =
                Some(serde_json::from_slice::<serde_json::Value>(m.payload().unwrap()).unwrap());
        }
    }
    // A little longer: a second execution would show now.
    tokio::time::sleep(Duration::from_secs(2)).await;
    stop.store(true, Relaxed);
    let stats = worker.join().unwrap().unwrap();
    let outcome = outcome.expect("an outcome event on the actions topic");
    assert_eq!(outcome["type"], "io.trike.action.succeeded", "{outcome:#}");
    assert_eq!(outcome["data"]["control_event_id"], e["id"]);
    assert_eq!(outcome["source"], "trike-actuator://tansu-e2e-actuator");
    {
        let calls = calls.lock().unwrap();
        assert_eq!(calls.len(), 1, "the webhook ran exactly once");
        let body: serde_json::Value = serde_json::from_str(&calls[0]).unwrap();
        assert_eq!(
            body,
            serde_json::json!({"rollout": "checkout", "version": "1.5.0"})
        );
    }
    assert_eq!(
        (stats.succeeded, stats.rejected, stats.duplicates),
        (1, 0, 0)
    );
    drop(outcomes);
    let _ = std::fs::remove_dir_all(&state);

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
