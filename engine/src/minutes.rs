//! An hour of minute buckets, oldest first: where the service graph's edges and the usage
//! series keep their history. A bucket is made when its minute first gets data; a minute an
//! hour older than the newest is refused; windows read the buckets they overlap, the oldest
//! prorated to the part inside.

use crate::time::{NANOS_PER_SEC, Span, UnixNanos};
use std::collections::VecDeque;

/// Minutes kept (an hour, and the minute in progress).
pub const MINUTES: u64 = 61;

/// A bucket of one Unix minute.
pub trait Minutely {
    /// Its Unix minute.
    fn minute(&self) -> u64;
}

/// The bucket of Unix `minute` in `minutes` (sorted, oldest first), made by `make` if missing;
/// None when it is an hour or more older than the newest. Buckets that fall out of the hour
/// when a newer one is made are dropped.
pub fn bucket<M: Minutely>(
    minutes: &mut VecDeque<M>,
    minute: u64,
    make: impl FnOnce() -> M,
) -> Option<&mut M> {
    if let Some(newest) = minutes.back()
        && minute + MINUTES <= newest.minute()
    {
        return None;
    }
    let at = minutes.partition_point(|m| m.minute() < minute);
    if minutes.get(at).is_none_or(|m| m.minute() != minute) {
        minutes.insert(at, make());
        while minutes
            .back()
            .is_some_and(|n| minutes[0].minute() + MINUTES <= n.minute())
        {
            minutes.pop_front();
        }
    }
    let at = minutes.partition_point(|m| m.minute() < minute);
    minutes.get_mut(at)
}

/// The buckets overlapping `window` ending at `now`, each with the share of it inside: of a
/// whole minute, the part after the window's start; of the minute in progress, of the part
/// up to `now` (what it holds so far), the part after the window's start.
pub fn weighted<M: Minutely>(
    minutes: &VecDeque<M>,
    window: Span,
    now: UnixNanos,
) -> impl Iterator<Item = (&M, f64)> {
    let start = now.saturating_sub(window.secs() * NANOS_PER_SEC);
    weighted_between(minutes, start, now, 0)
}

/// The buckets overlapping `(start, end]`, each with the share of it inside, for data that
/// begins at `data_from` and ends at `end`: a bucket holds what happened in its minute within
/// that span, so the minute `data_from` falls in is weighed over its part after it, and the
/// one `end` falls in over its part before it.
pub fn weighted_between<M: Minutely>(
    minutes: &VecDeque<M>,
    start: UnixNanos,
    end: UnixNanos,
    data_from: UnixNanos,
) -> impl Iterator<Item = (&M, f64)> {
    let end = end as f64 / NANOS_PER_SEC as f64;
    let start = start as f64 / NANOS_PER_SEC as f64;
    let data_from = data_from as f64 / NANOS_PER_SEC as f64;
    minutes.iter().filter_map(move |m| {
        let minute = (m.minute() * 60) as f64;
        let (a, z) = (minute.max(data_from), (minute + 60.0).min(end));
        if z <= start || a > end {
            return None;
        }
        let share = if z > a {
            ((z - start.max(a)) / (z - a)).clamp(0.0, 1.0)
        } else {
            // A minute starting at `end` holds only what happened at `end`.
            1.0
        };
        Some((m, share))
    })
}

/// Drops buckets older than an hour before `now`.
pub fn expire<M: Minutely>(minutes: &mut VecDeque<M>, now: UnixNanos) {
    let oldest = (now / (60 * NANOS_PER_SEC)).saturating_sub(MINUTES - 1);
    while minutes.front().is_some_and(|m| m.minute() < oldest) {
        minutes.pop_front();
    }
}
