//! The Kafka source: OTLP records as the OTel Collector's Kafka exporter writes them (one
//! `Export*ServiceRequest` per message, `otlp_proto` or `otlp_json`), consumed in group
//! `trike`.
//!
//! - Offsets are committed only for messages whose observations the engine has applied, and,
//!   when the processor checkpoints its state, only up to the newest durable checkpoint
//!   ([`progress`]): a crash loses nothing, and a restart from a checkpoint skips what the
//!   checkpoint already holds instead of counting it twice.
//! - An undecodable message is counted, logged with topic, partition and offset, copied to the
//!   dead-letter topic when one is configured ([`dead_letter`]), and skipped without stalling
//!   its partition or the others.
//! - A full engine queue pauses the partition whose message did not fit (pause/resume), so
//!   memory stays bounded by the client's prefetch limit, plus what one batch read before
//!   the pause (at most 512 messages, themselves within that limit), copied and parked.
//! - Consumer lag per partition (high watermark − applied) comes from the client's statistics.
//! - Assigned partitions' messages are read in batches from a queue of the source's own
//!   ([`queue`]); rebalances and statistics stay on the consumer queue.

mod dead_letter;
mod offsets;
pub mod progress;
pub mod queue;
mod source;

use crate::metrics::SignalKind;
use crate::pipeline::{Encoding, Pipeline};
use progress::PartitionKey;
use progress::Progress;
use rdkafka::ClientContext;
use rdkafka::TopicPartitionList;
use rdkafka::config::ClientConfig;
use rdkafka::consumer::{BaseConsumer, Consumer, ConsumerContext, Rebalance};
use rdkafka::error::KafkaError;
use rdkafka::statistics::Statistics;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering::Relaxed};
use std::thread::JoinHandle;

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
    /// Where undecodable messages are copied (none: they are only counted and logged).
    pub dead_letter_topic: Option<String>,
    /// Static group membership (`group.instance.id`, KIP-345): a restarted process with the
    /// same id takes its partitions back at once instead of waiting for its old session to
    /// expire. Give each processor a stable, unique id (e.g. the StatefulSet pod name).
    pub group_instance_id: Option<String>,
    /// `kafka.client`: TLS, SASL and tuning properties for the consumer and the dead-letter
    /// producer.
    pub client: trike_sinks::kafka_client::ClientProps,
}

/// Counters of the source.
#[derive(Debug, Default)]
pub struct KafkaSourceStats {
    /// Messages applied (or skipped as undecodable) and committable.
    pub messages: AtomicU64,
    /// Batches handed to the pipeline (a run of one partition's messages goes as one).
    pub submissions: AtomicU64,
    /// Undecodable messages skipped.
    pub undecodable: AtomicU64,
    /// Undecodable messages copied to the dead-letter topic.
    pub dead_lettered: AtomicU64,
    /// Undecodable messages the dead-letter topic did not take (logged, then skipped).
    pub dead_letter_failed: AtomicU64,
    /// Times a partition was paused because the engine queue was full.
    pub pauses: AtomicU64,
    /// Partitions paused now.
    pub paused: AtomicU64,
    /// Messages read again after a restart whose data the restored checkpoint already held.
    pub already_applied: AtomicU64,
    /// Partition revocations handled (each rebalance that took partitions away).
    pub rebalances: AtomicU64,
    /// Errors the consumer reported instead of a message, by librdkafka error code (a missing
    /// topic, an unreachable broker, a batch it cannot decompress).
    pub errors: parking_lot::Mutex<std::collections::BTreeMap<String, u64>>,
}

impl KafkaSourceStats {
    /// Counts one consumer error; true when it should be logged (the 1st, 2nd, 4th, 8th… of
    /// its code: a broker error repeats every poll, the log must not).
    pub fn consumer_error(&self, e: &rdkafka::error::KafkaError) -> bool {
        let code = match e {
            rdkafka::error::KafkaError::MessageConsumption(c) => format!("{c:?}"),
            rdkafka::error::KafkaError::MessageConsumptionFatal(c) => format!("{c:?}"),
            other => other
                .rdkafka_error_code()
                .map_or_else(|| "Other".to_string(), |c| format!("{c:?}")),
        };
        let mut m = self.errors.lock();
        let n = m.entry(code).or_insert(0);
        *n += 1;
        n.is_power_of_two()
    }
}

