//! A gateway's sink: batches from the receivers (and the OTLP-on-Kafka source) are folded into
//! per-second partials per series ([`PartialBuilder`]) and published every flush interval to the
//! partials topic, keyed by service, through an idempotent producer with `acks=all`.
//!
//! A batch's ack runs only once every record of the flush that carried it is acknowledged by
//! the broker: the receivers answer then (`fleet.ack: durable`), and the Kafka source commits
//! then, so nothing acknowledged is lost when a gateway dies. A record the producer gives up on
//! (the broker away longer than `delivery.timeout.ms`) is sent again every flush until it lands;
//! its flush's acks wait. Memory is bounded: the builder holds one interval, and observations
//! waiting for the broker are capped (`max_unacked`), beyond which new data is refused with
//! `RESOURCE_EXHAUSTED` / 429 like a full engine queue.

use crate::clock::SharedClock;
use parking_lot::Mutex;
use rdkafka::ClientContext;
use rdkafka::config::ClientConfig;
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::message::{Header, OwnedHeaders};
use rdkafka::producer::{BaseRecord, DeliveryResult, Producer, ProducerContext, ThreadedProducer};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering::Relaxed};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};
use trike_engine::partials::PartialBuilder;
use trike_engine::{Batch, EngineConfig};
use trike_ingest::decode::partials::encode_partials;
use trike_ingest::pipeline::{Ack, BatchSink, Overloaded};

/// Settings of a gateway's publisher.
#[derive(Clone, Debug)]
pub struct GatewayConfig {
    /// Bootstrap servers.
    pub brokers: String,
    /// The partials topic.
    pub topic: String,
    /// Partitions when the topic is created.
    pub partitions: i32,
    /// Replication factor when the topic is created.
    pub replication: i32,
    /// `kafka.client` properties.
    pub client: trike_sinks::kafka_client::ClientProps,
    /// How often partials are published.
    pub flush_interval: Duration,
    /// This gateway's name (in every record).
    pub instance: String,
    /// Observations accepted but not yet acknowledged by the broker, at most.
    pub max_unacked: usize,
    /// The processors' engine settings (latency thresholds per service, digest compression).
    pub engine: Arc<EngineConfig>,
}

/// Counters of a gateway, for `/metrics`.
#[derive(Debug, Default)]
pub struct GatewayStats {
    /// Flushes that published at least one record.
    pub flushes: AtomicU64,
    /// Records acknowledged by the broker.
    pub records: AtomicU64,
    /// Bytes of those records.
    pub bytes: AtomicU64,
    /// Observations whose partials the broker acknowledged.
    pub observations: AtomicU64,
    /// Record deliveries that failed (each is sent again).
    pub failed: AtomicU64,
    /// Observations accepted and not yet acknowledged by the broker.
    pub unacked: AtomicUsize,
    /// Batches refused because too much waits for the broker.
    pub refused: AtomicU64,
    /// Seconds the last flush's records took to be acknowledged, in microseconds.
    pub last_flush_us: AtomicU64,
    /// The service graph's pairing here (gateways pair calls' halves): its counters and the
    /// halves waiting, as of the last flush.
    pub graph: Mutex<(trike_engine::graph::GraphStats, usize)>,
}

impl GatewayStats {
    /// Prometheus text.
    pub fn render(&self, out: &mut String) {
        use std::fmt::Write;
        let rows: [(&str, &str, &str, u64); 8] = [
            (
                "trike_gateway_flushes_total",
                "counter",
                "Flushes that published partials.",
                self.flushes.load(Relaxed),
            ),
            (
                "trike_gateway_records_total",
                "counter",
                "Partials records acknowledged by the broker.",
                self.records.load(Relaxed),
            ),
            (
                "trike_gateway_record_bytes_total",
                "counter",
                "Bytes of partials records acknowledged by the broker.",
                self.bytes.load(Relaxed),
            ),
            (
                "trike_gateway_observations_total",
                "counter",
                "Observations whose partials the broker acknowledged.",
                self.observations.load(Relaxed),
            ),
            (
                "trike_gateway_delivery_failures_total",
                "counter",
                "Partials records whose delivery failed (sent again).",
                self.failed.load(Relaxed),
            ),
            (
                "trike_gateway_unacked_observations",
                "gauge",
                "Observations accepted and waiting for the broker.",
                self.unacked.load(Relaxed) as u64,
            ),
            (
                "trike_gateway_refused_total",
                "counter",
                "Batches refused because too much waits for the broker.",
                self.refused.load(Relaxed),
            ),
            (
                "trike_gateway_last_flush_seconds",
                "gauge",
                "Time from a flush to the broker's acknowledgement of all its records.",
                0,
            ),
        ];
        for (name, kind, help, v) in rows {
            let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} {kind}");
            if name == "trike_gateway_last_flush_seconds" {
                let _ = writeln!(
                    out,
                    "{name} {}",
                    self.last_flush_us.load(Relaxed) as f64 / 1e6
                );
            } else {
                let _ = writeln!(out, "{name} {v}");
            }
        }
    }
}

