//! The pieces a detector is made of, each O(1) per sample with fixed memory: exponentially
//! weighted moments, the last few values, a time-of-day profile, and a histogram of values.

use super::tail::TailRank;
use serde::{Deserialize, Serialize};
use std::collections::VecDeque;

/// Exponentially weighted mean and variance over about `1/alpha` samples (the first samples
/// weigh equally, so the estimate is usable from the second).
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub(super) struct Moments {
    pub(super) mean: f64,
    pub(super) var: f64,
    pub(super) n: u64,
}

impl Moments {
    pub(super) fn update(&mut self, x: f64, alpha: f64) {
        self.n += 1;
        if self.n == 1 {
            self.mean = x;
            self.var = 0.0;
            return;
        }
        let a = alpha.max(1.0 / self.n as f64);
        let d = x - self.mean;
        self.mean += a * d;
        self.var = (1.0 - a) * (self.var + a * d * d);
    }
}

/// The windows (in samples) whose means are compared with the long-run moments: a single
/// sample (a spike) and two short runs (a shift, a burst).
pub(super) const WINDOWS: [usize; 3] = [1, 5, 20];

/// The last [`WINDOWS`]' largest number of values.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub(super) struct Recent(VecDeque<f64>);

impl Recent {
    pub(super) fn push(&mut self, x: f64, keep: usize) {
        if self.0.len() == keep {
            self.0.pop_front();
        }
        self.0.push_back(x);
    }

    pub(super) fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    pub(super) fn mean(&self) -> f64 {
        if self.0.is_empty() {
            return 0.0;
        }
        self.0.iter().sum::<f64>() / self.0.len() as f64
    }

    /// The largest standardised distance of a recent window's mean from `m`'s mean: for a
    /// window of w samples, |mean − μ| / (σ / √w). None until `m` has a spread.
    pub(super) fn deviation(&self, m: &Moments) -> Option<f64> {
        if m.n < 2 || m.var <= 0.0 {
            return None;
        }
        let sd = m.var.sqrt();
        let mut sum = 0.0;
        let mut best: Option<f64> = None;
        for (i, x) in self.0.iter().rev().enumerate() {
            sum += x;
            let w = i + 1;
            if WINDOWS.contains(&w) {
                let z = (sum / w as f64 - m.mean).abs() / (sd / (w as f64).sqrt());
                best = Some(best.map_or(z, |b| b.max(z)));
            }
        }
        best
    }
}

/// A time-of-day (or any cycle) profile: the value expected in each bin of the cycle.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub(super) struct Season {
    values: Vec<f64>,
    visits: Vec<u16>,
}

/// Visits a bin needs before its value is reported as expected.
const BIN_TRUSTED: u16 = 3;

impl Season {
    pub(super) fn new(bins: usize) -> Self {
        Self {
            values: vec![0.0; bins],
            visits: vec![0; bins],
        }
    }

    pub(super) fn is_empty(&self) -> bool {
        self.values.is_empty()
    }

    pub(super) fn bins(&self) -> usize {
        self.values.len()
    }

    /// The bin's value, once it has been visited.
    pub(super) fn get(&self, bin: usize) -> Option<f64> {
        (self.visits[bin] > 0).then(|| self.values[bin])
    }

    /// The bin's value, once it has been visited often enough to be trusted.
    pub(super) fn expected(&self, bin: usize) -> Option<f64> {
        (self.visits[bin] >= BIN_TRUSTED).then(|| self.values[bin])
    }

    /// Moves the bin's value towards `x` (takes it on the first visit).
    pub(super) fn learn(&mut self, bin: usize, x: f64, alpha: f64) {
        let v = &mut self.values[bin];
        *v = if self.visits[bin] == 0 {
            x
        } else {
            *v + alpha * (x - *v)
        };
        self.visits[bin] = self.visits[bin].saturating_add(1);
    }
}

/// Long-run standard deviations above both the recent and the long-run mean that make a
/// sample part of a spike for [`Silence`].
const SPIKE_SDS: f64 = 4.0;
/// Gaps between spikes a stream must have had before its silences are judged.
pub(super) const GAPS_BEFORE_SILENCE: u32 = 20;

/// How long since the stream's last spike: a run of samples more than [`SPIKE_SDS`] long-run
/// standard deviations above both the mean of the samples before it and the long-run mean (a
/// batch job's write burst, a cron's CPU, a periodic flush; not the return from a dip). A silence longer than the stream's usual gaps is a stream
/// that has stopped doing what it does (the job that stopped running), which no statistic
/// of the values can see: every quiet sample is an ordinary one.
///
/// The current gap is ranked against the running gaps of the stream's finished gaps (each
/// gap of length L adds 1, 2, …, L when the next spike starts), so the tail probability of a
/// silence falls as it lengthens past the longest gap before, on the same Pareto tail as the
/// other statistics. A level that steps up is one spike (the recent mean follows it), not
/// many, so a stream is judged only after [`GAPS_BEFORE_SILENCE`] gaps between spikes. A
/// silence that outlasts the long-run moments' memory is the stream's new normal: the
/// silence forgets its gaps and is judged again after as many new ones.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub(super) struct Silence {
    /// Samples since the last spike ended (counting from the first spike).
    gap: u64,
    started: bool,
    in_spike: bool,
    finished: u32,
    gaps: TailRank,
}

