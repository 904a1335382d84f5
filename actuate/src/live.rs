//! The actuator's live state, for its `/metrics` and `/healthz` (`actuator.admin`): what it
//! did (the [`ActuatorStats`] counters), how long decisions took to be acted on (from the
//! decision's `detected_at` to its outcome written: the control plane's latency, the loop's
//! time to mitigate as this actuator sees it), and whether its loop still turns.

use crate::ActuatorStats;
use std::fmt::Write;
use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering::Relaxed};

/// Upper bounds (seconds) of the decision-to-outcome histogram's buckets.
const BOUNDS_S: [f64; 12] = [
    0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0,
];

/// A loop that has not turned for this long is not healthy.
pub const STALL_MS: u64 = 10_000;

#[derive(Debug, Default)]
struct Histogram {
    counts: [u64; BOUNDS_S.len()],
    total: u64,
    sum: f64,
}

/// Shared between the actuator's loop and its admin server.
#[derive(Debug, Default)]
pub struct Live {
    stats: Mutex<ActuatorStats>,
    latency: Mutex<Histogram>,
    heartbeat_ms: AtomicU64,
    stopped: AtomicBool,
}

fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

impl Live {
    /// The loop turned.
    pub(crate) fn beat(&self) {
        self.heartbeat_ms.store(now_ms(), Relaxed);
    }

    /// The loop ended.
    pub(crate) fn stop(&self) {
        self.stopped.store(true, Relaxed);
    }

    /// The counters as they are now.
    pub(crate) fn update(&self, stats: &ActuatorStats) {
        *self.stats.lock().expect("not poisoned") = stats.clone();
    }

    /// An outcome was written for a decision detected `seconds` ago.
    pub(crate) fn acted_after(&self, seconds: f64) {
        let mut h = self.latency.lock().expect("not poisoned");
        let seconds = seconds.max(0.0);
        for (c, bound) in h.counts.iter_mut().zip(BOUNDS_S) {
            if seconds <= bound {
                *c += 1;
            }
        }
        h.total += 1;
        h.sum += seconds;
    }

    /// The loop runs and turned within [`STALL_MS`].
    pub fn healthy(&self) -> bool {
        !self.stopped.load(Relaxed)
            && now_ms().saturating_sub(self.heartbeat_ms.load(Relaxed)) < STALL_MS
    }

    /// The counters.
    pub fn stats(&self) -> ActuatorStats {
        self.stats.lock().expect("not poisoned").clone()
    }

    /// The Prometheus exposition.
    pub fn render(&self) -> String {
        let s = self.stats();
        let mut out = String::new();
        let mut family = |name: &str, help: &str, kind: &str| {
            let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} {kind}");
        };
        family(
            "trike_actuator_events_total",
            "Control events by what became of them: succeeded, failed (executor failed, or none), rejected (bad signature, too old, not a control event), duplicate (executed or claimed already), logged (dry runs and resolutions).",
            "counter",
        );
        for (outcome, v) in [
            ("succeeded", s.succeeded),
            ("failed", s.failed),
            ("rejected", s.rejected),
            ("duplicate", s.duplicates),
            ("logged", s.logged),
        ] {
            let _ = writeln!(
                out,
                "trike_actuator_events_total{{outcome=\"{outcome}\"}} {v}"
            );
        }
        for (name, help, v) in [
            (
                "trike_actuator_claim_retries_total",
                "Claims not decided (retried; nothing executed).",
                s.claim_retries,
            ),
            (
                "trike_actuator_held_total",
                "Times an event was held by its executor's open circuit.",
                s.held,
            ),
            (
                "trike_actuator_pages_total",
                "Pages sent about open circuits and claims without an outcome.",
                s.pages,
            ),
        ] {
            let _ = writeln!(
                out,
                "# HELP {name} {help}\n# TYPE {name} counter\n{name} {v}"
            );
        }
        let h = self.latency.lock().expect("not poisoned");
        let name = "trike_actuator_decision_to_outcome_seconds";
        let _ = writeln!(
            out,
            "# HELP {name} From a decision's detected_at to its outcome written: the control plane's latency, and the time to mitigate as far as this actuator is concerned.\n# TYPE {name} histogram"
        );
        for (bound, c) in BOUNDS_S.iter().zip(h.counts) {
            let _ = writeln!(out, "{name}_bucket{{le=\"{bound}\"}} {c}");
        }
        let _ = writeln!(out, "{name}_bucket{{le=\"+Inf\"}} {}", h.total);
        let _ = writeln!(out, "{name}_sum {}", h.sum);
        let _ = writeln!(out, "{name}_count {}", h.total);
        let up = u8::from(self.healthy());
        let _ = writeln!(
            out,
            "# HELP trike_actuator_up 1 while the actuator's loop runs and turned in the last 10 s.\n# TYPE trike_actuator_up gauge\ntrike_actuator_up {up}"
        );
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Guarantees: the histogram is cumulative with every observation in +Inf, the counters
    /// are the stats given, and the loop is healthy only while it turns and runs.
    #[test]
    fn counters_latency_and_health() {
        let l = Live::default();
        assert!(!l.healthy());
        l.beat();
        assert!(l.healthy());
        l.update(&ActuatorStats {
            succeeded: 3,
            logged: 1,
            ..Default::default()
        });
        for s in [0.02, 0.3, 7.0] {
            l.acted_after(s);
        }
        let text = l.render();
        for line in [
            "trike_actuator_events_total{outcome=\"succeeded\"} 3",
            "trike_actuator_events_total{outcome=\"logged\"} 1",
            "trike_actuator_decision_to_outcome_seconds_bucket{le=\"0.025\"} 1",
            "trike_actuator_decision_to_outcome_seconds_bucket{le=\"0.5\"} 2",
            "trike_actuator_decision_to_outcome_seconds_bucket{le=\"10\"} 3",
            "trike_actuator_decision_to_outcome_seconds_bucket{le=\"+Inf\"} 3",
            "trike_actuator_decision_to_outcome_seconds_count 3",
            "trike_actuator_up 1",
        ] {
            assert!(text.contains(line), "{line} in\n{text}");
        }
        l.stop();
        assert!(!l.healthy());
    }
}
