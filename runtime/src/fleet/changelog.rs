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
//! Between full states, a processor writes only what changed ([`Engine::take_changes`]): the
//! `seq`-th change set on top of generation `g` is keyed `{partition}/c/{g}/{seq}/{index}`. A
//! reader applies, on the newest complete full state, its change sets 1, 2, … in order up to
//! the first one missing or damaged (each holds the offset it covers, so stopping early only
//! means reading more partials again). Once the next full state is written, the change sets
//! of the previous one are deleted (tombstones), and compaction drops them.
//!
//! **Owners and fencing.** A processor that is assigned a partition first writes a claim record
//! (key `{partition}/claim`) and takes its offset + 1 as its *owner token*; then it reads the
//! partition to its end (the claim included). Every record it writes carries the token and has
//! it in its key (`{partition}/{owner}/{slot}/{index}`, `{partition}/c/{owner}/{g}/{seq}/{index}`),
//! so two writers' records never share a key, nor combine: chunks assemble per (owner,
//! generation, change set), the newest full state is the greatest (owner, generation), and a
//! change set applies only to the full state of its own owner and generation. A reader ignores
//! (*fences*) every record whose owner is older than a claim before it in the log: a processor
//! that lost its partitions without noticing (a long pause past the session timeout, a network
//! partition) and writes on is never restored from, whatever it writes, and its records never
//! mix with its successor's. Restored state is always one owner's state and the offset it
//! covers. The first full state an owner writes supersedes every record it read, which it then
//! deletes (tombstones); the claim stays (compaction keeps the newest). Kafka transactions
//! (a transactional id per partition) would fence the same way on the broker; the test broker
//! here (tansu 0.6.0) does not serve `EndTxn`, and this works on any broker.
//!
//! Chunk record layout (big-endian): `TKCL`, format version u16 (4), generation u64, change
//! set u32 (0: the full state), index u32, count u32, CRC-32 of the whole encoded state u32,
//! owner u64, then the chunk's bytes. Format 4 is format 3 with the owner. Format 3 is format
//! 2 with the compact CBOR of t-digests (bytes) and bucket counters (arrays), which a format-2
//! reader would not decode: its number tells an older processor why. Formats 1 (no change-set
//! field: full states), 2 and 3 are read too, as owner 0 (fenced by any claim before them).
//!
//! [`Engine::take_changes`]: trike_engine::Engine::take_changes

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
use trike_engine::anomaly::WatchSnapshot;
use trike_engine::policy::PolicySnapshot;
use trike_sinks::kafka_client::ClientProps;

/// Format version of the records written.
pub const VERSION: u16 = 4;
/// Largest chunk payload: with the header and the key, a record stays below 1 MiB.
pub const CHUNK_BYTES: usize = 1_000_000;
const MAGIC: &[u8; 4] = b"TKCL";
/// Header of a format 1 record (no change-set field).
const HEADER_V1: usize = 4 + 2 + 8 + 4 + 4 + 4;
/// Header of formats 2 and 3 (no owner).
const HEADER_V3: usize = HEADER_V1 + 4;
const HEADER: usize = HEADER_V3 + 8;
/// The value of a claim record (the owner token is its offset + 1).
const CLAIM: &[u8; 4] = b"TKCO";

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
    /// Their anomaly detectors (absent from records written before they moved).
    #[serde(default)]
    pub watch: WatchSnapshot,
    /// Their capacity forecasts (likewise).
    #[serde(default)]
    pub forecasts: trike_engine::forecast::ForecastSnapshot,
}

/// One chunk of an encoded state.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Chunk {
    /// The record's key.
    pub key: String,
    /// The record's value.
    pub value: Vec<u8>,
}

/// Encodes `state` as owner `owner`'s full state of generation `generation`: the chunks to
/// write, in order.
pub fn encode(state: &PartitionState, owner: u64, generation: u64) -> std::io::Result<Vec<Chunk>> {
    encode_at(state, owner, generation, 0)
}

