//! The checkpoint hook: takes engine checkpoints (with the Kafka offsets they cover) on the
//! engine thread every `state.checkpoint_every` of clock time and writes them on its own
//! thread; at a clean stop it writes a last one synchronously.

use crate::checkpoint::{ENGINE_FILE, EngineCheckpoint, VERSION, encode, write_atomic};
use crate::hook::{Hook, Tick};
use parking_lot::{Condvar, Mutex};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};
use trike_engine::anomaly::SliWatch;
use trike_engine::expo::{counter, gauge};
use trike_engine::forecast::Forecasts;
use trike_engine::{Engine, UnixNanos};
use trike_ingest::kafka::progress::Progress;

/// The decide hook's learned models: its anomaly watch and its forecasts.
type Learned = (Arc<Mutex<SliWatch>>, Arc<Mutex<Forecasts>>);

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

impl CheckpointStats {
    /// Renders the checkpoint families.
    pub fn render(&self, out: &mut String) {
        counter(
            out,
            "trike_checkpoints_total",
            "Engine checkpoints written to state.dir.",
            self.written.load(Relaxed),
        );
        counter(
            out,
            "trike_checkpoint_failures_total",
            "Engine checkpoints that failed to write.",
            self.failed.load(Relaxed),
        );
        gauge(
            out,
            "trike_checkpoint_bytes",
            "Size of the newest engine checkpoint.",
            self.last_bytes.load(Relaxed) as f64,
        );
        gauge(
            out,
            "trike_checkpoint_duration_seconds",
            "Time the newest engine checkpoint took to encode and write.",
            self.last_ms.load(Relaxed) as f64 / 1000.0,
        );
    }
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
    /// Engine time of the last hand-off (0: none yet).
    last: UnixNanos,
    progress: Option<Arc<Progress>>,
    slot: Arc<Slot>,
    thread: Option<JoinHandle<()>>,
    /// The decide hook's learned models, when checkpoints carry them.
    models: Option<Learned>,
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
            last: 0,
            progress,
            slot,
            thread: Some(thread),
            models: None,
            stats,
        })
    }

    /// Checkpoints carry these learned models too (the decide hook's anomaly watch and
    /// forecasts).
    pub fn with_models(
        mut self,
        watch: Arc<Mutex<SliWatch>>,
        forecasts: Arc<Mutex<Forecasts>>,
    ) -> Self {
        self.models = Some((watch, forecasts));
        self
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
        let all = |_: &str| true;
        EngineCheckpoint {
            version: VERSION,
            engine: engine.snapshot(),
            offsets,
            watch: self
                .models
                .as_ref()
                .map(|(w, _)| w.lock().snapshot_of(all))
                .unwrap_or_default(),
            forecasts: self
                .models
                .as_ref()
                .map(|(_, f)| f.lock().snapshot_of(all))
                .unwrap_or_default(),
        }
    }

    /// Hands a checkpoint to the writer when one is due and the writer is free; a due round
    /// the writer cannot take yet stays due.
    pub fn maybe(&mut self, engine: &Engine) -> Handoff {
        let now = engine.now();
        if self.last == 0 {
            // The first round is due one interval after start-up.
            self.last = now;
        }
        if now < self.last + self.every.as_nanos() as u64 {
            return Handoff::NotDue;
        }
        if !self.slot.is_free() {
            return Handoff::Pending;
        }
        self.last = now;
        self.slot.offer(self.take(engine));
        Handoff::Sent
    }

    /// Writes a last checkpoint synchronously and stops the writer (at shutdown).
    pub fn finish(&mut self, engine: &Engine) {
        self.slot.close();
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
        let c = self.take(engine);
        write_engine(&self.dir, &c, self.progress.as_deref(), &self.stats);
    }
}

impl Hook for Checkpointer {
    fn on_tick(&mut self, tick: &mut Tick<'_>) {
        self.maybe(tick.engine);
    }

    fn on_finish(&mut self, tick: &mut Tick<'_>) {
        self.finish(tick.engine);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::checkpoint::load_engine;
    use crate::checkpoint::tests::dir;

    /// Scenario: the engine thread asks for a checkpoint on every tick (due every time) while
    /// the writer is busy writing the last one.
    /// Guarantees: a round is either handed over or stays due (`Pending`), never dropped:
    /// every checkpoint handed over is written, and the last one written holds the newest
    /// state. (The old rendezvous hand-off dropped a round whenever the writer was not
    /// waiting at that instant, and then waited a whole interval.)
    #[test]
    fn due_rounds_are_written_or_stay_due() {
        let d = dir("handoff");
        let mut c = Checkpointer::start(d.clone(), Duration::from_nanos(1), None).unwrap();
        let mut e = Engine::new(Arc::new(trike_engine::EngineConfig::default()));
        let (mut sent, mut pending) = (0u64, 0u64);
        let mut t = 1_800_000_000_000_000_000u64;
        e.advance(t);
        assert_eq!(
            c.maybe(&e),
            Handoff::NotDue,
            "the first round is an interval away"
        );
        let started = Instant::now();
        // At least 300 ms, and until two rounds were handed over (a loaded machine's writer
        // can take longer than that over one fsynced checkpoint).
        while started.elapsed() < Duration::from_millis(300)
            || (sent < 2 && started.elapsed() < Duration::from_secs(20))
        {
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
}
