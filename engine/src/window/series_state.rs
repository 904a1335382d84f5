//! The windowed state of one series: counter rings and digest rings at each resolution.

use super::{
    COUNTER_TIERS, Cover, DIGEST_TIERS, MAX_SERIES_DIGEST_WINDOW_S, Ring, TierSpec, cover,
};
use crate::sketch::TDigest;
use crate::time::UnixNanos;
use serde::{Deserialize, Serialize};

/// Latency thresholds tracked per series (from the service's latency SLOs).
pub const MAX_THRESHOLDS: usize = 2;

/// Counters of one bucket. `u32` saturating: 4 × 10^9 requests per bucket per series is
/// far beyond any real series, and it halves the memory of the 30-day history.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Counts {
    /// Requests.
    pub requests: u32,
    /// Bad requests.
    pub errors: u32,
    /// Requests with latency ≤ each configured threshold (in threshold order).
    pub within: [u32; MAX_THRESHOLDS],
    /// Requests whose latency is known (counters from metrics carry none): the denominator
    /// of latency SLIs.
    pub timed: u32,
}

fn sat(x: u64) -> u32 {
    u32::try_from(x).unwrap_or(u32::MAX)
}

impl Counts {
    /// Counters from totals (saturating at `u32::MAX` each).
    pub fn from_totals(
        requests: u64,
        errors: u64,
        within: [u64; MAX_THRESHOLDS],
        timed: u64,
    ) -> Self {
        let mut c = Self::default();
        c.add(requests, errors, within, timed);
        c
    }

    fn add(&mut self, requests: u64, errors: u64, within: [u64; MAX_THRESHOLDS], timed: u64) {
        self.timed = self.timed.saturating_add(sat(timed));
        self.requests = self.requests.saturating_add(sat(requests));
        self.errors = self.errors.saturating_add(sat(errors));
        for (w, add) in self.within.iter_mut().zip(within) {
            *w = w.saturating_add(sat(add));
        }
    }
}

/// Sums over a window.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct WindowSums {
    /// Requests.
    pub requests: u64,
    /// Bad requests.
    pub errors: u64,
    /// Requests within each threshold.
    pub within: [u64; MAX_THRESHOLDS],
    /// Requests with a known latency.
    pub timed: u64,
    /// Start second of the oldest bucket counted.
    pub start_s: u64,
    /// False when the window is longer than the retained history.
    pub complete: bool,
}

/// Window sums exact at the oldest edge (see [`SeriesState::sums_prorated`]).
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct ProratedSums {
    /// Requests.
    pub requests: f64,
    /// Bad requests.
    pub errors: f64,
    /// Requests with a known latency.
    pub timed: f64,
    /// Requests within each threshold.
    pub within: [f64; MAX_THRESHOLDS],
    /// False when the window is longer than the retained history.
    pub complete: bool,
}

impl std::ops::AddAssign for ProratedSums {
    fn add_assign(&mut self, o: Self) {
        self.requests += o.requests;
        self.errors += o.errors;
        self.timed += o.timed;
        for (a, b) in self.within.iter_mut().zip(o.within) {
            *a += b;
        }
        self.complete &= o.complete;
    }
}

/// What one series keeps.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(try_from = "SeriesStateWire")]
pub struct SeriesState {
    counts: [Ring<Counts>; COUNTER_TIERS.len()],
    digests: [Ring<TDigest>; DIGEST_TIERS.len()],
    /// Newest event time applied.
    pub last_event: UnixNanos,
    /// Arrival time (engine `now`) of the newest data applied.
    pub last_arrival: UnixNanos,
    /// Read from a checkpoint written when series still kept the hour's 5-minute digests:
    /// those digests, until the engine hands them to the series' version.
    #[serde(skip)]
    legacy_hour: Option<Box<Ring<TDigest>>>,
}

/// A series as checkpoints hold it, in this layout or the one before it (counters without the
/// 10 s tier, and digests with the hour's 5-minute tier).
#[derive(Deserialize)]
struct SeriesStateWire {
    counts: Vec<Ring<Counts>>,
    digests: Vec<Ring<TDigest>>,
    last_event: UnixNanos,
    last_arrival: UnixNanos,
}

