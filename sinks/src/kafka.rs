//! The Kafka control-topic sink (DESIGN §4): control events keyed by service, CloudEvents
//! structured mode (`content-type: application/cloudevents+json`), through an idempotent
//! producer (`acks=all`, `enable.idempotence`) that batches (`linger.ms`) and retries
//! (`delivery.timeout.ms`); what still fails is counted, and the sink reports itself
//! unhealthy until a later delivery succeeds. The topic is created when missing.

use rdkafka::ClientContext;
use rdkafka::Message;
use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::DefaultClientContext;
use rdkafka::config::ClientConfig;
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::message::{Header, OwnedHeaders};
use rdkafka::producer::{BaseRecord, DeliveryResult, Producer, ProducerContext, ThreadedProducer};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering::Relaxed};
use std::time::Duration;

/// Where and how to produce.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct KafkaSinkConfig {
    /// Bootstrap servers.
    pub brokers: String,
    /// Control topic.
    pub topic: String,
    /// Partitions when the topic is created.
    pub partitions: i32,
    /// Replication factor when the topic is created.
    pub replication: i32,
    /// `kafka.client`: TLS, SASL and tuning properties.
    pub client: crate::kafka_client::ClientProps,
}

/// Delivery counters, shared with `/metrics` and `/readyz`.
#[derive(Debug, Default)]
pub struct KafkaSinkStats {
    /// Events acknowledged by the broker.
    pub delivered: AtomicU64,
    /// Events that failed after the producer's retries.
    pub failed: AtomicU64,
    /// True while the most recent delivery result was a failure.
    pub failing: AtomicBool,
}

struct Context {
    stats: Arc<KafkaSinkStats>,
    /// Events whose delivery failed after the producer's own retries (a broker away longer
    /// than `delivery.timeout.ms`): sent again by [`KafkaSink::resend_failed`], never dropped.
    undelivered: Undelivered,
}

/// Events (key, payload) waiting to be sent again.
type Undelivered = Arc<parking_lot::Mutex<Vec<(Vec<u8>, Vec<u8>)>>>;

/// Undelivered events kept for another attempt, at most (control events are rare: beyond this
/// the broker has been away for hours, and the oldest are dropped, counted and logged).
const MAX_UNDELIVERED: usize = 10_000;

impl ClientContext for Context {}

impl ProducerContext for Context {
    type DeliveryOpaque = ();
    fn delivery(&self, result: &DeliveryResult<'_>, _: ()) {
        match result {
            Ok(_) => {
                self.stats.delivered.fetch_add(1, Relaxed);
                self.stats.failing.store(false, Relaxed);
            }
            Err((e, m)) => {
                self.stats.failed.fetch_add(1, Relaxed);
                self.stats.failing.store(true, Relaxed);
                let mut q = self.undelivered.lock();
                if q.len() >= MAX_UNDELIVERED {
                    q.remove(0);
                    eprintln!(
                        "trike: {MAX_UNDELIVERED} control events wait for Kafka: dropping the oldest"
                    );
                }
                q.push((
                    m.key().unwrap_or_default().to_vec(),
                    m.payload().unwrap_or_default().to_vec(),
                ));
                eprintln!(
                    "trike: control event not delivered to Kafka yet ({e}): it will be sent again"
                );
            }
        }
    }
}

/// A producer for the control topic.
pub struct KafkaSink {
    producer: ThreadedProducer<Context>,
    topic: String,
    stats: Arc<KafkaSinkStats>,
    undelivered: Undelivered,
}

impl std::fmt::Debug for KafkaSink {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("KafkaSink")
            .field("topic", &self.topic)
            .finish_non_exhaustive()
    }
}

/// Creates `topic` unless it exists (with `min.insync.replicas` 2 when it has 3 or more
/// replicas). Blocks (on its own thread, so it may be called from async code) until the
/// broker answers or 10 s pass.
pub fn ensure_topic(cfg: &KafkaSinkConfig) -> Result<(), KafkaError> {
    ensure_topic_with(cfg, &[])
}

