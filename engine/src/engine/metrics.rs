//! The engine's own `/metrics` families: what it applied and dropped, and what it holds. Taken
//! as a [`Gauges`] copy under the caller's lock and rendered after it is released.

use super::{Engine, Stats};
use crate::expo::{counter, gauge};
use crate::time::Span;

/// What the engine holds, read at one instant.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Gauges {
    /// Counters of what was applied and dropped.
    pub stats: Stats,
    /// Series held.
    pub series: usize,
    /// Series with data in the last 5 minutes.
    pub active_series: usize,
    /// Heap bytes of windows and digests.
    pub window_bytes: usize,
}

impl Engine {
    /// Copies what `/metrics` shows (cheap: counters and sizes; no SLI is computed).
    pub fn gauges(&self) -> Gauges {
        Gauges {
            stats: self.stats(),
            series: self.series_count(),
            active_series: self.active_series(Span::minutes(5)),
            window_bytes: self.window_heap_bytes(),
        }
    }
}

impl Gauges {
    /// Renders the engine's families.
    pub fn render(&self, out: &mut String) {
        let st = &self.stats;
        for (name, help, v) in [
            (
                "trike_engine_requests_applied_total",
                "Span observations applied to SLI state.",
                st.requests_applied,
            ),
            (
                "trike_engine_metric_points_applied_total",
                "Histogram and counter points applied.",
                st.metric_points_applied,
            ),
            (
                "trike_engine_log_records_applied_total",
                "Log records applied as events (logs.errors_as: bad_events).",
                st.log_records_applied,
            ),
            (
                "trike_engine_late_dropped_total",
                "Observations older than the allowed lateness, dropped.",
                st.late_dropped,
            ),
            (
                "trike_engine_overflowed_total",
                "Observations folded into a service's overflow series.",
                st.overflowed,
            ),
            (
                "trike_engine_clock_skew_clamped_total",
                "Observations from more than 1 s in the future, clamped to now.",
                st.clock_skew_clamped,
            ),
            (
                "trike_engine_signal_deduplicated_total",
                "Observations dropped because another of the service's signals is its source (spans, else request metrics, else logs).",
                st.signal_deduplicated,
            ),
            (
                "trike_engine_metric_resets_total",
                "Cumulative metric resets detected.",
                st.metric_resets,
            ),
            (
                "trike_engine_metric_baselines_total",
                "First cumulative points kept as baselines only.",
                st.metric_baselines,
            ),
            (
                "trike_engine_metric_out_of_order_total",
                "Cumulative points not newer than their predecessor, dropped.",
                st.metric_out_of_order,
            ),
            (
                "trike_engine_metric_streams_full_total",
                "Cumulative points dropped because the stream table was full.",
                st.metric_streams_full,
            ),
            (
                "trike_engine_series_evicted_total",
                "Series removed after all their data expired.",
                st.series_evicted,
            ),
            (
                "trike_engine_series_folded_total",
                "Idle series folded into their service version's aggregate (engine.idle_series_after).",
                st.series_folded,
            ),
        ] {
            counter(out, name, help, v);
        }
        gauge(
            out,
            "trike_engine_series",
            "Series held (overflow series included).",
            self.series as f64,
        );
        gauge(
            out,
            "trike_engine_active_series",
            "Series with data in the last 5 minutes.",
            self.active_series as f64,
        );
        gauge(
            out,
            "trike_engine_window_bytes",
            "Heap bytes of all series' windows and digests.",
            self.window_bytes as f64,
        );
    }
}
