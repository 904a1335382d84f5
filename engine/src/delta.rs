//! Cumulative-to-delta conversion per metric stream, with reset detection.
//!
//! Rules (those of the Collector's `cumulativetodelta` processor with `initial_value: auto`):
//! - the first point of a stream is only a baseline, unless its start time is after the engine
//!   started (then everything it counts happened while we were watching, and it is emitted);
//! - a later point whose start time changed, or any of whose counts went down, is a reset: the
//!   point's own counts are the delta since the reset;
//! - exponential histograms re-scale and move their offset as they see new values: the old
//!   point is down-scaled and aligned to the new one by absolute bucket index before
//!   subtracting;
//! - an explicit-bucket point whose bounds changed cannot be subtracted bucket by bucket: it
//!   becomes the new baseline and one interval is not counted (never the whole total twice);
//! - a point not newer than the last one is a duplicate or out of order, and is dropped.
//!
//! The number of streams is bounded; streams not seen (by arrival time) for longer than the
//! TTL are forgotten.

use crate::time::UnixNanos;
use serde::{Deserialize, Serialize};
use std::collections::HashMap;

/// What to do with a cumulative point.
#[derive(Clone, Debug, PartialEq)]
pub enum Delta<T> {
    /// Apply this delta.
    Emit(T),
    /// A reset was detected; apply this delta (the counts since the new start).
    Reset(T),
    /// First point of the stream: remembered, nothing to apply.
    Baseline,
    /// The bucket layout changed: remembered as the new baseline, nothing to apply.
    Rebaseline,
    /// Not newer than the previous point: dropped.
    OutOfOrder,
    /// The stream table is full: dropped.
    TooManyStreams,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
struct Last {
    start: UnixNanos,
    time: UnixNanos,
    layout: u64,
    #[serde(default)]
    exp: Option<(i32, i32)>,
    values: Vec<f64>,
    /// Engine time when last seen (for expiry: the client's clock is not trusted).
    seen: UnixNanos,
}

/// One cumulative point.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Point<'a> {
    /// Start time (0 when unknown).
    pub start: UnixNanos,
    /// Point time.
    pub time: UnixNanos,
    /// Identity of the bucket layout (0 for counters).
    pub layout: u64,
    /// Exponential histograms: `(scale, offset)`; values are `[zero, positive…, 0]`.
    pub exp: Option<(i32, i32)>,
    /// Cumulative values.
    pub values: &'a [f64],
}

/// Last cumulative values per stream.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct DeltaTracker {
    streams: HashMap<u64, Last>,
}

impl DeltaTracker {
    /// Converts one cumulative point of `stream` into a delta. `engine_start` is when the
    /// engine began watching, `now` the engine's time; `max_streams` bounds the table.
    pub fn convert(
        &mut self,
        stream: u64,
        p: Point<'_>,
        engine_start: UnixNanos,
        now: UnixNanos,
        max_streams: usize,
    ) -> Delta<Vec<f64>> {
        let Point {
            start,
            time,
            layout,
            exp,
            values,
        } = p;
        let Some(last) = self.streams.get_mut(&stream) else {
            if self.streams.len() >= max_streams {
                return Delta::TooManyStreams;
            }
            let last = Last {
                start,
                time,
                layout,
                exp,
                values: values.to_vec(),
                seen: now,
            };
            self.streams.insert(stream, last);
            if start != 0 && start >= engine_start {
                return Delta::Emit(values.to_vec());
            }
            return Delta::Baseline;
        };
        if time <= last.time {
            return Delta::OutOfOrder;
        }
        let restarted = start != 0 && last.start != 0 && start != last.start;
        let relaid = layout != last.layout || values.len() != last.values.len();
        let went_down = values.iter().zip(&last.values).any(|(v, l)| v < l);
        let out = if restarted {
            Delta::Reset(values.to_vec())
        } else if let (Some(old), Some(new), true) = (last.exp, exp, relaid) {
            exp_delta(old, &last.values, new, values)
        } else if relaid {
            Delta::Rebaseline
        } else if went_down {
            Delta::Reset(values.to_vec())
        } else {
            Delta::Emit(
                values
                    .iter()
                    .zip(&last.values)
                    .map(|(v, l)| v - l)
                    .collect(),
            )
        };
        *last = Last {
            start,
            time,
            layout,
            exp,
            values: values.to_vec(),
            seen: now,
        };
        out
    }

