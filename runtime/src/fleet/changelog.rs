//! `trike.changelog`: the state of each partition of `trike.partials`, so that whichever
//! processor is assigned a partition next resumes exactly where its last owner was.
//!
//! One [`PartitionState`] holds the engine state and policy episodes of the partition's
//! services and the partials offset they cover. Its CBOR encoding is cut into chunks of at
//! most [`CHUNK_BYTES`] (records stay under the broker's 1 MiB default); each chunk is a record
//! on the changelog partition of the same number, keyed `{partition}/{slot}/{index}`, carrying
//! the state's generation and chunk count. Generations alternate between two slots, so the
//! topic, compacted by key, always keeps the last complete generation while the next one is
//! being written: a reader takes the newest generation whose chunks are all there (a write
//! cut short by a crash leaves the previous one readable).
//!
//! Chunk record layout (big-endian): `TKCL`, format version u16, generation u64, index u32,
//! count u32, CRC-32 of the whole encoded state u32, then the chunk's bytes.

use rdkafka::ClientContext;
use rdkafka::Message;
use rdkafka::config::ClientConfig;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::error::KafkaError;
use rdkafka::producer::{BaseProducer, BaseRecord, DeliveryResult, Producer, ProducerContext};
use rdkafka::{Offset, TopicPartitionList};
use serde::{Deserialize, Serialize};
use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::time::{Duration, Instant};
use trike_engine::Snapshot;
use trike_engine::policy::PolicySnapshot;
use trike_sinks::kafka_client::ClientProps;

/// Format version of the records.
pub const VERSION: u16 = 1;
/// Largest chunk payload: with the header and the key, a record stays below 1 MiB.
pub const CHUNK_BYTES: usize = 1_000_000;
const MAGIC: &[u8; 4] = b"TKCL";
const HEADER: usize = 4 + 2 + 8 + 4 + 4 + 4;

/// The state of one partition of the partials topic.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct PartitionState {
    /// The partition.
    pub partition: i32,
    /// The next partials offset to apply: everything below it is in the state.
    pub offset: i64,
    /// The engine state of the partition's services.
    pub engine: Snapshot,
    /// Their policy episodes and cool-downs.
    pub policy: PolicySnapshot,
    /// Their control events of the last minute (JSON, with their engine time): the next
    /// owner publishes them again under the same ids, in case this one could not.
    #[serde(default)]
    pub outbox: Vec<(u64, String)>,
}

/// One chunk of an encoded state.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Chunk {
    /// The record's key.
    pub key: String,
    /// The record's value.
    pub value: Vec<u8>,
}

/// Encodes `state` as generation `generation`: the chunks to write, in order.
pub fn encode(state: &PartitionState, generation: u64) -> std::io::Result<Vec<Chunk>> {
    let mut bytes = Vec::new();
    ciborium::into_writer(state, &mut bytes).map_err(std::io::Error::other)?;
    let crc = crc32fast::hash(&bytes);
    let pieces: Vec<&[u8]> = if bytes.is_empty() {
        vec![&[][..]]
    } else {
        bytes.chunks(CHUNK_BYTES).collect()
    };
    let count = pieces.len() as u32;
    let slot = generation % 2;
    Ok(pieces
        .into_iter()
        .enumerate()
        .map(|(i, piece)| {
            let mut value = Vec::with_capacity(HEADER + piece.len());
            value.extend_from_slice(MAGIC);
            value.extend_from_slice(&VERSION.to_be_bytes());
            value.extend_from_slice(&generation.to_be_bytes());
            value.extend_from_slice(&(i as u32).to_be_bytes());
            value.extend_from_slice(&count.to_be_bytes());
            value.extend_from_slice(&crc.to_be_bytes());
            value.extend_from_slice(piece);
            Chunk {
                key: format!("{}/{slot}/{i}", state.partition),
                value,
            }
        })
        .collect())
}

