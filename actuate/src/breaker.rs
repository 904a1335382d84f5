//! Circuit breakers, one per executor: closed → (after `failures` consecutive failures) open →
//! (after a cool-down) half-open, when one event is let through as a probe → closed on its
//! success, open again on its failure with the cool-down doubled (up to `max_cooldown`).
//!
//! While a breaker is open its events are *held*, not refused: they are neither claimed nor
//! recorded, so they run (as the probe, then in order) once the executor recovers. Pure: time
//! is an argument.

use std::collections::HashMap;
use std::time::{Duration, Instant};

/// When a breaker opens and how long it stays open.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct BreakerConfig {
    /// Consecutive failures that open it.
    pub failures: u32,
    /// First cool-down before a probe.
    pub cooldown: Duration,
    /// Longest cool-down (each failed probe doubles it).
    pub max_cooldown: Duration,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum State {
    Closed { failures: u32 },
    Open { until: Instant, cooldown: Duration },
    HalfOpen { cooldown: Duration },
}

/// May an event for this executor run now?
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Admit {
    /// Yes; `probe` when it is the half-open breaker's one trial.
    Run {
        /// The half-open trial.
        probe: bool,
    },
    /// No: hold the event until `until` (the breaker is open).
    Hold {
        /// When the next probe may run.
        until: Instant,
    },
}

/// What a failure did to the breaker.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Tripped {
    /// Still closed.
    No,
    /// It opened now (from closed): page someone.
    Opened,
    /// A probe failed: open again, for `cooldown`.
    Reopened {
        /// The new cool-down.
        cooldown: Duration,
    },
}

/// The breakers of all executors.
#[derive(Debug)]
pub struct Breakers {
    cfg: BreakerConfig,
    state: HashMap<String, State>,
}

impl Breakers {
    /// Every breaker closed.
    pub fn new(cfg: BreakerConfig) -> Self {
        Self {
            cfg,
            state: HashMap::new(),
        }
    }

    fn get(&self, exec: &str) -> State {
        self.state
            .get(exec)
            .copied()
            .unwrap_or(State::Closed { failures: 0 })
    }

    /// Whether an event for `exec` may run at `now`; an open breaker whose cool-down is over
    /// turns half-open and lets this event through as its probe.
    pub fn admit(&mut self, exec: &str, now: Instant) -> Admit {
        match self.get(exec) {
            State::Closed { .. } => Admit::Run { probe: false },
            State::Open { until, .. } if now < until => Admit::Hold { until },
            State::Open { cooldown, .. } | State::HalfOpen { cooldown } => {
                self.state
                    .insert(exec.to_string(), State::HalfOpen { cooldown });
                Admit::Run { probe: true }
            }
        }
    }

    /// The executor succeeded: its breaker closes.
    pub fn success(&mut self, exec: &str) {
        self.state.remove(exec);
    }

    /// The executor failed at `now`.
    pub fn failure(&mut self, exec: &str, now: Instant) -> Tripped {
        let (next, tripped) = match self.get(exec) {
            State::Closed { failures } if failures + 1 >= self.cfg.failures => (
                State::Open {
                    until: now + self.cfg.cooldown,
                    cooldown: self.cfg.cooldown,
                },
                Tripped::Opened,
            ),
            State::Closed { failures } => (
                State::Closed {
                    failures: failures + 1,
                },
                Tripped::No,
            ),
            State::HalfOpen { cooldown } | State::Open { cooldown, .. } => {
                let cooldown = (cooldown * 2).min(self.cfg.max_cooldown);
                (
                    State::Open {
                        until: now + cooldown,
                        cooldown,
                    },
                    Tripped::Reopened { cooldown },
                )
            }
        };
        self.state.insert(exec.to_string(), next);
        tripped
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const S: Duration = Duration::from_secs(1);

    /// Table: two failures open the breaker; events are held during the cool-down; after it one
    /// probe runs; a failed probe doubles the cool-down (capped); a successful one closes the
    /// breaker for good; breakers are per executor.
    #[test]
    fn opens_holds_probes_and_closes() {
        let cfg = BreakerConfig {
            failures: 2,
            cooldown: 10 * S,
            max_cooldown: 15 * S,
        };
        let mut b = Breakers::new(cfg);
        let t0 = Instant::now();
        assert_eq!(b.admit("hook", t0), Admit::Run { probe: false });
        assert_eq!(b.failure("hook", t0), Tripped::No);
        assert_eq!(b.failure("hook", t0), Tripped::Opened);
        assert_eq!(b.admit("hook", t0 + S), Admit::Hold { until: t0 + 10 * S });
        assert_eq!(b.admit("other", t0 + S), Admit::Run { probe: false });
        assert_eq!(b.admit("hook", t0 + 10 * S), Admit::Run { probe: true });
        assert_eq!(
            b.failure("hook", t0 + 10 * S),
            Tripped::Reopened { cooldown: 15 * S },
            "doubled, capped at 15 s"
        );
        assert_eq!(
            b.admit("hook", t0 + 20 * S),
            Admit::Hold { until: t0 + 25 * S }
        );
        assert_eq!(b.admit("hook", t0 + 25 * S), Admit::Run { probe: true });
        b.success("hook");
        assert_eq!(b.admit("hook", t0 + 25 * S), Admit::Run { probe: false });
        assert_eq!(
            b.failure("hook", t0 + 26 * S),
            Tripped::No,
            "closed: counts anew"
        );
    }
}