/// Encodes `state` (its engine part a change set) as change set `seq` (≥ 1) on top of owner
/// `owner`'s full state of generation `generation`.
pub fn encode_changes(
    state: &PartitionState,
    owner: u64,
    generation: u64,
    seq: u32,
) -> std::io::Result<Vec<Chunk>> {
    debug_assert!(seq >= 1);
    encode_at(state, owner, generation, seq)
}

/// The key of partition `partition`'s claim record.
pub fn claim_key(partition: i32) -> String {
    format!("{partition}/claim")
}

fn encode_at(
    state: &PartitionState,
    owner: u64,
    generation: u64,
    seq: u32,
) -> std::io::Result<Vec<Chunk>> {
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
            value.extend_from_slice(&seq.to_be_bytes());
            value.extend_from_slice(&(i as u32).to_be_bytes());
            value.extend_from_slice(&count.to_be_bytes());
            value.extend_from_slice(&crc.to_be_bytes());
            value.extend_from_slice(&owner.to_be_bytes());
            value.extend_from_slice(piece);
            let key = if seq == 0 {
                format!("{}/{owner}/{slot}/{i}", state.partition)
            } else {
                format!("{}/c/{owner}/{generation}/{seq}/{i}", state.partition)
            };
            Chunk { key, value }
        })
        .collect())
}

/// A chunk record's header and bytes.
#[derive(Clone, Debug)]
struct Parsed {
    owner: u64,
    generation: u64,
    seq: u32,
    index: u32,
    count: u32,
    crc: u32,
    bytes: Vec<u8>,
}

fn parse(value: &[u8]) -> Result<Parsed, String> {
    if value.len() < HEADER_V1 || &value[..4] != MAGIC {
        return Err("not a changelog chunk".into());
    }
    let u16_at = |i: usize| u16::from_be_bytes([value[i], value[i + 1]]);
    let u32_at = |i: usize| u32::from_be_bytes(value[i..i + 4].try_into().unwrap());
    let generation = u64::from_be_bytes(value[6..14].try_into().unwrap());
    match u16_at(4) {
        1 => Ok(Parsed {
            owner: 0,
            generation,
            seq: 0,
            index: u32_at(14),
            count: u32_at(18),
            crc: u32_at(22),
            bytes: value[HEADER_V1..].to_vec(),
        }),
        2 | 3 if value.len() >= HEADER_V3 => Ok(Parsed {
            owner: 0,
            generation,
            seq: u32_at(14),
            index: u32_at(18),
            count: u32_at(22),
            crc: u32_at(26),
            bytes: value[HEADER_V3..].to_vec(),
        }),
        VERSION if value.len() >= HEADER => Ok(Parsed {
            owner: u64::from_be_bytes(value[30..38].try_into().unwrap()),
            generation,
            seq: u32_at(14),
            index: u32_at(18),
            count: u32_at(22),
            crc: u32_at(26),
            bytes: value[HEADER..].to_vec(),
        }),
        2 | 3 | VERSION => Err("a cut-off header".into()),
        version => Err(format!(
            "format {version} (this build reads 1 to {VERSION})"
        )),
    }
}

/// What a partition's changelog holds: its newest complete full state and the change sets
/// written on it, in order.
#[derive(Clone, Debug, PartialEq)]
pub struct Restored {
    /// The owner token the full state was written under.
    pub owner: u64,
    /// The full state's generation.
    pub generation: u64,
    /// The full state.
    pub full: PartitionState,
    /// Change sets 1, 2, … on top of it (up to the first missing or damaged one).
    pub changes: Vec<PartitionState>,
    /// Keys of every state record of the partition read (but the claim): the next full state
    /// written supersedes them, and they can be deleted.
    pub superseded: Vec<String>,
    /// Records ignored because a newer owner had claimed the partition before them.
    pub fenced: u64,
}

