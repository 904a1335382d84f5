//! Event-time buckets at several resolutions, and how a sliding window is covered by them.
//!
//! Counters (requests, errors, requests within each latency threshold) are kept per series at
//! 1 s for 1 min, 10 s for 5 min, 1 min for 1 h, 10 min for 6 h, 1 h for 3 d and 12 h for
//! 30 d (324 buckets at most).
//! Latency digests cost far more than counters (up to ~1 KB each at the default compression),
//! so a series keeps only 1-minute digests for 5 minutes (per-route quantiles), and its service
//! version keeps the fine ones: 1 s for 10 s, 10 s for 5 min and 5 min for 1 h, fed by every
//! series of the version. A version's or a service's quantiles (the canary judge's, the API's)
//! come from there.
//! A window ending now is covered by the finest buckets that still exist, switching to a
//! coarser tier only at one of its bucket boundaries, so nothing is counted twice; the oldest
//! edge is therefore exact to the width of the coarsest tier used.

mod ring;
mod series_state;
mod version_digests;

pub use ring::Ring;
pub use series_state::{Counts, MAX_THRESHOLDS, ProratedSums, SeriesState, WindowSums};
pub use version_digests::{LegacyDigests, VersionDigests};

use crate::sketch::TDigest;

use serde::{Deserialize, Serialize};

/// One resolution: buckets `width_s` seconds wide, the newest `slots` of them retained.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct TierSpec {
    /// Bucket width in seconds.
    pub width_s: u64,
    /// Buckets retained (the current, partial one included).
    pub slots: u64,
}

impl TierSpec {
    /// Seconds of history this tier covers.
    pub const fn retention_s(self) -> u64 {
        self.width_s * (self.slots - 1)
    }
}

/// Counter tiers: 1 s × 1 min, 10 s × 5 min, 1 min × 1 h, 10 min × 6 h, 1 h × 3 d, 12 h × 30 d
/// (one extra slot each for the partial bucket). A window's oldest edge is thus exact to at
/// most 1/30 of its length for the standard SLO windows (5m, 30m, 1h, 6h, 3d; 1/60 for 30d),
/// and burn rates prorate the bucket at the edge (see [`SeriesState::sums_prorated`]). To fit
/// the memory per series in 16 KiB, the 1 s tier was cut from 5 min to 1 min (7 KiB) and the
/// 30-day tier from 6 h to 12 h buckets (1.4 KiB).
#[rustfmt::skip]
pub const COUNTER_TIERS: [TierSpec; 6] = [
    TierSpec { width_s: 1, slots: 61 },
    TierSpec { width_s: 10, slots: 31 },
    TierSpec { width_s: 60, slots: 61 },
    TierSpec { width_s: 600, slots: 37 },
    TierSpec { width_s: 3600, slots: 73 },
    TierSpec { width_s: 43_200, slots: 61 },
];

/// Per-series digest tier: 1 min × 5 min. A series' quantiles are for its routes and versions
/// on the API and dashboards: a window's oldest edge is exact to the minute (a 5-minute window
/// covers 5 to 6 minutes, a 10-second one the current and the previous minute). Counts, error
/// ratios and requests within each latency threshold stay exact to the finer counter tiers.
/// This was 1 s × 10 s plus 10 s × 5 min (42 digests, up to 57 KB at 1000 requests/s) until
/// the memory per series had to fit 16 KiB; the fine tiers moved to the version.
#[rustfmt::skip]
pub const SERIES_DIGEST_TIERS: [TierSpec; 1] = [
    TierSpec { width_s: 60, slots: 6 },
];

/// Per-series 1 s digests kept only for the archive (when it is on: see
/// [`crate::EngineConfig::keep_second_digests`]): each second's digest until it is sealed.
pub const ARCHIVE_SECOND_DIGESTS: TierSpec = TierSpec {
    width_s: 1,
    slots: 11,
};

