//! A processor's partitions: which partitions of `trike.partials` it owns, their state in
//! `trike.changelog`, and the moves between processors (DESIGN §6).
//!
//! A partition's state goes on the changelog as a full state every [`FULL_EVERY`] writes and
//! as a change set (the buckets changed since the previous write, [`Engine::take_changes`])
//! in between; after an assignment and after a failed write the next one is full. Change sets
//! chain, so they are written in the order they were taken: every snapshot joins its
//! partition's queue when it is taken (on the engine thread, under the engine's lock), and a
//! writer writes the queue up to its own snapshot.
//!
//! Three writers put a partition's state on the changelog:
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

use crate::fleet::changelog::{Changelog, PartitionState, Restored};
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
use trike_engine::anomaly::SliWatch;
use trike_engine::forecast::Forecasts;
use trike_engine::policy::{PolicyEngine, PolicySnapshot};
use trike_engine::{Engine, UnixNanos};
use trike_ingest::kafka::PartitionOwner;
use trike_ingest::kafka::progress::{PartitionKey, Progress};
use trike_sinks::ControlEvent;

/// Writes between two full states of a partition at most: the first, then change sets (at the
/// default `checkpoint_every` of 10 s, a full state every 5 minutes at least). A full state
/// comes sooner once the change sets written since the last one add up to its size, so a
/// restore never reads more than 2 full states. (It was half the size while busy series'
/// change sets carried their 1 s digests; in compact CBOR a full state is small enough that
/// half of it is reached by a few change sets of a young partition.)
pub const FULL_EVERY: u32 = 30;

/// What the owner knows of one partition it holds (or held until the rebalance under way).
#[derive(Debug, Default)]
struct Part {
    /// Assigned now (false between a revocation and the assignment that follows it).
    owned: bool,
    /// This processor's owner token for the partition (from its claim; 0: not claimed yet,
    /// claimed before the next write).
    owner: u64,
    /// Generation of the newest full state taken (written or not yet).
    generation: u64,
    /// Change sets taken on top of it.
    changes: u32,
    /// Bytes of the newest full state written.
    full_bytes: u64,
    /// Bytes of the change sets written since.
    change_bytes: u64,
    /// The next snapshot must be a full state: after an assignment, or when a write failed
    /// (the change sets taken after the one that failed would not chain).
    need_full: bool,
    /// Keys of the change sets written since the newest full state written: deleted when the
    /// next full state is written.
    change_keys: Vec<String>,
    /// Keys of records the next full state supersedes (older full states' change sets, and
    /// every record read at the restore), deleted once it is written.
    stale_keys: Vec<String>,
    /// The offset the newest write (or the restore) covers.
    offset: i64,
    /// Its services' control events of the last minute.
    outbox: Vec<(UnixNanos, String)>,
    /// Snapshots taken and not written yet, oldest first.
    queue: VecDeque<Pending>,
}

/// What a snapshot holds.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Kind {
    /// The full state of this generation.
    Full(u64),
    /// Change set `.1` on top of full state `.0`.
    Changes(u64, u32),
}

/// A snapshot to write.
#[derive(Debug)]
struct Pending {
    seq: u64,
    kind: Kind,
    state: PartitionState,
}

/// A snapshot taken: its partition and its place in the order snapshots were taken.
#[derive(Clone, Copy, Debug)]
pub struct Taken {
    partition: i32,
    seq: u64,
}