    /// Forgets streams last seen (engine time) before `oldest`.
    pub fn expire(&mut self, oldest: UnixNanos) -> usize {
        let before = self.streams.len();
        self.streams.retain(|_, l| l.seen >= oldest);
        before - self.streams.len()
    }

    /// The time of `stream`'s last point, if it is tracked.
    pub fn last_time(&self, stream: u64) -> Option<UnixNanos> {
        self.streams.get(&stream).map(|l| l.time)
    }

    /// Streams tracked.
    pub fn len(&self) -> usize {
        self.streams.len()
    }

    /// True when no stream is tracked.
    pub fn is_empty(&self) -> bool {
        self.streams.is_empty()
    }
}

/// Delta between two cumulative exponential points whose layout differs. The old point is
/// down-scaled to the new scale (bucket `i` at scale `s` lies in bucket `i >> (s − s')` at the
/// coarser `s'`) and aligned by absolute index; the delta is expressed in the new point's layout.
/// A count that went down is a reset; a finer new scale (SDKs only ever coarsen) re-baselines.
fn exp_delta(old: (i32, i32), old_v: &[f64], new: (i32, i32), new_v: &[f64]) -> Delta<Vec<f64>> {
    let ((old_scale, old_off), (new_scale, new_off)) = (old, new);
    if new_scale > old_scale || old_v.len() < 2 || new_v.len() < 2 {
        return Delta::Rebaseline;
    }
    let shift = (old_scale - new_scale) as u32;
    let mut delta = new_v.to_vec();
    delta[0] -= old_v[0];
    let new_n = new_v.len() - 2;
    for (j, &c) in old_v[1..old_v.len() - 1].iter().enumerate() {
        if c == 0.0 {
            continue;
        }
        let idx = (i64::from(old_off) + j as i64) >> shift.min(63);
        let k = idx - i64::from(new_off);
        if k < 0 || k >= new_n as i64 {
            return Delta::Reset(new_v.to_vec());
        }
        delta[1 + k as usize] -= c;
    }
    if delta.iter().any(|d| *d < 0.0) {
        return Delta::Reset(new_v.to_vec());
    }
    Delta::Emit(delta)
}

#[cfg(test)]
mod tests {
    use super::*;

    const S: u64 = 1_000;

    /// Table: a cumulative stream through baseline, growth, a duplicate, a restart (start time
    /// changes), a counter drop without a start time, and a bucket-layout change.
    #[test]
    fn cumulative_to_delta_table() {
        let mut t = DeltaTracker::default();
        let engine_start = 500 * S;
        type Row = (u64, u64, Vec<f64>, Delta<Vec<f64>>);
        #[rustfmt::skip]
        let rows: Vec<Row> = vec![
            (100 * S, 600 * S, vec![10.0, 5.0], Delta::Baseline),
            (100 * S, 610 * S, vec![15.0, 5.0], Delta::Emit(vec![5.0, 0.0])),
            (100 * S, 610 * S, vec![15.0, 5.0], Delta::OutOfOrder),
            (100 * S, 605 * S, vec![16.0, 5.0], Delta::OutOfOrder),
            (100 * S, 620 * S, vec![18.0, 9.0], Delta::Emit(vec![3.0, 4.0])),
            // Process restarted: new start time, counts from zero.
            (615 * S, 630 * S, vec![2.0, 1.0], Delta::Reset(vec![2.0, 1.0])),
            (615 * S, 640 * S, vec![7.0, 1.0], Delta::Emit(vec![5.0, 0.0])),
            // Counts went down with the same start time: still a reset.
            (615 * S, 650 * S, vec![1.0, 1.0], Delta::Reset(vec![1.0, 1.0])),
            // Bucket layout changed: new baseline, never the whole total again.
            (615 * S, 660 * S, vec![1.0, 1.0, 1.0], Delta::Rebaseline),
            (615 * S, 670 * S, vec![2.0, 1.0, 1.0], Delta::Emit(vec![1.0, 0.0, 0.0])),
        ];
        for (i, (start, time, values, want)) in rows.into_iter().enumerate() {
            let layout = values.len() as u64;
            let p = Point {
                start,
                time,
                layout,
                exp: None,
                values: &values,
            };
            assert_eq!(t.convert(7, p, engine_start, time, 10), want, "row {i}");
        }
    }