/// One flush in flight: its acks run when its last record is acknowledged.
struct Flight {
    remaining: AtomicUsize,
    observations: usize,
    acks: Mutex<Vec<Ack>>,
    started: Instant,
    stats: Arc<GatewayStats>,
}

impl Flight {
    fn record_done(&self, bytes: usize) {
        self.stats.records.fetch_add(1, Relaxed);
        self.stats.bytes.fetch_add(bytes as u64, Relaxed);
        if self.remaining.fetch_sub(1, Relaxed) == 1 {
            self.complete();
        }
    }

    fn complete(&self) {
        for ack in std::mem::take(&mut *self.acks.lock()) {
            ack();
        }
        self.stats.unacked.fetch_sub(self.observations, Relaxed);
        self.stats
            .observations
            .fetch_add(self.observations as u64, Relaxed);
        self.stats
            .last_flush_us
            .store(self.started.elapsed().as_micros() as u64, Relaxed);
    }
}

/// A record to send again: key, payload, and its flight.
type Retry = (Vec<u8>, Vec<u8>, Arc<Flight>);

struct Context {
    retries: Arc<Mutex<Vec<Retry>>>,
    stats: Arc<GatewayStats>,
}

impl ClientContext for Context {}

impl ProducerContext for Context {
    type DeliveryOpaque = Box<Arc<Flight>>;
    fn delivery(&self, result: &DeliveryResult<'_>, flight: Self::DeliveryOpaque) {
        use rdkafka::Message;
        match result {
            Ok(m) => flight.record_done(m.payload_len()),
            Err((e, m)) => {
                self.stats.failed.fetch_add(1, Relaxed);
                tracing::warn!(error = %e, "partials record not delivered yet: it is sent again");
                self.retries.lock().push((
                    m.key().unwrap_or_default().to_vec(),
                    m.payload().unwrap_or_default().to_vec(),
                    *flight,
                ));
            }
        }
    }
}

/// What arrived since the last flush.
struct Open {
    builder: PartialBuilder,
    acks: Vec<Ack>,
    observations: usize,
}

/// The gateway's [`BatchSink`].
pub struct PartialsSink {
    open: Mutex<Open>,
    clock: SharedClock,
    max_unacked: usize,
    flush_interval: Duration,
    stats: Arc<GatewayStats>,
}

impl std::fmt::Debug for PartialsSink {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PartialsSink").finish_non_exhaustive()
    }
}

impl BatchSink for PartialsSink {
    fn submit(&self, batch: Batch, ack: Option<Ack>) -> Result<(), Overloaded> {
        let n = batch.len();
        let before = self.stats.unacked.fetch_add(n, Relaxed);
        if before > 0 && before + n > self.max_unacked {
            self.stats.unacked.fetch_sub(n, Relaxed);
            self.stats.refused.fetch_add(1, Relaxed);
            return Err(Overloaded { batch, ack });
        }
        let now = self.clock.now();
        let mut open = self.open.lock();
        open.builder.add(&batch, now);
        open.observations += n;
        if let Some(a) = ack {
            open.acks.push(a);
        }
        Ok(())
    }

    fn retry_after(&self) -> Duration {
        Duration::from_secs(1).max(self.flush_interval * 4)
    }
}

/// A running gateway publisher: the sink and the thread that flushes it.
pub struct Gateway {
    sink: Arc<PartialsSink>,
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

impl std::fmt::Debug for Gateway {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Gateway").finish_non_exhaustive()
    }
}

impl Gateway {
    /// Creates the partials topic when missing, connects the producer and starts flushing.
    pub fn start(cfg: GatewayConfig, clock: SharedClock) -> Result<Self, KafkaError> {
        trike_sinks::kafka::ensure_topic(&trike_sinks::kafka::KafkaSinkConfig {
            brokers: cfg.brokers.clone(),
            topic: cfg.topic.clone(),
            partitions: cfg.partitions,
            replication: cfg.replication,
            client: cfg.client.clone(),
        })?;
        let stats = Arc::new(GatewayStats::default());
        let retries = Arc::new(Mutex::new(Vec::new()));
        let producer: ThreadedProducer<Context> = cfg
            .client
            .apply(
                ClientConfig::new()
                    .set("bootstrap.servers", &cfg.brokers)
                    .set("enable.idempotence", "true")
                    .set("acks", "all")
                    // The Java client's partitioner, so any client maps a service to the same
                    // partition (and so to the same processor).
                    .set("partitioner", "murmur2_random")
                    .set("linger.ms", "5")
                    .set("compression.type", "lz4")
                    .set("delivery.timeout.ms", "30000"),
            )
            .create_with_context(Context {
                retries: retries.clone(),
                stats: stats.clone(),
            })?;
        let sink = Arc::new(PartialsSink {
            open: Mutex::new(Open {
                builder: PartialBuilder::new(cfg.engine.clone()),
                acks: Vec::new(),
                observations: 0,
            }),
            clock,
            max_unacked: cfg.max_unacked,
            flush_interval: cfg.flush_interval,
            stats,
        });
        let stop = Arc::new(AtomicBool::new(false));
        let thread = {
            let (sink, stop) = (sink.clone(), stop.clone());
            std::thread::Builder::new()
                .name("trike-gateway".into())
                .spawn(move || {
                    let flusher = Flusher {
                        producer,
                        retries,
                        topic: cfg.topic,
                        instance: cfg.instance,
                    };
                    flusher.run(&sink, &stop, cfg.flush_interval);
                })
                .map_err(|e| KafkaError::ClientCreation(format!("gateway thread: {e}")))?
        };
        tracing::info!(
            flush_interval_ms = cfg.flush_interval.as_millis() as u64,
            "gateway: publishing partials"
        );
        Ok(Self {
            sink,
            stop,
            thread: Some(thread),
        })
    }

