//! The engine's thread: drains the bounded ingest queue into the engine and moves time.
//!
//! Receivers submit batches without blocking; when the queued observations would exceed the
//! bound, the batch is refused and the client is told to retry (429 / RESOURCE_EXHAUSTED).
//! This is the one place that reads the wall clock for the engine.

use crate::checkpoint::Checkpointer;
use crate::decide::Decider;
use parking_lot::Mutex;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering::Relaxed};
use std::sync::mpsc::{Receiver, RecvTimeoutError, SyncSender, TrySendError, sync_channel};
use std::thread::JoinHandle;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};
use trike_engine::{Batch, Engine, EngineConfig, UnixNanos};
use trike_ingest::pipeline::Ack;
use trike_ingest::{BatchSink, Overloaded};

/// Upper bounds (seconds) of the queue-delay histogram buckets.
pub const DELAY_BUCKETS_S: [f64; 10] = [
    0.0001, 0.0005, 0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 1.0,
];

/// Wall-clock now in Unix nanoseconds.
pub fn now_nanos() -> UnixNanos {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos() as u64)
}

/// Queue and apply statistics.
#[derive(Debug, Default)]
pub struct WorkerStats {
    /// Observations waiting in the queue.
    pub queued: AtomicUsize,
    /// Batches applied.
    pub batches: AtomicU64,
    /// Histogram of submit → applied delay: per bucket counts (cumulative at render time).
    pub delay_counts: [AtomicU64; DELAY_BUCKETS_S.len() + 1],
    /// Sum of delays in nanoseconds.
    pub delay_sum_ns: AtomicU64,
}

impl WorkerStats {
    fn record_delay(&self, d: Duration) {
        let s = d.as_secs_f64();
        let i = DELAY_BUCKETS_S
            .iter()
            .position(|b| s <= *b)
            .unwrap_or(DELAY_BUCKETS_S.len());
        self.delay_counts[i].fetch_add(1, Relaxed);
        self.delay_sum_ns.fetch_add(d.as_nanos() as u64, Relaxed);
    }
}

struct Queued {
    at: Instant,
    batch: Batch,
    ack: Option<Ack>,
}

/// The receivers' side of the queue.
#[derive(Debug)]
pub struct QueueSink {
    tx: SyncSender<Queued>,
    capacity: usize,
    stats: Arc<WorkerStats>,
}

impl std::fmt::Debug for Queued {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Queued")
            .field("len", &self.batch.len())
            .finish()
    }
}

impl QueueSink {
    /// Observations the queue holds at most.
    pub fn capacity(&self) -> usize {
        self.capacity
    }
}

impl BatchSink for QueueSink {
    fn submit(&self, batch: Batch, ack: Option<Ack>) -> Result<(), Overloaded> {
        let n = batch.len();
        let before = self.stats.queued.fetch_add(n, Relaxed);
        if before + n > self.capacity && before > 0 {
            self.stats.queued.fetch_sub(n, Relaxed);
            return Err(Overloaded);
        }
        match self.tx.try_send(Queued {
            at: Instant::now(),
            batch,
            ack,
        }) {
            Ok(()) => Ok(()),
            Err(TrySendError::Full(_) | TrySendError::Disconnected(_)) => {
                self.stats.queued.fetch_sub(n, Relaxed);
                Err(Overloaded)
            }
        }
    }
}

/// The engine thread and its handles.
#[derive(Debug)]
pub struct EngineWorker {
    engine: Arc<Mutex<Engine>>,
    sink: Arc<QueueSink>,
    stats: Arc<WorkerStats>,
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

impl EngineWorker {
    /// Starts the engine thread with a queue bounded to `capacity` observations, deciding with
    /// `decider` when given.
    pub fn start(
        cfg: EngineConfig,
        capacity: usize,
        decider: Option<Decider>,
    ) -> std::io::Result<Self> {
        let hooks = Hooks {
            decider,
            ..Hooks::default()
        };
        Self::start_with(Engine::new(Arc::new(cfg)), capacity, hooks)
    }

