//! The consuming loop: read, decode and submit; pause a partition whose message did not fit
//! in the engine queue and resume it once the message is in; commit what [`Progress`] allows.
//!
//! Consecutive messages of one partition that are already fetched are decoded into one batch
//! (a [`Run`], up to [`RUN_MESSAGES`]) and submitted with one ack: the Collector's Kafka
//! exporter may write one small request per message, and the cost of a submission (a queue
//! slot, an ack, a key table, the gateway's lock) is then paid per run, not per message.

use super::dead_letter::DeadLetters;
use super::progress::{PartitionKey, Progress, Read};
use super::queue::{Message as Queued, MessageQueue};
use super::{KafkaSourceStats, SourceContext, Waiting, signal_of};
use crate::metrics::{SignalKind, Transport};
use crate::pipeline::{Ack, Encoding, Gather, Held, Pending, Pipeline};
use rdkafka::Message;
use rdkafka::consumer::{BaseConsumer, CommitMode, Consumer};
use rdkafka::{Offset, TopicPartitionList};
use std::collections::VecDeque;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering::Relaxed};
use std::time::{Duration, Instant};

/// How often applied offsets are committed.
const COMMIT_EVERY: Duration = Duration::from_millis(500);

/// Milliseconds a message waits for room in the engine queue before its partition is paused.
const SHORT_WAITS: usize = 5;

/// Most messages read from the queue at a time.
const BATCH_MESSAGES: usize = 512;

/// Most events served from the consumer queue between two batches.
const EVENTS_PER_TURN: usize = 16;

/// Most messages in one run.
pub(crate) const RUN_MESSAGES: usize = 512;

/// Most observations in one run (a run of large requests is cut sooner).
const RUN_OBSERVATIONS: usize = 16_384;

/// Messages of one partition, read back to back, gathered into one batch.
/// Its offsets are taken into [`Progress`] when it is submitted (until then nothing of it
/// counts as read, so nothing about it can be committed).
pub(crate) struct Run {
    key: PartitionKey,
    /// Offsets below this are in the restored state already.
    skip_below: i64,
    offsets: Vec<i64>,
    gather: Gather,
}

impl Run {
    pub(crate) fn key(&self) -> &PartitionKey {
        &self.key
    }

    /// The run's first offset (its messages are in offset order).
    pub(crate) fn first_offset(&self) -> i64 {
        self.offsets.first().copied().unwrap_or(i64::MAX)
    }

    fn full(&self) -> bool {
        self.offsets.len() >= RUN_MESSAGES || self.gather.observations() >= RUN_OBSERVATIONS
    }
}

/// A message waiting for room in the engine queue: decoded once, when it was first offered
/// (a message refused for memory, or read after its partition was paused, waits undecoded).
pub(crate) struct Parked {
    pub(crate) offset: i64,
    item: Item,
}

enum Item {
    Raw(Vec<u8>),
    Decoded(Pending),
}

pub(super) struct Loop {
    pub consumer: BaseConsumer<SourceContext>,
    pub encoding: Encoding,
    pub pipeline: Arc<Pipeline>,
    pub progress: Arc<Progress>,
    pub stats: Arc<KafkaSourceStats>,
    pub dead: Option<DeadLetters>,
    /// Shared with the rebalance callbacks, which drop a revoked partition's messages.
    pub parked: super::ParkedMap,
    /// A partition owner listens: at a stop, leave the group through the rebalance callbacks
    /// (the owner makes its partitions' state durable before the next owner reads it).
    pub owned: bool,
    /// Assigned partitions' messages, read in batches (opened when the loop starts, closed
    /// before the consumer goes).
    pub queue: Arc<MessageQueue>,
}

impl Drop for Loop {
    fn drop(&mut self) {
        // (Before the fields: librdkafka's queues must go before their client.)
        self.queue.close(&self.consumer);
    }
}

/// What became of one submission.
enum Submitted {
    Done,
    /// No room: the decoded request, when it was decoded.
    Full(Option<Pending>),
}

impl Loop {
    fn ack(&self, topic: &str, partition: i32, offset: i64) -> Ack {
        let (progress, stats, topic) =
            (self.progress.clone(), self.stats.clone(), topic.to_string());
        Box::new(move || {
            progress.done(&topic, partition, offset);
            stats.messages.fetch_add(1, Relaxed);
        })
    }

