//! An in-process Kafka-protocol broker (librdkafka's mock cluster) for `trike demo` and for
//! `kafka.brokers: embedded`: the whole loop — Kafka source, control topic, actuators — on a
//! laptop with no Kafka installed. It listens on a loopback port and speaks the Kafka protocol,
//! so other processes can use it too (`trike actuate --kafka-brokers <the printed address>`).
//!
//! Not for production: it keeps only the newest few MiB of each partition, and nothing
//! survives the process. It cannot create topics through the admin API, so every topic Trike
//! and its actuators use is created here when the broker starts.

use crate::config::Config;
use anyhow::Context;
use rdkafka::mocking::MockCluster;
use std::sync::mpsc;
use std::thread::JoinHandle;

/// The `kafka.brokers` value that asks for an embedded broker.
pub const EMBEDDED: &str = "embedded";

/// A running embedded broker; stops when dropped (drop Kafka clients first).
#[derive(Debug)]
pub struct EmbeddedBroker {
    servers: String,
    stop: Option<mpsc::Sender<()>>,
    thread: Option<JoinHandle<()>>,
}

impl EmbeddedBroker {
    /// Starts a one-broker cluster on a loopback port with `topics` (name, partitions).
    pub fn start(topics: &[(String, i32)]) -> anyhow::Result<Self> {
        let (ready_tx, ready_rx) = mpsc::channel::<Result<String, String>>();
        let (stop_tx, stop_rx) = mpsc::channel::<()>();
        let topics = topics.to_vec();
        // The mock cluster is a raw handle (not `Send`): one thread owns it for its lifetime.
        let thread = std::thread::Builder::new()
            .name("trike-embedded-kafka".into())
            .spawn(move || {
                let mock = match MockCluster::new(1) {
                    Ok(m) => m,
                    Err(e) => {
                        let _ = ready_tx.send(Err(format!("starting the mock cluster: {e}")));
                        return;
                    }
                };
                for (topic, partitions) in &topics {
                    if let Err(e) = mock.create_topic(topic, *partitions, 1) {
                        let _ = ready_tx.send(Err(format!("creating topic {topic}: {e}")));
                        return;
                    }
                }
                let _ = ready_tx.send(Ok(mock.bootstrap_servers()));
                // Until stopped, or until the handle is dropped (the sender goes away).
                let _ = stop_rx.recv();
                drop(mock);
            })
            .context("starting the embedded broker's thread")?;
        let servers = ready_rx
            .recv()
            .context("the embedded broker's thread ended before it was ready")?
            .map_err(anyhow::Error::msg)
            .context("embedded Kafka broker")?;
        Ok(Self {
            servers,
            stop: Some(stop_tx),
            thread: Some(thread),
        })
    }

    /// Its `bootstrap.servers` (a loopback address).
    pub fn bootstrap_servers(&self) -> &str {
        &self.servers
    }

    /// If `cfg` asks for an embedded broker (`kafka.brokers: embedded`), starts one with every
    /// topic the config names and points the config at it.
    pub fn for_config(cfg: &mut Config) -> anyhow::Result<Option<Self>> {
        let wanted = cfg.kafka_brokers.as_deref() == Some(EMBEDDED)
            || cfg
                .kafka_ingest
                .as_ref()
                .is_some_and(|k| k.brokers == EMBEDDED);
        if !wanted {
            return Ok(None);
        }
        let broker = Self::start(&topics_of(cfg))?;
        let servers = broker.bootstrap_servers().to_string();
        if cfg.kafka_brokers.as_deref() == Some(EMBEDDED) {
            cfg.kafka_brokers = Some(servers.clone());
        }
        if let Some(k) = cfg.kafka_ingest.as_mut().filter(|k| k.brokers == EMBEDDED) {
            k.brokers = servers;
            k.client = k.client.without_security();
        }
        // The embedded broker speaks plain text: TLS and SASL settings are for real brokers.
        cfg.kafka_client = cfg.kafka_client.without_security();
        tracing::info!(
            bootstrap_servers = broker.bootstrap_servers(),
            "embedded Kafka-protocol broker started (in memory; for demos and tests)"
        );
        Ok(Some(broker))
    }
}

