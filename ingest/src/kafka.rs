//! The Kafka source: OTLP records as the OTel Collector's Kafka exporter writes them (one
//! `Export*ServiceRequest` per message, `otlp_proto` or `otlp_json`), consumed in group
//! `trike`. Offsets are committed only for messages whose observations the engine has applied
//! (never before: a crash loses nothing acknowledged; replays after a crash can repeat at most
//! the uncommitted tail). An undecodable message is counted, logged with topic, partition and
//! offset, and skipped without stalling anything. A full engine queue holds the consumer back
//! (the message is retried) instead of buffering without bound.

use crate::metrics::{SignalKind, Transport};
use crate::pipeline::{Encoding, ExportError, Pipeline};
use parking_lot::Mutex;
use rdkafka::Message;
use rdkafka::config::ClientConfig;
use rdkafka::consumer::{BaseConsumer, CommitMode, Consumer};
use rdkafka::error::KafkaError;
use rdkafka::{Offset, TopicPartitionList};
use std::collections::{BTreeSet, HashMap};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering::Relaxed};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

/// Settings of the Kafka source.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct KafkaSourceConfig {
    /// Bootstrap servers.
    pub brokers: String,
    /// Consumer group (default `trike`).
    pub group_id: String,
    /// Topics; the signal is read from the name (`…spans`/`…traces`, `…metrics`, `…logs`).
    pub topics: Vec<String>,
    /// Payload encoding.
    pub encoding: Encoding,
}

/// Counters of the source.
#[derive(Debug, Default)]
pub struct KafkaSourceStats {
    /// Messages applied (or skipped as undecodable) and committable.
    pub messages: AtomicU64,
    /// Undecodable messages skipped.
    pub undecodable: AtomicU64,
    /// Times a message waited for room in the engine queue.
    pub backpressure: AtomicU64,
}

/// Which signal a topic carries.
pub fn signal_of(topic: &str) -> Option<SignalKind> {
    if topic.ends_with("spans") || topic.ends_with("traces") {
        Some(SignalKind::Traces)
    } else if topic.ends_with("metrics") {
        Some(SignalKind::Metrics)
    } else if topic.ends_with("logs") {
        Some(SignalKind::Logs)
    } else {
        None
    }
}

/// Offsets read but not yet applied, per partition.
#[derive(Debug, Default)]
struct Tracker {
    pending: BTreeSet<i64>,
    next: i64,
}

type Trackers = Arc<Mutex<HashMap<(String, i32), Tracker>>>;

/// The running source.
#[derive(Debug)]
pub struct KafkaSource {
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
    /// Counters.
    pub stats: Arc<KafkaSourceStats>,
}

impl KafkaSource {
    /// Subscribes and starts consuming into `pipeline`.
    pub fn start(cfg: KafkaSourceConfig, pipeline: Arc<Pipeline>) -> Result<Self, KafkaError> {
        for t in &cfg.topics {
            if signal_of(t).is_none() {
                return Err(KafkaError::Subscription(format!(
                    "topic {t:?}: its name must end in spans, traces, metrics or logs"
                )));
            }
        }
        let consumer: BaseConsumer = ClientConfig::new()
            .set("bootstrap.servers", &cfg.brokers)
            .set("group.id", &cfg.group_id)
            .set("enable.auto.commit", "false")
            .set("auto.offset.reset", "earliest")
            .set("session.timeout.ms", "10000")
            .create()?;
        let topics: Vec<&str> = cfg.topics.iter().map(String::as_str).collect();
        consumer.subscribe(&topics)?;
        let stop = Arc::new(AtomicBool::new(false));
        let stats = Arc::new(KafkaSourceStats::default());
        let thread = {
            let (stop, stats) = (stop.clone(), stats.clone());
            std::thread::Builder::new()
                .name("trike-kafka-source".into())
                .spawn(move || run(consumer, cfg.encoding, pipeline, &stop, &stats))
                .map_err(|e| KafkaError::Subscription(format!("source thread: {e}")))?
        };
        Ok(Self {
            stop,
            thread: Some(thread),
            stats,
        })
    }