    /// The ack of a run: every message of it is applied.
    fn run_ack(&self, key: &PartitionKey, offsets: Vec<i64>) -> Ack {
        let (progress, stats, (topic, partition)) =
            (self.progress.clone(), self.stats.clone(), key.clone());
        Box::new(move || {
            progress.done_all(&topic, partition, &offsets);
            stats.messages.fetch_add(offsets.len() as u64, Relaxed);
        })
    }

    /// An undecodable message: counted, logged, copied to the dead-letter topic when there is
    /// one, and skipped.
    fn skip_undecodable(
        &self,
        topic: &str,
        partition: i32,
        offset: i64,
        payload: &[u8],
        why: &str,
    ) {
        self.stats.undecodable.fetch_add(1, Relaxed);
        tracing::warn!(%topic, partition, offset, %why, "undecodable Kafka message skipped");
        match &self.dead {
            // Committable once the dead-letter copy is delivered.
            Some(d) => d.send(topic, partition, offset, payload, why),
            None => self.progress.done(topic, partition, offset),
        }
        self.stats.messages.fetch_add(1, Relaxed);
    }

    /// True when memory admits new data (else a message takes the single path, which refuses
    /// and parks it).
    fn memory_admits(&self) -> bool {
        self.pipeline
            .memory_limiter()
            .is_none_or(|m| m.pressure() == crate::memory::Pressure::Normal)
    }

    fn submit(&self, topic: &str, partition: i32, offset: i64, payload: &[u8]) -> Submitted {
        self.stats.submissions.fetch_add(1, Relaxed);
        let signal = signal_of(topic).unwrap_or(SignalKind::Traces);
        let ack = self.ack(topic, partition, offset);
        match self.pipeline.export_or_hold(
            Transport::Kafka,
            signal,
            self.encoding,
            payload,
            Some(ack),
        ) {
            Ok(_) => Submitted::Done,
            Err(Held::Malformed(why)) => {
                self.skip_undecodable(topic, partition, offset, payload, &why);
                Submitted::Done
            }
            Err(Held::Memory) => Submitted::Full(None),
            Err(Held::Full(p)) => Submitted::Full(Some(p)),
        }
    }

    /// Offers a parked message again.
    fn retry(&self, topic: &str, partition: i32, m: Parked) -> Result<(), Parked> {
        let offset = m.offset;
        let pending = match m.item {
            Item::Decoded(p) => p,
            Item::Raw(payload) => match self.submit(topic, partition, offset, &payload) {
                Submitted::Done => return Ok(()),
                Submitted::Full(None) => {
                    return Err(Parked {
                        offset,
                        item: Item::Raw(payload),
                    });
                }
                Submitted::Full(Some(p)) => {
                    return Err(Parked {
                        offset,
                        item: Item::Decoded(p),
                    });
                }
            },
        };
        self.pipeline.offer(pending).map(drop).map_err(|p| Parked {
            offset,
            item: Item::Decoded(p),
        })
    }

    fn pause(&self, topic: &str, partition: i32) {
        let mut tpl = TopicPartitionList::new();
        tpl.add_partition(topic, partition);
        if let Err(e) = self.consumer.pause(&tpl) {
            tracing::warn!(%topic, partition, error = %e, "pausing a partition");
        }
        self.queue.paused(&self.consumer, topic, partition);
        self.stats.pauses.fetch_add(1, Relaxed);
        self.stats.paused.fetch_add(1, Relaxed);
    }

    fn resume(&self, topic: &str, partition: i32) {
        let mut tpl = TopicPartitionList::new();
        tpl.add_partition(topic, partition);
        if let Err(e) = self.consumer.resume(&tpl) {
            tracing::warn!(%topic, partition, error = %e, "resuming a partition");
        }
        self.stats.paused.fetch_sub(1, Relaxed);
    }

    fn commit(&self, mode: CommitMode) {
        let mut tpl = TopicPartitionList::new();
        for (topic, partition, upto) in self.progress.committable() {
            let _ = tpl.add_partition_offset(&topic, partition, Offset::Offset(upto));
        }
        if tpl.count() > 0
            && let Err(e) = self.consumer.commit(&tpl, mode)
        {
            tracing::warn!(error = %e, "committing Kafka offsets");
        }
    }

