//! Lifecycle hooks: what runs on an engine's thread beside ingestion. The [`Shard`](crate::Shard)
//! calls them in the order they were added: each batch it applies, then a tick after every
//! drain and every idle interval, then a finish at a clean stop. Each hook is one file under
//! `hooks/` that owns its state.

use trike_engine::policy::{Decision, PolicySnapshot};
use trike_engine::{Batch, Engine};

/// What one tick carries from hook to hook.
#[derive(Debug)]
pub struct Tick<'a> {
    /// The engine, advanced to the tick's time. Hooks read it; the one thing a hook changes
    /// is the engine's change marks (a fleet processor's changelog takes its changes).
    pub engine: &'a mut Engine,
    /// Set by the decide hook when its policy decided something (or, at finish, always):
    /// the decisions and the policy's state after them, for the outbox to make durable and
    /// publish.
    pub decided: Option<Decided>,
}

/// Decisions of one evaluation and the policy state that follows from them.
#[derive(Debug)]
pub struct Decided {
    /// In order.
    pub decisions: Vec<Decision>,
    /// The policy's episodes and cool-downs after them.
    pub policy: PolicySnapshot,
}

/// One lifecycle hook.
pub trait Hook: std::fmt::Debug + Send {
    /// A batch was just applied to the engine (before the tick that follows it).
    fn on_batch(&mut self, _batch: &Batch) {}
    /// Time moved: the engine stands at `tick.engine.now()`.
    fn on_tick(&mut self, tick: &mut Tick<'_>);
    /// A clean stop: the last tick.
    fn on_finish(&mut self, tick: &mut Tick<'_>);
}
