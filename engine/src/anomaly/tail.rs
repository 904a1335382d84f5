//! How unusual a value of a statistic is among the stream's own history: the empirical tail
//! probability P(S ≥ s) of a non-negative statistic, counted in log-spaced bins (20 per decade
//! from 10⁻³ to 10⁴). Beyond the largest value seen, the tail is extrapolated as a Pareto tail
//! of index 3, so a value twice the record is eight times rarer than the record.
//!
//! This is what makes a detector's score a calibrated likelihood rather than a deviation in
//! standard deviations: a stream whose deviations are heavy-tailed (CPU spikes every night)
//! learns that they are common; a stream that never deviates learns that any deviation is rare.
//! Memory is fixed (140 counters); each look-up and update is O(1) (at most 140 additions).

use serde::{Deserialize, Serialize};

const LOW: f64 = 1e-3;
const PER_DECADE: f64 = 20.0;
const BINS: usize = 140;
const PARETO_INDEX: i32 = 3;

/// The history of one statistic.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub(super) struct TailRank {
    counts: Vec<u32>,
    n: u64,
    max: f64,
}

impl Default for TailRank {
    fn default() -> Self {
        Self {
            counts: vec![0; BINS],
            n: 0,
            max: 0.0,
        }
    }
}

fn bin(s: f64) -> usize {
    if s <= LOW {
        return 0;
    }
    (((s / LOW).log10() * PER_DECADE) as usize).min(BINS - 1)
}

impl TailRank {
    /// P(S ≥ s) from the history before `s` (1 with no history): the share of earlier values
    /// in `s`'s bin or above, counting `s` itself; beyond the record, the Pareto extrapolation.
    pub(super) fn p(&self, s: f64) -> f64 {
        if self.n == 0 {
            return 1.0;
        }
        let n = self.n as f64 + 1.0;
        if s > self.max {
            if self.max <= 0.0 {
                return 1.0 / n;
            }
            return (self.max / s).powi(PARETO_INDEX) / n;
        }
        let above: u64 = self.counts[bin(s)..].iter().map(|&c| u64::from(c)).sum();
        (above as f64 + 1.0) / n
    }

    /// Adds the values 1, 2, …, `len` to the history (the running lengths of a run of `len`
    /// samples), in O(bins).
    pub(super) fn add_run(&mut self, len: u64) {
        let mut k = 1u64;
        while k <= len {
            let b = bin(k as f64);
            // The first integer in a later bin than k's: estimated from the bin's upper edge,
            // then corrected for rounding (the bins are monotone in the value).
            let end = if b == BINS - 1 {
                len + 1
            } else {
                let edge = LOW * 10f64.powf((b + 1) as f64 / PER_DECADE);
                let mut next = (edge.ceil() as u64).max(k + 1);
                while next > k + 1 && bin((next - 1) as f64) > b {
                    next -= 1;
                }
                while bin(next as f64) == b {
                    next += 1;
                }
                next.min(len + 1)
            };
            let c = &mut self.counts[b];
            *c = c.saturating_add(u32::try_from(end - k).unwrap_or(u32::MAX));
            k = end;
        }
        self.n += len;
        self.max = self.max.max(len as f64);
    }

    /// Adds `s` to the history.
    pub(super) fn add(&mut self, s: f64) {
        let c = &mut self.counts[bin(s)];
        *c = c.saturating_add(1);
        self.n += 1;
        self.max = self.max.max(s);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Guarantees: the tail probability is the share of the history at or above a value (to
    /// the bin), never 0, and falls as a Pareto tail beyond the record.
    #[test]
    fn tail_probabilities_follow_the_history() {
        let mut t = TailRank::default();
        assert_eq!(t.p(5.0), 1.0);
        for i in 1..=999 {
            t.add(f64::from(i) / 100.0); // 0.01 … 9.99
        }
        assert!((t.p(0.005) - 1.0).abs() < 1e-12);
        // 5.0's bin starts at 4.47 (bins are 12 % wide): 553 values of 999 at or above it.
        assert!((t.p(5.0) - 0.554).abs() < 1e-9, "{}", t.p(5.0));
        // The record's own bin holds 8.92 … 9.99: 108 values of 999.
        assert!((t.p(9.99) - 0.109).abs() < 1e-9, "{}", t.p(9.99));
        let record = 1.0 / 1000.0;
        assert!((t.p(9.99 * 2.0) - record / 8.0).abs() < 1e-9);
        assert!(t.p(1e9) > 0.0);

        // A run adds each of its running lengths once.
        let (mut run, mut each) = (TailRank::default(), TailRank::default());
        for len in [0, 1, 7, 30, 250, 5000, 10_000, 20_000] {
            run.add_run(len);
            for k in 1..=len {
                each.add(k as f64);
            }
        }
        assert_eq!(run, each);
        let mut huge = TailRank::default();
        huge.add_run(1 << 40);
        assert_eq!(huge.n, 1 << 40);
        assert!(huge.p(2e12) < 1.0 / (1u64 << 40) as f64);
    }
}