/// Per-service-version digest tiers: 1 s × 10 s, 10 s × 5 min, 5 min × 1 h. Quantiles of a
/// version, a service or a canary's arm over any window up to 1 h come from here; the oldest
/// edge is exact to 1 s up to 10 s, to 10 s up to 5 min and to 5 min up to 1 h.
#[rustfmt::skip]
pub const VERSION_DIGEST_TIERS: [TierSpec; 3] = [
    TierSpec { width_s: 1, slots: 11 },
    TierSpec { width_s: 10, slots: 31 },
    TierSpec { width_s: 300, slots: 13 },
];

/// How digests are kept: their compression, and whether series keep 1 s digests for the
/// archive.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct DigestSettings {
    /// t-digest compression.
    pub compression: f32,
    /// Keep each series' 1 s digests ([`ARCHIVE_SECOND_DIGESTS`]).
    pub keep_seconds: bool,
}

impl DigestSettings {
    /// The buffer of a per-series digest: half the compression (100 samples by default,
    /// 800 bytes), so an open bucket's buffer stays small beside its centroids.
    pub fn series_buffer(self) -> usize {
        (self.compression / 2.0) as usize
    }
}

/// Runs `f` on the digest of event second `t_s` in a ring of `spec` buckets arriving at
/// `now_s` (a new bucket starts empty at `compression`). False when `t_s` is out of retention.
fn with_digest(
    ring: &mut Ring<TDigest>,
    spec: TierSpec,
    t_s: u64,
    now_s: u64,
    compression: f32,
    f: impl FnOnce(&mut TDigest),
) -> bool {
    let Some((d, _)) = ring.bucket_mut(t_s / spec.width_s, now_s / spec.width_s, spec.slots) else {
        return false;
    };
    if d.is_empty() {
        *d = TDigest::new(compression);
    }
    f(d);
    true
}

/// Drops a digest ring's buckets out of retention at `now_s`, and merges the buffers of the
/// closed ones (older than `now_s`'s bucket) and releases them. This is done at the sweep, not
/// when a newer bucket arrives: a replica that applies change sets and sweeps at their time
/// then closes the same buckets the same way, so a bucket whose only change was to be closed
/// needs no place in a change set (it had none, and the replica's quantiles drifted).
fn evict_digests(ring: &mut Ring<TDigest>, spec: TierSpec, now_s: u64) {
    let now_idx = now_s / spec.width_s;
    ring.evict(now_idx, spec.slots);
    for (idx, d) in ring.iter_mut() {
        if idx < now_idx && d.holds_buffer() {
            d.shrink();
        }
    }
}

/// Longest window counters can answer.
pub const MAX_COUNTER_WINDOW_S: u64 = 30 * 86_400;
/// Longest window a series' latency quantiles can answer.
pub const MAX_SERIES_DIGEST_WINDOW_S: u64 = 300;
/// Longest window a version's (or a service's) latency quantiles can answer.
pub const MAX_DIGEST_WINDOW_S: u64 = 3600;

/// A run of buckets of one tier: indices `[from_idx, to_idx)`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Segment {
    /// Which tier.
    pub tier: usize,
    /// First bucket index (bucket start = index × width).
    pub from_idx: u64,
    /// One past the last bucket index.
    pub to_idx: u64,
}

/// How the window of `window_s` seconds ending in second `now_s` (inclusive) is covered.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Cover {
    /// Segments, newest first.
    pub segments: Vec<Segment>,
    /// Start second of the oldest bucket used.
    pub start_s: u64,
    /// False when the window reaches past the coarsest tier's retention.
    pub complete: bool,
}