impl KafkaSourceStats {
    /// Renders the source's counters and, from `progress`, the lag per partition (topic and
    /// partition labels: a bounded set).
    pub fn render(&self, progress: &progress::Progress, out: &mut String) {
        use std::fmt::Write;
        use std::sync::atomic::Ordering::Relaxed;
        use trike_engine::expo::{counter, gauge, header};
        for (name, help, v) in [
            (
                "trike_kafka_source_messages_total",
                "Kafka messages applied to the engine or skipped as undecodable.",
                &self.messages,
            ),
            (
                "trike_kafka_source_submissions_total",
                "Batches the Kafka source handed to the pipeline (consecutive messages of a partition go as one).",
                &self.submissions,
            ),
            (
                "trike_kafka_source_undecodable_total",
                "Undecodable Kafka messages skipped.",
                &self.undecodable,
            ),
            (
                "trike_kafka_source_dead_lettered_total",
                "Undecodable Kafka messages copied to the dead-letter topic.",
                &self.dead_lettered,
            ),
            (
                "trike_kafka_source_dead_letter_failures_total",
                "Undecodable Kafka messages the dead-letter topic did not take.",
                &self.dead_letter_failed,
            ),
            (
                "trike_kafka_source_pauses_total",
                "Times a partition was paused because the engine queue was full.",
                &self.pauses,
            ),
            (
                "trike_kafka_source_already_applied_total",
                "Messages read again after a restart whose data the checkpoint already held.",
                &self.already_applied,
            ),
            (
                "trike_kafka_source_rebalances_total",
                "Group rebalances that took partitions from this consumer.",
                &self.rebalances,
            ),
        ] {
            counter(out, name, help, v.load(Relaxed));
        }
        let name = "trike_kafka_source_errors_total";
        header(
            out,
            name,
            "Errors the Kafka consumer reported instead of a message, by librdkafka error code.",
            "counter",
        );
        for (code, n) in self.errors.lock().iter() {
            let _ = writeln!(out, "{name}{{code=\"{code}\"}} {n}");
        }
        gauge(
            out,
            "trike_kafka_source_paused_partitions",
            "Partitions paused now (back-pressure).",
            self.paused.load(Relaxed) as f64,
        );
        let name = "trike_kafka_consumer_lag_messages";
        header(
            out,
            name,
            "Messages on the broker not yet applied, per partition.",
            "gauge",
        );
        for (topic, partition, lag) in progress.lag() {
            let _ = writeln!(
                out,
                "{name}{{topic=\"{topic}\",partition=\"{partition}\"}} {lag}"
            );
        }
    }
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

/// Owns state per partition and so must hear of partitions moving (a fleet processor: each
/// partition of `trike.partials` carries its services' state in `trike.changelog`). The calls
/// come on the source's thread inside the group's rebalance, before any message of an
/// assigned partition is read and after every message of a revoked one that was handed to
/// the engine has been applied.
pub trait PartitionOwner: Send + Sync {
    /// The group assigned `partitions` (the whole new assignment: partitions held before and
    /// not listed are gone). Take over their state; return, per partition whose state holds
    /// messages, the offset below which it holds all of them (those are skipped, not applied
    /// twice).
    fn assigned(&self, partitions: &[PartitionKey]) -> Vec<(PartitionKey, i64)>;
    /// The group takes `partitions` away: make their state durable (reporting the offsets it
    /// covers with [`Progress::durable`], so the commit that follows covers them).
    fn revoking(&self, partitions: &[PartitionKey]);
}

/// Messages read and not yet handed to the pipeline (shared by the loop and the rebalance
/// callbacks, which run inside the loop's `poll`).
#[derive(Default)]
pub(crate) struct Waiting {
    /// Waiting for room in the engine queue, per paused partition.
    pub(crate) parked:
        std::collections::BTreeMap<PartitionKey, std::collections::VecDeque<source::Parked>>,
    /// The run of one partition's messages being gathered into one batch.
    pub(crate) run: Option<source::Run>,
    /// Operation names scrubbed in earlier runs (handed from run to run).
    pub(crate) names: crate::decode::Names,
}

/// [`Waiting`], shared.
pub(crate) type ParkedMap = Arc<parking_lot::Mutex<Waiting>>;

/// How long a revocation waits for the engine to apply what it was handed.
const REVOKE_DRAIN: std::time::Duration = std::time::Duration::from_secs(30);

/// The consumer's context: statistics (every second) feed the lag gauges; rebalances tell the
/// partition owner.
struct SourceContext {
    progress: Arc<Progress>,
    owner: Option<Arc<dyn PartitionOwner>>,
    parked: ParkedMap,
    stats: Arc<KafkaSourceStats>,
    /// Where assigned partitions' messages are forwarded, to be read in batches.
    queue: Arc<queue::MessageQueue>,
}

fn keys(tpl: &TopicPartitionList) -> Vec<PartitionKey> {
    tpl.elements()
        .iter()
        .map(|e| (e.topic().to_string(), e.partition()))
        .collect()
}

impl SourceContext {
    /// Before partitions go: drop what waits for room (the next owner reads it again), wait
    /// until what the engine was handed is applied, let the owner make the state durable,
    /// commit, forget (or, without an owner, set aside: the state stays in this process).
    fn revoke(&self, consumer: &BaseConsumer<Self>, parts: &[PartitionKey]) {
        {
            let mut waiting = self.parked.lock();
            if let Some(run) = waiting.run.take_if(|r| parts.contains(r.key())) {
                let (t, p) = run.key();
                self.progress.unread_from(t, *p, run.first_offset());
            }
            for key in parts {
                if let Some(q) = waiting.parked.remove(key)
                    && let Some(first) = q.front()
                {
                    self.progress.unread_from(&key.0, key.1, first.offset);
                    self.stats.paused.fetch_sub(1, Relaxed);
                }
            }
        }
        let started = std::time::Instant::now();
        while parts
            .iter()
            .any(|(t, p)| self.progress.in_flight(t, *p) > 0)
        {
            if started.elapsed() > REVOKE_DRAIN {
                tracing::error!(
                    "revoked partitions still have messages in the engine queue after {REVOKE_DRAIN:?}; handing them over anyway"
                );
                break;
            }
            std::thread::sleep(std::time::Duration::from_millis(2));
        }
        self.queue.forget(parts);
        if let Some(owner) = &self.owner {
            owner.revoking(parts);
        }
        let mut tpl = TopicPartitionList::new();
        for (t, p, o) in self.progress.committable() {
            if parts.iter().any(|k| k.0 == t && k.1 == p) {
                let _ = tpl.add_partition_offset(&t, p, rdkafka::Offset::Offset(o));
            }
        }
        if tpl.count() > 0
            && let Err(e) = consumer.commit(&tpl, rdkafka::consumer::CommitMode::Sync)
        {
            tracing::warn!(error = %e, "committing revoked partitions' offsets");
        }
        for (t, p) in parts {
            if self.owner.is_some() {
                // The owner dropped or wrote the partition's state: the next owner starts
                // from what is on the changelog.
                self.progress.forget(t, *p);
            } else {
                // The state stays here: if the partition comes back, what it holds is skipped.
                self.progress.set_aside(t, *p);
            }
        }
        self.stats.rebalances.fetch_add(1, Relaxed);
    }

