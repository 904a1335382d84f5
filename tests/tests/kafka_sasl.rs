//! Kafka with SASL/SCRAM-SHA-512 on a real broker (tansu with `--authentication`, started by
//! this test): `kafka.client` reaches every client Trike creates — the OTLP source, the
//! control-topic admin and producer — with the password from `${VAR}`; with a wrong password
//! nothing is read and nothing is published, and the password never shows in the config's
//! printed form.
//!
//! Without the tansu binary the test says SKIPPED locally and fails under CI (`CI` set).

use prost::Message as _;
use rand::SeedableRng;
use rdkafka::Message;
use rdkafka::config::ClientConfig;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::producer::{BaseRecord, DefaultProducerContext, Producer, ThreadedProducer};
use std::time::{Duration, Instant};
use trike_sinks::kafka_client::ClientProps;
use trike_tests::tansu::{create_user, free_port, start_broker, stop_broker, tansu};
use trike_tests::{total_requests, wait_for_requests};

const PASSWORD: &str = "scram-password-0123456789";

fn sasl(password: &str) -> ClientProps {
    ClientProps::new([
        ("security.protocol", "SASL_PLAINTEXT"),
        ("sasl.mechanism", "SCRAM-SHA-512"),
        ("sasl.username", "trike"),
        ("sasl.password", password),
    ])
}

async fn start(
    brokers: &str,
    spans: &str,
    control: &str,
    group: &str,
    password: &str,
) -> trike::app::Running {
    let yaml = format!(
        r#"
kafka:
  brokers: "{brokers}"
  control_topic: "{control}"
  client: {{ security.protocol: SASL_PLAINTEXT, sasl.mechanism: SCRAM-SHA-512, sasl.username: trike, sasl.password: "${{KAFKA_PASSWORD}}" }}
  ingest: {{ topics: ["{spans}"], group_id: "{group}" }}
canary: [{{ service: checkout, baseline: "1.4.0", canary: "1.5.0", window: 5m, min_requests: 100 }}]
policies: [{{ name: rollback-bad-canary, when: canary.fail, action: rollback, for: 1s }}]
sinks: [{{ type: kafka }}]
signing: {{ key: sasl-secret }}
instance: sasl
"#
    );
    let password = password.to_string();
    let env = move |name: &str| (name == "KAFKA_PASSWORD").then(|| password.clone());
    trike_tests::start_trike_with_env(&yaml, &env, &[PASSWORD]).await
}

/// Scenario: a broker that requires SCRAM; OTLP spans of a baseline and a failing canary on
/// its spans topic; one Trike with the right password, one with a wrong one.
/// Guarantees: the right one reads every span and publishes its signed rollback to the
/// control topic (creating it first through the admin client); the wrong one reads nothing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn scram_credentials_reach_every_kafka_client() {
    let Some(bin) = tansu() else { return };
    let dir = std::env::temp_dir().join(format!("trike-sasl-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let port = free_port();
    let brokers = format!("127.0.0.1:{port}");
    // Users are made on an open broker; then it restarts requiring them.
    let b = bin.clone();
    let d = dir.clone();
    let broker = tokio::task::spawn_blocking(move || {
        let open = start_broker(&b, &d, port, &[]);
        create_user(&b, port, "trike", PASSWORD, "scram512");
        stop_broker(open);
        start_broker(&b, &d, port, &["--authentication"])
    })
    .await
    .unwrap();

    let (spans, control) = ("sasl_otlp_spans", "trike.control.sasl");
    let b = brokers.clone();
    let produced = tokio::task::spawn_blocking(move || {
        trike_sinks::kafka::ensure_topic(&trike_sinks::kafka::KafkaSinkConfig {
            brokers: b.clone(),
            topic: spans.into(),
            partitions: 2,
            replication: 1,
            client: sasl(PASSWORD),
        })
        .expect("the admin client authenticates and creates the topic");
        let mut cfg = ClientConfig::new();
        cfg.set("bootstrap.servers", &b);
        let producer: ThreadedProducer<DefaultProducerContext> =
            sasl(PASSWORD).apply(&mut cfg).create().unwrap();
        let mut rng = rand::rngs::StdRng::seed_from_u64(5);
        let mut n = 0;
        for i in 0..20 {
            for (s, spans_n) in [
                (trike_tests::checkout("1.4.0", 0.001), 40),
                (trike_tests::checkout("1.5.0", 0.5), 20),
            ] {
                let body = s
                    .request(
                        spans_n,
                        trike_runtime::clock::now_nanos(),
                        1_000_000_000,
                        &mut rng,
                    )
                    .encode_to_vec();
                let key = i.to_string();
                producer
                    .send(BaseRecord::to(spans).key(&key).payload(&body))
                    .unwrap();
                n += spans_n as u64;
            }
        }
        producer.flush(Duration::from_secs(30)).unwrap();
        n
    })
    .await
    .unwrap();

    let wrong = start(
        &brokers,
        spans,
        "trike.control.wrong",
        "wrong",
        "not-the-password",
    )
    .await;
    let right = start(&brokers, spans, control, "right", PASSWORD).await;
    assert_eq!(
        wait_for_requests(&right, "checkout", produced, Duration::from_secs(60)).await,
        produced,
        "every span read over SASL"
    );
    assert_eq!(
        total_requests(&wrong, "checkout").await,
        0,
        "a wrong password reads nothing"
    );

    let b = brokers.clone();
    let rollbacks = tokio::task::spawn_blocking(move || {
        let mut cfg = ClientConfig::new();
        cfg.set("bootstrap.servers", &b)
            .set("group.id", "sasl-reader")
            .set("auto.offset.reset", "earliest");
        let reader: BaseConsumer = sasl(PASSWORD).apply(&mut cfg).create().unwrap();
        reader.subscribe(&[control]).unwrap();
        let start = Instant::now();
        let mut found = Vec::new();
        while found.is_empty() && start.elapsed() < Duration::from_secs(40) {
            if let Some(Ok(m)) = reader.poll(Duration::from_millis(200)) {
                let v: serde_json::Value =
                    serde_json::from_slice(m.payload().unwrap_or_default()).unwrap_or_default();
                if v["type"] == "io.trike.control.rollback" {
                    found.push(v);
                }
            }
        }
        found
    })
    .await
    .unwrap();
    assert!(
        !rollbacks.is_empty(),
        "the rollback reached the control topic over SASL"
    );
    assert!(trike_sinks::signing::verify(&rollbacks[0], b"sasl-secret"));
    assert_eq!(total_requests(&wrong, "checkout").await, 0);
    right.stop().await.unwrap();
    wrong.stop().await.unwrap();
    tokio::task::spawn_blocking(move || stop_broker(broker))
        .await
        .unwrap();
    let _ = std::fs::remove_dir_all(&dir);
}
