//! Cumulative-to-delta conversion per metric stream, with reset detection.
//!
//! Rules (those of the Collector's `cumulativetodelta` processor with `initial_value: auto`):
//! - the first point of a stream is only a baseline, unless its start time is after the engine
//!   started (then everything it counts happened while we were watching, and it is emitted);
//! - a later point whose start time changed, or any of whose counts went down, is a reset: the
//!   point's own counts are the delta since the reset;
//! - a point not newer than the last one is a duplicate or out of order, and is dropped.
//!
//! The number of streams is bounded; streams silent for longer than the TTL are forgotten.

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
    /// Not newer than the previous point: dropped.
    OutOfOrder,
    /// The stream table is full: dropped.
    TooManyStreams,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
struct Last {
    start: UnixNanos,
    time: UnixNanos,
    values: Vec<f64>,
}

/// Last cumulative values per stream.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct DeltaTracker {
    streams: HashMap<u64, Last>,
}

impl DeltaTracker {
    /// Converts one cumulative point of `stream` into a delta. `engine_start` is when the
    /// engine began watching; `max_streams` bounds the table.
    pub fn convert(
        &mut self,
        stream: u64,
        start: UnixNanos,
        time: UnixNanos,
        values: &[f64],
        engine_start: UnixNanos,
        max_streams: usize,
    ) -> Delta<Vec<f64>> {
        let Some(last) = self.streams.get_mut(&stream) else {
            if self.streams.len() >= max_streams {
                return Delta::TooManyStreams;
            }
            self.streams.insert(
                stream,
                Last {
                    start,
                    time,
                    values: values.to_vec(),
                },
            );
            if start != 0 && start >= engine_start {
                return Delta::Emit(values.to_vec());
            }
            return Delta::Baseline;
        };
        if time <= last.time {
            return Delta::OutOfOrder;
        }
        let restarted = start != 0 && last.start != 0 && start != last.start;
        let layout_changed = values.len() != last.values.len();
        let went_down = values.iter().zip(&last.values).any(|(v, l)| v < l);
        let out = if restarted || layout_changed || went_down {
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
            values: values.to_vec(),
        };
        out
    }

    /// Forgets streams whose newest point is older than `oldest`.
    pub fn expire(&mut self, oldest: UnixNanos) -> usize {
        let before = self.streams.len();
        self.streams.retain(|_, l| l.time >= oldest);
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
        let rows: Vec<Row> = vec![
            (100 * S, 600 * S, vec![10.0, 5.0], Delta::Baseline),
            (
                100 * S,
                610 * S,
                vec![15.0, 5.0],
                Delta::Emit(vec![5.0, 0.0]),
            ),
            (100 * S, 610 * S, vec![15.0, 5.0], Delta::OutOfOrder),
            (100 * S, 605 * S, vec![16.0, 5.0], Delta::OutOfOrder),
            (
                100 * S,
                620 * S,
                vec![18.0, 9.0],
                Delta::Emit(vec![3.0, 4.0]),
            ),
            // Process restarted: new start time, counts from zero.
            (
                615 * S,
                630 * S,
                vec![2.0, 1.0],
                Delta::Reset(vec![2.0, 1.0]),
            ),
            (
                615 * S,
                640 * S,
                vec![7.0, 1.0],
                Delta::Emit(vec![5.0, 0.0]),
            ),
            // Counts went down with the same start time: still a reset.
            (
                615 * S,
                650 * S,
                vec![1.0, 1.0],
                Delta::Reset(vec![1.0, 1.0]),
            ),
            // Bucket layout changed.
            (
                615 * S,
                660 * S,
                vec![1.0, 1.0, 1.0],
                Delta::Reset(vec![1.0, 1.0, 1.0]),
            ),
        ];
        for (i, (start, time, values, want)) in rows.into_iter().enumerate() {
            assert_eq!(
                t.convert(7, start, time, &values, engine_start, 10),
                want,
                "row {i}"
            );
        }
    }

    /// Guarantees: a stream that started after the engine is counted from its first point;
    /// the table is bounded and expires silent streams.
    #[test]
    fn new_streams_and_bounds() {
        let mut t = DeltaTracker::default();
        assert_eq!(
            t.convert(1, 600 * S, 610 * S, &[4.0], 500 * S, 2),
            Delta::Emit(vec![4.0])
        );
        assert_eq!(
            t.convert(2, 0, 610 * S, &[4.0], 500 * S, 2),
            Delta::Baseline
        );
        assert_eq!(
            t.convert(3, 0, 610 * S, &[4.0], 500 * S, 2),
            Delta::TooManyStreams
        );
        assert_eq!(t.expire(700 * S), 2);
        assert!(t.is_empty());
    }
}