    fn assign(&self, parts: &[PartitionKey]) {
        let Some(owner) = &self.owner else { return };
        let started = std::time::Instant::now();
        for ((t, p), offset) in owner.assigned(parts) {
            self.progress.restore_partition(&t, p, offset);
        }
        tracing::info!(
            partitions = ?parts.iter().map(|k| k.1).collect::<Vec<_>>(),
            took_ms = started.elapsed().as_millis() as u64,
            "partitions assigned"
        );
    }
}

impl ClientContext for SourceContext {
    fn stats(&self, s: Statistics) {
        let mut highs = Vec::new();
        for (name, t) in &s.topics {
            for (id, p) in &t.partitions {
                if *id >= 0 && p.desired && p.hi_offset >= 0 {
                    highs.push((name.clone(), *id, p.hi_offset));
                }
            }
        }
        self.progress.set_highs(&highs);
    }
}

impl ConsumerContext for SourceContext {
    fn pre_rebalance(&self, consumer: &BaseConsumer<Self>, rebalance: &Rebalance<'_>) {
        match rebalance {
            Rebalance::Revoke(tpl) => self.revoke(consumer, &keys(tpl)),
            Rebalance::Assign(tpl) => {
                for e in tpl.elements() {
                    if !self.queue.forward(consumer, e.topic(), e.partition()) {
                        // (Its messages then come through the consumer queue, one per poll.)
                        tracing::warn!(
                            topic = e.topic(),
                            partition = e.partition(),
                            "a partition's messages could not be forwarded to the source's queue"
                        );
                    }
                }
                self.assign(&keys(tpl))
            }
            Rebalance::Error(e) => tracing::warn!(error = %e, "Kafka rebalance"),
        }
    }
}

/// The running source.
#[derive(Debug)]
pub struct KafkaSource {
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
    /// Counters.
    pub stats: Arc<KafkaSourceStats>,
    /// Per-partition progress (shared with the checkpointer and `/metrics`).
    pub progress: Arc<Progress>,
}

impl KafkaSource {
    /// Subscribes and starts consuming into `pipeline`, tracking offsets in `progress`.
    pub fn start(
        cfg: KafkaSourceConfig,
        pipeline: Arc<Pipeline>,
        progress: Arc<Progress>,
    ) -> Result<Self, KafkaError> {
        Self::start_owned(cfg, pipeline, progress, None)
    }

