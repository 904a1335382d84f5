//! Control events on a Kafka-protocol broker (librdkafka's in-process mock cluster): the
//! failing canary's rollback lands on `trike.control` keyed by service, in CloudEvents
//! structured mode, with a valid signature, once.

use rand::SeedableRng;
use rdkafka::Message;
use rdkafka::config::ClientConfig;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::message::Headers;
use rdkafka::mocking::MockCluster;
use rdkafka::{Offset, TopicPartitionList};
use std::time::{Duration, Instant};
use trike_tests::{post_spans, start_trike};

use trike_tests::checkout as svc;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rollback_lands_on_the_control_topic() {
    let mock = MockCluster::new(1).unwrap();
    mock.create_topic("trike.control", 3, 1).unwrap();
    let brokers = mock.bootstrap_servers();
    let running = start_trike(&format!(
        r#"
kafka: {{ brokers: "{brokers}" }}
canary: [{{ service: checkout, baseline: "1.4.0", canary: "1.5.0", window: 30s, min_requests: 100 }}]
policies: [{{ name: rollback-bad-canary, when: canary.fail, action: rollback, for: 1s }}]
sinks: [{{ type: kafka }}]
signing: {{ key: kafka-secret }}
instance: kafka-e2e
"#
    ))
    .await;
    let consumer: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", &brokers)
        .set("group.id", "test-reader")
        .set("enable.auto.commit", "false")
        .create()
        .unwrap();
    let mut tpl = TopicPartitionList::new();
    for p in 0..3 {
        tpl.add_partition_offset("trike.control", p, Offset::Beginning)
            .unwrap();
    }
    consumer.assign(&tpl).unwrap();

    let client = reqwest::Client::new();
    let mut rng = rand::rngs::StdRng::seed_from_u64(7);
    let start = Instant::now();
    let mut events = Vec::new();
    while start.elapsed() < Duration::from_secs(25) {
        for (s, n) in [(svc("1.4.0", 0.001), 60), (svc("1.5.0", 0.5), 20)] {
            post_spans(&client, &running, &s, n, 50_000_000, &mut rng).await;
        }
        while let Some(Ok(m)) = consumer.poll(Duration::from_millis(50)) {
            let ct = m.headers().and_then(|h| {
                h.iter()
                    .find(|x| x.key == "content-type")
                    .and_then(|x| x.value.map(<[u8]>::to_vec))
            });
            let value: serde_json::Value = serde_json::from_slice(m.payload().unwrap()).unwrap();
            events.push((m.key().map(<[u8]>::to_vec), ct, value));
        }
        if events
            .iter()
            .any(|e| e.2["type"] == "io.trike.control.rollback")
            && start.elapsed() > Duration::from_secs(5)
        {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let rollbacks: Vec<_> = events
        .iter()
        .filter(|e| e.2["type"] == "io.trike.control.rollback")
        .collect();
    assert_eq!(
        rollbacks.len(),
        1,
        "exactly one rollback on the topic: {events:#?}"
    );
    let (key, ct, e) = rollbacks[0];
    assert_eq!(key.as_deref(), Some(&b"checkout"[..]));
    assert_eq!(ct.as_deref(), Some(&b"application/cloudevents+json"[..]));
    assert_eq!(e["source"], "trike://kafka-e2e");
    assert_eq!(e["data"]["target"]["version"], "1.5.0");
    assert!(trike_sinks::signing::verify(e, b"kafka-secret"));
    let m = trike_tests::metrics_text(&running).await;
    assert!(trike_tests::sample(&m, "trike_kafka_control_delivered_total").unwrap() >= 1.0);
    assert_eq!(
        trike_tests::sample(&m, "trike_kafka_control_failed_total"),
        Some(0.0)
    );
    let ready = reqwest::get(format!("http://{}/readyz", running.admin_addr))
        .await
        .unwrap();
    assert_eq!(ready.status(), 200);
    running.stop().await.unwrap();
    drop(consumer);
}
