//! One engine and the hooks that run beside it, moved through time by a clock. The live
//! processor's engine thread steps a shard as batches arrive and on idle ticks; a backtest or a
//! test steps the same shard by hand on a simulated clock.

use crate::clock::SharedClock;
use crate::hook::{Hook, Tick};
use parking_lot::{Mutex, MutexGuard};
use std::borrow::Borrow;
use std::ops::Deref;
use std::sync::Arc;
use trike_engine::{Batch, Engine, SecondObs};
use trike_ingest::memory::{MemoryLimiter, Pressure};

/// An engine, its hooks and its clock.
#[derive(Debug)]
pub struct Shard {
    engine: Arc<Mutex<Engine>>,
    hooks: Vec<Box<dyn Hook>>,
    clock: SharedClock,
    memory: Option<Arc<MemoryLimiter>>,
}

/// Read access to a shard's engine, for queries (the admin API, SQL, the dashboard). It cannot
/// change the engine; holding it blocks the shard's next step, so hold it briefly.
#[derive(Clone, Debug)]
pub struct EngineHandle(Arc<Mutex<Engine>>);

/// The engine, locked for reading.
#[derive(Debug)]
pub struct EngineRef<'a>(MutexGuard<'a, Engine>);

impl Deref for EngineRef<'_> {
    type Target = Engine;
    fn deref(&self) -> &Engine {
        &self.0
    }
}

impl EngineHandle {
    /// Locks the engine for reading.
    pub fn lock(&self) -> EngineRef<'_> {
        EngineRef(self.0.lock())
    }
}

/// Write access to a shard's engine, for a fleet processor's partition moves only (taking a
/// partition's state in, dropping a revoked one's). Lock order: the engine, then the policy.
#[derive(Clone, Debug)]
pub struct EngineWriter(Arc<Mutex<Engine>>);

impl EngineWriter {
    /// Locks the engine for writing (blocks the shard's next step).
    pub fn lock(&self) -> MutexGuard<'_, Engine> {
        self.0.lock()
    }
}

impl Shard {
    /// A shard over `engine`, which starts at the clock's now: cumulative metric streams that
    /// begin after it are counted from their first point.
    pub fn new(mut engine: Engine, clock: SharedClock) -> Self {
        engine.advance(clock.now());
        Self {
            engine: Arc::new(Mutex::new(engine)),
            hooks: Vec::new(),
            clock,
            memory: None,
        }
    }

    /// With a memory limiter: above its hard limit the engine sheds new series into overflow
    /// series (every observation still counted) until memory is back under it.
    pub fn with_memory_limiter(mut self, limiter: Arc<MemoryLimiter>) -> Self {
        self.memory = Some(limiter);
        self
    }

    /// Adds a hook; hooks run in the order they are added.
    pub fn with_hook(mut self, hook: impl Hook + 'static) -> Self {
        self.hooks.push(Box::new(hook));
        self
    }

    /// Read access to the engine.
    pub fn handle(&self) -> EngineHandle {
        EngineHandle(self.engine.clone())
    }

    /// Write access to the engine (a fleet processor's partition owner).
    pub fn writer(&self) -> EngineWriter {
        EngineWriter(self.engine.clone())
    }

    /// The shard's clock.
    pub fn clock(&self) -> &SharedClock {
        &self.clock
    }

    /// Applies `batches`, all arrived at the clock's now, under one lock; then moves time and
    /// ticks the hooks.
    pub fn apply<B: Borrow<Batch>>(&mut self, batches: impl IntoIterator<Item = B>) {
        self.apply_then(batches, || {});
    }

    /// Like [`Shard::apply`], running `applied` (the batches' acknowledgements) under the same
    /// lock, right after the batches and before the hooks: whoever locks the engine next — a
    /// hook, a checkpoint or changelog snapshot, a rebalance — finds the acknowledged offsets
    /// and the state in step. (Acknowledged after the lock was released, a snapshot taken in
    /// between held a batch its offsets did not cover, and a restore applied it again.)
    pub fn apply_then<B: Borrow<Batch>>(
        &mut self,
        batches: impl IntoIterator<Item = B>,
        applied: impl FnOnce(),
    ) {
        let now = self.clock.now();
        let mut e = self.engine.lock();
        if let Some(m) = &self.memory {
            e.set_shedding(m.pressure() == Pressure::Hard);
        }
        for b in batches {
            let b = b.borrow();
            e.ingest(b, now);
            for h in &mut self.hooks {
                h.on_batch(b);
            }
        }
        applied();
        e.advance(now);
        run(&mut self.hooks, &mut e, false);
    }

    /// Applies archived seconds at the clock's now (a backtest's replay); then moves time and
    /// ticks the hooks.
    pub fn apply_seconds(&mut self, rows: &[SecondObs]) {
        let now = self.clock.now();
        let mut e = self.engine.lock();
        e.apply_seconds(rows, now);
        e.advance(now);
        run(&mut self.hooks, &mut e, false);
    }

    /// Moves time to the clock's now and ticks the hooks.
    pub fn tick(&mut self) {
        let mut e = self.engine.lock();
        e.advance(self.clock.now());
        run(&mut self.hooks, &mut e, false);
    }

    /// A clean stop: every hook's last word (the final checkpoint, the policy's state).
    pub fn finish(&mut self) {
        let mut e = self.engine.lock();
        run(&mut self.hooks, &mut e, true);
    }
}

fn run(hooks: &mut [Box<dyn Hook>], engine: &mut Engine, finish: bool) {
    let mut tick = Tick {
        engine,
        decided: None,
    };
    for h in hooks {
        if finish {
            h.on_finish(&mut tick);
        } else {
            h.on_tick(&mut tick);
        }
    }
}
