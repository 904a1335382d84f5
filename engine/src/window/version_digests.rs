//! The latency digests of one service version: 1 s for 10 s, 10 s for 5 min and 5 min for
//! 1 h, fed by every series of the version. Quantiles over windows up to 1 h for a version, a
//! service or a canary's arm come from here; one such set per version costs what one per
//! series would have cost for each of its series (a series keeps only its minutes).

use super::{Ring, VERSION_DIGEST_TIERS, cover, with_digest};
use crate::sketch::TDigest;
use serde::{Deserialize, Serialize};

/// A service version's digest rings, one per [`VERSION_DIGEST_TIERS`] tier.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(from = "VersionDigestsWire")]
pub struct VersionDigests {
    rings: [Ring<TDigest>; VERSION_DIGEST_TIERS.len()],
}

/// As checkpoints hold it: `rings`, or (written before the fine tiers moved here) `ring`, the
/// hour of 5-minute digests alone.
#[derive(Deserialize)]
struct VersionDigestsWire {
    #[serde(default)]
    rings: Vec<Ring<TDigest>>,
    #[serde(default)]
    ring: Ring<TDigest>,
}

impl From<VersionDigestsWire> for VersionDigests {
    fn from(w: VersionDigestsWire) -> Self {
        let mut v = Self::default();
        for (mine, theirs) in v.rings.iter_mut().zip(w.rings) {
            *mine = theirs;
        }
        if !w.ring.is_empty() {
            v.rings[2] = w.ring;
        }
        v
    }
}

/// The fine digests a series kept in the layouts before they moved to its version, read
/// from an old checkpoint: 1 s × 10 s, 10 s × 5 min and (in the first) 5 min × 1 h.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct LegacyDigests {
    /// The 1 s ring.
    pub seconds: Ring<TDigest>,
    /// The 10 s ring.
    pub tens: Ring<TDigest>,
    /// The 5-minute ring (empty when the checkpoint kept it per version already).
    pub hour: Ring<TDigest>,
}

impl VersionDigests {
    /// Adds `weight` requests of `latency_ms` at event second `t_s`, arriving at `now_s`.
    pub fn add(&mut self, t_s: u64, now_s: u64, latency_ms: f64, weight: u64, compression: f32) {
        for (ring, spec) in self.rings.iter_mut().zip(VERSION_DIGEST_TIERS) {
            with_digest(ring, spec, t_s, now_s, compression, |d| {
                d.add_weighted(latency_ms, weight)
            });
        }
    }

    /// Merges a whole second's digest at event second `t_s`.
    pub fn merge(&mut self, t_s: u64, now_s: u64, digest: &TDigest, compression: f32) {
        if digest.is_empty() {
            return;
        }
        for (ring, spec) in self.rings.iter_mut().zip(VERSION_DIGEST_TIERS) {
            with_digest(ring, spec, t_s, now_s, compression, |d| d.merge(digest));
        }
    }

    /// Adds the fine digests of a series read from an old checkpoint.
    pub fn absorb_legacy(&mut self, legacy: &LegacyDigests) {
        for (mine, theirs) in
            self.rings
                .iter_mut()
                .zip([&legacy.seconds, &legacy.tens, &legacy.hour])
        {
            mine.absorb(theirs, |a, b| {
                if a.is_empty() {
                    *a = b.clone();
                } else {
                    a.merge(b);
                }
            });
        }
    }

    /// The digests covering the `window_s` seconds ending in second `now_s`, or `None`
    /// beyond the hour kept.
    pub fn parts(&self, now_s: u64, window_s: u64) -> Option<impl Iterator<Item = &TDigest>> {
        let c = cover(&VERSION_DIGEST_TIERS, now_s, window_s);
        if !c.complete {
            return None;
        }
        Some(
            c.segments
                .into_iter()
                .flat_map(|s| self.rings[s.tier].range(s.from_idx, s.to_idx)),
        )
    }

    /// The buckets that hold second `from_s` or later.
    pub fn since(&self, from_s: u64) -> VersionDigests {
        Self {
            rings: std::array::from_fn(|i| {
                self.rings[i].since(from_s / VERSION_DIGEST_TIERS[i].width_s)
            }),
        }
    }

    /// Puts the buckets of `changes` (from [`VersionDigests::since`]) in place of these.
    pub fn overwrite(&mut self, changes: &VersionDigests) {
        for (mine, theirs) in self.rings.iter_mut().zip(&changes.rings) {
            mine.overwrite(theirs);
        }
    }

    /// Drops buckets out of retention at `now_s`.
    pub fn evict(&mut self, now_s: u64) {
        for (ring, spec) in self.rings.iter_mut().zip(VERSION_DIGEST_TIERS) {
            ring.evict(now_s / spec.width_s, spec.slots);
        }
    }

    /// True when no bucket remains.
    pub fn is_empty(&self) -> bool {
        self.rings.iter().all(Ring::is_empty)
    }

    /// Heap bytes of the rings and their centroids.
    pub fn heap_bytes(&self) -> usize {
        self.rings
            .iter()
            .map(|r| r.heap_bytes() + r.values().map(TDigest::heap_bytes).sum::<usize>())
            .sum()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Guarantees: a window up to 1 h merges the buckets that cover it, the finest that
    /// still exist (a 5-second window holds only its 5 seconds), an older bucket is evicted,
    /// and a window beyond the hour has no answer.
    #[test]
    fn seconds_tens_and_hour() {
        let mut v = VersionDigests::default();
        let now = 1_000_000 * 300 + 17;
        v.add(now - 3000, now, 500.0, 10, 200.0);
        v.add(now - 10, now, 5.0, 30, 200.0);
        let mut other = TDigest::new(200.0);
        other.add_weighted(50.0, 5);
        v.merge(now, now, &other, 200.0);
        let count = |w| v.parts(now, w).map(|p| p.map(TDigest::count).sum::<u64>());
        assert_eq!(count(3600), Some(45));
        assert_eq!(count(60), Some(35));
        assert_eq!(count(11), Some(35), "1 s buckets");
        assert_eq!(count(5), Some(5), "1 s buckets");
        assert_eq!(count(600), Some(35), "10 s buckets, then 5-minute ones");
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
