//! The engine's thread: drains the bounded ingest queue into the engine and moves time.
//!
//! Receivers submit batches without blocking; when the queued observations would exceed the
//! bound, the batch is refused and the client is told to retry (429 / RESOURCE_EXHAUSTED).
//! The thread owns its [`Shard`] (the engine and its hooks); everyone else gets a
//! [`WorkerHandle`]. Stopping the worker always runs the hooks' finish (the final checkpoint),
//! whoever still holds a handle.

use crate::clock::SharedClock;
use crate::shard::{EngineHandle, Shard};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering::Relaxed};
use std::sync::mpsc::{Receiver, RecvTimeoutError, SyncSender, TrySendError, sync_channel};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};
use trike_engine::Batch;
use trike_engine::expo::{gauge, header};
use trike_ingest::pipeline::Ack;
use trike_ingest::{BatchSink, Overloaded};

/// Upper bounds (seconds) of the queue-delay histogram buckets.
pub const DELAY_BUCKETS_S: [f64; 10] = [
    0.0001, 0.0005, 0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 1.0,
];

/// How long the engine thread waits for a batch before an idle tick.
pub const IDLE_TICK: Duration = Duration::from_millis(50);
/// Batches applied under one lock, at most.
pub const DRAIN_MAX: usize = 256;

/// Queue and apply statistics.
#[derive(Debug, Default)]
pub struct WorkerStats {
    /// Observations waiting in the queue.
    pub queued: AtomicUsize,
    /// Batches applied.
    pub batches: AtomicU64,
    /// Observations applied (the drain rate, for `Retry-After`).
    pub drained: AtomicU64,
    /// Histogram of submit → applied delay: per bucket counts (cumulative at render time).
    pub delay_counts: [AtomicU64; DELAY_BUCKETS_S.len() + 1],
    /// Sum of delays in nanoseconds.
    pub delay_sum_ns: AtomicU64,
}

impl WorkerStats {
    /// Renders the queue's families (`capacity`: the queue's bound).
    pub fn render(&self, capacity: usize, out: &mut String) {
        use std::fmt::Write;
        gauge(
            out,
            "trike_engine_queue_observations",
            "Observations waiting for the engine.",
            self.queued.load(Relaxed) as f64,
        );
        gauge(
            out,
            "trike_engine_queue_capacity_observations",
            "Queue bound; beyond it receivers answer 429 / RESOURCE_EXHAUSTED.",
            capacity as f64,
        );
        let name = "trike_engine_queue_delay_seconds";
        header(
            out,
            name,
            "Time from a request's acceptance to its observations being applied.",
            "histogram",
        );
        let mut cum = 0;
        for (i, b) in DELAY_BUCKETS_S.iter().enumerate() {
            cum += self.delay_counts[i].load(Relaxed);
            let _ = writeln!(out, "{name}_bucket{{le=\"{b}\"}} {cum}");
        }
        cum += self.delay_counts[DELAY_BUCKETS_S.len()].load(Relaxed);
        let _ = writeln!(out, "{name}_bucket{{le=\"+Inf\"}} {cum}");
        let sum = self.delay_sum_ns.load(Relaxed) as f64 / 1e9;
        let _ = writeln!(out, "{name}_sum {sum}\n{name}_count {cum}");
    }

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
    rate: parking_lot::Mutex<DrainRate>,
}

/// The queue's drain rate, measured between refusals.
#[derive(Debug)]
struct DrainRate {
    at: Instant,
    drained: u64,
    per_s: f64,
}

/// `Retry-After` bounds: at least 1 s (HTTP's unit), at most 30 s (a client must not give up).
const RETRY_AFTER_S: (f64, f64) = (1.0, 30.0);

