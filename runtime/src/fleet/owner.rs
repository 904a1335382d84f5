//! A processor's partitions: which partitions of `trike.partials` it owns, their state in
//! `trike.changelog`, and the moves between processors (DESIGN §6).
//!
//! Three writers put a partition's state on the changelog, all through [`Owner::write`], one
//! at a time, newest snapshot wins:
//! - [`ChangelogHook`], every `state.checkpoint_every`: every owned partition, snapshotted on
//!   the engine thread (the offsets match the state exactly) and written on its own thread;
//! - [`FleetLog`], before the outbox publishes a round of decisions: the partitions of the
//!   decided services, synchronously, with their events (write-ahead: the next owner knows the
//!   episode, so it never decides it again under a new id, and publishes the events again);
//! - [`Owner::revoking`], inside the group's rebalance: the revoked partitions, synchronously,
//!   before the source commits their offsets.
//!
//! A write reports the offset it covers to the source's progress, whose commits stop there:
//! the group's committed offset never passes the changelog, so the next owner, which resumes
//! from the changelog's offset and skips what is below it, neither loses nor applies twice.
//! With the eager protocol a rebalance revokes everything and assigns anew: a partition kept
//! across it keeps its state in memory; one that went elsewhere is dropped from the engine.

use crate::fleet::changelog::{Changelog, PartitionState};
use crate::fleet::partition::partition_of;
use crate::hook::{Hook, Tick};
use crate::hooks::outbox::{DecisionLog, OUTBOX_AGE};
use crate::shard::EngineWriter;
use parking_lot::Mutex;
use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering::Relaxed};
use std::sync::mpsc::{Receiver, SyncSender, TrySendError};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};
use trike_engine::policy::{PolicyEngine, PolicySnapshot};
use trike_engine::{Engine, UnixNanos};
use trike_ingest::kafka::PartitionOwner;
use trike_ingest::kafka::progress::{PartitionKey, Progress};
use trike_sinks::ControlEvent;

/// What the owner knows of one partition it holds (or held until the rebalance under way).
#[derive(Clone, Debug, Default)]
struct Part {
    /// Assigned now (false between a revocation and the assignment that follows it).
    owned: bool,
    /// The newest generation on the changelog (written or restored).
    generation: u64,
    /// The offset the newest write (or the restore) covers.
    offset: i64,
    /// Sequence number of the snapshot the newest write held (older ones are not written).
    seq: u64,
    /// Its services' control events of the last minute.
    outbox: Vec<(UnixNanos, String)>,
}

/// A snapshot to write.
#[derive(Debug)]
pub struct Pending {
    seq: u64,
    state: PartitionState,
}

/// Owns the processor's partitions of the partials topic.
pub struct Owner {
    topic: String,
    partitions: i32,
    engine: EngineWriter,
    policy: Arc<Mutex<PolicyEngine>>,
    progress: Arc<Progress>,
    changelog: Arc<Changelog>,
    parts: Mutex<BTreeMap<i32, Part>>,
    /// Held across each changelog write (writes of one partition are never interleaved).
    write: Mutex<()>,
    seq: AtomicU64,
    republish: Mutex<Vec<(UnixNanos, String)>>,
}

impl std::fmt::Debug for Owner {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Owner")
            .field("topic", &self.topic)
            .field("partitions", &self.partitions)
            .finish_non_exhaustive()
    }
}

impl Owner {
    /// The owner of `topic`'s partitions (`partitions` of them: services map to them by
    /// murmur2) for the shard whose engine is `engine` and policy `policy`.
    pub fn new(
        topic: &str,
        partitions: i32,
        engine: EngineWriter,
        policy: Arc<Mutex<PolicyEngine>>,
        progress: Arc<Progress>,
        changelog: Arc<Changelog>,
    ) -> Self {
        Self {
            topic: topic.into(),
            partitions,
            engine,
            policy,
            progress,
            changelog,
            parts: Mutex::default(),
            write: Mutex::new(()),
            seq: AtomicU64::new(0),
            republish: Mutex::default(),
        }
    }

    /// The partition `service` belongs to.
    pub fn partition_of(&self, service: &str) -> i32 {
        partition_of(service, self.partitions)
    }

    /// Partitions of the partials topic.
    pub fn partitions(&self) -> i32 {
        self.partitions
    }

    /// The partials topic.
    pub fn topic(&self) -> &str {
        &self.topic
    }

    /// The partitions owned now.
    pub fn owned(&self) -> Vec<i32> {
        let parts = self.parts.lock();
        parts
            .iter()
            .filter(|(_, p)| p.owned)
            .map(|(k, _)| *k)
            .collect()
    }

    /// The changelog (its counters).
    pub fn changelog(&self) -> &Changelog {
        &self.changelog
    }