/// Owns the processor's partitions of the partials topic.
pub struct Owner {
    topic: String,
    partitions: i32,
    engine: EngineWriter,
    policy: Arc<Mutex<PolicyEngine>>,
    /// The services' anomaly detectors (locked after the policy).
    watch: Arc<Mutex<SliWatch>>,
    /// The decide hook's forecasts, when they move with their partitions.
    forecasts: Option<Arc<Mutex<Forecasts>>>,
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
    /// murmur2) for the shard whose engine is `engine`, policy `policy` and anomaly watch
    /// `watch`.
    pub fn new(
        topic: &str,
        partitions: i32,
        engine: EngineWriter,
        policy: Arc<Mutex<PolicyEngine>>,
        watch: Arc<Mutex<SliWatch>>,
        progress: Arc<Progress>,
        changelog: Arc<Changelog>,
    ) -> Self {
        engine.lock().track_changes();
        Self {
            topic: topic.into(),
            partitions,
            engine,
            policy,
            watch,
            forecasts: None,
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

    /// The partitions' records carry their services' capacity forecasts too.
    pub fn with_forecasts(mut self, forecasts: Arc<Mutex<Forecasts>>) -> Self {
        self.forecasts = Some(forecasts);
        self
    }

    /// The changelog (its counters).
    pub fn changelog(&self) -> &Changelog {
        &self.changelog
    }

    /// Snapshots `ps` (owned ones only) from `engine` and `policy`, which the caller holds
    /// locked, between batches (so the applied offsets match the state): a full state or the
    /// changes since the previous snapshot, queued in the order taken.
    fn snapshot(&self, engine: &mut Engine, policy: &PolicyEngine, ps: &[i32]) -> Vec<Taken> {
        let oldest = engine.now().saturating_sub(OUTBOX_AGE.as_nanos() as u64);
        let watch = self.watch.lock();
        let forecasts = self.forecasts.as_ref().map(|f| f.lock());
        let mut parts = self.parts.lock();
        let mut taken = Vec::new();
        for &p in ps {
            let Some(part) = parts.get_mut(&p).filter(|x| x.owned) else {
                continue;
            };
            let n = self.partitions;
            let mine = move |s: &str| partition_of(s, n) == p;
            let full = part.need_full
                || part.changes + 1 >= FULL_EVERY
                || part.change_bytes >= part.full_bytes;
            let (kind, engine_state) = if full {
                let state = engine.snapshot_of(mine);
                engine.clear_changes(mine);
                part.generation += 1;
                part.changes = 0;
                part.need_full = false;
                (Kind::Full(part.generation), state)
            } else {
                part.changes += 1;
                (
                    Kind::Changes(part.generation, part.changes),
                    engine.take_changes(mine),
                )
            };
            let seq = self.seq.fetch_add(1, Relaxed) + 1;
            part.queue.push_back(Pending {
                seq,
                kind,
                state: PartitionState {
                    partition: p,
                    offset: self
                        .progress
                        .applied_of(&self.topic, p)
                        .unwrap_or(part.offset)
                        .max(part.offset),
                    engine: engine_state,
                    policy: policy.snapshot_of(mine),
                    watch: watch.snapshot_of(mine),
                    forecasts: forecasts
                        .as_ref()
                        .map(|f| f.snapshot_of(mine))
                        .unwrap_or_default(),
                    outbox: part
                        .outbox
                        .iter()
                        .filter(|(at, _)| *at >= oldest)
                        .cloned()
                        .collect(),
                },
            });
            taken.push(Taken { partition: p, seq });
        }
        taken
    }

    /// Writes `t`'s partition's queue up to `t` (older snapshots first: change sets chain);
    /// reports the offset written as durable. A partition no longer owned writes nothing.
    fn write(&self, t: Taken) -> Result<(), String> {
        let _one_at_a_time = self.write.lock();
        let p = t.partition;
        loop {
            let (pending, stale, owner) = {
                let mut parts = self.parts.lock();
                let Some(part) = parts.get_mut(&p) else {
                    return Ok(());
                };
                if !part.owned {
                    part.queue.clear();
                    return Ok(());
                }
                match part.queue.front() {
                    Some(w) if w.seq <= t.seq => {}
                    _ => return Ok(()),
                }
                let w = part.queue.pop_front().expect("front");
                let stale = if matches!(w.kind, Kind::Full(_)) {
                    std::mem::take(&mut part.stale_keys)
                } else {
                    Vec::new()
                };
                (w, stale, part.owner)
            };
            let (pending, stale, owner) = match self.claimed(p, owner) {
                Ok(o) => (pending, stale, o),
                Err(e) => {
                    let mut parts = self.parts.lock();
                    if let Some(part) = parts.get_mut(&p) {
                        part.stale_keys.extend(stale);
                        part.queue.retain(|w| matches!(w.kind, Kind::Full(_)));
                        part.need_full = true;
                    }
                    return Err(e);
                }
            };
            let written = match pending.kind {
                Kind::Full(g) => self
                    .changelog
                    .write(&pending.state, owner, g)
                    .map(|bytes| (Vec::new(), bytes)),
                Kind::Changes(g, k) => self.changelog.write_changes(&pending.state, owner, g, k),
            };
            let mut parts = self.parts.lock();
            let Some(part) = parts.get_mut(&p) else {
                return Ok(());
            };
            match written {
                Ok((keys, bytes)) => {
                    if matches!(pending.kind, Kind::Full(_)) {
                        part.full_bytes = bytes;
                        part.change_bytes = 0;
                        // The previous full state's change sets are superseded: delete them
                        // (and any left from before).
                        let mut old = std::mem::take(&mut part.change_keys);
                        old.extend(stale);
                        drop(parts);
                        if !old.is_empty() {
                            self.changelog.delete(p, &old);
                        }
                    } else {
                        part.change_keys.extend(keys);
                        part.change_bytes += bytes;
                        drop(parts);
                    }
                    self.progress
                        .durable(&[(self.topic.clone(), p, pending.state.offset)]);
                    if let Some(part) = self.parts.lock().get_mut(&p) {
                        part.offset = part.offset.max(pending.state.offset);
                    }
                }
                Err(e) => {
                    // The change sets queued after this one do not chain any more: drop them;
                    // the next snapshot is a full state.
                    part.stale_keys.extend(stale);
                    part.queue.retain(|w| matches!(w.kind, Kind::Full(_)));
                    part.need_full = true;
                    return Err(e);
                }
            }
        }
    }

    /// `owner`, or when the partition was not claimed yet (the claim at its assignment
    /// failed), a claim made now: its records always carry a token.
    fn claimed(&self, p: i32, owner: u64) -> Result<u64, String> {
        if owner != 0 {
            return Ok(owner);
        }
        let o = self.changelog.claim(p)?;
        if let Some(part) = self.parts.lock().get_mut(&p) {
            part.owner = o;
        }
        Ok(o)
    }

    fn write_all(&self, taken: Vec<Taken>) {
        for t in taken {
            if let Err(e) = self.write(t) {
                tracing::error!(partition = t.partition, error = %e, "writing the partition's state to the changelog");
            }
        }
    }

    /// Claims a newly assigned partition and reads its state (the claim first: whatever the
    /// previous owner writes after it is fenced), retrying a failing broker a few times.
    /// Returns the owner token (0 when the claim failed: the first write claims) and the state.
    fn restore(&self, p: i32) -> (u64, Option<Restored>) {
        let mut owner = 0;
        for attempt in 1..=3 {
            if owner == 0 {
                match self.changelog.claim(p) {
                    Ok(o) => owner = o,
                    Err(e) => {
                        tracing::error!(partition = p, attempt, error = %e, "claiming the partition on the changelog");
                        std::thread::sleep(Duration::from_millis(500));
                        continue;
                    }
                }
            }
            match self.changelog.read(p) {
                Ok(s) => return (owner, s),
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
        (owner, None)
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
            self.watch.lock().drop_services(&left);
            if let Some(f) = &self.forecasts {
                f.lock().drop_services(&left);
            }
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
            let (owner, restored) = self.restore(p);
            let mut part = Part {
                owned: true,
                need_full: true,
                owner,
                ..Part::default()
            };
            if let Some(restored) = restored {
                let Restored {
                    generation,
                    full,
                    changes,
                    superseded,
                    ..
                } = restored;
                let latest = changes.last().unwrap_or(&full);
                let (offset, outbox) = (latest.offset, latest.outbox.clone());
                let change_sets = changes.len();
                let mut engine = self.engine.lock();
                let mut policy = self.policy.lock();
                let mut watch = self.watch.lock();
                let n = self.partitions;
                let mine = move |s: &str| partition_of(s, n) == p;
                let mut series = 0;
                let mut usable = true;
                for (i, state) in std::iter::once(full).chain(changes).enumerate() {
                    let applied = if i == 0 {
                        engine.merge(state.engine)
                    } else {
                        engine.apply_changes(state.engine)
                    };
                    match applied {
                        Ok(n) => series = series.max(n),
                        Err(e) => {
                            tracing::error!(partition = p, error = %e, "the changelog's engine state is not usable: the partition starts without it");
                            usable = false;
                            break;
                        }
                    }
                    for rule in policy.merge(state.policy) {
                        tracing::warn!(%rule, partition = p, "changelog policy state of a rule no longer configured dropped");
                    }
                    // Each record carries the partition's detectors and forecasts whole: the
                    // newest wins.
                    watch.drop_services(mine);
                    watch.merge(state.watch);
                    if let Some(f) = &self.forecasts {
                        let mut f = f.lock();
                        f.drop_services(mine);
                        f.merge(state.forecasts);
                    }
                }
                if !usable {
                    engine.drop_services(mine);
                    policy.drop_services(mine);
                    watch.drop_services(mine);
                    if let Some(f) = &self.forecasts {
                        f.lock().drop_services(mine);
                    }
                }
                drop(watch);
                drop(policy);
                drop(engine);
                if usable {
                    self.republish.lock().extend(outbox.iter().cloned());
                    part.generation = generation;
                    part.offset = offset;
                    part.outbox = outbox;
                    part.stale_keys = superseded;
                    let stats = &self.changelog.stats;
                    stats.last_restore_series.store(series as u64, Relaxed);
                    tracing::info!(
                        partition = p,
                        generation,
                        change_sets,
                        offset,
                        series,
                        took_ms = started.elapsed().as_millis() as u64,
                        "partition state restored from the changelog"
                    );
                    out.push(((self.topic.clone(), p), offset));
                }
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
        let taken = {
            let mut engine = self.engine.lock();
            let policy = self.policy.lock();
            self.snapshot(&mut engine, &policy, &ps)
        };
        self.write_all(taken);
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
        engine: &mut Engine,
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
    tx: Option<SyncSender<Vec<Taken>>>,
    thread: Option<JoinHandle<()>>,
}

impl ChangelogHook {
    /// Starts the writer thread.
    pub fn start(owner: Arc<Owner>, every: Duration) -> std::io::Result<Self> {
        let (tx, rx): (SyncSender<Vec<Taken>>, Receiver<Vec<Taken>>) =
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

    fn snapshot_all(&self, engine: &mut Engine) -> Vec<Taken> {
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