    /// [`KafkaSource::start`] for a consumer whose state is per partition: `owner` hears of
    /// every assignment and revocation.
    pub fn start_owned(
        cfg: KafkaSourceConfig,
        pipeline: Arc<Pipeline>,
        progress: Arc<Progress>,
        owner: Option<Arc<dyn PartitionOwner>>,
    ) -> Result<Self, KafkaError> {
        for t in &cfg.topics {
            // Partials records carry their own kind; OTLP topics are named for their signal.
            if cfg.encoding != crate::pipeline::Encoding::TrikePartials && signal_of(t).is_none() {
                return Err(KafkaError::Subscription(format!(
                    "topic {t:?}: its name must end in spans, traces, metrics or logs"
                )));
            }
        }
        let mut client = ClientConfig::new();
        if let Some(id) = &cfg.group_instance_id {
            client.set("group.instance.id", id);
        }
        client
            .set("bootstrap.servers", &cfg.brokers)
            .set("group.id", &cfg.group_id)
            .set("enable.auto.commit", "false")
            .set("auto.offset.reset", "earliest")
            .set("session.timeout.ms", "10000")
            // Also bounds how long a rebalance waits for a member that died without leaving
            // (brokers that expire members only by the rebalance timeout); the loop polls at
            // least every 100 ms, so a live member is never taken for dead.
            .set("max.poll.interval.ms", "15000")
            // Bounds the prefetch buffer (per partition, and so the memory paused partitions hold).
            .set("queued.max.messages.kbytes", "65536")
            // When that buffer is full, fetching a partition again waits this long. librdkafka's
            // default of 1 s stalls a consumer that is slower than the broker for most of each
            // second (measured: 0.17 M instead of 0.8 M records/s, `--bin kafka` in BENCHMARKS).
            .set("fetch.queue.backoff.ms", "10")
            .set("statistics.interval.ms", "1000");
        let stats = Arc::new(KafkaSourceStats::default());
        let parked = ParkedMap::default();
        let owned = owner.is_some();
        let queue = Arc::new(queue::MessageQueue::unopened());
        let consumer: BaseConsumer<SourceContext> = cfg
            .client
            .apply(&mut client)
            .create_with_context(SourceContext {
                progress: progress.clone(),
                owner,
                parked: parked.clone(),
                stats: stats.clone(),
                queue: queue.clone(),
            })?;
        let topics: Vec<&str> = cfg.topics.iter().map(String::as_str).collect();
        consumer.subscribe(&topics)?;
        let dead = match &cfg.dead_letter_topic {
            Some(t) => Some(dead_letter::DeadLetters::new(
                &cfg.brokers,
                &cfg.client,
                t,
                progress.clone(),
                stats.clone(),
            )?),
            None => None,
        };
        let stop = Arc::new(AtomicBool::new(false));
        let thread = {
            let (stop, stats, progress) = (stop.clone(), stats.clone(), progress.clone());
            let encoding = cfg.encoding;
            std::thread::Builder::new()
                .name("trike-kafka-source".into())
                .spawn(move || {
                    source::Loop {
                        consumer,
                        encoding,
                        pipeline,
                        progress,
                        stats,
                        dead,
                        parked,
                        owned,
                        queue,
                    }
                    .run(&stop);
                })
                .map_err(|e| KafkaError::Subscription(format!("source thread: {e}")))?
        };
        Ok(Self {
            stop,
            thread: Some(thread),
            stats,
            progress,
        })
    }

    /// Stops consuming (committing what may be committed) and joins the thread.
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

#[cfg(test)]
mod tests {
    use super::*;
    use rdkafka::error::{KafkaError, RDKafkaErrorCode};

    /// Guarantees: consumer errors are counted by code and rendered; only the 1st, 2nd, 4th…
    /// of a code asks to be logged.
    #[test]
    fn consumer_errors_are_counted_by_code() {
        let s = KafkaSourceStats::default();
        let e = KafkaError::MessageConsumption(RDKafkaErrorCode::BadCompression);
        let logged: Vec<bool> = (0..5).map(|_| s.consumer_error(&e)).collect();
        assert_eq!(logged, [true, true, false, true, false]);
        let mut out = String::new();
        s.render(&progress::Progress::new(false), &mut out);
        assert!(
            out.contains("trike_kafka_source_errors_total{code=\"BadCompression\"} 5"),
            "{out}"
        );
    }
}
