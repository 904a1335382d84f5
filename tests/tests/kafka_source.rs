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
            .request(10, trike::worker::now_nanos(), 1_000_000, &mut rng)
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
