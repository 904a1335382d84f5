//! Checkpoints of the processor's state in `state.dir`, so a restart, or a crash, resumes where
//! the process was instead of from empty windows.
//!
//! Two files, each written atomically (temporary file, fsync, rename, fsync of the directory:
//! a reader sees the old file or the new one, never half of one):
//! - `engine.ckpt`: the engine's state together with the Kafka offsets it covers, written every
//!   `state.checkpoint_every` on a writer thread. The Kafka source commits offsets only up to
//!   the newest durable one, and after a restart skips the messages it already holds, so data
//!   read from Kafka is counted exactly once across a crash.
//! - `policy.ckpt`: the policy's episodes and cool-downs and the control events of the last
//!   minute (the outbox). It is written *before* new control events go to the sinks, so a
//!   restarted processor never decides the same thing again under a new id; the outbox is
//!   published again after a crash (same ids: actuators execute an id once), so an event the
//!   crash caught before delivery is not lost.
//!
//! The encoding is CBOR (serde): compact, self-describing, and versioned by [`VERSION`].

use parking_lot::{Condvar, Mutex};
use serde::{Deserialize, Serialize};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};
use trike_engine::policy::PolicySnapshot;
use trike_engine::{Engine, Snapshot, UnixNanos};
use trike_ingest::kafka::progress::Progress;

/// Format version of both files.
pub const VERSION: u32 = 1;
/// The engine checkpoint's file name.
pub const ENGINE_FILE: &str = "engine.ckpt";
/// The policy checkpoint's file name.
pub const POLICY_FILE: &str = "policy.ckpt";

/// Kafka offsets: (topic, partition, next offset to apply).
pub type Offsets = Vec<(String, i32, i64)>;

/// `engine.ckpt`.
#[derive(Debug, Serialize, Deserialize)]
pub struct EngineCheckpoint {
    /// [`VERSION`].
    pub version: u32,
    /// The engine's state.
    pub engine: Snapshot,
    /// The Kafka offsets whose messages the state holds.
    pub offsets: Offsets,
}

/// `policy.ckpt`.
#[derive(Debug, Serialize, Deserialize)]
pub struct PolicyCheckpoint {
    /// [`VERSION`].
    pub version: u32,
    /// The policy's state.
    pub policy: PolicySnapshot,
    /// Control events of the last minute, as JSON text, with their engine time.
    pub outbox: Vec<(UnixNanos, String)>,
}

/// Writes `bytes` to `path` so that readers see the old content or the new, never a mix.
pub fn write_atomic(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    let dir = path.parent().unwrap_or(Path::new("."));
    let tmp = path.with_extension("tmp");
    {
        let mut f = std::fs::File::create(&tmp)?;
        f.write_all(bytes)?;
        f.sync_all()?;
    }
    std::fs::rename(&tmp, path)?;
    std::fs::File::open(dir)?.sync_all()
}

fn encode<T: Serialize>(value: &T) -> std::io::Result<Vec<u8>> {
    let mut out = Vec::new();
    ciborium::into_writer(value, &mut out).map_err(std::io::Error::other)?;
    Ok(out)
}

fn load<T: for<'de> Deserialize<'de>>(path: &Path) -> anyhow::Result<Option<T>> {
    let bytes = match std::fs::read(path) {
        Ok(b) => b,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => anyhow::bail!("reading checkpoint {}: {e}", path.display()),
    };
    ciborium::from_reader(bytes.as_slice())
        .map(Some)
        .map_err(|e| {
            anyhow::anyhow!(
                "checkpoint {} is unreadable ({e}); move it away to start with empty state",
                path.display()
            )
        })
}

/// A checkpoint file's format version.
trait Versioned {
    fn version(&self) -> u32;
}

impl Versioned for EngineCheckpoint {
    fn version(&self) -> u32 {
        self.version
    }
}

impl Versioned for PolicyCheckpoint {
    fn version(&self) -> u32 {
        self.version
    }
}

fn load_versioned<T: for<'de> Deserialize<'de> + Versioned>(
    path: &Path,
) -> anyhow::Result<Option<T>> {
    match load::<T>(path)? {
        Some(c) if c.version() != VERSION => anyhow::bail!(
            "checkpoint {} has format {} (this build reads {VERSION}); move it away to start with empty state",
            path.display(),
            c.version()
        ),
        c => Ok(c),
    }
}

/// Loads `dir/engine.ckpt` when there is one.
pub fn load_engine(dir: &Path) -> anyhow::Result<Option<EngineCheckpoint>> {
    load_versioned(&dir.join(ENGINE_FILE))
}

/// Loads `dir/policy.ckpt` when there is one.
pub fn load_policy(dir: &Path) -> anyhow::Result<Option<PolicyCheckpoint>> {
    load_versioned(&dir.join(POLICY_FILE))
}