    /// Guarantees: a stream that started after the engine is counted from its first point;
    /// the table is bounded and expires streams by when the engine last saw them.
    #[test]
    fn new_streams_and_bounds() {
        let mut t = DeltaTracker::default();
        let p = |start, values: &'static [f64]| Point {
            start,
            time: 610 * S,
            layout: 0,
            exp: None,
            values,
        };
        let now = 620 * S;
        assert_eq!(
            t.convert(1, p(600 * S, &[4.0]), 500 * S, now, 2),
            Delta::Emit(vec![4.0])
        );
        assert_eq!(t.convert(2, p(0, &[4.0]), 500 * S, now, 2), Delta::Baseline);
        assert_eq!(
            t.convert(3, p(0, &[4.0]), 500 * S, now, 2),
            Delta::TooManyStreams
        );
        assert_eq!(t.expire(now), 0);
        assert_eq!(t.expire(now + 1), 2);
        assert!(t.is_empty());
    }

    /// Table: cumulative exponential points through an offset move and a re-scale (what SDKs
    /// do as new extremes arrive). Guarantees: only the new requests are emitted, in the new
    /// point's layout; counts going down are a reset.
    #[test]
    fn exponential_alignment() {
        let mut t = DeltaTracker::default();
        let at = |time: u64, exp: (i32, i32), values: &'static [f64]| Point {
            start: 1,
            time: time * S,
            layout: time, // layouts differ at every step
            exp: Some(exp),
            values,
        };
        type Row = (u64, (i32, i32), &'static [f64], Delta<Vec<f64>>);
        #[rustfmt::skip]
        let rows: Vec<Row> = vec![
            // zero=1, buckets 10, 11 at scale 2.
            (10, (2, 10), &[1.0, 4.0, 2.0, 0.0], Delta::Baseline),
            // Offset moves down to 8 (a smaller value arrived): new bucket 8 has 1.
            (20, (2, 8), &[1.0, 1.0, 0.0, 5.0, 2.0, 0.0], Delta::Emit(vec![0.0, 1.0, 0.0, 1.0, 0.0, 0.0])),
            // Re-scale to 1: old buckets 8..=11 at scale 2 become 4, 4, 5, 5 at scale 1.
            (30, (1, 4), &[2.0, 2.0, 8.0, 0.0], Delta::Emit(vec![1.0, 1.0, 1.0, 0.0])),
            // A count goes down: the process restarted without a new start time.
            (40, (1, 4), &[0.0, 1.0, 0.0, 0.0], Delta::Reset(vec![0.0, 1.0, 0.0, 0.0])),
            // A finer scale than before: cannot be aligned, new baseline.
            (50, (3, 40), &[0.0, 2.0, 0.0], Delta::Rebaseline),
        ];
        for (i, (time, exp, values, want)) in rows.into_iter().enumerate() {
            assert_eq!(
                t.convert(9, at(time, exp, values), 2, time * S, 10),
                want,
                "row {i}"
            );
        }
    }
}