    /// Like [`EngineWorker::start`], from a given (e.g. restored) engine, running `hooks`
    /// after each batch and on every idle tick.
    pub fn start_with(mut e: Engine, capacity: usize, hooks: Hooks) -> std::io::Result<Self> {
        // The engine's start time: cumulative metric streams that began after it are counted
        // from their first point.
        e.advance(now_nanos());
        let engine = Arc::new(Mutex::new(e));
        let stats = Arc::new(WorkerStats::default());
        // Batches are bounded by the observation count; the channel only needs room for many
        // small ones.
        let (tx, rx) = sync_channel(4096);
        let stop = Arc::new(AtomicBool::new(false));
        let thread = {
            let (engine, stats, stop) = (engine.clone(), stats.clone(), stop.clone());
            std::thread::Builder::new()
                .name("trike-engine".into())
                .spawn(move || {
                    let hooks = run(&engine, &rx, &stats, &stop, hooks);
                    hooks.finish(&engine.lock());
                })?
        };
        let sink = Arc::new(QueueSink {
            tx,
            capacity,
            stats: stats.clone(),
        });
        Ok(Self {
            engine,
            sink,
            stats,
            stop,
            thread: Some(thread),
        })
    }

    /// The engine, for queries.
    pub fn engine(&self) -> &Arc<Mutex<Engine>> {
        &self.engine
    }

    /// The queue's submitting side.
    pub fn sink(&self) -> Arc<QueueSink> {
        self.sink.clone()
    }

    /// Queue statistics.
    pub fn stats(&self) -> &Arc<WorkerStats> {
        &self.stats
    }

    /// True while the engine thread runs.
    pub fn is_alive(&self) -> bool {
        self.thread.as_ref().is_some_and(|t| !t.is_finished())
    }

    /// Stops the engine thread and waits until it has ended, leaving the handle in place (as
    /// a dead thread would): for tests of what notices.
    #[cfg(test)]
    pub(crate) fn halt_for_test(&self) {
        self.stop.store(true, Relaxed);
        while self.is_alive() {
            std::thread::sleep(Duration::from_millis(5));
        }
    }

    /// Applies what is queued, then stops the thread.
    pub fn stop(mut self) {
        self.stop.store(true, Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

impl Drop for EngineWorker {
    fn drop(&mut self) {
        self.stop.store(true, Relaxed);
    }
}

/// What runs on the engine thread besides ingestion: decisions, checkpoints, the archive.
#[derive(Debug, Default)]
pub struct Hooks {
    /// The policy.
    pub decider: Option<Decider>,
    /// Checkpoints of the engine.
    pub checkpointer: Option<Checkpointer>,
    /// Seals seconds into the archive.
    pub archiver: Option<crate::archiver::Archiver>,
}

impl Hooks {
    fn tick(&mut self, e: &Engine) {
        if let Some(d) = self.decider.as_mut() {
            d.tick(e);
        }
        if let Some(c) = self.checkpointer.as_mut() {
            c.maybe(e);
        }
        if let Some(a) = self.archiver.as_mut() {
            a.tick(e);
        }
    }

    /// A clean stop: a last checkpoint (so a restart loses nothing) and the policy's state.
    fn finish(mut self, e: &Engine) {
        if let Some(c) = self.checkpointer {
            c.finish(e);
        }
        if let Some(d) = self.decider.as_mut() {
            d.save(true);
        }
        if let Some(a) = self.archiver {
            a.finish(e);
        }
    }
}

fn run(
    engine: &Mutex<Engine>,
    rx: &Receiver<Queued>,
    stats: &WorkerStats,
    stop: &AtomicBool,
    mut hooks: Hooks,
) -> Hooks {
    loop {
        match rx.recv_timeout(Duration::from_millis(50)) {
            Ok(first) => {
                let mut e = engine.lock();
                let now = now_nanos();
                let mut next = Some(first);
                let mut drained = 0;
                // Apply what is already queued under one lock, but not forever.
                while let Some(q) = next {
                    e.ingest(&q.batch, now);
                    if let Some(a) = hooks.archiver.as_mut() {
                        a.observe(&q.batch);
                    }
                    if let Some(ack) = q.ack {
                        ack();
                    }
                    stats.queued.fetch_sub(q.batch.len(), Relaxed);
                    stats.batches.fetch_add(1, Relaxed);
                    stats.record_delay(q.at.elapsed());
                    drained += 1;
                    next = if drained < 256 {
                        rx.try_recv().ok()
                    } else {
                        None
                    };
                }
                e.advance(now);
                hooks.tick(&e);
            }
            Err(RecvTimeoutError::Timeout) => {
                if stop.load(Relaxed) {
                    return hooks;
                }
                let mut e = engine.lock();
                e.advance(now_nanos());
                hooks.tick(&e);
            }
            Err(RecvTimeoutError::Disconnected) => return hooks,
        }
    }
}
