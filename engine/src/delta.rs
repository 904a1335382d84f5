//! Cumulative-to-delta conversion per metric stream, with reset detection.
//!
//! Rules (those of the Collector's `cumulativetodelta` processor with `initial_value: auto`):
//! - the first point of a stream is only a baseline, unless its start time is after the engine
//!   started (then everything it counts happened while we were watching, and it is emitted);
//! - a later point whose start time changed, or any of whose counts went down, is a reset: the
//!   point's own counts are the delta since the reset;
//! - a point whose bucket layout changed (exponential histograms re-scale and move their
//!   offset as they see new values) cannot be subtracted bucket by bucket: it becomes the new
//!   baseline and one interval is not counted (never the whole total twice);
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

    /// Streams tracked.
    pub fn len(&self) -> usize {
        self.streams.len()
    }

    /// True when no stream is tracked.
    pub fn is_empty(&self) -> bool {
        self.streams.is_empty()
    }
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
}