/// Plans which buckets of which tiers cover `[now_s + 1 − window_s, now_s]`.
/// Each tier's width must divide the next one's.
pub fn cover(tiers: &[TierSpec], now_s: u64, window_s: u64) -> Cover {
    let from = (now_s + 1).saturating_sub(window_s);
    let mut hi = now_s + 1; // exclusive, in seconds; aligned to the current tier's width
    let mut segments = Vec::new();
    for (i, t) in tiers.iter().enumerate() {
        let w = t.width_s;
        let now_idx = now_s / w;
        let oldest_start = (now_idx + 1).saturating_sub(t.slots) * w;
        let last = i + 1 == tiers.len();
        if from >= oldest_start || last {
            let lo = from.max(oldest_start);
            let seg = Segment {
                tier: i,
                from_idx: lo / w,
                to_idx: hi.div_ceil(w),
            };
            if seg.to_idx > seg.from_idx {
                segments.push(seg);
            }
            return Cover {
                segments,
                start_s: (lo / w) * w,
                complete: from >= oldest_start,
            };
        }
        let next_w = tiers[i + 1].width_s;
        let boundary = oldest_start.div_ceil(next_w) * next_w;
        if boundary < hi {
            segments.push(Segment {
                tier: i,
                from_idx: boundary / w,
                to_idx: hi.div_ceil(w),
            });
            hi = boundary;
        }
    }
    Cover {
        segments,
        start_s: hi,
        complete: false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Scenario: windows of the usual lengths at a time that is not minute-aligned.
    /// Guarantees: segments are contiguous and non-overlapping, end at now, and start at or
    /// just before (by less than the coarsest width used) the window's first second.
    #[test]
    fn cover_is_contiguous_and_tight() {
        let now_s = 1_700_000_123;
        for window in [1, 60, 299, 300, 301, 1800, 3600, 21_600, 259_200, 2_592_000] {
            let c = cover(&COUNTER_TIERS, now_s, window);
            assert!(c.complete, "window {window}");
            let mut hi = now_s + 1;
            let mut widest = 1;
            for s in &c.segments {
                let w = COUNTER_TIERS[s.tier].width_s;
                widest = widest.max(w);
                assert_eq!(
                    s.to_idx * w,
                    hi.div_ceil(w) * w,
                    "window {window}: gap or overlap"
                );
                hi = s.from_idx * w;
            }
            assert_eq!(hi, c.start_s);
            let from = now_s + 1 - window;
            assert!(
                c.start_s <= from && from - c.start_s < widest,
                "window {window}: {c:?}"
            );
        }
    }

    /// Table: which tiers a window uses.
    #[test]
    fn cover_table() {
        let now_s = 10_000 * 3600 + 125; // 2 min 5 s into an hour
        let t = |w| {
            cover(&COUNTER_TIERS, now_s, w)
                .segments
                .iter()
                .map(|s| s.tier)
                .collect::<Vec<_>>()
        };
        assert_eq!(t(60), vec![0]);
        assert_eq!(t(300), vec![0, 1]);
        assert_eq!(t(3600), vec![0, 1, 2]);
        assert_eq!(t(6 * 3600), vec![0, 1, 2, 3]);
        assert_eq!(t(3 * 86_400), vec![0, 1, 2, 3, 4]);
        assert_eq!(t(30 * 86_400), vec![0, 1, 2, 3, 4, 5]);
        let c = cover(&COUNTER_TIERS, now_s, 60);
        assert_eq!(
            c.segments,
            vec![Segment {
                tier: 0,
                from_idx: now_s - 59,
                to_idx: now_s + 1
            }]
        );
        // 5 minutes: the last minute by the second, the rest by 10 s from a 10 s boundary.
        let c = cover(&COUNTER_TIERS, now_s, 300);
        let boundary = (now_s - 59).div_ceil(10) * 10;
        assert_eq!(
            c.segments,
            vec![
                Segment {
                    tier: 0,
                    from_idx: boundary,
                    to_idx: now_s + 1
                },
                Segment {
                    tier: 1,
                    from_idx: (now_s - 299) / 10,
                    to_idx: boundary / 10
                }
            ]
        );
        // Beyond 30 days the cover is marked incomplete.
        assert!(!cover(&COUNTER_TIERS, now_s, 40 * 86_400).complete);
        assert!(cover(&SERIES_DIGEST_TIERS, now_s, MAX_SERIES_DIGEST_WINDOW_S).complete);
        assert!(!cover(&SERIES_DIGEST_TIERS, now_s, 2 * MAX_SERIES_DIGEST_WINDOW_S).complete);
        assert!(cover(&VERSION_DIGEST_TIERS, now_s, MAX_DIGEST_WINDOW_S).complete);
        assert!(!cover(&VERSION_DIGEST_TIERS, now_s, 2 * 3600).complete);
    }
}