impl Restored {
    /// The newest record read: its offset, policy state and outbox are the partition's.
    pub fn latest(&self) -> &PartitionState {
        self.changes.last().unwrap_or(&self.full)
    }
}

/// Folds changelog records (latest value per key, in offset order) into the newest complete
/// state. Records of other formats or that do not decode are reported, not fatal: the
/// previous generation is used.
#[derive(Debug, Default)]
pub struct Assembler {
    latest: HashMap<String, Vec<u8>>,
    /// The newest claim's owner token (offset + 1) seen so far, per partition.
    claimed: HashMap<i32, u64>,
    /// Keys of records read (but claims), latest value or not.
    seen: std::collections::BTreeSet<String>,
    fenced: u64,
}

impl Assembler {
    /// A record read from the changelog at `offset`, in offset order (a newer value for a key
    /// replaces the older one, as compaction would; a tombstone, `None`, deletes the key). A
    /// record whose owner is older than a claim before it is fenced: ignored.
    pub fn add(&mut self, key: &str, value: Option<&[u8]>, offset: i64) {
        let partition = key.split('/').next().and_then(|p| p.parse::<i32>().ok());
        if let Some(p) = partition
            && key == claim_key(p)
        {
            if value.is_some_and(|v| v.starts_with(CLAIM)) {
                let floor = self.claimed.entry(p).or_default();
                *floor = (*floor).max(offset as u64 + 1);
            }
            return;
        }
        self.seen.insert(key.to_string());
        match value {
            Some(v) => {
                let floor = partition.and_then(|p| self.claimed.get(&p)).copied();
                let owner = parse(v).map(|h| h.owner).unwrap_or(u64::MAX);
                if floor.is_some_and(|f| owner < f) {
                    self.fenced += 1;
                    return;
                }
                self.latest.insert(key.to_string(), v.to_vec());
            }
            None => {
                self.latest.remove(key);
            }
        }
    }

    /// The newest complete full state of `partition` with the change sets on it; problems
    /// met on the way (skipped records, generations or change sets) are returned too.
    pub fn finish(self, partition: i32) -> (Option<Restored>, Vec<String>) {
        let prefix = format!("{partition}/");
        let mut problems = Vec::new();
        // Chunks by (owner, generation, change set).
        let mut by_pos: HashMap<(u64, u64, u32), Vec<Parsed>> = HashMap::new();
        for (key, value) in self.latest {
            if !key.starts_with(&prefix) {
                continue;
            }
            match parse(&value) {
                Ok(p) => by_pos
                    .entry((p.owner, p.generation, p.seq))
                    .or_default()
                    .push(p),
                Err(e) => problems.push(format!("record {key}: {e}")),
            }
        }
        let superseded: Vec<String> = self
            .seen
            .into_iter()
            .filter(|k| k.starts_with(&prefix))
            .collect();
        if self.fenced > 0 {
            problems.push(format!(
                "{} records of an owner fenced by a newer claim ignored",
                self.fenced
            ));
        }
        let mut fulls: Vec<(u64, u64)> = by_pos
            .keys()
            .filter(|(_, _, seq)| *seq == 0)
            .map(|(o, g, _)| (*o, *g))
            .collect();
        fulls.sort_unstable_by(|a, b| b.cmp(a));
        for (o, g) in fulls {
            let parts = by_pos.remove(&(o, g, 0)).unwrap_or_default();
            let full = match assemble_one(parts, partition) {
                Ok(s) => s,
                Err(e) => {
                    problems.push(format!("owner {o} generation {g}: {e}"));
                    continue;
                }
            };
            let mut changes = Vec::new();
            for seq in 1.. {
                let Some(parts) = by_pos.remove(&(o, g, seq)) else {
                    break;
                };
                match assemble_one(parts, partition) {
                    Ok(s) => changes.push(s),
                    Err(e) => {
                        problems.push(format!(
                            "owner {o} generation {g} change set {seq}: {e}; the state stops at the one before"
                        ));
                        break;
                    }
                }
            }
            return (
                Some(Restored {
                    owner: o,
                    generation: g,
                    full,
                    changes,
                    superseded,
                    fenced: self.fenced,
                }),
                problems,
            );
        }
        (None, problems)
    }
}

