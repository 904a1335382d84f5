//! The Kafka source against a Kafka-protocol broker (librdkafka's in-process mock cluster):
//! OTLP protobuf records written as the Collector's Kafka exporter writes them are counted, a
//! poison message among them is counted and skipped without stalling the rest, and the group
//! `trike` commits offsets only for what was applied (here: everything, at shutdown).

use prost::Message as _;
use rand::SeedableRng;
use rdkafka::config::ClientConfig;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::mocking::MockCluster;
use rdkafka::producer::DefaultProducerContext;
use rdkafka::producer::{BaseRecord, Producer, ThreadedProducer};
use rdkafka::{Offset, TopicPartitionList};
use std::sync::atomic::Ordering::Relaxed;
use std::time::Duration;
use trike::synth::{Behaviour, Service};
use trike_tests::{metrics_text, sample, start_trike, wait_for_requests};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn otlp_records_are_applied_then_committed() {
    let mock = MockCluster::new(1).unwrap();
    mock.create_topic("otlp_spans", 2, 1).unwrap();
    let brokers = mock.bootstrap_servers();
    let producer: ThreadedProducer<DefaultProducerContext> = ClientConfig::new()
        .set("bootstrap.servers", &brokers)
        .create()
        .unwrap();
    let svc = Service {
        name: "kafka-svc".into(),
        version: "1".into(),
        routes: vec!["/a".into(), "/b".into()],
        behaviour: Behaviour {
            median_ms: 10.0,
            sigma: 0.3,
            error_ratio: 0.1,
        },
    };
    let mut rng = rand::rngs::StdRng::seed_from_u64(3);
    for i in 0..20 {
        let body = svc
            .request(10, trike_runtime::clock::now_nanos(), 1_000_000, &mut rng)
            .encode_to_vec();
        let key = format!("k{i}");
        producer
            .send(BaseRecord::to("otlp_spans").key(&key).payload(&body))
            .unwrap();
        if i == 7 {
            producer
                .send(
                    BaseRecord::<str, [u8]>::to("otlp_spans")
                        .key("poison")
                        .payload(&[0xff, 0xff, 0x01][..]),
                )
                .unwrap();
        }
    }
    producer.flush(Duration::from_secs(10)).unwrap();
    drop(producer);

    let running = start_trike(&format!(
        "kafka: {{ brokers: \"{brokers}\", ingest: {{ topics: [otlp_spans] }} }}"
    ))
    .await;
    assert_eq!(
        wait_for_requests(&running, "kafka-svc", 200, Duration::from_secs(30)).await,
        200
    );
    let m = metrics_text(&running).await;
    assert_eq!(
        sample(
            &m,
            r#"trike_receiver_requests_total{transport="kafka",signal="traces",outcome="malformed"}"#
        ),
        Some(1.0),
        "the poison message is counted"
    );
    assert_eq!(
        sample(
            &m,
            r#"trike_receiver_requests_total{transport="kafka",signal="traces",outcome="ok"}"#
        ),
        Some(20.0)
    );
    running.stop().await.unwrap();

    // What group `trike` committed: every message, the poison one included (skipped).
    let reader: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", &brokers)
        .set("group.id", "trike")
        .create()
        .unwrap();
    let mut tpl = TopicPartitionList::new();
    tpl.add_partition("otlp_spans", 0);
    tpl.add_partition("otlp_spans", 1);
    let committed = reader
        .committed_offsets(tpl, Duration::from_secs(10))
        .unwrap();
    let total: i64 = committed
        .elements()
        .iter()
        .map(|e| match e.offset() {
            Offset::Offset(o) => o,
            _ => 0,
        })
        .sum();
    assert_eq!(total, 21, "{committed:?}");
    drop(reader);
}