/// Writes `policy.ckpt` now (on the caller's thread: it is small, and must be durable before
/// the events it lists are published).
pub fn save_policy(dir: &Path, c: &PolicyCheckpoint) -> std::io::Result<()> {
    write_atomic(&dir.join(POLICY_FILE), &encode(c)?)
}

/// Checkpoint counters for `/metrics`.
#[derive(Debug, Default)]
pub struct CheckpointStats {
    /// Engine checkpoints written.
    pub written: AtomicU64,
    /// Engine checkpoints that failed.
    pub failed: AtomicU64,
    /// Size of the newest engine checkpoint, bytes.
    pub last_bytes: AtomicU64,
    /// Time the newest engine checkpoint took to encode and write, milliseconds.
    pub last_ms: AtomicU64,
}

/// The hand-off between the engine thread and the writer: room for one checkpoint. It holds
/// one from the moment the engine thread offers it until the writer has written it, so the
/// engine thread takes a snapshot only when the writer can take it, and a due round is never
/// dropped: while one is pending the round is retried on the next tick.
#[derive(Debug, Default)]
struct Slot {
    state: Mutex<SlotState>,
    changed: Condvar,
}

#[derive(Debug, Default)]
struct SlotState {
    /// Offered, not yet taken by the writer.
    offered: Option<EngineCheckpoint>,
    /// Taken, being written.
    writing: bool,
    /// No more offers: the writer ends once the slot is empty.
    closed: bool,
}

impl Slot {
    /// True when nothing is offered or being written.
    fn is_free(&self) -> bool {
        let s = self.state.lock();
        s.offered.is_none() && !s.writing
    }

    fn offer(&self, c: EngineCheckpoint) {
        self.state.lock().offered = Some(c);
        self.changed.notify_all();
    }

    fn close(&self) {
        self.state.lock().closed = true;
        self.changed.notify_all();
    }

    /// The writer's side: the next checkpoint, or None once closed and empty.
    fn take(&self) -> Option<EngineCheckpoint> {
        let mut s = self.state.lock();
        s.writing = false;
        loop {
            if let Some(c) = s.offered.take() {
                s.writing = true;
                return Some(c);
            }
            if s.closed {
                return None;
            }
            self.changed.wait(&mut s);
        }
    }
}

/// What [`Checkpointer::maybe`] did.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Handoff {
    /// Not due yet.
    NotDue,
    /// Due, but the writer still has the previous one: retried on the next call.
    Pending,
    /// Taken and handed to the writer.
    Sent,
}

/// Takes engine checkpoints on the engine thread and writes them on its own thread.
#[derive(Debug)]
pub struct Checkpointer {
    dir: PathBuf,
    every: Duration,
    last: Instant,
    progress: Option<Arc<Progress>>,
    slot: Arc<Slot>,
    thread: Option<JoinHandle<()>>,
    /// Counters.
    pub stats: Arc<CheckpointStats>,
}

fn write_engine(
    dir: &Path,
    c: &EngineCheckpoint,
    progress: Option<&Progress>,
    stats: &CheckpointStats,
) {
    let started = Instant::now();
    let result = encode(c).and_then(|bytes| {
        write_atomic(&dir.join(ENGINE_FILE), &bytes)?;
        Ok(bytes.len())
    });
    match result {
        Ok(n) => {
            if let Some(p) = progress {
                p.durable(&c.offsets);
            }
            stats.written.fetch_add(1, Relaxed);
            stats.last_bytes.store(n as u64, Relaxed);
            stats
                .last_ms
                .store(started.elapsed().as_millis() as u64, Relaxed);
        }
        Err(e) => {
            stats.failed.fetch_add(1, Relaxed);
            tracing::error!(dir = %dir.display(), error = %e, "writing the engine checkpoint");
        }
    }
}

impl Checkpointer {
    /// A checkpointer writing to `dir` every `every`; `progress` (the Kafka source's) supplies
    /// the offsets and learns when they are durable.
    pub fn start(
        dir: PathBuf,
        every: Duration,
        progress: Option<Arc<Progress>>,
    ) -> std::io::Result<Self> {
        std::fs::create_dir_all(&dir)?;
        let stats = Arc::new(CheckpointStats::default());
        let slot = Arc::new(Slot::default());
        let thread = {
            let (dir, progress, stats, slot) =
                (dir.clone(), progress.clone(), stats.clone(), slot.clone());
            std::thread::Builder::new()
                .name("trike-checkpoint".into())
                .spawn(move || {
                    while let Some(c) = slot.take() {
                        write_engine(&dir, &c, progress.as_deref(), &stats);
                    }
                })?
        };
        Ok(Self {
            dir,
            every,
            last: Instant::now(),
            progress,
            slot,
            thread: Some(thread),
            stats,
        })
    }

