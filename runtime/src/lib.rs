//! Drives the pure engine through time. Contract:
//! - One [`Shard`] = one engine and the [hooks](hook::Hook) that run beside it (decide,
//!   outbox, checkpoint, archive). A shard is stepped by whoever owns it: the
//!   [`EngineWorker`](worker::EngineWorker) thread in a live processor, a loop on a
//!   [`SimClock`](clock::SimClock) in backtests and tests. The same code runs in both.
//! - Every time read goes through one [`Clock`](clock::Clock); nothing here sleeps on it, so a
//!   simulated half hour runs in milliseconds.
//! - The engine is owned by its shard; others get a read-only [`EngineHandle`](shard::EngineHandle).
//!
//! A processor owns one shard today; the fleet gives each owned partition its own.

pub mod checkpoint;
pub mod clock;
pub mod error;
pub mod fleet;
pub mod hook;
pub mod hooks;
pub mod loop_stats;
pub mod shard;
pub mod silences;
pub mod sink_writer;
pub mod worker;

pub use clock::{Clock, SimClock, SystemClock};
pub use error::{Error, Result};
pub use hook::{Hook, Tick};
pub use shard::{EngineHandle, Shard};