/// How long `queued` observations take to drain at `per_s` (unknown rate: the minimum).
fn drain_time(queued: f64, per_s: f64) -> Duration {
    let secs = if per_s > 0.0 {
        queued / per_s
    } else {
        RETRY_AFTER_S.0
    };
    Duration::from_secs_f64(secs.clamp(RETRY_AFTER_S.0, RETRY_AFTER_S.1))
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
            return Err(Overloaded { batch, ack });
        }
        match self.tx.try_send(Queued {
            at: Instant::now(),
            batch,
            ack,
        }) {
            Ok(()) => Ok(()),
            Err(TrySendError::Full(q) | TrySendError::Disconnected(q)) => {
                self.stats.queued.fetch_sub(n, Relaxed);
                Err(Overloaded {
                    batch: q.batch,
                    ack: q.ack,
                })
            }
        }
    }

    /// The time the queued observations take to drain at the rate measured since the last
    /// refusal (smoothed), within 1–30 s.
    fn retry_after(&self) -> Duration {
        let drained = self.stats.drained.load(Relaxed);
        let queued = self.stats.queued.load(Relaxed) as f64;
        let mut r = self.rate.lock();
        let dt = r.at.elapsed();
        if dt >= Duration::from_millis(200) {
            let now_rate = drained.saturating_sub(r.drained) as f64 / dt.as_secs_f64();
            r.per_s = if r.per_s > 0.0 {
                0.5 * r.per_s + 0.5 * now_rate
            } else {
                now_rate
            };
            r.at = Instant::now();
            r.drained = drained;
        }
        drain_time(queued, r.per_s)
    }
}

/// The engine thread: owns the shard, drains the queue into it, ticks it when idle.
#[derive(Debug)]
pub struct EngineWorker {
    handle: WorkerHandle,
    sink: Arc<QueueSink>,
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

/// What others may do with a running worker: read its engine, its statistics, whether it runs.
#[derive(Clone, Debug)]
pub struct WorkerHandle {
    engine: EngineHandle,
    clock: SharedClock,
    stats: Arc<WorkerStats>,
    capacity: usize,
    alive: Arc<AtomicBool>,
}

impl WorkerHandle {
    /// The engine, for queries.
    pub fn engine(&self) -> &EngineHandle {
        &self.engine
    }

    /// Queue statistics.
    pub fn stats(&self) -> &Arc<WorkerStats> {
        &self.stats
    }

    /// The clock the engine runs on: the admin API reads time from it too.
    pub fn clock(&self) -> &SharedClock {
        &self.clock
    }

    /// Observations the queue holds at most.
    pub fn capacity(&self) -> usize {
        self.capacity
    }

    /// True while the engine thread runs.
    pub fn is_alive(&self) -> bool {
        self.alive.load(Relaxed)
    }

    /// Renders the engine's and the queue's `/metrics` families. The engine is locked only to
    /// copy its counters and sizes; no SLI is computed.
    pub fn render(&self, out: &mut String) {
        let gauges = self.engine.lock().gauges();
        gauges.render(out);
        self.stats.render(self.capacity, out);
    }
}

/// Clears `alive` when the engine thread ends, by return or by panic.
struct AliveGuard(Arc<AtomicBool>);

impl Drop for AliveGuard {
    fn drop(&mut self) {
        self.0.store(false, Relaxed);
    }
}

impl EngineWorker {
    /// Starts the engine thread owning `shard`, with a queue bounded to `capacity` observations.
    pub fn start(mut shard: Shard, capacity: usize) -> std::io::Result<Self> {
        let stats = Arc::new(WorkerStats::default());
        // Batches are bounded by the observation count; the channel only needs room for many
        // small ones.
        let (tx, rx) = sync_channel(4096);
        let stop = Arc::new(AtomicBool::new(false));
        let alive = Arc::new(AtomicBool::new(true));
        let handle = WorkerHandle {
            engine: shard.handle(),
            clock: shard.clock().clone(),
            stats: stats.clone(),
            capacity,
            alive: alive.clone(),
        };
        let thread = {
            let (stats, stop) = (stats.clone(), stop.clone());
            std::thread::Builder::new()
                .name("trike-engine".into())
                .spawn(move || {
                    let _alive = AliveGuard(alive);
                    run(&mut shard, &rx, &stats, &stop);
                    shard.finish();
                })?
        };
        let sink = Arc::new(QueueSink {
            tx,
            capacity,
            stats,
            rate: parking_lot::Mutex::new(DrainRate {
                at: Instant::now(),
                drained: 0,
                per_s: 0.0,
            }),
        });
        Ok(Self {
            handle,
            sink,
            stop,
            thread: Some(thread),
        })
    }

    /// Read access for others.
    pub fn handle(&self) -> WorkerHandle {
        self.handle.clone()
    }

    /// The queue's submitting side.
    pub fn sink(&self) -> Arc<QueueSink> {
        self.sink.clone()
    }