    /// Stops consuming (committing what was applied) and joins the thread.
    pub fn stop(mut self) {
        self.stop.store(true, Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

impl Drop for KafkaSource {
    fn drop(&mut self) {
        self.stop.store(true, Relaxed);
    }
}

fn commit(consumer: &BaseConsumer, trackers: &Trackers, mode: CommitMode) {
    let mut tpl = TopicPartitionList::new();
    for ((topic, partition), t) in trackers.lock().iter() {
        // Everything below the oldest unapplied offset is applied.
        let upto = t.pending.first().copied().unwrap_or(t.next);
        if upto > 0 {
            let _ = tpl.add_partition_offset(topic, *partition, Offset::Offset(upto));
        }
    }
    if tpl.count() > 0
        && let Err(e) = consumer.commit(&tpl, mode)
    {
        tracing::warn!(error = %e, "committing Kafka offsets");
    }
}

fn run(
    consumer: BaseConsumer,
    encoding: Encoding,
    pipeline: Arc<Pipeline>,
    stop: &AtomicBool,
    stats: &Arc<KafkaSourceStats>,
) {
    let trackers: Trackers = Arc::default();
    let mut last_commit = Instant::now();
    while !stop.load(Relaxed) {
        if last_commit.elapsed() > Duration::from_millis(500) {
            commit(&consumer, &trackers, CommitMode::Async);
            last_commit = Instant::now();
        }
        let Some(result) = consumer.poll(Duration::from_millis(100)) else {
            continue;
        };
        let m = match result {
            Ok(m) => m,
            Err(e) => {
                tracing::warn!(error = %e, "Kafka consumer");
                continue;
            }
        };
        let (topic, partition, offset) = (m.topic().to_string(), m.partition(), m.offset());
        let key = (topic.clone(), partition);
        {
            let mut t = trackers.lock();
            let tr = t.entry(key.clone()).or_default();
            tr.pending.insert(offset);
            tr.next = tr.next.max(offset + 1);
        }
        let done = {
            let (trackers, stats, key) = (trackers.clone(), stats.clone(), key.clone());
            move || {
                if let Some(t) = trackers.lock().get_mut(&key) {
                    t.pending.remove(&offset);
                }
                stats.messages.fetch_add(1, Relaxed);
            }
        };
        let signal = signal_of(&topic).unwrap_or(SignalKind::Traces);
        let payload = m.payload().unwrap_or(&[]);
        let mut ack: Option<crate::pipeline::Ack> = Some(Box::new(done));
        loop {
            match pipeline.export_acked(Transport::Kafka, signal, encoding, payload, ack.take()) {
                Ok(_) => break,
                Err(ExportError::Malformed(why)) => {
                    stats.undecodable.fetch_add(1, Relaxed);
                    tracing::warn!(%topic, partition, offset, %why, "undecodable Kafka message skipped");
                    // Skipped: committable like an applied one.
                    if let Some(t) = trackers.lock().get_mut(&key) {
                        t.pending.remove(&offset);
                    }
                    break;
                }
                Err(ExportError::Overloaded) => {
                    // Back-pressure: wait for room rather than buffer without bound.
                    stats.backpressure.fetch_add(1, Relaxed);
                    if stop.load(Relaxed) {
                        break;
                    }
                    std::thread::sleep(Duration::from_millis(20));
                    let (trackers, stats, key) = (trackers.clone(), stats.clone(), key.clone());
                    ack = Some(Box::new(move || {
                        if let Some(t) = trackers.lock().get_mut(&key) {
                            t.pending.remove(&offset);
                        }
                        stats.messages.fetch_add(1, Relaxed);
                    }));
                }
            }
        }
    }
    // Give the engine a moment to apply what is queued, then commit what it applied.
    std::thread::sleep(Duration::from_millis(200));
    commit(&consumer, &trackers, CommitMode::Sync);
}