/// Counter tiers before the 10 s one was added (1 s × 5 min, then as now).
const OLD_COUNTER_TIERS: usize = COUNTER_TIERS.len() - 1;

impl TryFrom<SeriesStateWire> for SeriesState {
    type Error = String;

    fn try_from(w: SeriesStateWire) -> Result<Self, String> {
        let counts = match w.counts.len() {
            n if n == COUNTER_TIERS.len() => w.counts,
            OLD_COUNTER_TIERS => {
                // The old 5 minutes of seconds: the 10 s tier is their sums (the 1 s tier
                // keeps them until the next eviction).
                let tens = w.counts[0].coarsened(10, |a, b| {
                    a.add(
                        u64::from(b.requests),
                        u64::from(b.errors),
                        b.within.map(u64::from),
                        u64::from(b.timed),
                    )
                });
                let mut rings = w.counts;
                rings.insert(1, tens);
                rings
            }
            n => {
                return Err(format!(
                    "a series has {n} counter tiers (this build reads {} or {OLD_COUNTER_TIERS})",
                    COUNTER_TIERS.len()
                ));
            }
        };
        let counts = <[Ring<Counts>; COUNTER_TIERS.len()]>::try_from(counts)
            .map_err(|_| "counter tiers".to_string())?;
        if !(DIGEST_TIERS.len()..=DIGEST_TIERS.len() + 1).contains(&w.digests.len()) {
            return Err(format!(
                "a series has {} digest tiers (this build reads {} or {})",
                w.digests.len(),
                DIGEST_TIERS.len(),
                DIGEST_TIERS.len() + 1
            ));
        }
        let mut rings = w.digests.into_iter();
        let digests = std::array::from_fn(|_| rings.next().unwrap_or_default());
        Ok(Self {
            counts,
            digests,
            last_event: w.last_event,
            last_arrival: w.last_arrival,
            legacy_hour: rings.next().filter(|r| !r.is_empty()).map(Box::new),
        })
    }
}

impl SeriesState {
    /// Applies `requests` requests (of which `errors` bad) at event second `t_s`, arriving at
    /// `now_s`. `latency_ms` (with its per-threshold within-counts) is added to the digests when
    /// known. Returns false when the event is older than every tier's retention.
    #[allow(clippy::too_many_arguments)]
    pub fn apply(
        &mut self,
        t_s: u64,
        now_s: u64,
        requests: u64,
        errors: u64,
        within: [u64; MAX_THRESHOLDS],
        latency_ms: Option<f64>,
        compression: f32,
    ) -> bool {
        let mut applied = false;
        for (ring, spec) in self.counts.iter_mut().zip(COUNTER_TIERS) {
            if let Some((c, _)) =
                ring.bucket_mut(t_s / spec.width_s, now_s / spec.width_s, spec.slots)
            {
                c.add(
                    requests,
                    errors,
                    within,
                    if latency_ms.is_some() { requests } else { 0 },
                );
                applied = true;
            }
        }
        if let Some(ms) = latency_ms {
            for (ring, spec) in self.digests.iter_mut().zip(DIGEST_TIERS) {
                let Some((d, appended)) =
                    ring.bucket_mut(t_s / spec.width_s, now_s / spec.width_s, spec.slots)
                else {
                    continue;
                };
                if d.is_empty() {
                    *d = TDigest::new(compression);
                }
                d.add_weighted(ms, requests);
                if appended {
                    // The previous bucket is closed: release its merge buffer.
                    if let Some(prev) = ring.second_newest_mut() {
                        prev.shrink();
                    }
                }
            }
        }
        applied
    }

    /// Second `t_s` as the 1 s tiers hold it: its counters (None when the second is out of
    /// the 1-minute 1 s history or empty) and its latency digest (only within the 10-second
    /// 1 s digest history).
    pub fn second(&self, t_s: u64) -> Option<(Counts, Option<&TDigest>)> {
        let (_, c) = self.counts[0].range_indexed(t_s, t_s + 1).next()?;
        if c.requests == 0 {
            return None;
        }
        let d = self.digests[0]
            .range_indexed(t_s, t_s + 1)
            .next()
            .map(|(_, d)| d)
            .filter(|d| !d.is_empty());
        Some((*c, d))
    }