    /// Retries parked messages in order; resumes the partitions that emptied.
    fn retry_parked(
        &self,
        parked: &mut std::collections::BTreeMap<PartitionKey, VecDeque<Parked>>,
    ) {
        // (The map is locked by the caller; rebalance callbacks run only inside `poll`.)
        parked.retain(|(topic, partition), q| {
            while let Some(m) = q.pop_front() {
                if let Err(m) = self.retry(topic, *partition, m) {
                    q.push_front(m);
                    return true;
                }
            }
            self.resume(topic, *partition);
            false
        });
    }

    /// Hands a decoded request (or run) to the pipeline; when the queue stays full for a few
    /// milliseconds, pauses its partition and parks it (`waiting` is locked by the caller).
    fn hand_over(&self, waiting: &mut Waiting, key: PartitionKey, first: Parked) {
        let (topic, partition) = (&key.0, key.1);
        let mut waiting_one = Some(first);
        for _ in 0..SHORT_WAITS {
            let Some(m) = waiting_one.take() else { break };
            std::thread::sleep(Duration::from_millis(1));
            waiting_one = self.retry(topic, partition, m).err();
        }
        if let Some(m) = waiting_one {
            // (Behind what waits already: a run parked moments ago by the same message's
            // `gather`, when memory ran short.)
            if let Some(q) = waiting.parked.get_mut(&key) {
                q.push_back(m);
            } else {
                self.pause(topic, partition);
                waiting.parked.insert(key, VecDeque::from([m]));
            }
        }
    }

    /// Submits the run being gathered, if any.
    fn flush(&self, waiting: &mut Waiting) {
        let Some(Run {
            key,
            offsets,
            mut gather,
            ..
        }) = waiting.run.take()
        else {
            return;
        };
        gather.swap_names(&mut waiting.names);
        if offsets.is_empty() {
            return;
        }
        if self.progress.read_all(&key.0, key.1, &offsets) == Read::AlreadyApplied {
            // (Only after a restore of the partition, which revokes, and so drops, its run.)
            self.stats
                .already_applied
                .fetch_add(offsets.len() as u64, Relaxed);
            return;
        }
        let first = offsets[0];
        self.stats.submissions.fetch_add(1, Relaxed);
        let ack = self.run_ack(&key, offsets);
        if let Err(p) = self.pipeline.offer(gather.done(Some(ack))) {
            // A full queue is often full for a moment only (the engine drains it in
            // batches): wait a little before pausing, since a resumed partition must fetch
            // again.
            let parked = Parked {
                offset: first,
                item: Item::Decoded(p),
            };
            self.hand_over(waiting, key, parked);
        }
    }

    /// Adds a message to the run of its partition (submitting another partition's run first);
    /// false when memory is short and the message must take the single path.
    fn gather(
        &self,
        waiting: &mut Waiting,
        key: &(&str, i32),
        offset: i64,
        payload: &[u8],
    ) -> bool {
        if waiting
            .run
            .as_ref()
            .is_some_and(|r| (r.key.0.as_str(), r.key.1) != *key)
        {
            self.flush(waiting);
        }
        if !self.memory_admits() {
            self.flush(waiting);
            return false;
        }
        if waiting.run.is_none() {
            let mut gather = self.pipeline.gather(
                Transport::Kafka,
                signal_of(key.0).unwrap_or(SignalKind::Traces),
                self.encoding,
            );
            gather.swap_names(&mut waiting.names);
            waiting.run = Some(Run {
                key: (key.0.to_string(), key.1),
                skip_below: self.progress.skip_below(key.0, key.1),
                offsets: Vec::new(),
                gather,
            });
        }
        let run = waiting.run.as_mut().expect("a run");
        if offset < run.skip_below {
            self.stats.already_applied.fetch_add(1, Relaxed);
            return true;
        }
        match run.gather.add(payload) {
            Ok(()) => run.offsets.push(offset),
            Err(why) => {
                // The run goes first: a message counts as read only after every earlier one.
                self.flush(waiting);
                self.progress.read(key.0, key.1, offset);
                self.skip_undecodable(key.0, key.1, offset, payload, &why.to_string());
                return true;
            }
        }
        if run.full() {
            self.flush(waiting);
        }
        true
    }

    /// How long a poll may wait: nothing while a run is gathered (take what is fetched
    /// already, submit when nothing is), briefly while messages are parked.
    fn wait(waiting: &Waiting) -> u64 {
        if waiting.run.is_some() {
            0
        } else if waiting.parked.is_empty() {
            100
        } else {
            10
        }
    }