    /// The checkpoint directory.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    fn take(&self, engine: &Engine) -> EngineCheckpoint {
        // Read on the engine thread between batches: the offsets match the state exactly.
        let offsets = self
            .progress
            .as_ref()
            .map(|p| p.applied())
            .unwrap_or_default();
        EngineCheckpoint {
            version: VERSION,
            engine: engine.snapshot(),
            offsets,
        }
    }

    /// Hands a checkpoint to the writer when one is due and the writer is free; a due round
    /// the writer cannot take yet stays due.
    pub fn maybe(&mut self, engine: &Engine) -> Handoff {
        if self.last.elapsed() < self.every {
            return Handoff::NotDue;
        }
        if !self.slot.is_free() {
            return Handoff::Pending;
        }
        self.last = Instant::now();
        self.slot.offer(self.take(engine));
        Handoff::Sent
    }

    /// Writes a last checkpoint synchronously and stops the writer (at shutdown).
    pub fn finish(mut self, engine: &Engine) {
        self.slot.close();
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
        let c = self.take(engine);
        write_engine(&self.dir, &c, self.progress.as_deref(), &self.stats);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use trike_engine::policy::{Policy, PolicyEngine};

    fn dir(name: &str) -> PathBuf {
        let d = std::env::temp_dir().join(format!("trike-ckpt-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&d);
        std::fs::create_dir_all(&d).unwrap();
        d
    }

    /// Guarantees: a policy checkpoint reads back as written; a half-written temporary file
    /// left by a crash is ignored (the rename is the commit point).
    #[test]
    fn policy_checkpoint_round_trips_and_ignores_leftover_temporaries() {
        let d = dir("roundtrip");
        let c = PolicyCheckpoint {
            version: VERSION,
            policy: PolicyEngine::new(Policy::new(vec![])).snapshot(),
            outbox: vec![(7, "{\"id\":\"a\"}".into())],
        };
        save_policy(&d, &c).unwrap();
        std::fs::write(d.join("policy.tmp"), b"\xff\x00half").unwrap();
        let back = load_policy(&d).unwrap().unwrap();
        assert_eq!(back.outbox, c.outbox);
        assert_eq!(back.policy, c.policy);
        assert!(
            load_engine(&d).unwrap().is_none(),
            "no engine checkpoint yet"
        );
        let _ = std::fs::remove_dir_all(&d);
    }

    /// Scenario: the engine thread asks for a checkpoint on every tick (due every time) while
    /// the writer is busy writing the last one.
    /// Guarantees: a round is either handed over or stays due (`Pending`), never dropped:
    /// every checkpoint handed over is written, and the last one written holds the newest
    /// state. (The old rendezvous hand-off dropped a round whenever the writer was not
    /// waiting at that instant, and then waited a whole interval.)
    #[test]
    fn due_rounds_are_written_or_stay_due() {
        let d = dir("handoff");
        let mut c = Checkpointer::start(d.clone(), Duration::ZERO, None).unwrap();
        let mut e = Engine::new(Arc::new(trike_engine::EngineConfig::default()));
        let (mut sent, mut pending) = (0u64, 0u64);
        let started = Instant::now();
        let mut t = 1_800_000_000_000_000_000u64;
        while started.elapsed() < Duration::from_millis(300) {
            t += 1_000_000;
            e.advance(t);
            match c.maybe(&e) {
                Handoff::Sent => sent += 1,
                Handoff::Pending => pending += 1,
                Handoff::NotDue => panic!("due every time"),
            }
        }
        assert!(sent >= 2, "{sent} sent, {pending} pending");
        let stats = c.stats.clone();
        c.finish(&e);
        assert_eq!(
            stats.written.load(Relaxed),
            sent + 1,
            "every hand-off was written"
        );
        assert_eq!(stats.failed.load(Relaxed), 0);
        let back = load_engine(&d).unwrap().unwrap();
        assert_eq!(
            back.engine,
            e.snapshot(),
            "the final state was written last"
        );
        let _ = std::fs::remove_dir_all(&d);
    }

    /// Guarantees: an unreadable or foreign-version checkpoint stops the start with an error
    /// that names the file and what to do, instead of silently starting empty.
    #[test]
    fn unreadable_or_other_version_checkpoints_are_clear_errors() {
        let d = dir("bad");
        std::fs::write(d.join(ENGINE_FILE), b"not cbor at all").unwrap();
        let e = load_engine(&d).unwrap_err().to_string();
        assert!(
            e.contains("engine.ckpt") && e.contains("move it away"),
            "{e}"
        );
        let c = PolicyCheckpoint {
            version: VERSION + 1,
            policy: PolicyEngine::new(Policy::new(vec![])).snapshot(),
            outbox: vec![],
        };
        save_policy(&d, &c).unwrap();
        let e = load_policy(&d).unwrap_err().to_string();
        assert!(e.contains(&format!("format {}", VERSION + 1)), "{e}");
        let _ = std::fs::remove_dir_all(&d);
    }
}
