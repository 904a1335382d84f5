//! The latency digests of one service version beyond a series' 5 minutes: 5-minute buckets for
//! the last hour, fed by every series of the version. Quantiles over windows up to 1 h for a
//! version, a service or a canary's arm come from here; one such ring per version costs what
//! one per series would have cost for each of its series.

use super::{Ring, VERSION_DIGEST_TIERS, cover};
use crate::sketch::TDigest;
use serde::{Deserialize, Serialize};

/// A service version's 5 min × 1 h digest ring.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct VersionDigests {
    ring: Ring<TDigest>,
}

impl VersionDigests {
    /// Runs `f` on the bucket of event second `t_s` (nothing when it is out of retention).
    fn with_bucket(
        &mut self,
        t_s: u64,
        now_s: u64,
        compression: f32,
        f: impl FnOnce(&mut TDigest),
    ) {
        let spec = VERSION_DIGEST_TIERS[0];
        let Some((d, appended)) =
            self.ring
                .bucket_mut(t_s / spec.width_s, now_s / spec.width_s, spec.slots)
        else {
            return;
        };
        if d.is_empty() {
            *d = TDigest::new(compression);
        }
        f(d);
        if appended && let Some(prev) = self.ring.second_newest_mut() {
            // The previous bucket is closed: release its merge buffer.
            prev.shrink();
        }
    }

    /// Adds `weight` requests of `latency_ms` at event second `t_s`, arriving at `now_s`.
    pub fn add(&mut self, t_s: u64, now_s: u64, latency_ms: f64, weight: u64, compression: f32) {
        self.with_bucket(t_s, now_s, compression, |d| {
            d.add_weighted(latency_ms, weight)
        });
    }

    /// Merges a whole second's digest at event second `t_s`.
    pub fn merge(&mut self, t_s: u64, now_s: u64, digest: &TDigest, compression: f32) {
        if !digest.is_empty() {
            self.with_bucket(t_s, now_s, compression, |d| d.merge(digest));
        }
    }

    /// Adds a ring of 5-minute digests (a series' hour, from a checkpoint written before the
    /// hour moved here).
    pub fn absorb(&mut self, ring: &Ring<TDigest>) {
        self.ring.absorb(ring, |a, b| {
            if a.is_empty() {
                *a = b.clone();
            } else {
                a.merge(b);
            }
        });
    }

    /// The digests covering the `window_s` seconds ending in second `now_s` (the oldest edge
    /// exact to 5 min), or `None` beyond the hour kept.
    pub fn parts(&self, now_s: u64, window_s: u64) -> Option<impl Iterator<Item = &TDigest>> {
        let c = cover(&VERSION_DIGEST_TIERS, now_s, window_s);
        if !c.complete {
            return None;
        }
        Some(
            c.segments
                .into_iter()
                .flat_map(|s| self.ring.range(s.from_idx, s.to_idx)),
        )
    }

    /// The buckets that hold second `from_s` or later.
    pub fn since(&self, from_s: u64) -> VersionDigests {
        Self {
            ring: self.ring.since(from_s / VERSION_DIGEST_TIERS[0].width_s),
        }
    }

    /// Puts the buckets of `changes` (from [`VersionDigests::since`]) in place of these.
    pub fn overwrite(&mut self, changes: &VersionDigests) {
        self.ring.overwrite(&changes.ring);
    }

    /// Drops buckets out of retention at `now_s`.
    pub fn evict(&mut self, now_s: u64) {
        let spec = VERSION_DIGEST_TIERS[0];
        self.ring.evict(now_s / spec.width_s, spec.slots);
    }

    /// True when no bucket remains.
    pub fn is_empty(&self) -> bool {
        self.ring.is_empty()
    }

    /// Heap bytes of the ring and its centroids.
    pub fn heap_bytes(&self) -> usize {
        self.ring.heap_bytes() + self.ring.values().map(TDigest::heap_bytes).sum::<usize>()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Guarantees: a window up to 1 h merges the 5-minute buckets that cover it, an older
    /// bucket is evicted, and a window beyond the hour has no answer.
    #[test]
    fn hour_of_five_minute_buckets() {
        let mut v = VersionDigests::default();
        let now = 1_000_000 * 300 + 17;
        v.add(now - 3000, now, 500.0, 10, 200.0);
        v.add(now - 10, now, 5.0, 30, 200.0);
        let mut other = TDigest::new(200.0);
        other.add_weighted(50.0, 5);
        v.merge(now, now, &other, 200.0);
        let count = |w| v.parts(now, w).map(|p| p.map(TDigest::count).sum::<u64>());
        assert_eq!(count(3600), Some(45));
        assert_eq!(count(60), Some(35), "the current 5 minutes");
        assert_eq!(count(2 * 3600), None);
        v.evict(now + 3600);
        assert_eq!(
            v.parts(now + 3600, 3600).map(|p| p.count()),
            Some(1),
            "the newest bucket is still within the hour"
        );
        v.evict(now + 2 * 3600);
        assert!(v.is_empty());
    }
}
