//! The shared claim log: a Kafka topic (default `trike.actuator.claims`) on which every
//! actuator announces, before executing, which control-event id it is about to execute.
//!
//! Protocol, per event id:
//! 1. Produce a claim record (key = event id, value `{"id","claimant","at"}`) with an
//!    idempotent, `acks=all` producer and wait for its delivery (partition, offset).
//!    `claimant` is unique to this actuator *process run* (instance, pid and 64 random bits),
//!    so a restarted actuator is a different claimant from its previous life.
//! 2. Read that claim partition (a group-less consumer with manual `assign`, from the
//!    beginning on first use) up to and including the claim's own offset.
//! 3. The **first** claim for the id in the log wins. Only when that first claimant is this
//!    process does the actuator execute; otherwise the event is a duplicate.
//!
//! All claims for one id carry the same key, so they land in one partition, in one order that
//! every reader sees alike: two actuators (or a zombie and its replacement) racing for the same
//! id cannot both see themselves first. The producer's partitioner is pinned
//! (`murmur2_random`) so every actuator maps an id to the same partition; never add partitions
//! to the claims topic (that would remap ids).
//!
//! Bounds and limits:
//! - Memory: the id → first-claimant map keeps at most [`MAX_REMEMBERED`] ids (default 100 000,
//!   roughly 200 bytes each with typical ids, so ~20 MiB at most); the oldest are evicted
//!   first. A claim for an id whose first claim was evicted — a redelivery more than that many
//!   distinct claimed ids after the original — would be taken as first: keep redeliveries
//!   (consumer lag, offset resets) well inside that bound.
//! - Retention: the claims topic must keep claims at least as long as the control topic keeps
//!   events (a redelivered event must still find its claim).
//! - A claimant that wins and then dies before recording an outcome leaves the id claimed and
//!   unfinished. After executing (whatever the result) the winner writes a *finish* record for
//!   the id (same key, `"done": true`, the outcome). A later claimant that loses to a claim
//!   with no finish record waits while the claim is younger than the lease (its claimant may
//!   still be executing: a rebalance moved the partition mid-execution), then reports the
//!   event `skipped_duplicate` with `unfinished_claim: true` and pages a human: the event may
//!   or may not have run, and is never executed twice. At most once, by design; never silent.

use anyhow::{Context, anyhow};
use rdkafka::config::ClientConfig;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::producer::{FutureProducer, FutureRecord, Producer};
use rdkafka::{Message, Offset, TopicPartitionList};
use serde_json::{Value, json};
use std::collections::{HashMap, VecDeque};
use std::sync::Arc;
use std::time::{Duration, Instant};
use trike_sinks::kafka_client::ClientProps;

/// Default topic of the claim log.
pub const DEFAULT_TOPIC: &str = "trike.actuator.claims";
/// Partitions of the claims topic when the actuator creates it.
pub const PARTITIONS: i32 = 3;
/// Ids remembered (with their first claimant) at most; the oldest are evicted first.
pub const MAX_REMEMBERED: usize = 100_000;
/// How long a claim may take to be delivered, and then to be read back, before the attempt
/// counts as failed (the event is then retried, not executed).
const CLAIM_TIMEOUT: Duration = Duration::from_secs(10);

/// The verdict on a claim.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Claim {
    /// The first claim for the id is ours: execute.
    Won,
    /// Another claimant was first: do not execute.
    Lost {
        /// The first claimant.
        claimant: String,
        /// When it claimed (Unix milliseconds; 0 when the claim did not say).
        at_ms: u64,
        /// Whether it wrote a finish record (it executed and recorded an outcome).
        finished: bool,
    },
}

/// The first claim of one id.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct First {
    /// Its claimant.
    pub claimant: Arc<str>,
    /// When it claimed (Unix milliseconds).
    pub at_ms: u64,
    /// Whether that claimant wrote a finish record for the id.
    pub finished: bool,
}