    /// Applies what is queued, runs the hooks' finish, and waits for the thread to end.
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

fn run(shard: &mut Shard, rx: &Receiver<Queued>, stats: &WorkerStats, stop: &AtomicBool) {
    let mut drained = Vec::with_capacity(DRAIN_MAX);
    loop {
        match rx.recv_timeout(IDLE_TICK) {
            Ok(first) => {
                // Apply what is already queued under one lock, but not forever.
                drained.push(first);
                drained.extend(rx.try_iter().take(DRAIN_MAX - 1));
                let acks: Vec<_> = drained.iter_mut().filter_map(|q| q.ack.take()).collect();
                shard.apply_then(drained.iter().map(|q| &q.batch), move || {
                    for ack in acks {
                        ack();
                    }
                });
                for q in drained.drain(..) {
                    stats.queued.fetch_sub(q.batch.len(), Relaxed);
                    stats.drained.fetch_add(q.batch.len() as u64, Relaxed);
                    stats.batches.fetch_add(1, Relaxed);
                    stats.record_delay(q.at.elapsed());
                }
            }
            Err(RecvTimeoutError::Timeout) => {
                if stop.load(Relaxed) {
                    return;
                }
                shard.tick();
            }
            Err(RecvTimeoutError::Disconnected) => return,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Table: `Retry-After` is the queue's drain time at the measured rate, within 1–30 s.
    #[test]
    fn retry_after_follows_the_drain_rate() {
        for (queued, per_s, want_s) in [
            (1_000_000.0, 200_000.0, 5.0),
            (1_000_000.0, 2_000_000.0, 1.0),
            (1_000_000.0, 1_000.0, 30.0),
            (500.0, 0.0, 1.0),
            (0.0, 10.0, 1.0),
        ] {
            assert_eq!(
                drain_time(queued, per_s).as_secs_f64(),
                want_s,
                "{queued} at {per_s}/s"
            );
        }
    }

    /// A hook that records, at each tick, whether every batch applied so far was acknowledged.
    #[derive(Debug)]
    struct SeesAcks {
        acked: Arc<std::sync::atomic::AtomicU64>,
        applied: u64,
        out_of_step: Arc<std::sync::atomic::AtomicU64>,
    }

    impl crate::Hook for SeesAcks {
        fn on_batch(&mut self, _: &Batch) {
            self.applied += 1;
        }
        fn on_tick(&mut self, _: &mut crate::Tick<'_>) {
            if self.acked.load(Relaxed) != self.applied {
                self.out_of_step.fetch_add(1, Relaxed);
            }
        }
        fn on_finish(&mut self, _: &mut crate::Tick<'_>) {}
    }

    /// Scenario: 200 batches with acknowledgements through the engine thread; a hook (as the
    /// changelog and checkpoint writers do) reads the acknowledged count at every tick.
    /// Guarantees: a batch is acknowledged under the engine lock it was applied under, before
    /// any hook or other thread sees the engine with it: never a state that holds a batch its
    /// acknowledged offsets do not cover (which a restore would apply a second time).
    #[test]
    fn batches_are_acknowledged_under_the_lock_they_were_applied_under() {
        use std::sync::atomic::AtomicU64;
        let acked = Arc::new(AtomicU64::new(0));
        let out_of_step = Arc::new(AtomicU64::new(0));
        let engine = trike_engine::Engine::new(Arc::new(trike_engine::EngineConfig::default()));
        let shard = crate::Shard::new(engine, Arc::new(crate::SystemClock)).with_hook(SeesAcks {
            acked: acked.clone(),
            applied: 0,
            out_of_step: out_of_step.clone(),
        });
        let worker = EngineWorker::start(shard, 1_000_000).unwrap();
        let sink = worker.sink();
        let now = crate::clock::now_nanos();
        for i in 0..200u64 {
            let batch = Batch {
                keys: vec![trike_engine::SeriesKey::new("checkout", "/pay", "1")],
                requests: vec![trike_engine::RequestObs {
                    key: 0,
                    time: now,
                    latency_ms: 1.0,
                    bad: i % 2 == 0,
                }],
                ..Default::default()
            };
            let a = acked.clone();
            sink.submit(
                batch,
                Some(Box::new(move || {
                    a.fetch_add(1, Relaxed);
                })),
            )
            .unwrap();
        }
        let started = Instant::now();
        while acked.load(Relaxed) < 200 && started.elapsed() < Duration::from_secs(10) {
            std::thread::sleep(Duration::from_millis(5));
        }
        worker.stop();
        assert_eq!(acked.load(Relaxed), 200);
        assert_eq!(
            out_of_step.load(Relaxed),
            0,
            "a hook saw a batch not yet acknowledged"
        );
    }
}