    /// The sink the receivers feed.
    pub fn sink(&self) -> Arc<PartialsSink> {
        self.sink.clone()
    }

    /// The counters.
    pub fn stats(&self) -> Arc<GatewayStats> {
        self.sink.stats.clone()
    }

    /// Publishes what is open and waits (up to 10 s) for the broker to acknowledge it.
    pub fn stop(mut self) {
        self.stop.store(true, Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

impl Drop for Gateway {
    fn drop(&mut self) {
        self.stop.store(true, Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

struct Flusher {
    producer: ThreadedProducer<Context>,
    retries: Arc<Mutex<Vec<Retry>>>,
    topic: String,
    instance: String,
}

impl Flusher {
    fn run(&self, sink: &PartialsSink, stop: &AtomicBool, every: Duration) {
        let mut next = Instant::now() + every;
        loop {
            let stopping = stop.load(Relaxed);
            if !stopping {
                let now = Instant::now();
                if now < next {
                    std::thread::sleep((next - now).min(Duration::from_millis(50)));
                    continue;
                }
                next += every;
                if next < now {
                    next = now + every;
                }
            }
            self.resend();
            self.flush(sink);
            if stopping {
                if let Err(e) = self.producer.flush(Duration::from_secs(10)) {
                    tracing::warn!(error = %e, "gateway stopping: partials not all acknowledged");
                }
                return;
            }
        }
    }

    fn flush(&self, sink: &PartialsSink) {
        let (parts, acks, observations) = {
            let mut open = sink.open.lock();
            // Call halves that waited their time count now, even with no new data.
            open.builder.advance(sink.clock.now());
            let parts = open.builder.take();
            *sink.stats.graph.lock() = (open.builder.graph_stats(), open.builder.calls_waiting());
            (
                parts,
                std::mem::take(&mut open.acks),
                std::mem::take(&mut open.observations),
            )
        };
        if parts.is_empty() && acks.is_empty() && observations == 0 {
            return;
        }
        let records: Vec<(std::sync::Arc<str>, Vec<u8>)> = parts
            .iter()
            .flat_map(|sp| {
                encode_partials(&self.instance, &sp.batch)
                    .into_iter()
                    .map(|r| (sp.service.clone(), r))
            })
            .collect();
        let flight = Arc::new(Flight {
            remaining: AtomicUsize::new(records.len()),
            observations,
            acks: Mutex::new(acks),
            started: Instant::now(),
            stats: sink.stats.clone(),
        });
        if records.is_empty() {
            flight.complete();
            return;
        }
        sink.stats.flushes.fetch_add(1, Relaxed);
        for (service, payload) in records {
            self.send(service.as_bytes(), &payload, flight.clone());
        }
    }

    fn resend(&self) {
        let retries = std::mem::take(&mut *self.retries.lock());
        for (key, payload, flight) in retries {
            self.send(&key, &payload, flight);
        }
    }

    /// Queues one record; waits while the producer's queue is full. A record the producer
    /// refuses outright is kept for the next flush's resend.
    fn send(&self, key: &[u8], payload: &[u8], flight: Arc<Flight>) {
        let headers = OwnedHeaders::new().insert(Header {
            key: "content-type",
            value: Some("application/vnd.trike.partials+cbor"),
        });
        let mut record = BaseRecord::with_opaque_to(&self.topic, Box::new(flight))
            .key(key)
            .payload(payload)
            .headers(headers);
        loop {
            match self.producer.send(record) {
                Ok(()) => return,
                Err((KafkaError::MessageProduction(RDKafkaErrorCode::QueueFull), r)) => {
                    record = r;
                    std::thread::sleep(Duration::from_millis(5));
                }
                Err((e, r)) => {
                    tracing::warn!(error = %e, "partials record not queued: it is sent again");
                    self.retries
                        .lock()
                        .push((key.to_vec(), payload.to_vec(), *r.delivery_opaque));
                    return;
                }
            }
        }
    }
}