/// A chunk record's header and bytes.
#[derive(Clone, Debug)]
struct Parsed {
    generation: u64,
    index: u32,
    count: u32,
    crc: u32,
    bytes: Vec<u8>,
}

fn parse(value: &[u8]) -> Result<Parsed, String> {
    if value.len() < HEADER || &value[..4] != MAGIC {
        return Err("not a changelog chunk".into());
    }
    let u16_at = |i: usize| u16::from_be_bytes([value[i], value[i + 1]]);
    let u32_at = |i: usize| u32::from_be_bytes(value[i..i + 4].try_into().unwrap());
    let version = u16_at(4);
    if version != VERSION {
        return Err(format!("format {version} (this build reads {VERSION})"));
    }
    Ok(Parsed {
        generation: u64::from_be_bytes(value[6..14].try_into().unwrap()),
        index: u32_at(14),
        count: u32_at(18),
        crc: u32_at(22),
        bytes: value[HEADER..].to_vec(),
    })
}

/// Folds changelog records (latest value per key, in offset order) into the newest complete
/// state. Records of other formats or that do not decode are reported, not fatal: the
/// previous generation is used.
#[derive(Debug, Default)]
pub struct Assembler {
    latest: HashMap<String, Vec<u8>>,
}

impl Assembler {
    /// A record read from the changelog (a newer value for a key replaces the older one, as
    /// compaction would).
    pub fn add(&mut self, key: &str, value: &[u8]) {
        self.latest.insert(key.to_string(), value.to_vec());
    }

    /// The newest complete generation of `partition`'s state and its generation number;
    /// problems met on the way (skipped records or generations) are returned too.
    pub fn finish(self, partition: i32) -> (Option<(u64, PartitionState)>, Vec<String>) {
        let prefix = format!("{partition}/");
        let mut problems = Vec::new();
        let mut by_gen: HashMap<u64, Vec<Parsed>> = HashMap::new();
        for (key, value) in self.latest {
            if !key.starts_with(&prefix) {
                continue;
            }
            match parse(&value) {
                Ok(p) => by_gen.entry(p.generation).or_default().push(p),
                Err(e) => problems.push(format!("record {key}: {e}")),
            }
        }
        let mut gens: Vec<u64> = by_gen.keys().copied().collect();
        gens.sort_unstable_by(|a, b| b.cmp(a));
        for g in gens {
            let mut parts = by_gen.remove(&g).unwrap_or_default();
            parts.sort_by_key(|p| p.index);
            let count = parts.first().map_or(0, |p| p.count);
            let complete = parts.len() == count as usize
                && parts
                    .iter()
                    .enumerate()
                    .all(|(i, p)| p.index == i as u32 && p.count == count);
            if !complete {
                problems.push(format!(
                    "generation {g}: {} of {count} chunks (a write cut short)",
                    parts.len()
                ));
                continue;
            }
            let bytes: Vec<u8> = parts.iter().flat_map(|p| p.bytes.iter().copied()).collect();
            if crc32fast::hash(&bytes) != parts[0].crc {
                problems.push(format!("generation {g}: checksum mismatch"));
                continue;
            }
            match ciborium::from_reader::<PartitionState, _>(&bytes[..]) {
                Ok(s) if s.partition == partition => return (Some((g, s)), problems),
                Ok(s) => problems.push(format!(
                    "generation {g}: holds partition {} instead",
                    s.partition
                )),
                Err(e) => problems.push(format!("generation {g}: unreadable ({e})")),
            }
        }
        (None, problems)
    }
}

/// Changelog traffic counters.
#[derive(Debug, Default)]
pub struct ChangelogStats {
    /// Partition states written.
    pub writes: AtomicU64,
    /// Partition states that failed to write.
    pub write_failures: AtomicU64,
    /// Bytes written (record values).
    pub bytes: AtomicU64,
    /// Partition states restored.
    pub restores: AtomicU64,
    /// Time the newest restore took, milliseconds.
    pub last_restore_ms: AtomicU64,
    /// Series the newest restore brought in.
    pub last_restore_series: AtomicU64,
    /// Partitions of the partials topic owned now.
    pub owned: AtomicU64,
}