/// [`ensure_topic`] with more topic settings when it creates the topic (e.g.
/// `cleanup.policy=compact`).
pub fn ensure_topic_with(
    cfg: &KafkaSinkConfig,
    settings: &[(&str, &str)],
) -> Result<(), KafkaError> {
    std::thread::scope(|scope| {
        scope
            .spawn(|| {
                let admin: AdminClient<DefaultClientContext> = cfg
                    .client
                    .apply(
                        ClientConfig::new()
                            .set("bootstrap.servers", &cfg.brokers)
                            // Asking for the topic's metadata must not create it with the
                            // broker's defaults instead of ours.
                            .set("allow.auto.create.topics", "false"),
                    )
                    .create()?;
                // Already there (the usual case after the first start, and always with the
                // embedded broker, which cannot create topics through the admin API): done.
                if let Ok(md) = admin
                    .inner()
                    .fetch_metadata(Some(&cfg.topic), Duration::from_secs(5))
                    && md
                        .topics()
                        .first()
                        .is_some_and(|t| t.error().is_none() && !t.partitions().is_empty())
                {
                    return Ok(());
                }
                let mut topic = NewTopic::new(
                    &cfg.topic,
                    cfg.partitions,
                    TopicReplication::Fixed(cfg.replication),
                );
                if cfg.replication >= 3 {
                    // With acks=all, a write then survives the loss of any one broker, and
                    // the topic stays writable while one is down.
                    topic = topic.set("min.insync.replicas", "2");
                }
                for (k, v) in settings {
                    topic = topic.set(k, v);
                }
                let opts = AdminOptions::new()
                    .operation_timeout(Some(Duration::from_secs(5)))
                    .request_timeout(Some(Duration::from_secs(5)));
                let rt = tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()
                    .map_err(|e| {
                        KafkaError::AdminOpCreation(format!("runtime for topic creation: {e}"))
                    })?;
                let results = rt.block_on(admin.create_topics([&topic], &opts))?;
                for r in results {
                    match r {
                        Ok(_) | Err((_, RDKafkaErrorCode::TopicAlreadyExists)) => {}
                        Err((_, code)) => return Err(KafkaError::AdminOp(code)),
                    }
                }
                Ok(())
            })
            .join()
            .unwrap_or_else(|_| {
                Err(KafkaError::AdminOpCreation(
                    "topic creation thread panicked".into(),
                ))
            })
    })
}

impl KafkaSink {
    /// Connects an idempotent producer for `cfg.topic`.
    pub fn new(cfg: &KafkaSinkConfig, stats: Arc<KafkaSinkStats>) -> Result<Self, KafkaError> {
        let undelivered = Arc::new(parking_lot::Mutex::new(Vec::new()));
        let producer = cfg
            .client
            .apply(
                ClientConfig::new()
                    .set("bootstrap.servers", &cfg.brokers)
                    .set("enable.idempotence", "true")
                    .set("acks", "all")
                    // Decisions are rare and urgent: 1 ms of batching bounds the added latency;
                    // bursts still batch, and sends never wait for each other.
                    .set("linger.ms", "1")
                    .set("delivery.timeout.ms", "30000")
                    .set("compression.type", "lz4"),
            )
            .create_with_context(Context {
                stats: stats.clone(),
                undelivered: undelivered.clone(),
            })?;
        Ok(Self {
            undelivered,
            producer,
            topic: cfg.topic.clone(),
            stats,
        })
    }

    /// Queues one event keyed by `key`; waits (briefly, bounded) when the local queue is full.
    pub fn send(&self, key: &str, payload: &[u8]) -> Result<(), KafkaError> {
        let headers = OwnedHeaders::new().insert(Header {
            key: "content-type",
            value: Some("application/cloudevents+json"),
        });
        let mut record = BaseRecord::to(&self.topic)
            .key(key)
            .payload(payload)
            .headers(headers);
        for _ in 0..100 {
            match self.producer.send(record) {
                Ok(()) => return Ok(()),
                Err((KafkaError::MessageProduction(RDKafkaErrorCode::QueueFull), r)) => {
                    record = r;
                    std::thread::sleep(Duration::from_millis(10));
                }
                Err((e, _)) => {
                    self.stats.failed.fetch_add(1, Relaxed);
                    self.stats.failing.store(true, Relaxed);
                    return Err(e);
                }
            }
        }
        self.stats.failed.fetch_add(1, Relaxed);
        self.stats.failing.store(true, Relaxed);
        Err(KafkaError::MessageProduction(RDKafkaErrorCode::QueueFull))
    }

    /// Sends again the events whose delivery failed (the broker was away longer than the
    /// producer's retries); returns how many. Call it now and then: each event is sent until
    /// it is delivered (actuators run an event id once, so a copy that did land is harmless).
    pub fn resend_failed(&self) -> usize {
        let events = std::mem::take(&mut *self.undelivered.lock());
        let n = events.len();
        for (key, payload) in events {
            let key = String::from_utf8_lossy(&key).into_owned();
            if self.send(&key, &payload).is_err() {
                // Not even queued: keep it for the next round.
                self.undelivered.lock().push((key.into_bytes(), payload));
            }
        }
        n
    }

    /// Events waiting to be sent again.
    pub fn undelivered(&self) -> usize {
        self.undelivered.lock().len()
    }