    /// Snapshots `ps` (owned ones only) from `engine` and `policy`, which the caller holds
    /// locked, between batches (so the applied offsets match the state).
    fn snapshot(&self, engine: &Engine, policy: &PolicyEngine, ps: &[i32]) -> Vec<Pending> {
        let oldest = engine.now().saturating_sub(OUTBOX_AGE.as_nanos() as u64);
        let parts = self.parts.lock();
        ps.iter()
            .filter_map(|&p| {
                let part = parts.get(&p).filter(|x| x.owned)?;
                let n = self.partitions;
                let mine = move |s: &str| partition_of(s, n) == p;
                Some(Pending {
                    seq: self.seq.fetch_add(1, Relaxed) + 1,
                    state: PartitionState {
                        partition: p,
                        offset: self
                            .progress
                            .applied_of(&self.topic, p)
                            .unwrap_or(part.offset)
                            .max(part.offset),
                        engine: engine.snapshot_of(mine),
                        policy: policy.snapshot_of(mine),
                        outbox: part
                            .outbox
                            .iter()
                            .filter(|(at, _)| *at >= oldest)
                            .cloned()
                            .collect(),
                    },
                })
            })
            .collect()
    }

    /// Writes a snapshot unless the partition is no longer owned or a newer snapshot of it is
    /// already written; reports the offset it covers as durable.
    fn write(&self, pending: Pending) -> Result<(), String> {
        let _one_at_a_time = self.write.lock();
        let p = pending.state.partition;
        let generation = {
            let parts = self.parts.lock();
            match parts.get(&p) {
                Some(part) if part.owned && part.seq < pending.seq => part.generation + 1,
                _ => return Ok(()),
            }
        };
        self.changelog.write(&pending.state, generation)?;
        if let Some(part) = self.parts.lock().get_mut(&p) {
            part.generation = generation;
            part.seq = pending.seq;
            part.offset = pending.state.offset;
        }
        self.progress
            .durable(&[(self.topic.clone(), p, pending.state.offset)]);
        Ok(())
    }

    fn write_all(&self, pending: Vec<Pending>) {
        for w in pending {
            let p = w.state.partition;
            if let Err(e) = self.write(w) {
                tracing::error!(partition = p, error = %e, "writing the partition's state to the changelog");
            }
        }
    }

    /// Reads a newly assigned partition's state, retrying a failing broker a few times.
    fn restore(&self, p: i32) -> Option<(u64, PartitionState)> {
        for attempt in 1..=3 {
            match self.changelog.read(p) {
                Ok(s) => return s,
                Err(e) => {
                    tracing::error!(partition = p, attempt, error = %e, "reading the partition's state from the changelog");
                    std::thread::sleep(Duration::from_millis(500));
                }
            }
        }
        tracing::error!(
            partition = p,
            "the partition starts without its state: the changelog could not be read"
        );
        None
    }
}

impl PartitionOwner for Owner {
    fn assigned(&self, partitions: &[PartitionKey]) -> Vec<(PartitionKey, i64)> {
        let want: BTreeSet<i32> = partitions
            .iter()
            .filter(|(t, _)| *t == self.topic)
            .map(|(_, p)| *p)
            .collect();
        let (gone, kept): (Vec<i32>, Vec<i32>) = {
            let parts = self.parts.lock();
            parts.keys().partition(|p| !want.contains(p))
        };
        if !gone.is_empty() {
            let n = self.partitions;
            let gone_set: BTreeSet<i32> = gone.iter().copied().collect();
            let left = move |s: &str| gone_set.contains(&partition_of(s, n));
            let mut engine = self.engine.lock();
            let dropped = engine.drop_services(&left);
            self.policy.lock().drop_services(&left);
            drop(engine);
            let mut parts = self.parts.lock();
            for p in &gone {
                parts.remove(p);
            }
            tracing::info!(partitions = ?gone, series = dropped, "partitions moved to another processor: their state dropped");
        }
        let mut out = Vec::new();
        {
            let mut parts = self.parts.lock();
            for p in &kept {
                if let Some(part) = parts.get_mut(p) {
                    part.owned = true;
                    out.push(((self.topic.clone(), *p), part.offset));
                }
            }
        }
        for &p in want.iter().filter(|p| !kept.contains(p)) {
            let started = Instant::now();
            let mut part = Part {
                owned: true,
                ..Part::default()
            };
            if let Some((generation, state)) = self.restore(p) {
                let mut engine = self.engine.lock();
                let series = match engine.merge(state.engine) {
                    Ok(n) => n,
                    Err(e) => {
                        tracing::error!(partition = p, error = %e, "the changelog's engine state is not usable: the partition starts without it");
                        0
                    }
                };
                for rule in self.policy.lock().merge(state.policy) {
                    tracing::warn!(%rule, partition = p, "changelog policy state of a rule no longer configured dropped");
                }
                drop(engine);
                self.republish.lock().extend(state.outbox.iter().cloned());
                part.generation = generation;
                part.offset = state.offset;
                part.outbox = state.outbox;
                let stats = &self.changelog.stats;
                stats.last_restore_series.store(series as u64, Relaxed);
                tracing::info!(
                    partition = p,
                    generation,
                    offset = state.offset,
                    series,
                    took_ms = started.elapsed().as_millis() as u64,
                    "partition state restored from the changelog"
                );
                out.push(((self.topic.clone(), p), state.offset));
            }
            self.parts.lock().insert(p, part);
        }
        self.changelog.stats.owned.store(want.len() as u64, Relaxed);
        out
    }