impl ChangelogStats {
    /// Renders the changelog families.
    pub fn render(&self, out: &mut String) {
        use trike_engine::expo::{counter, gauge};
        counter(
            out,
            "trike_changelog_writes_total",
            "Partition states written to the changelog.",
            self.writes.load(Relaxed),
        );
        counter(
            out,
            "trike_changelog_write_failures_total",
            "Partition states that failed to reach the changelog.",
            self.write_failures.load(Relaxed),
        );
        counter(
            out,
            "trike_changelog_bytes_total",
            "Bytes of partition state written to the changelog.",
            self.bytes.load(Relaxed),
        );
        counter(
            out,
            "trike_changelog_restores_total",
            "Changelog reads on assignment, one per newly assigned partition (with state or without).",
            self.restores.load(Relaxed),
        );
        gauge(
            out,
            "trike_changelog_restore_duration_seconds",
            "Time the newest restore took to read the changelog.",
            self.last_restore_ms.load(Relaxed) as f64 / 1000.0,
        );
        gauge(
            out,
            "trike_changelog_restore_series",
            "Series the newest restore brought in.",
            self.last_restore_series.load(Relaxed) as f64,
        );
        gauge(
            out,
            "trike_fleet_partitions_owned",
            "Partitions of the partials topic this processor owns now.",
            self.owned.load(Relaxed) as f64,
        );
    }
}

#[derive(Default)]
struct DeliveryCount {
    failed: AtomicU64,
}

impl ClientContext for DeliveryCount {}

impl ProducerContext for DeliveryCount {
    type DeliveryOpaque = ();
    fn delivery(&self, r: &DeliveryResult<'_>, _: ()) {
        if let Err((e, _)) = r {
            tracing::warn!(error = %e, "changelog record not delivered");
            self.failed.fetch_add(1, Relaxed);
        }
    }
}

/// Reads and writes partition states.
pub struct Changelog {
    brokers: String,
    client: ClientProps,
    topic: String,
    producer: BaseProducer<DeliveryCount>,
    /// Counters.
    pub stats: std::sync::Arc<ChangelogStats>,
}

impl std::fmt::Debug for Changelog {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Changelog")
            .field("topic", &self.topic)
            .finish_non_exhaustive()
    }
}

/// How long a write or a restore may take before it fails.
const TIMEOUT: Duration = Duration::from_secs(30);

impl Changelog {
    /// Creates the compacted topic when missing (`partitions` like the partials topic's) and
    /// connects an idempotent producer.
    pub fn open(
        brokers: &str,
        client: &ClientProps,
        topic: &str,
        partitions: i32,
        replication: i32,
    ) -> Result<Self, KafkaError> {
        trike_sinks::kafka::ensure_topic_with(
            &trike_sinks::kafka::KafkaSinkConfig {
                brokers: brokers.into(),
                topic: topic.into(),
                partitions,
                replication,
                client: client.clone(),
            },
            &[("cleanup.policy", "compact")],
        )?;
        let producer = client
            .apply(
                ClientConfig::new()
                    .set("bootstrap.servers", brokers)
                    .set("enable.idempotence", "true")
                    .set("acks", "all")
                    .set("compression.type", "lz4")
                    .set("message.max.bytes", "1048576")
                    .set("delivery.timeout.ms", "30000"),
            )
            .create_with_context(DeliveryCount::default())?;
        Ok(Self {
            brokers: brokers.into(),
            client: client.clone(),
            topic: topic.into(),
            producer,
            stats: Default::default(),
        })
    }