/// Scenario: an engine queue far smaller than the backlog, and a poison message, with a
/// dead-letter topic configured. Guarantees: full-queue partitions are paused and resumed
/// (counted), every good span is still applied, the poison message lands on the dead-letter
/// topic with headers naming its origin and the error, and per-partition lag drains to 0.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn backpressure_pauses_partitions_and_poison_goes_to_dead_letters() {
    use rdkafka::Message;
    use rdkafka::message::Headers;
    let mock = MockCluster::new(1).unwrap();
    mock.create_topic("otlp_spans", 2, 1).unwrap();
    mock.create_topic("otlp_spans.dlq", 1, 1).unwrap();
    let brokers = mock.bootstrap_servers();
    // Room for one message of 60 spans at a time.
    let running = start_trike(&format!(
        "receivers: {{ queue_observations: 100 }}\nkafka: {{ brokers: \"{brokers}\", ingest: {{ topics: [otlp_spans], dead_letter_topic: otlp_spans.dlq }} }}"
    ))
    .await;
    // Stall the engine (hold its lock) until the source has had to pause a partition: the
    // engine drains its queue within microseconds, so without a stall whether a message ever
    // finds the queue full is a race. The stall holds before anything is produced.
    let stall = {
        let state = running.state.clone();
        let (held_tx, held_rx) = std::sync::mpsc::channel();
        let t = std::thread::spawn(move || {
            let engine = state.worker.engine().lock();
            let _ = held_tx.send(());
            let start = std::time::Instant::now();
            while start.elapsed() < Duration::from_secs(30) {
                let pauses = state
                    .kafka_source
                    .lock()
                    .as_ref()
                    .map_or(0, |(stats, _)| stats.pauses.load(Relaxed));
                if pauses > 0 {
                    break;
                }
                std::thread::sleep(Duration::from_millis(5));
            }
            drop(engine);
        });
        held_rx.recv().unwrap();
        t
    };
    let producer: ThreadedProducer<DefaultProducerContext> = ClientConfig::new()
        .set("bootstrap.servers", &brokers)
        .create()
        .unwrap();
    let svc = Service {
        name: "bp-svc".into(),
        version: "1".into(),
        routes: vec!["/a".into()],
        behaviour: Behaviour {
            median_ms: 10.0,
            sigma: 0.3,
            error_ratio: 0.0,
        },
    };
    let mut rng = rand::rngs::StdRng::seed_from_u64(5);
    for i in 0..60 {
        let body = svc
            .request(60, trike_runtime::clock::now_nanos(), 1_000_000, &mut rng)
            .encode_to_vec();
        let key = format!("k{i}");
        producer
            .send(BaseRecord::to("otlp_spans").key(&key).payload(&body))
            .unwrap();
    }
    producer
        .send(
            BaseRecord::<str, [u8]>::to("otlp_spans")
                .key("poison")
                .partition(1)
                .payload(&[0x0a, 0xff, 0xff][..]),
        )
        .unwrap();
    producer.flush(Duration::from_secs(10)).unwrap();
    drop(producer);

    assert_eq!(
        wait_for_requests(&running, "bp-svc", 3600, Duration::from_secs(60)).await,
        3600,
        "every good span applied"
    );
    stall.join().unwrap();
    let start = std::time::Instant::now();
    let m = loop {
        let m = metrics_text(&running).await;
        let lag = |p: i32| {
            sample(
                &m,
                &format!(
                    r#"trike_kafka_consumer_lag_messages{{topic="otlp_spans",partition="{p}"}}"#
                ),
            )
        };
        if (lag(0) == Some(0.0) && lag(1) == Some(0.0)) || start.elapsed() > Duration::from_secs(20)
        {
            break m;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    for p in 0..2 {
        assert_eq!(
            sample(
                &m,
                &format!(
                    r#"trike_kafka_consumer_lag_messages{{topic="otlp_spans",partition="{p}"}}"#
                )
            ),
            Some(0.0),
            "partition {p} lag drained:\n{m}"
        );
    }
    let pauses = sample(&m, "trike_kafka_source_pauses_total").unwrap();
    assert!(pauses >= 1.0, "a full queue paused partitions: {pauses}");
    assert_eq!(
        sample(&m, "trike_kafka_source_paused_partitions"),
        Some(0.0),
        "all resumed"
    );
    assert_eq!(
        sample(&m, "trike_kafka_source_undecodable_total"),
        Some(1.0)
    );
    assert_eq!(
        sample(&m, "trike_kafka_source_dead_lettered_total"),
        Some(1.0)
    );
    assert_eq!(sample(&m, "trike_kafka_source_messages_total"), Some(61.0));
    running.stop().await.unwrap();

    let reader: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", &brokers)
        .set("group.id", "dlq-reader")
        .create()
        .unwrap();
    let mut tpl = TopicPartitionList::new();
    tpl.add_partition_offset("otlp_spans.dlq", 0, Offset::Beginning)
        .unwrap();
    reader.assign(&tpl).unwrap();
    let start = std::time::Instant::now();
    let got = loop {
        if let Some(Ok(m)) = reader.poll(Duration::from_millis(200)) {
            let headers: Vec<(String, String)> = m
                .headers()
                .map(|h| {
                    h.iter()
                        .map(|x| {
                            (
                                x.key.to_string(),
                                String::from_utf8_lossy(x.value.unwrap_or_default()).into_owned(),
                            )
                        })
                        .collect()
                })
                .unwrap_or_default();
            break Some((m.payload().map(<[u8]>::to_vec), headers));
        }
        if start.elapsed() > Duration::from_secs(20) {
            break None;
        }
    };
    let (payload, headers) = got.expect("the poison message is on the dead-letter topic");
    assert_eq!(payload.as_deref(), Some(&[0x0a, 0xff, 0xff][..]));
    let h = |k: &str| headers.iter().find(|(n, _)| n == k).map(|(_, v)| v.clone());
    assert_eq!(h("trike.source.topic").as_deref(), Some("otlp_spans"));
    assert_eq!(h("trike.source.partition").as_deref(), Some("1"));
    assert!(h("trike.source.offset").is_some());
    assert!(
        h("trike.error").is_some_and(|e| !e.is_empty()),
        "{headers:?}"
    );
    drop(reader);
}
