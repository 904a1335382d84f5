//! The one clock everything outside the engine reads time from. The live processor uses
//! [`SystemClock`]; backtests and tests use a [`SimClock`] they move by hand, so nothing waits
//! on the wall clock and every run is deterministic.
//!
//! Only *when things happen* is read here. How long our own work took (queue delays,
//! checkpoint write times: numbers for `/metrics`) is measured with `std::time::Instant`.

use std::fmt::Debug;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::time::{Duration, SystemTime, UNIX_EPOCH};
use trike_engine::UnixNanos;

/// A source of the current time.
pub trait Clock: Debug + Send + Sync {
    /// Now, in Unix nanoseconds.
    fn now(&self) -> UnixNanos;
}

/// The wall clock.
#[derive(Clone, Copy, Debug, Default)]
pub struct SystemClock;

impl Clock for SystemClock {
    fn now(&self) -> UnixNanos {
        now_nanos()
    }
}

/// The wall clock's now in Unix nanoseconds: for callers that stand outside the runtime
/// (synthetic traffic, test clients, benchmarks) and stamp what they send.
pub fn now_nanos() -> UnixNanos {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos() as u64)
}

/// A clock that moves only when told to. Clones share the same time.
#[derive(Clone, Debug)]
pub struct SimClock {
    now: Arc<AtomicU64>,
}

impl SimClock {
    /// A clock standing at `start`.
    pub fn at(start: UnixNanos) -> Self {
        Self {
            now: Arc::new(AtomicU64::new(start)),
        }
    }

    /// Moves the clock forward by `by`.
    pub fn advance(&self, by: Duration) {
        self.now.fetch_add(by.as_nanos() as u64, Relaxed);
    }

    /// Sets the clock to `t` (never backwards).
    pub fn set(&self, t: UnixNanos) {
        self.now.fetch_max(t, Relaxed);
    }
}

impl Clock for SimClock {
    fn now(&self) -> UnixNanos {
        self.now.load(Relaxed)
    }
}

/// A shared clock.
pub type SharedClock = Arc<dyn Clock>;

#[cfg(test)]
mod tests {
    use super::*;

    /// Guarantees: a simulated clock moves only when told, never backwards, and clones share it.
    #[test]
    fn sim_clock_moves_only_when_told() {
        let c = SimClock::at(1_000);
        let d = c.clone();
        assert_eq!(c.now(), 1_000);
        d.advance(Duration::from_nanos(500));
        assert_eq!(c.now(), 1_500);
        c.set(1_200);
        assert_eq!(d.now(), 1_500, "never backwards");
        c.set(9_000);
        assert_eq!(d.now(), 9_000);
        assert!(SystemClock.now() > 1_700_000_000_000_000_000);
    }
}