    fn revoking(&self, partitions: &[PartitionKey]) {
        let ps: Vec<i32> = partitions
            .iter()
            .filter(|(t, _)| *t == self.topic)
            .map(|(_, p)| *p)
            .collect();
        let pending = {
            let engine = self.engine.lock();
            let policy = self.policy.lock();
            self.snapshot(&engine, &policy, &ps)
        };
        self.write_all(pending);
        let mut parts = self.parts.lock();
        for p in &ps {
            if let Some(part) = parts.get_mut(p) {
                part.owned = false;
            }
        }
        let owned = parts.values().filter(|p| p.owned).count();
        self.changelog.stats.owned.store(owned as u64, Relaxed);
    }
}

/// The outbox's write-ahead for a processor: a round's decisions are on the changelog, with
/// their partitions' state, before anyone sees them.
#[derive(Debug)]
pub struct FleetLog(pub Arc<Owner>);

impl DecisionLog for FleetLog {
    fn save(
        &mut self,
        engine: &Engine,
        _policy: PolicySnapshot,
        recent: &VecDeque<(UnixNanos, ControlEvent)>,
        clean: bool,
    ) {
        if clean {
            // The final write is the changelog hook's.
            return;
        }
        let owner = &self.0;
        let now = engine.now();
        let decided: BTreeSet<i32> = recent
            .iter()
            .filter(|(at, _)| *at == now)
            .map(|(_, e)| owner.partition_of(&e.subject))
            .collect();
        {
            let mut parts = owner.parts.lock();
            for (p, part) in parts.iter_mut() {
                part.outbox = recent
                    .iter()
                    .filter(|(_, e)| owner.partition_of(&e.subject) == *p)
                    .map(|(at, e)| (*at, e.to_json()))
                    .collect();
            }
        }
        let ps: Vec<i32> = decided.into_iter().collect();
        // The decide hook holds the policy only while it steps: taking it here (after the
        // engine, which the shard holds) keeps the lock order.
        let pending = owner.snapshot(engine, &owner.policy.lock(), &ps);
        owner.write_all(pending);
    }

    fn take_republish(&mut self) -> Vec<(UnixNanos, String)> {
        std::mem::take(&mut *self.0.republish.lock())
    }
}

/// Writes every owned partition's state every `every` of engine time (snapshots on the engine
/// thread, writes on its own), and all of them synchronously at a clean stop.
#[derive(Debug)]
pub struct ChangelogHook {
    owner: Arc<Owner>,
    every: Duration,
    last: UnixNanos,
    busy: Arc<AtomicBool>,
    tx: Option<SyncSender<Vec<Pending>>>,
    thread: Option<JoinHandle<()>>,
}

impl ChangelogHook {
    /// Starts the writer thread.
    pub fn start(owner: Arc<Owner>, every: Duration) -> std::io::Result<Self> {
        let (tx, rx): (SyncSender<Vec<Pending>>, Receiver<Vec<Pending>>) =
            std::sync::mpsc::sync_channel(1);
        let busy = Arc::new(AtomicBool::new(false));
        let thread = {
            let (owner, busy) = (owner.clone(), busy.clone());
            std::thread::Builder::new()
                .name("trike-changelog".into())
                .spawn(move || {
                    while let Ok(pending) = rx.recv() {
                        owner.write_all(pending);
                        busy.store(false, Relaxed);
                    }
                })?
        };
        Ok(Self {
            owner,
            every,
            last: 0,
            busy,
            tx: Some(tx),
            thread: Some(thread),
        })
    }

    fn snapshot_all(&self, engine: &Engine) -> Vec<Pending> {
        let ps = self.owner.owned();
        let policy = self.owner.policy.lock();
        self.owner.snapshot(engine, &policy, &ps)
    }
}

impl Hook for ChangelogHook {
    fn on_tick(&mut self, tick: &mut Tick<'_>) {
        let now = tick.engine.now();
        if self.last == 0 {
            self.last = now;
        }
        // Due, and the writer has finished the previous round (else it stays due).
        if now < self.last + self.every.as_nanos() as u64 || self.busy.load(Relaxed) {
            return;
        }
        let Some(tx) = &self.tx else { return };
        self.last = now;
        self.busy.store(true, Relaxed);
        match tx.try_send(self.snapshot_all(tick.engine)) {
            Ok(()) => {}
            Err(TrySendError::Full(_) | TrySendError::Disconnected(_)) => {
                self.busy.store(false, Relaxed);
            }
        }
    }

    fn on_finish(&mut self, tick: &mut Tick<'_>) {
        self.tx = None;
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
        let pending = self.snapshot_all(tick.engine);
        self.owner.write_all(pending);
    }
}