/// The state in one record set's chunks, checked whole.
fn assemble_one(mut parts: Vec<Parsed>, partition: i32) -> Result<PartitionState, String> {
    parts.sort_by_key(|p| p.index);
    let count = parts.first().map_or(0, |p| p.count);
    let complete = parts.len() == count as usize
        && parts
            .iter()
            .enumerate()
            .all(|(i, p)| p.index == i as u32 && p.count == count);
    if !complete {
        return Err(format!(
            "{} of {count} chunks (a write cut short)",
            parts.len()
        ));
    }
    let bytes: Vec<u8> = parts.iter().flat_map(|p| p.bytes.iter().copied()).collect();
    if crc32fast::hash(&bytes) != parts[0].crc {
        return Err("checksum mismatch".into());
    }
    match ciborium::from_reader::<PartitionState, _>(&bytes[..]) {
        Ok(s) if s.partition == partition => Ok(s),
        Ok(s) => Err(format!("holds partition {} instead", s.partition)),
        Err(e) => Err(format!("unreadable ({e})")),
    }
}

/// Changelog traffic counters.
#[derive(Debug, Default)]
pub struct ChangelogStats {
    /// Partition states written (full states and change sets).
    pub writes: AtomicU64,
    /// Of those, change sets.
    pub change_sets: AtomicU64,
    /// Partition states that failed to write.
    pub write_failures: AtomicU64,
    /// Bytes written (record values).
    pub bytes: AtomicU64,
    /// Partition states restored.
    pub restores: AtomicU64,
    /// Partitions claimed (one claim record each).
    pub claims: AtomicU64,
    /// Records of a fenced owner (older than a claim before them) that restores ignored.
    pub fenced: AtomicU64,
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
            "Partition states written to the changelog (full states and change sets).",
            self.writes.load(Relaxed),
        );
        counter(
            out,
            "trike_changelog_change_sets_total",
            "Of the partition states written, change sets (only the buckets changed since the previous write).",
            self.change_sets.load(Relaxed),
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
        counter(
            out,
            "trike_changelog_claims_total",
            "Partitions this processor claimed on assignment (a claim fences the partition's previous owner).",
            self.claims.load(Relaxed),
        );
        counter(
            out,
            "trike_changelog_fenced_records_total",
            "Changelog records a restore ignored: written by an owner after a newer one had claimed the partition (a zombie processor).",
            self.fenced.load(Relaxed),
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
    /// The offset of the newest claim record delivered.
    claimed_at: std::sync::atomic::AtomicI64,
}

/// Marks a claim record's delivery (its offset is the owner token).
const CLAIM_OPAQUE: usize = 1;

impl ClientContext for DeliveryCount {}

impl ProducerContext for DeliveryCount {
    type DeliveryOpaque = usize;
    fn delivery(&self, r: &DeliveryResult<'_>, opaque: usize) {
        match r {
            Err((e, _)) => {
                tracing::warn!(error = %e, "changelog record not delivered");
                self.failed.fetch_add(1, Relaxed);
            }
            Ok(m) if opaque == CLAIM_OPAQUE => self.claimed_at.store(m.offset(), Relaxed),
            Ok(_) => {}
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

    /// Claims `partition` for this processor, before reading it: returns the owner token
    /// (the claim record's offset + 1) to write its records under. Every record an older owner
    /// writes after this claim is fenced.
    pub fn claim(&self, partition: i32) -> Result<u64, String> {
        self.producer.context().claimed_at.store(-1, Relaxed);
        let key = claim_key(partition);
        // Who claimed, for people reading the topic: the pod (host) name and process id.
        let mut value = CLAIM.to_vec();
        let host = std::env::var("HOSTNAME").unwrap_or_default();
        value.extend_from_slice(format!("{host}/{}", std::process::id()).as_bytes());
        let record = BaseRecord::with_opaque_to(&self.topic, CLAIM_OPAQUE)
            .key(&key)
            .payload(&value)
            .partition(partition);
        self.producer
            .send(record)
            .map_err(|(e, _)| format!("claiming partition {partition}: {e}"))?;
        let _ = self.producer.flush(TIMEOUT);
        match self.producer.context().claimed_at.load(Relaxed) {
            o if o >= 0 => {
                self.stats.claims.fetch_add(1, Relaxed);
                Ok(o as u64 + 1)
            }
            _ => Err(format!(
                "claiming partition {partition}: the claim was not acknowledged"
            )),
        }
    }

    /// Writes `state` as owner `owner`'s full state of `generation` and waits until every
    /// chunk is acknowledged; returns the bytes written.
    pub fn write(
        &self,
        state: &PartitionState,
        owner: u64,
        generation: u64,
    ) -> Result<u64, String> {
        let chunks = encode(state, owner, generation).map_err(|e| e.to_string())?;
        self.send(state.partition, &chunks)
            .map_err(|e| format!("partition {} generation {generation}: {e}", state.partition))
    }

    /// Writes `state` as change set `seq` on top of `generation` and waits until every chunk
    /// is acknowledged; returns the keys written (to delete once a newer full state is there)
    /// and the bytes.
    pub fn write_changes(
        &self,
        state: &PartitionState,
        owner: u64,
        generation: u64,
        seq: u32,
    ) -> Result<(Vec<String>, u64), String> {
        let chunks = encode_changes(state, owner, generation, seq).map_err(|e| e.to_string())?;
        let bytes = self.send(state.partition, &chunks).map_err(|e| {
            format!(
                "partition {} generation {generation} change set {seq}: {e}",
                state.partition
            )
        })?;
        self.stats.change_sets.fetch_add(1, Relaxed);
        Ok((chunks.into_iter().map(|c| c.key).collect(), bytes))
    }

    /// Deletes `keys` of `partition` (tombstones; compaction drops them). Best effort: a key
    /// left behind belongs to an older generation, which readers pass over.
    pub fn delete(&self, partition: i32, keys: &[String]) {
        for key in keys {
            let record = BaseRecord::<String, [u8], usize>::with_opaque_to(&self.topic, 0)
                .key(key)
                .partition(partition);
            if let Err((e, _)) = self.producer.send(record) {
                tracing::debug!(error = %e, "changelog tombstone not sent");
            }
        }
        let _ = self.producer.flush(TIMEOUT);
    }

    /// Sends `chunks` and waits until each is acknowledged; returns their bytes.
    fn send(&self, partition: i32, chunks: &[Chunk]) -> Result<u64, String> {
        let failed_before = self.producer.context().failed.load(Relaxed);
        let mut bytes = 0;
        for c in chunks {
            bytes += c.value.len() as u64;
            let mut record = BaseRecord::with_opaque_to(&self.topic, 0)
                .key(&c.key)
                .payload(&c.value)
                .partition(partition);
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
            return Err("not every chunk was acknowledged".into());
        }
        self.stats.writes.fetch_add(1, Relaxed);
        self.stats.bytes.fetch_add(bytes, Relaxed);
        Ok(bytes)
    }

    /// Reads `partition`'s changelog to its end and returns the newest complete full state
    /// with its change sets (none: the partition has no state yet).
    pub fn read(&self, partition: i32) -> Result<Option<Restored>, String> {
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
                        if let Some(k) = m.key() {
                            asm.add(&String::from_utf8_lossy(k), m.payload(), m.offset());
                        }
                    }
                    Some(Err(e)) => tracing::debug!(error = %e, "changelog read"),
                    None => {}
                }
            }
        }
        self.stats.fenced.fetch_add(asm.fenced, Relaxed);
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
#[path = "changelog_tests.rs"]
mod tests;