    /// Applies a whole second at once (a replayed archive row): `counts` added to every
    /// counter tier and `digest` merged into every digest tier at event second `t_s`, arriving
    /// at `now_s`. Returns false when the second is older than every tier's retention.
    pub fn apply_second(
        &mut self,
        t_s: u64,
        now_s: u64,
        counts: &Counts,
        digest: Option<&TDigest>,
        compression: f32,
    ) -> bool {
        let mut applied = false;
        for (ring, spec) in self.counts.iter_mut().zip(COUNTER_TIERS) {
            if let Some((c, _)) =
                ring.bucket_mut(t_s / spec.width_s, now_s / spec.width_s, spec.slots)
            {
                c.add(
                    u64::from(counts.requests),
                    u64::from(counts.errors),
                    counts.within.map(u64::from),
                    u64::from(counts.timed),
                );
                applied = true;
            }
        }
        if let Some(digest) = digest.filter(|d| !d.is_empty()) {
            for (ring, spec) in self.digests.iter_mut().zip(DIGEST_TIERS) {
                let Some((d, appended)) =
                    ring.bucket_mut(t_s / spec.width_s, now_s / spec.width_s, spec.slots)
                else {
                    continue;
                };
                if d.is_empty() {
                    *d = TDigest::new(compression);
                }
                d.merge(digest);
                if appended && let Some(prev) = ring.second_newest_mut() {
                    prev.shrink();
                }
            }
        }
        applied
    }

    /// Adds all of `other`'s history into this state (counts add up bucket by bucket, digests
    /// merge): window sums over both afterwards equal the sums of the two before. Used to fold
    /// an idle series into its service version's aggregate.
    pub fn absorb(&mut self, other: &SeriesState) {
        for (mine, theirs) in self.counts.iter_mut().zip(&other.counts) {
            mine.absorb(theirs, |a, b| {
                a.add(
                    u64::from(b.requests),
                    u64::from(b.errors),
                    b.within.map(u64::from),
                    u64::from(b.timed),
                );
            });
        }
        for (mine, theirs) in self.digests.iter_mut().zip(&other.digests) {
            mine.absorb(theirs, |a, b| {
                if a.is_empty() {
                    *a = b.clone();
                } else if !b.is_empty() {
                    a.merge(b);
                }
            });
        }
        self.last_event = self.last_event.max(other.last_event);
        self.last_arrival = self.last_arrival.max(other.last_arrival);
    }

    /// The buckets that hold second `from_s` or later, in every tier (what changed since a
    /// mark, when every second applied since is `from_s` or later), with the newest times.
    pub fn since(&self, from_s: u64) -> SeriesState {
        Self {
            counts: std::array::from_fn(|i| {
                self.counts[i].since(from_s / COUNTER_TIERS[i].width_s)
            }),
            digests: std::array::from_fn(|i| {
                self.digests[i].since(from_s / DIGEST_TIERS[i].width_s)
            }),
            last_event: self.last_event,
            last_arrival: self.last_arrival,
            legacy_hour: None,
        }
    }

    /// Puts the buckets of `changes` (from [`SeriesState::since`]) in place of this state's.
    pub fn overwrite(&mut self, changes: &SeriesState) {
        for (mine, theirs) in self.counts.iter_mut().zip(&changes.counts) {
            mine.overwrite(theirs);
        }
        for (mine, theirs) in self.digests.iter_mut().zip(&changes.digests) {
            mine.overwrite(theirs);
        }
        self.last_event = self.last_event.max(changes.last_event);
        self.last_arrival = self.last_arrival.max(changes.last_arrival);
    }

    /// Drops buckets out of retention at `now_s`.
    pub fn evict(&mut self, now_s: u64) {
        for (ring, spec) in self.counts.iter_mut().zip(COUNTER_TIERS) {
            ring.evict(now_s / spec.width_s, spec.slots);
        }
        for (ring, spec) in self.digests.iter_mut().zip(DIGEST_TIERS) {
            ring.evict(now_s / spec.width_s, spec.slots);
        }
    }