/// The first claimant of each id seen, bounded to `cap` ids (oldest evicted first).
#[derive(Debug)]
pub struct FirstClaims {
    first: HashMap<Arc<str>, First>,
    order: VecDeque<Arc<str>>,
    cap: usize,
    last_claimant: Option<Arc<str>>,
}

impl FirstClaims {
    /// An empty map remembering at most `cap` ids.
    pub fn new(cap: usize) -> Self {
        Self {
            first: HashMap::new(),
            order: VecDeque::new(),
            cap: cap.max(1),
            last_claimant: None,
        }
    }

    /// Notes a claim read from the log; only the first claim for an id counts. A finish
    /// record (`done`) counts only from the first claimant.
    pub fn observe(&mut self, id: &str, claimant: &str, at_ms: u64, done: bool) {
        if let Some(f) = self.first.get_mut(id) {
            if done && &*f.claimant == claimant {
                f.finished = true;
            }
            return;
        }
        if done {
            // The claim itself was evicted (or never read): nothing to attach it to.
            return;
        }
        while self.first.len() >= self.cap {
            match self.order.pop_front() {
                Some(old) => {
                    self.first.remove(&old);
                }
                None => break,
            }
        }
        // Consecutive claims mostly come from one claimant: share its string.
        let claimant = match &self.last_claimant {
            Some(c) if &**c == claimant => c.clone(),
            _ => {
                let c: Arc<str> = claimant.into();
                self.last_claimant = Some(c.clone());
                c
            }
        };
        let id: Arc<str> = id.into();
        self.order.push_back(id.clone());
        self.first.insert(
            id,
            First {
                claimant,
                at_ms,
                finished: false,
            },
        );
    }

    /// The first claim of `id`, if remembered.
    pub fn get(&self, id: &str) -> Option<&First> {
        self.first.get(id)
    }

    /// Ids remembered.
    pub fn len(&self) -> usize {
        self.first.len()
    }

    /// True when nothing is remembered.
    pub fn is_empty(&self) -> bool {
        self.first.is_empty()
    }
}

/// This actuator's handle on the claim log.
pub struct ClaimLog {
    brokers: String,
    client: ClientProps,
    topic: String,
    claimant: String,
    producer: FutureProducer,
    reader: BaseConsumer,
    /// Next offset to read per assigned claims partition.
    next: HashMap<i32, i64>,
    first: FirstClaims,
}

impl std::fmt::Debug for ClaimLog {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ClaimLog")
            .field("topic", &self.topic)
            .field("claimant", &self.claimant)
            .field("partitions_read", &self.next)
            .field("remembered", &self.first.len())
            .finish()
    }
}

fn claims_producer(brokers: &str, client: &ClientProps) -> anyhow::Result<FutureProducer> {
    client
        .apply(
            ClientConfig::new()
                .set("bootstrap.servers", brokers)
                .set("enable.idempotence", "true")
                .set("acks", "all")
                .set("partitioner", "murmur2_random")
                .set("linger.ms", "0")
                .set("message.timeout.ms", CLAIM_TIMEOUT.as_millis().to_string()),
        )
        .create()
        .context("claims producer")
}

impl ClaimLog {
    /// Connects to the claim log `topic`; claims are made as `claimant`. Nothing is read
    /// until the first claim.
    pub fn new(
        brokers: &str,
        client: &ClientProps,
        topic: &str,
        claimant: String,
    ) -> anyhow::Result<Self> {
        let reader: BaseConsumer = client
            .apply(
                ClientConfig::new()
                    .set("bootstrap.servers", brokers)
                    // librdkafka wants a group id even for `assign`; it never joins nor commits.
                    .set("group.id", format!("{claimant}/claims-reader"))
                    .set("enable.auto.commit", "false")
                    .set("enable.auto.offset.store", "false")
                    .set("auto.offset.reset", "earliest")
                    .set("fetch.wait.max.ms", "50"),
            )
            .create()
            .context("claims reader")?;
        Ok(Self {
            brokers: brokers.into(),
            client: client.clone(),
            topic: topic.into(),
            claimant,
            producer: claims_producer(brokers, client)?,
            reader,
            next: HashMap::new(),
            first: FirstClaims::new(MAX_REMEMBERED),
        })
    }