    /// Waits up to `timeout` for queued events to be delivered.
    pub fn flush(&self, timeout: Duration) -> Result<(), KafkaError> {
        self.producer.flush(timeout)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rdkafka::Message;
    use rdkafka::consumer::{BaseConsumer, Consumer};
    use rdkafka::message::Headers;
    use rdkafka::mocking::MockCluster;

    /// Guarantees: events land on the control topic keyed by service, with the CloudEvents
    /// content-type header, and are counted as delivered.
    #[test]
    fn produces_keyed_cloudevents() {
        let mock = MockCluster::new(1).unwrap();
        mock.create_topic("trike.control", 2, 1).unwrap();
        let cfg = KafkaSinkConfig {
            brokers: mock.bootstrap_servers(),
            topic: "trike.control".into(),
            partitions: 2,
            replication: 1,
            client: Default::default(),
        };
        let stats = Arc::new(KafkaSinkStats::default());
        let sink = KafkaSink::new(&cfg, stats.clone()).unwrap();
        for i in 0..3 {
            sink.send("checkout", format!("{{\"n\":{i}}}").as_bytes())
                .unwrap();
        }
        sink.flush(Duration::from_secs(10)).unwrap();
        assert_eq!(stats.delivered.load(Relaxed), 3);
        assert!(!stats.failing.load(Relaxed));
        let consumer: BaseConsumer = ClientConfig::new()
            .set("bootstrap.servers", mock.bootstrap_servers())
            .set("group.id", "test")
            .set("auto.offset.reset", "earliest")
            .create()
            .unwrap();
        consumer.subscribe(&["trike.control"]).unwrap();
        let mut got = Vec::new();
        let start = std::time::Instant::now();
        while got.len() < 3 && start.elapsed() < Duration::from_secs(20) {
            if let Some(Ok(m)) = consumer.poll(Duration::from_millis(200)) {
                let ct = m.headers().and_then(|h| {
                    h.iter()
                        .find(|x| x.key == "content-type")
                        .and_then(|x| x.value.map(|v| v.to_vec()))
                });
                got.push((
                    m.key().map(|k| k.to_vec()),
                    m.payload().map(|p| p.to_vec()),
                    ct,
                ));
            }
        }
        assert_eq!(got.len(), 3);
        for (k, p, ct) in &got {
            assert_eq!(k.as_deref(), Some(&b"checkout"[..]));
            assert!(p.as_ref().unwrap().starts_with(b"{\"n\":"));
            assert_eq!(ct.as_deref(), Some(&b"application/cloudevents+json"[..]));
        }
        drop(consumer);
    }

    /// Scenario: the broker goes away for longer than the producer's delivery timeout (3 s
    /// here, through `kafka.client`), an event is sent meanwhile, then the broker returns.
    /// Guarantees: the failed delivery is counted and the event kept; sent again, it lands on
    /// the control topic once the broker is back (a control event is never dropped).
    #[test]
    fn an_event_that_failed_delivery_is_sent_again() {
        let mock = MockCluster::new(1).unwrap();
        mock.create_topic("trike.control", 1, 1).unwrap();
        let cfg = KafkaSinkConfig {
            brokers: mock.bootstrap_servers(),
            topic: "trike.control".into(),
            partitions: 1,
            replication: 1,
            client: crate::kafka_client::ClientProps::new([
                ("delivery.timeout.ms", "3000"),
                ("reconnect.backoff.max.ms", "500"),
            ]),
        };
        let stats = Arc::new(KafkaSinkStats::default());
        let sink = KafkaSink::new(&cfg, stats.clone()).unwrap();
        sink.send("warmup", b"{}").unwrap();
        sink.flush(Duration::from_secs(10)).unwrap();
        mock.broker_down(1).unwrap();
        sink.send("checkout", b"{\"id\":\"rollback-1\"}").unwrap();
        let start = std::time::Instant::now();
        while sink.undelivered() == 0 {
            assert!(start.elapsed() < Duration::from_secs(20), "never failed");
            std::thread::sleep(Duration::from_millis(100));
        }
        assert!(stats.failing.load(Relaxed));
        assert_eq!(stats.failed.load(Relaxed), 1);
        mock.broker_up(1).unwrap();
        // As the sink writer does: send again every second until it lands (the producer
        // reconnects to the returned broker within its backoff).
        let start = std::time::Instant::now();
        let mut resent = 0;
        while stats.delivered.load(Relaxed) < 2 {
            assert!(start.elapsed() < Duration::from_secs(40), "never delivered");
            resent += sink.resend_failed();
            let _ = sink.flush(Duration::from_secs(1));
        }
        assert!(resent >= 1);
        assert_eq!(sink.undelivered(), 0);
        assert_eq!(stats.delivered.load(Relaxed), 2);
        let consumer: BaseConsumer = ClientConfig::new()
            .set("bootstrap.servers", mock.bootstrap_servers())
            .set("group.id", "resend")
            .set("auto.offset.reset", "earliest")
            .create()
            .unwrap();
        consumer.subscribe(&["trike.control"]).unwrap();
        let mut keys = Vec::new();
        let start = std::time::Instant::now();
        while keys.len() < 2 && start.elapsed() < Duration::from_secs(20) {
            if let Some(Ok(m)) = consumer.poll(Duration::from_millis(200)) {
                keys.push(m.key().map(|k| String::from_utf8_lossy(k).into_owned()));
            }
        }
        assert_eq!(keys, vec![Some("warmup".into()), Some("checkout".into())]);
    }
}