    /// The number of partitions of `topic` (the partials topic: services map to its
    /// partitions by murmur2, as the gateways' producers map them).
    pub fn partitions_of(&self, topic: &str) -> Result<i32, String> {
        let md = self
            .producer
            .client()
            .fetch_metadata(Some(topic), TIMEOUT)
            .map_err(|e| format!("metadata of {topic}: {e}"))?;
        match md.topics().first() {
            Some(t) if t.error().is_none() && !t.partitions().is_empty() => {
                Ok(t.partitions().len() as i32)
            }
            _ => Err(format!("topic {topic} has no partitions on the broker")),
        }
    }

    /// Writes `state` as `generation` and waits until every chunk is acknowledged.
    pub fn write(&self, state: &PartitionState, generation: u64) -> Result<(), String> {
        let chunks = encode(state, generation).map_err(|e| e.to_string())?;
        let failed_before = self.producer.context().failed.load(Relaxed);
        let mut bytes = 0;
        for c in &chunks {
            bytes += c.value.len() as u64;
            let mut record = BaseRecord::to(&self.topic)
                .key(&c.key)
                .payload(&c.value)
                .partition(state.partition);
            let started = Instant::now();
            loop {
                match self.producer.send(record) {
                    Ok(()) => break,
                    Err((e, r)) if started.elapsed() < TIMEOUT => {
                        tracing::debug!(error = %e, "changelog producer queue full");
                        record = r;
                        self.producer.poll(Duration::from_millis(10));
                    }
                    Err((e, _)) => {
                        self.stats.write_failures.fetch_add(1, Relaxed);
                        return Err(format!("sending a changelog chunk: {e}"));
                    }
                }
            }
        }
        let flushed = self.producer.flush(TIMEOUT);
        if flushed.is_err() || self.producer.context().failed.load(Relaxed) != failed_before {
            self.stats.write_failures.fetch_add(1, Relaxed);
            return Err(format!(
                "partition {} generation {generation}: not every chunk was acknowledged",
                state.partition
            ));
        }
        self.stats.writes.fetch_add(1, Relaxed);
        self.stats.bytes.fetch_add(bytes, Relaxed);
        Ok(())
    }