    /// This process run's claimant token.
    pub fn claimant(&self) -> &str {
        &self.claimant
    }

    /// A claimant token unique to this process run: `instance/pid/random`.
    pub fn new_claimant(instance: &str) -> String {
        format!(
            "{instance}/{}/{:016x}",
            std::process::id(),
            rand::random::<u64>()
        )
    }

    fn verdict(&self, first: &First) -> Claim {
        if *first.claimant == *self.claimant {
            Claim::Won
        } else {
            Claim::Lost {
                claimant: first.claimant.to_string(),
                at_ms: first.at_ms,
                finished: first.finished,
            }
        }
    }

    /// Claims `id` and says whether this actuator may execute it. An error means the claim
    /// could not be written or read back: the caller must not execute (and should retry).
    pub fn claim(&mut self, rt: &tokio::runtime::Runtime, id: &str) -> anyhow::Result<Claim> {
        // An id whose first claim was already read is decided for good, unless it is another
        // claimant's unfinished claim: then the log is read again for its finish record.
        if let Some(first) = self.first.get(id)
            && (first.finished || *first.claimant == *self.claimant)
        {
            return Ok(self.verdict(first));
        }
        let (partition, offset) = self.write(rt, id, None)?;
        self.read_until(id, partition, offset)
    }

    /// Writes the finish record of an id this actuator won and executed (its outcome is
    /// `outcome`). Advisory: a lost finish record makes a later claimant page, never execute.
    pub fn finish(&mut self, rt: &tokio::runtime::Runtime, id: &str, outcome: &str) {
        if let Err(e) = self.write(rt, id, Some(outcome)) {
            tracing::warn!(%id, error = %e, "finish record not written: a redelivery of this event will page instead of skipping quietly");
        }
    }

    /// Produces a claim (or, with `outcome`, a finish record) for `id`; its partition and offset.
    fn write(
        &mut self,
        rt: &tokio::runtime::Runtime,
        id: &str,
        outcome: Option<&str>,
    ) -> anyhow::Result<(i32, i64)> {
        let now = crate::now_nanos();
        let mut record = json!({
            "id": id,
            "claimant": self.claimant,
            "at": trike_sinks::rfc3339(now),
            "at_ms": now / 1_000_000,
        });
        if let Some(o) = outcome {
            record["done"] = json!(true);
            record["outcome"] = json!(o);
        }
        let payload = record.to_string();
        let delivered = rt.block_on(self.producer.send(
            FutureRecord::to(&self.topic).key(id).payload(&payload),
            Duration::from_secs(1),
        ));
        match delivered {
            Ok(d) => Ok((d.partition, d.offset)),
            Err((e, _)) => {
                if let Some((code, why)) = self.producer.client().fatal_error() {
                    // A fatal idempotence error poisons the producer: start a fresh one.
                    tracing::warn!(?code, %why, "claims producer failed fatally; recreating it");
                    self.producer = claims_producer(&self.brokers, &self.client)?;
                }
                Err(anyhow!("writing to the claim log {}: {e}", self.topic))
            }
        }
    }

    /// Assigns every claims partition (new ones from the beginning, known ones where we are).
    fn assign(&mut self, want: i32) -> anyhow::Result<()> {
        let md = self
            .reader
            .fetch_metadata(Some(&self.topic), CLAIM_TIMEOUT)
            .context("claims topic metadata")?;
        let mut tpl = TopicPartitionList::new();
        let mut partitions: Vec<i32> = md
            .topics()
            .iter()
            .filter(|t| t.name() == self.topic)
            .flat_map(|t| t.partitions().iter().map(|p| p.id()))
            .collect();
        if !partitions.contains(&want) {
            partitions.push(want);
        }
        for p in &partitions {
            let from = self
                .next
                .get(p)
                .map_or(Offset::Beginning, |o| Offset::Offset(*o));
            tpl.add_partition_offset(&self.topic, *p, from)?;
        }
        self.reader
            .assign(&tpl)
            .context("assigning the claims topic")?;
        for p in partitions {
            self.next.entry(p).or_insert(0);
        }
        Ok(())
    }

