//! Metric points as the engine counts them: a cumulative point converted to a delta against
//! its stream's previous one, and a histogram point's buckets as requests at a representative
//! latency with the requests within each latency threshold (shared with the gateway's
//! partials, which convert metrics the same way); and the engine's conversion of its own
//! points, usage points included.

use super::{Engine, Stats};
use crate::delta::{Delta, DeltaTracker};
use crate::observation::{HistogramObs, Temporality};
use crate::time::UnixNanos;
use crate::window::MAX_THRESHOLDS;

/// A cumulative point's identity and times, for [`convert_point`].
#[derive(Clone, Copy)]
pub(crate) struct DeltaPoint {
    pub stream: u64,
    pub start: UnixNanos,
    pub time: UnixNanos,
    pub layout: (u64, Option<(i32, i32)>),
}

/// Converts one cumulative point into a delta with `deltas`, counting baselines, resets and
/// drops in `stats`. `(start, now)` are the converter's start and current time.
pub(crate) fn convert_point(
    deltas: &mut DeltaTracker,
    stats: &mut Stats,
    p: DeltaPoint,
    values: &[f64],
    (start, now): (UnixNanos, UnixNanos),
    max_streams: usize,
) -> Option<Vec<f64>> {
    // Point times are the client's: clamp them, as the windows do, so one point from
    // the future cannot block its stream.
    let point = crate::delta::Point {
        start: p.start,
        time: p.time.min(now),
        layout: p.layout.0,
        exp: p.layout.1,
        values,
    };
    match deltas.convert(p.stream, point, start, now, max_streams) {
        Delta::Emit(v) => Some(v),
        Delta::Reset(v) => {
            stats.metric_resets += 1;
            Some(v)
        }
        Delta::Baseline => {
            stats.metric_baselines += 1;
            None
        }
        Delta::Rebaseline => {
            stats.metric_layout_changes += 1;
            None
        }
        Delta::OutOfOrder => {
            stats.metric_out_of_order += 1;
            None
        }
        Delta::TooManyStreams => {
            stats.metric_streams_full += 1;
            None
        }
    }
}

/// Calls `f(requests, errors, within, latency_ms)` for each non-empty bucket of a histogram
/// point whose (delta) bucket counts are `counts`: the bucket's requests at its representative
/// latency, with the requests within each of `thresholds` spread uniformly over the bucket.
pub(crate) fn for_each_bucket(
    h: &HistogramObs,
    counts: &[u64],
    thresholds: &[f64],
    mut f: impl FnMut(u64, u64, [u64; MAX_THRESHOLDS], f64),
) {
    for (i, &c) in counts.iter().enumerate() {
        if c == 0 {
            continue;
        }
        let (lo, hi) = bucket_bounds(h, i);
        let rep_ms = representative(lo, hi, h.min_ms, h.max_ms);
        let mut within = [0u64; MAX_THRESHOLDS];
        for (w, &t) in within.iter_mut().zip(thresholds) {
            *w = within_count(lo, hi, t, c);
        }
        let errors = if h.bad { c } else { 0 };
        f(c, errors, within, rep_ms);
    }
}

/// Identity of a histogram's bucket layout (bounds), so a changed layout is never subtracted
/// bucket by bucket from the old one.
pub(crate) fn layout_hash(bounds: &[f64]) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in bounds {
        h ^= b.to_bits();
        h = h.wrapping_mul(0x0100_0000_01b3);
    }
    h
}

/// Bounds `(lo, hi]` of bucket `i` of an explicit-bucket histogram.
fn bucket_bounds(h: &HistogramObs, i: usize) -> (f64, f64) {
    let b = &h.bounds_ms;
    let lo = if i == 0 { f64::NEG_INFINITY } else { b[i - 1] };
    let hi = if i < b.len() { b[i] } else { f64::INFINITY };
    (lo, hi)
}

/// The latency a bucket's requests are recorded at: its midpoint, using the point's min/max
/// for the open-ended first and last buckets.
fn representative(lo: f64, hi: f64, min: Option<f64>, max: Option<f64>) -> f64 {
    let lo = if lo.is_finite() {
        lo
    } else {
        min.filter(|m| *m <= hi).unwrap_or(0.0_f64.min(hi))
    };
    let hi = if hi.is_finite() {
        hi
    } else {
        max.filter(|m| *m >= lo).unwrap_or(lo)
    };
    let lo = lo.max(min.unwrap_or(f64::NEG_INFINITY)).min(hi);
    let hi = hi.min(max.unwrap_or(f64::INFINITY)).max(lo);
    (lo + hi) / 2.0
}

/// Requests of bucket `(lo, hi]` at or under `threshold`, spreading the bucket uniformly.
fn within_count(lo: f64, hi: f64, threshold: f64, count: u64) -> u64 {
    if hi <= threshold {
        count
    } else if lo.is_finite() && hi.is_finite() && lo < threshold {
        ((threshold - lo) / (hi - lo) * count as f64).round() as u64
    } else {
        0
    }
}

impl Engine {
    pub(super) fn metric_delta(
        &mut self,
        stream: u64,
        start: UnixNanos,
        time: UnixNanos,
        temporality: Temporality,
        layout: (u64, Option<(i32, i32)>),
        counts: &[u64],
    ) -> Option<Vec<u64>> {
        match temporality {
            Temporality::Delta => Some(counts.to_vec()),
            Temporality::Cumulative => {
                let values: Vec<f64> = counts.iter().map(|&c| c as f64).collect();
                let d = self.convert(stream, start, time, layout, &values)?;
                Some(d.into_iter().map(|v| v.max(0.0) as u64).collect())
            }
        }
    }

    pub(super) fn convert(
        &mut self,
        stream: u64,
        start: UnixNanos,
        time: UnixNanos,
        layout: (u64, Option<(i32, i32)>),
        values: &[f64],
    ) -> Option<Vec<f64>> {
        let point = DeltaPoint {
            stream,
            start,
            time,
            layout,
        };
        let max = self.cfg.max_metric_streams;
        convert_point(
            &mut self.deltas,
            &mut self.stats,
            point,
            values,
            (self.start, self.now),
            max,
        )
    }

    /// Adds usage points (cumulative rates converted like every other metric point) to the
    /// usage series.
    pub(super) fn apply_usage(&mut self, usage: &[crate::usage::UsageObs]) {
        for u in usage {
            let max = self.cfg.max_metric_streams;
            let times = (self.start, self.now);
            if let Some(add) =
                crate::usage::convert(&mut self.deltas, &mut self.stats, u, times, max)
            {
                self.usage.apply(&u.service, &u.metric, add, self.now);
            }
        }
    }
}