impl Silence {
    /// Whether the stream has had enough gaps between spikes for its silences to be judged.
    pub(super) fn judged(&self) -> bool {
        self.finished >= GAPS_BEFORE_SILENCE
    }

    /// The tail probability of the gap after `x`, given the mean of the samples before it
    /// (None when there are none), the long-run mean and standard deviation; None while `x` is
    /// part of a spike and while the stream is not [`Silence::judged`]. A gap longer than
    /// `forget_after` samples starts the silence afresh.
    pub(super) fn observe(
        &mut self,
        x: f64,
        recent_mean: Option<f64>,
        mean: f64,
        sd: f64,
        forget_after: u64,
    ) -> Option<f64> {
        let spike = recent_mean.is_some_and(|m| sd > 0.0 && x > m.max(mean) + SPIKE_SDS * sd);
        if spike {
            if self.started && !self.in_spike {
                self.gaps.add_run(self.gap);
                self.finished = self.finished.saturating_add(1);
            }
            (self.started, self.in_spike, self.gap) = (true, true, 0);
            return None;
        }
        self.in_spike = false;
        if !self.started {
            return None;
        }
        self.gap += 1;
        if self.gap > forget_after {
            *self = Silence::default();
            return None;
        }
        self.judged().then(|| self.gaps.p(self.gap as f64))
    }
}

/// Bins of the value histogram.
pub(super) const DENSITY_BINS: usize = 30;
/// Pseudo-count per bin (a value in an empty bin is rare, not impossible).
const DENSITY_PRIOR: f64 = 0.5;

/// A histogram of the values over the range seen so far (widened with 10 % headroom when a
/// value falls outside it, re-binning the counts). A value's surprise is −ln of its bin's
/// smoothed share: a value in a part of the range the stream never visits (0.6 on a CPU that
/// is either idle at 0.1 or busy at 1.5) is surprising although it is no extreme.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub(super) struct Density {
    counts: Vec<f64>,
    low: f64,
    high: f64,
    first: f64,
    pub(super) n: f64,
}

impl Density {
    fn index(&self, x: f64) -> usize {
        let f = (x - self.low) / (self.high - self.low) * DENSITY_BINS as f64;
        (f.max(0.0) as usize).min(DENSITY_BINS - 1)
    }

    fn widen(&mut self, x: f64) {
        let (mut low, mut high) = (self.low.min(x), self.high.max(x));
        let span = high - low;
        if x > self.high {
            high += 0.1 * span;
        }
        if x < self.low {
            low -= 0.1 * span;
        }
        let width = (self.high - self.low) / DENSITY_BINS as f64;
        let mut counts = vec![0.0; DENSITY_BINS];
        for (i, &c) in self.counts.iter().enumerate() {
            if c == 0.0 {
                continue;
            }
            let mid = self.low + (i as f64 + 0.5) * width;
            let j = ((mid - low) / (high - low) * DENSITY_BINS as f64).max(0.0) as usize;
            counts[j.min(DENSITY_BINS - 1)] += c;
        }
        self.counts = counts;
        self.low = low;
        self.high = high;
    }

    /// The surprise of `x` (None for the first value), then counts it.
    pub(super) fn observe(&mut self, x: f64) -> Option<f64> {
        if self.n == 0.0 {
            (self.low, self.high, self.first, self.n) = (x, x, x, 1.0);
            return None;
        }
        if self.high == self.low {
            if x == self.low {
                self.n += 1.0;
                return Some(0.0);
            }
            let (low, high) = (self.low.min(x), self.high.max(x));
            self.low = low - 0.05 * (high - low);
            self.high = high + 0.05 * (high - low);
            self.counts = vec![0.0; DENSITY_BINS];
            let i = self.index(self.first);
            self.counts[i] = self.n;
        } else if x < self.low || x > self.high {
            self.widen(x);
        }
        let i = self.index(x);
        let share =
            (self.counts[i] + DENSITY_PRIOR) / (self.n + DENSITY_PRIOR * DENSITY_BINS as f64);
        self.counts[i] += 1.0;
        self.n += 1.0;
        Some(-share.ln())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Guarantees: the recent windows' deviation is the largest of the 1-, 5- and 20-sample
    /// means' standardised distances; a histogram finds a value between two busy regions
    /// surprising, and keeps its counts when its range widens.
    #[test]
    fn deviations_and_surprises() {
        let m = Moments {
            mean: 10.0,
            var: 4.0,
            n: 100,
        };
        let mut r = Recent::default();
        for _ in 0..20 {
            r.push(11.0, 20);
        }
        // Every window's mean is 11: the 20-sample window is the most surprising, 0.5·√20.
        assert!((r.deviation(&m).unwrap() - 0.5 * 20f64.sqrt()).abs() < 1e-12);
        r.push(20.0, 20);
        assert!((r.deviation(&m).unwrap() - 5.0).abs() < 1e-12);
        assert_eq!(r.deviation(&Moments::default()), None);

        let mut d = Density::default();
        assert_eq!(d.observe(0.1), None);
        for i in 0..500 {
            d.observe(if i % 10 == 0 { 1.5 } else { 0.1 });
        }
        let busy = d.observe(0.1).unwrap();
        let between = d.observe(0.8).unwrap();
        assert!(between > busy + 4.0, "{busy} {between}");
        let n = d.n;
        d.observe(100.0);
        assert_eq!(d.counts.iter().sum::<f64>(), n + 1.0);
    }
}