    /// Takes one message read from the consumer: parks it behind its partition's parked
    /// messages, adds it to a run, or (memory short) offers it alone.
    fn take(
        &self,
        waiting: &mut Waiting,
        topic: &str,
        partition: i32,
        offset: i64,
        payload: &[u8],
    ) {
        // Prefetched before the pause took effect: keep the partition's order.
        if self.park_behind(waiting, topic, partition, offset, payload) {
            return;
        }
        if self.gather(waiting, &(topic, partition), offset, payload) {
            return;
        }
        // Memory is short, and the run just submitted did not fit: it was parked, and this
        // message waits behind it.
        if self.park_behind(waiting, topic, partition, offset, payload) {
            return;
        }
        if self.progress.read(topic, partition, offset) == Read::AlreadyApplied {
            self.stats.already_applied.fetch_add(1, Relaxed);
            return;
        }
        let key = (topic.to_string(), partition);
        // Memory is short: the single path refuses the message, and it waits undecoded.
        let parked = match self.submit(topic, partition, offset, payload) {
            Submitted::Done => return,
            Submitted::Full(Some(p)) => Parked {
                offset,
                item: Item::Decoded(p),
            },
            Submitted::Full(None) => Parked {
                offset,
                item: Item::Raw(payload.to_vec()),
            },
        };
        self.hand_over(waiting, key, parked);
    }

    /// Parks a message, undecoded, behind its partition's parked messages, if it has any
    /// (true then, and when it was applied already).
    fn park_behind(
        &self,
        waiting: &mut Waiting,
        topic: &str,
        partition: i32,
        offset: i64,
        payload: &[u8],
    ) -> bool {
        if waiting.parked.is_empty() {
            return false;
        }
        let Some(q) = waiting.parked.get_mut(&(topic.to_string(), partition)) else {
            return false;
        };
        if self.progress.read(topic, partition, offset) == Read::AlreadyApplied {
            self.stats.already_applied.fetch_add(1, Relaxed);
        } else {
            q.push_back(Parked {
                offset,
                item: Item::Raw(payload.to_vec()),
            });
        }
        true
    }

    pub(super) fn run(mut self, stop: &AtomicBool) {
        // Before the first poll, which may assign partitions (and forward them to it).
        self.queue.open(&self.consumer);
        // An event on the consumer queue ends a wait for messages.
        let queue = self.queue.clone();
        self.consumer.set_nonempty_callback(move || queue.wake());
        let mut last_commit = Instant::now();
        while !stop.load(Relaxed) {
            if last_commit.elapsed() > COMMIT_EVERY {
                self.commit(CommitMode::Async);
                last_commit = Instant::now();
            }
            self.serve_events();
            let wait = {
                let mut waiting = self.parked.lock();
                if !waiting.parked.is_empty() {
                    self.retry_parked(&mut waiting.parked);
                }
                Self::wait(&waiting)
            };
            // (More events than a turn serves: no waiting for messages before the next turn.)
            let wait = if self.queue.events_waiting(&self.consumer) {
                0
            } else {
                wait
            };
            // One lock for the batch, taken with its first message (rebalance callbacks run
            // only inside `poll`).
            let mut waiting = None;
            let read = self.queue.consume(
                &self.consumer,
                Duration::from_millis(wait),
                BATCH_MESSAGES,
                |m| {
                    let waiting = waiting.get_or_insert_with(|| self.parked.lock());
                    match m {
                        Queued::Data {
                            topic,
                            partition,
                            offset,
                            payload,
                        } => self.take(waiting, topic, partition, offset, payload),
                        Queued::Error(e) => self.consumer_error(&e),
                    }
                },
            );
            drop(waiting);
            if read == 0 {
                self.flush(&mut self.parked.lock());
            }
        }
        self.flush(&mut self.parked.lock());
        // Give the engine a moment to apply what is queued (and a last checkpoint to land),
        // then commit what may be committed.
        std::thread::sleep(Duration::from_millis(200));
        if let Some(d) = &self.dead {
            d.flush();
        }
        self.commit(CommitMode::Sync);
        if self.owned {
            self.leave();
        }
    }

    /// Serves what waits on the consumer queue: rebalances, statistics, errors, commit
    /// results (a few per turn: a turn is a batch, or a wait that an event ends); and any
    /// message that still comes this way (a partition that could not be forwarded).
    fn serve_events(&self) {
        for _ in 0..EVENTS_PER_TURN {
            match self.consumer.poll(Duration::ZERO) {
                Some(Ok(m)) => {
                    let payload = m.payload().unwrap_or(&[]);
                    let (topic, partition, offset) = (m.topic(), m.partition(), m.offset());
                    self.take(&mut self.parked.lock(), topic, partition, offset, payload);
                }
                Some(Err(e)) => self.consumer_error(&e),
                None => {}
            }
            if !self.queue.events_waiting(&self.consumer) {
                break;
            }
        }
    }