    /// Reads `partition`'s changelog to its end and returns the newest complete state and its
    /// generation (none: the partition has no state yet).
    pub fn read(&self, partition: i32) -> Result<Option<(u64, PartitionState)>, String> {
        let started = Instant::now();
        let consumer: BaseConsumer = self
            .client
            .apply(
                ClientConfig::new()
                    .set("bootstrap.servers", &self.brokers)
                    .set("group.id", "trike-changelog-reader")
                    .set("enable.auto.commit", "false")
                    .set("enable.partition.eof", "false"),
            )
            .create()
            .map_err(|e| format!("changelog reader: {e}"))?;
        let (low, high) = consumer
            .fetch_watermarks(&self.topic, partition, TIMEOUT)
            .map_err(|e| format!("changelog {} partition {partition}: {e}", self.topic))?;
        let mut asm = Assembler::default();
        tracing::debug!(topic = %self.topic, partition, low, high, "reading the changelog");
        if high > low {
            let mut tpl = TopicPartitionList::new();
            tpl.add_partition_offset(&self.topic, partition, Offset::Beginning)
                .map_err(|e| e.to_string())?;
            consumer.assign(&tpl).map_err(|e| e.to_string())?;
            let mut next = low;
            while next < high {
                if started.elapsed() > TIMEOUT {
                    return Err(format!(
                        "changelog {} partition {partition}: read to {next} of {high} in {TIMEOUT:?}",
                        self.topic
                    ));
                }
                match consumer.poll(Duration::from_millis(200)) {
                    Some(Ok(m)) => {
                        next = m.offset() + 1;
                        if let (Some(k), Some(v)) = (m.key(), m.payload()) {
                            asm.add(&String::from_utf8_lossy(k), v);
                        }
                    }
                    Some(Err(e)) => tracing::debug!(error = %e, "changelog read"),
                    None => {}
                }
            }
        }
        let (state, problems) = asm.finish(partition);
        for p in problems {
            tracing::warn!(topic = %self.topic, partition, problem = %p, "changelog");
        }
        self.stats.restores.fetch_add(1, Relaxed);
        self.stats
            .last_restore_ms
            .store(started.elapsed().as_millis() as u64, Relaxed);
        Ok(state)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;
    use trike_engine::observation::{Batch, RequestObs, SeriesKey};
    use trike_engine::policy::{Policy, PolicyEngine};
    use trike_engine::{Engine, EngineConfig};

    /// A state with `n` series of one service (about 2 KB each once encoded).
    fn state(partition: i32, n: usize) -> PartitionState {
        let mut e = Engine::new(Arc::new(EngineConfig::default()));
        let now = 1_800_000_000_000_000_000;
        let mut b = Batch::default();
        for i in 0..n {
            let key = b.key_index(SeriesKey::new("checkout", &format!("/r{i}"), "1.0"));
            for k in 0..20 {
                b.requests.push(RequestObs {
                    key,
                    time: now,
                    latency_ms: (i * 31 + k * 7) as f64 % 500.0,
                    bad: k == 3,
                });
            }
        }
        e.ingest(&b, now);
        e.advance(now);
        PartitionState {
            partition,
            offset: 42,
            engine: e.snapshot_of(|_| true),
            policy: PolicyEngine::new(Policy::new(vec![])).snapshot(),
            outbox: vec![(now, "{}".into())],
        }
    }

    fn assemble(records: &[Chunk], partition: i32) -> Option<(u64, PartitionState)> {
        let mut a = Assembler::default();
        for c in records {
            a.add(&c.key, &c.value);
        }
        a.finish(partition).0
    }

    /// Guarantees: a state larger than a record is cut into chunks under 1 MiB that read back
    /// as the same state; the newest complete generation wins.
    #[test]
    fn states_round_trip_in_chunks_under_a_mebibyte() {
        let big = state(3, 1500);
        let chunks = encode(&big, 7).unwrap();
        assert!(chunks.len() >= 2, "{} chunks", chunks.len());
        assert!(chunks.iter().all(|c| c.value.len() + c.key.len() < 1 << 20));
        assert!(chunks.iter().all(|c| c.key.starts_with("3/1/")));
        let (g, back) = assemble(&chunks, 3).unwrap();
        assert_eq!((g, &back), (7, &big));

        let mut newer = big.clone();
        newer.offset = 99;
        let mut log = chunks.clone();
        log.extend(encode(&newer, 8).unwrap());
        let (g, back) = assemble(&log, 3).unwrap();
        assert_eq!((g, back.offset), (8, 99));
        assert!(assemble(&log, 4).is_none(), "another partition's records");
    }

    /// Scenario: a write of generation 9 is cut short after its first chunk, over a log that
    /// holds generations 7 (slot 1) and 8 (slot 0). Compaction keeps the latest record per key.
    /// Guarantees: the reader falls back to generation 8, which the double-buffered slots kept
    /// intact. A generation with a corrupted chunk is detected by its checksum and skipped the
    /// same way.
    #[test]
    fn a_write_cut_short_falls_back_to_the_previous_generation() {
        let s = state(0, 1500);
        let mut log = encode(&s, 7).unwrap();
        let mut eight = s.clone();
        eight.offset = 80;
        log.extend(encode(&eight, 8).unwrap());
        let mut nine = s.clone();
        nine.offset = 90;
        let nine = encode(&nine, 9).unwrap();
        assert!(nine.len() >= 2);
        log.push(nine[0].clone());
        let (g, back) = assemble(&log, 0).unwrap();
        assert_eq!((g, back.offset), (8, 80));

        let mut log = encode(&s, 7).unwrap();
        let mut bad = encode(&eight, 8).unwrap();
        let last = bad.len() - 1;
        let n = bad[last].value.len();
        bad[last].value[n - 1] ^= 0xff;
        log.extend(bad);
        let (g, back) = assemble(&log, 0).unwrap();
        assert_eq!(
            (g, back.offset),
            (7, 42),
            "a corrupted generation is skipped"
        );
    }
}