    /// Reads claims until `partition` is read past `offset` (our own claim for `id`).
    fn read_until(&mut self, id: &str, partition: i32, offset: i64) -> anyhow::Result<Claim> {
        if !self.next.contains_key(&partition) {
            self.assign(partition)?;
        }
        let deadline = Instant::now() + CLAIM_TIMEOUT;
        // The first claim of `id` as first seen in this pass (immune to eviction).
        let mut decided: Option<First> = self.first.get(id).cloned();
        while self.next.get(&partition).is_none_or(|n| *n <= offset) {
            if Instant::now() >= deadline {
                return Err(anyhow!(
                    "reading {} partition {partition} up to our claim at offset {offset} timed out",
                    self.topic
                ));
            }
            let Some(msg) = self.reader.poll(Duration::from_millis(100)) else {
                continue;
            };
            let m = match msg {
                Ok(m) => m,
                Err(e) => {
                    tracing::debug!(error = %e, "claims reader");
                    continue;
                }
            };
            self.next.insert(m.partition(), m.offset() + 1);
            let key = m.key().and_then(|k| std::str::from_utf8(k).ok());
            let value: Value = m
                .payload()
                .and_then(|p| serde_json::from_slice(p).ok())
                .unwrap_or(Value::Null);
            let (Some(key), Some(claimant)) = (key, value["claimant"].as_str()) else {
                tracing::warn!(
                    partition = m.partition(),
                    offset = m.offset(),
                    "ignoring a malformed claim"
                );
                continue;
            };
            let done = value["done"].as_bool() == Some(true);
            self.first
                .observe(key, claimant, value["at_ms"].as_u64().unwrap_or(0), done);
            if key == id {
                match &mut decided {
                    None => decided = self.first.get(id).cloned(),
                    Some(d) if done && *d.claimant == *claimant => d.finished = true,
                    Some(_) => {}
                }
            }
        }
        match decided {
            Some(first) => Ok(self.verdict(&first)),
            None => Err(anyhow!(
                "our claim for {id} at {}/{partition}/{offset} was not read back",
                self.topic
            )),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn first_claim_wins_and_memory_is_bounded() {
        let mut f = FirstClaims::new(3);
        let who = |f: &FirstClaims, id: &str| f.get(id).map(|c| c.claimant.to_string());
        f.observe("a", "x", 1, false);
        f.observe("a", "y", 2, false);
        f.observe("b", "y", 3, false);
        f.observe("c", "x", 4, false);
        assert_eq!(who(&f, "a").as_deref(), Some("x"), "the first claim wins");
        assert_eq!(f.get("a").unwrap().at_ms, 1);
        assert_eq!(who(&f, "b").as_deref(), Some("y"));
        assert_eq!(f.len(), 3);
        // Finish records: only the first claimant's count.
        f.observe("a", "y", 5, true);
        assert!(!f.get("a").unwrap().finished, "y did not win a");
        f.observe("a", "x", 6, true);
        assert!(f.get("a").unwrap().finished);
        f.observe("d", "z", 7, false);
        assert_eq!(f.len(), 3, "never more than the cap");
        assert_eq!(f.get("a"), None, "the oldest id is evicted first");
        assert_eq!(who(&f, "d").as_deref(), Some("z"));
        assert_eq!(who(&f, "c").as_deref(), Some("x"));
        f.observe("e", "z", 8, true);
        assert_eq!(f.get("e"), None, "a finish record alone is no claim");
    }

    #[test]
    fn claimants_are_unique_per_process_run() {
        let a = ClaimLog::new_claimant("act-1");
        let b = ClaimLog::new_claimant("act-1");
        assert_ne!(a, b);
        assert!(a.starts_with(&format!("act-1/{}/", std::process::id())));
    }
}