    fn consumer_error(&self, e: &rdkafka::error::KafkaError) {
        if self.stats.consumer_error(e) {
            tracing::warn!(error = %e, "Kafka consumer (counted in trike_kafka_source_errors_total)");
        }
    }

    /// Unsubscribes and polls until the revocation ran (it commits what it hands over).
    fn leave(&self) {
        self.consumer.unsubscribe();
        let started = Instant::now();
        while started.elapsed() < Duration::from_secs(10) {
            let _ = self.consumer.poll(Duration::from_millis(50));
            if self.consumer.assignment().is_ok_and(|a| a.count() == 0) {
                return;
            }
        }
        tracing::warn!("the Kafka source left its partitions without a revocation within 10 s");
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::decode::DecodeConfig;
    use crate::decode::tests::{kv, request, s, span};
    use crate::metrics::IngestMetrics;
    use crate::pipeline::{BatchSink, Overloaded};
    use prost::Message as _;
    use rdkafka::config::ClientConfig;
    use rdkafka::mocking::MockCluster;
    use trike_engine::Batch;
    use trike_proto::trace::v1::span::SpanKind;

    /// An engine queue that stays full.
    struct Full;
    impl BatchSink for Full {
        fn submit(&self, batch: Batch, ack: Option<Ack>) -> Result<(), Overloaded> {
            Err(Overloaded { batch, ack })
        }
    }

    /// Scenario: a run of one partition is gathered while memory is normal; then memory runs
    /// short with the engine queue full, and the partition's next message arrives (the run is
    /// submitted, does not fit, and is parked; the message then takes the single path, which
    /// does not fit either).
    /// Guarantees: the message waits behind the parked run, which is kept (it used to be
    /// replaced, its offsets pending for ever), and the partition is paused once.
    #[test]
    fn a_message_parks_behind_the_run_it_made_park() {
        let mock = MockCluster::new(1).unwrap();
        let limiter = Arc::new(crate::memory::MemoryLimiter::new(1 << 30));
        let pipeline = Arc::new(
            Pipeline::new(
                Arc::new(DecodeConfig::default()),
                Arc::new(Full),
                Arc::new(IngestMetrics::default()),
            )
            .with_memory_limiter(limiter.clone()),
        );
        let (progress, stats, parked) = (
            Arc::new(Progress::new(false)),
            Arc::new(KafkaSourceStats::default()),
            super::super::ParkedMap::default(),
        );
        let queue = Arc::new(MessageQueue::unopened());
        let consumer: BaseConsumer<SourceContext> = ClientConfig::new()
            .set("bootstrap.servers", mock.bootstrap_servers())
            .set("group.id", "source-test")
            .create_with_context(SourceContext {
                progress: progress.clone(),
                owner: None,
                parked: parked.clone(),
                stats: stats.clone(),
                queue: queue.clone(),
            })
            .unwrap();
        let lp = Loop {
            consumer,
            encoding: Encoding::Protobuf,
            pipeline,
            progress,
            stats: stats.clone(),
            dead: None,
            parked: parked.clone(),
            owned: false,
            queue,
        };
        let body = request(
            vec![kv("service.name", s("checkout"))],
            vec![span(
                "GET /",
                SpanKind::Server,
                1_800_000_000_000_000_000,
                3,
                vec![],
                false,
            )],
        )
        .encode_to_vec();
        let mut waiting = parked.lock();
        lp.take(&mut waiting, "t_spans", 0, 0, &body);
        lp.take(&mut waiting, "t_spans", 0, 1, &body);
        assert!(waiting.run.is_some(), "a run of two, gathered");
        limiter.update(1 << 31);
        lp.take(&mut waiting, "t_spans", 0, 2, &body);
        assert!(waiting.run.is_none());
        let q = &waiting.parked[&("t_spans".to_string(), 0)];
        let offsets: Vec<i64> = q.iter().map(|m| m.offset).collect();
        assert_eq!(offsets, [0, 2], "the run (from 0), then the message");
        assert!(matches!(q[0].item, Item::Decoded(_)));
        assert_eq!(stats.pauses.load(Relaxed), 1);
    }
}