/// Every topic `cfg` uses, with the partitions to create it with: the control topic, the
/// actuators' outcome and claim topics, the deploys topic, the ingest topics and the
/// dead-letter topic.
pub fn topics_of(cfg: &Config) -> Vec<(String, i32)> {
    let mut topics = vec![
        (cfg.control_topic.clone(), cfg.control_partitions),
        (cfg.actuator.actions_topic.clone(), 3),
        (
            cfg.actuator.claims_topic.clone(),
            trike_actuate::claims::PARTITIONS,
        ),
        (cfg.deploys_topic.clone(), 1),
    ];
    match &cfg.kafka_ingest {
        Some(k) => {
            topics.extend(k.topics.iter().map(|t| (t.clone(), 3)));
            topics.extend(k.dead_letter_topic.iter().map(|t| (t.clone(), 1)));
        }
        None => {
            topics.extend(["otlp_spans", "otlp_metrics", "otlp_logs"].map(|t| (t.to_string(), 3)))
        }
    }
    topics.sort();
    topics.dedup_by(|a, b| a.0 == b.0);
    topics
}

impl Drop for EmbeddedBroker {
    fn drop(&mut self) {
        drop(self.stop.take());
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rdkafka::ClientConfig;
    use rdkafka::consumer::{BaseConsumer, Consumer};
    use rdkafka::producer::{BaseProducer, BaseRecord, Producer};
    use std::time::Duration;

    /// Scenario: an embedded broker with two topics. Guarantees: it serves metadata for both
    /// with the partitions asked for, and a produced record can be read back.
    #[test]
    fn serves_its_topics_and_round_trips_a_record() {
        let broker = EmbeddedBroker::start(&[("a".to_string(), 2), ("b".to_string(), 3)]).unwrap();
        let servers = broker.bootstrap_servers().to_string();
        assert!(servers.starts_with("127.0.0.1:"), "{servers}");
        let producer: BaseProducer = ClientConfig::new()
            .set("bootstrap.servers", &servers)
            .create()
            .unwrap();
        producer
            .send(BaseRecord::to("b").key("k").payload("hello").partition(2))
            .unwrap();
        producer.flush(Duration::from_secs(5)).unwrap();
        let consumer: BaseConsumer = ClientConfig::new()
            .set("bootstrap.servers", &servers)
            .set("group.id", "t")
            .create()
            .unwrap();
        let md = consumer
            .fetch_metadata(None, Duration::from_secs(5))
            .unwrap();
        let parts = |t: &str| {
            md.topics()
                .iter()
                .find(|x| x.name() == t)
                .map(|x| x.partitions().len())
        };
        assert_eq!((parts("a"), parts("b")), (Some(2), Some(3)));
        let mut tpl = rdkafka::TopicPartitionList::new();
        tpl.add_partition_offset("b", 2, rdkafka::Offset::Beginning)
            .unwrap();
        consumer.assign(&tpl).unwrap();
        let start = std::time::Instant::now();
        let got = loop {
            if let Some(Ok(m)) = consumer.poll(Duration::from_millis(100)) {
                use rdkafka::Message;
                break m.payload().map(<[u8]>::to_vec);
            }
            assert!(start.elapsed() < Duration::from_secs(10), "no record");
        };
        assert_eq!(got.as_deref(), Some(&b"hello"[..]));
        drop(consumer);
        drop(producer);
        drop(broker);
    }

    /// Scenario: the default config and one with `kafka.brokers: embedded` and ingest topics.
    /// Guarantees: nothing starts without the marker; with it, the config points at the
    /// started broker and every topic it names exists.
    #[test]
    fn embedded_marker_starts_a_broker_with_every_topic() {
        let none = crate::config::RawConfig::from_yaml("{}").unwrap();
        let mut cfg = Config::validate(none, &Default::default()).unwrap();
        assert!(EmbeddedBroker::for_config(&mut cfg).unwrap().is_none());

        let raw = crate::config::RawConfig::from_yaml(
            "kafka: { brokers: embedded, ingest: { topics: [otlp_spans], dead_letter_topic: dlq } }",
        )
        .unwrap();
        let mut cfg = Config::validate(raw, &Default::default()).unwrap();
        let topics: Vec<String> = topics_of(&cfg).into_iter().map(|t| t.0).collect();
        assert_eq!(
            topics,
            [
                "dlq",
                "otlp_spans",
                "trike.actions",
                "trike.actuator.claims",
                "trike.control",
                "trike.deploys"
            ]
        );
        let broker = EmbeddedBroker::for_config(&mut cfg).unwrap().unwrap();
        assert_eq!(
            cfg.kafka_brokers.as_deref(),
            Some(broker.bootstrap_servers())
        );
        assert_eq!(
            cfg.kafka_ingest.as_ref().unwrap().brokers,
            broker.bootstrap_servers()
        );
    }
}