    /// True when no bucket remains.
    pub fn is_empty(&self) -> bool {
        self.counts.iter().all(Ring::is_empty)
    }

    /// Counter sums over the `window_s` seconds ending in second `now_s`.
    pub fn sums(&self, now_s: u64, window_s: u64) -> WindowSums {
        let c: Cover = cover(&COUNTER_TIERS, now_s, window_s);
        let mut out = WindowSums {
            start_s: c.start_s,
            complete: c.complete,
            ..Default::default()
        };
        for seg in &c.segments {
            for b in self.counts[seg.tier].range(seg.from_idx, seg.to_idx) {
                out.requests += u64::from(b.requests);
                out.errors += u64::from(b.errors);
                out.timed += u64::from(b.timed);
                for (o, w) in out.within.iter_mut().zip(b.within) {
                    *o += u64::from(w);
                }
            }
        }
        out
    }

    /// Like [`SeriesState::sums`], but exact to the second at the window's oldest edge: a
    /// coarse bucket that straddles the edge counts in proportion to its overlap (requests are
    /// assumed uniform within a bucket). This is what burn rates use, so a long window is not
    /// diluted by up to one coarse bucket of older traffic.
    pub fn sums_prorated(&self, now_s: u64, window_s: u64) -> ProratedSums {
        let c: Cover = cover(&COUNTER_TIERS, now_s, window_s);
        let from = (now_s + 1).saturating_sub(window_s);
        let mut out = ProratedSums {
            complete: c.complete,
            ..Default::default()
        };
        for seg in &c.segments {
            let w = COUNTER_TIERS[seg.tier].width_s;
            for (idx, b) in self.counts[seg.tier].range_indexed(seg.from_idx, seg.to_idx) {
                let start = idx * w;
                let f = if start < from {
                    (start + w).saturating_sub(from) as f64 / w as f64
                } else {
                    1.0
                };
                out.requests += f * f64::from(b.requests);
                out.errors += f * f64::from(b.errors);
                out.timed += f * f64::from(b.timed);
                for (o, x) in out.within.iter_mut().zip(b.within) {
                    *o += f * f64::from(x);
                }
            }
        }
        out
    }

    /// The 5-minute digests of the hour a checkpoint of the old layout held for this series
    /// (see [`crate::window::VersionDigests::absorb`]); None afterwards.
    pub fn take_legacy_hour(&mut self) -> Option<Box<Ring<TDigest>>> {
        self.legacy_hour.take()
    }

    /// The merged latency digest of the window, or `None` when the window is longer than the
    /// series' digest history (5 min).
    pub fn digest(&self, now_s: u64, window_s: u64, compression: f32) -> Option<TDigest> {
        let c = cover(&DIGEST_TIERS, now_s, window_s);
        if !c.complete || window_s > MAX_SERIES_DIGEST_WINDOW_S {
            return None;
        }
        let mut merged = TDigest::new(compression);
        let parts = c
            .segments
            .iter()
            .flat_map(|s| self.digests[s.tier].range(s.from_idx, s.to_idx));
        merged.merge_all(parts);
        Some(merged)
    }

    /// Heap bytes held by this series' windows.
    pub fn heap_bytes(&self) -> usize {
        let (counters, digests) = self.heap_bytes_split();
        counters + digests
    }

    /// Heap bytes of the counter rings and of the digest rings (with their centroids).
    pub fn heap_bytes_split(&self) -> (usize, usize) {
        let counters = self.counts.iter().map(Ring::heap_bytes).sum::<usize>();
        let digests = self.digests.iter().map(Ring::heap_bytes).sum::<usize>()
            + self
                .digests
                .iter()
                .flat_map(|r| r.values())
                .map(TDigest::heap_bytes)
                .sum::<usize>();
        (counters, digests)
    }

    /// Newest bucket second across the finest counter ring (for idleness checks).
    pub fn newest_second(&self) -> Option<u64> {
        self.counts[0].newest_idx()
    }

    /// The tiers, for documentation and tests.
    pub fn tiers() -> (&'static [TierSpec], &'static [TierSpec]) {
        (&COUNTER_TIERS, &DIGEST_TIERS)
    }
}
