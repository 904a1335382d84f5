//! The latency digests of one service version: 1 s for 10 s, 10 s for 5 min and 5 min for
//! 1 h, fed by every series of the version. Quantiles over windows up to 1 h for a version, a
//! service or a canary's arm come from here; one such set per version costs what one per
//! series would have cost for each of its series (a series keeps only its minutes).
//!
//! The tiers cascade: a sample (or a series' whole second) goes into its second's 1 s digest
//! only, and that digest is merged into its 10 s and 5-minute buckets once, when it leaves the
//! 1 s ring ("settles"); until then a coarser bucket's window takes the 1 s digests of its
//! unsettled seconds alongside it. Data for a second already settled (more than 10 s late)
//! goes into every tier at once. A version fed by a thousand series thus pays one merge per
//! series-second and two per version-second, not three per series-second.

use super::{Ring, VERSION_DIGEST_TIERS, cover, evict_digests, with_digest};
use crate::sketch::TDigest;
use serde::{Deserialize, Serialize};

/// A service version's digest rings, one per [`VERSION_DIGEST_TIERS`] tier.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(from = "VersionDigestsWire")]
pub struct VersionDigests {
    rings: [Ring<TDigest>; VERSION_DIGEST_TIERS.len()],
    /// Seconds before this one are in the coarser tiers (a 1 s digest of such a second, kept
    /// only by a layout that fed every tier, duplicates them); from it on, a second's data is
    /// in its 1 s digest alone until it settles.
    #[serde(rename = "settled")]
    settled_s: u64,
}

/// As checkpoints hold it: `rings`, or (written before the fine tiers moved here) `ring`, the
/// hour of 5-minute digests alone; `settled` is absent from layouts that fed every tier.
#[derive(Deserialize)]
struct VersionDigestsWire {
    #[serde(default)]
    rings: Vec<Ring<TDigest>>,
    #[serde(default)]
    ring: Ring<TDigest>,
    #[serde(default)]
    settled: Option<u64>,
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
        // Without the mark, every tier was fed: each 1 s digest kept is in the coarser ones.
        v.settled_s = w
            .settled
            .unwrap_or_else(|| v.rings[0].newest_idx().map_or(0, |i| i + 1));
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
        self.update(t_s, now_s, compression, |d| {
            d.add_weighted(latency_ms, weight)
        });
    }

    /// Merges a whole second's digest at event second `t_s`.
    pub fn merge(&mut self, t_s: u64, now_s: u64, digest: &TDigest, compression: f32) {
        if digest.is_empty() {
            return;
        }
        self.update(t_s, now_s, compression, |d| d.merge(digest));
    }

    /// Runs `f` on second `t_s`'s 1 s digest while the second is unsettled, else on its
    /// bucket in every tier that still keeps it.
    fn update(&mut self, t_s: u64, now_s: u64, compression: f32, f: impl Fn(&mut TDigest)) {
        let fine = VERSION_DIGEST_TIERS[0];
        if t_s >= self.settled_s
            && with_digest(&mut self.rings[0], fine, t_s, now_s, compression, &f)
        {
            return;
        }
        for (ring, spec) in self.rings.iter_mut().zip(VERSION_DIGEST_TIERS) {
            with_digest(ring, spec, t_s, now_s, compression, &f);
        }
    }

    /// Merges the 1 s digests of the unsettled seconds before `to_s` into their coarser
    /// buckets (as they stand at `now_s`); returns the first second settled.
    fn settle_below(&mut self, to_s: u64, now_s: u64) -> Option<u64> {
        if to_s <= self.settled_s {
            return None;
        }
        let [fine, coarse @ ..] = &mut self.rings;
        let mut first = None;
        for (t_s, d) in fine.range_indexed(self.settled_s, to_s) {
            first.get_or_insert(t_s);
            for (ring, spec) in coarse.iter_mut().zip(&VERSION_DIGEST_TIERS[1..]) {
                with_digest(ring, *spec, t_s, now_s, d.compression(), |c| c.merge(d));
            }
        }
        self.settled_s = to_s;
        first
    }

    /// Adds the fine digests of a series read from an old checkpoint (a layout that fed
    /// every tier: its 1 s digests are in its coarser ones).
    pub fn absorb_legacy(&mut self, legacy: &LegacyDigests) {
        // Settled up to the newest legacy second: those the legacy ring brings are in its
        // coarser rings already.
        if let Some(newest) = legacy.seconds.newest_idx() {
            self.settle_below(newest + 1, newest);
        }
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

    /// These digests as a layout that fed every tier held them: the unsettled seconds merged
    /// into their coarser buckets too, and every 1 s digest kept.
    #[cfg(test)]
    pub(crate) fn every_tier_fed(&self) -> Self {
        let mut v = self.clone();
        if let Some(newest) = v.rings[0].newest_idx() {
            v.settle_below(newest + 1, newest);
        }
        v
    }

    /// The digests covering the `window_s` seconds ending in second `now_s`, or `None`
    /// beyond the hour kept.
    pub fn parts(&self, now_s: u64, window_s: u64) -> Option<impl Iterator<Item = &TDigest>> {
        let c = cover(&VERSION_DIGEST_TIERS, now_s, window_s);
        if !c.complete {
            return None;
        }
        let settled_s = self.settled_s;
        Some(c.segments.into_iter().flat_map(move |s| {
            let w = VERSION_DIGEST_TIERS[s.tier].width_s;
            // A coarser bucket's unsettled seconds are still in the 1 s ring.
            let (from_s, to_s) = if s.tier == 0 {
                (0, 0)
            } else {
                (settled_s.max(s.from_idx * w), s.to_idx * w)
            };
            self.rings[s.tier]
                .range(s.from_idx, s.to_idx)
                .chain(self.rings[0].range(from_s, to_s))
        }))
    }

    /// The buckets that hold second `from_s` or later.
    pub fn since(&self, from_s: u64) -> VersionDigests {
        Self {
            rings: std::array::from_fn(|i| {
                self.rings[i].since(from_s / VERSION_DIGEST_TIERS[i].width_s)
            }),
            settled_s: self.settled_s,
        }
    }

    /// Puts the buckets of `changes` (from [`VersionDigests::since`]) in place of these; the
    /// 1 s digests of seconds it settled meanwhile go (their coarser buckets came with it).
    /// Changes must be taken after a sweep at their time (as `Engine::take_changes` does):
    /// a taker that sweeps at that time then settles nothing the giver has not.
    pub fn overwrite(&mut self, changes: &VersionDigests) {
        for (mine, theirs) in self.rings.iter_mut().zip(&changes.rings) {
            mine.overwrite(theirs);
        }
        if changes.settled_s > self.settled_s {
            self.rings[0].evict(changes.settled_s, 1);
            self.settled_s = changes.settled_s;
        }
    }

    /// Settles the seconds leaving the 1 s ring at `now_s` and drops buckets out of
    /// retention; returns the first second settled (its coarser buckets changed).
    pub fn evict(&mut self, now_s: u64) -> Option<u64> {
        let fine = VERSION_DIGEST_TIERS[0];
        let first = self.settle_below((now_s / fine.width_s + 1).saturating_sub(fine.slots), now_s);
        for (ring, spec) in self.rings.iter_mut().zip(VERSION_DIGEST_TIERS) {
            evict_digests(ring, spec, now_s);
        }
        first
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

    /// The tiers as they were fed before the cascade: every sample into every tier.
    #[derive(Default)]
    struct EveryTier([Ring<TDigest>; 3]);

    impl EveryTier {
        fn add(&mut self, t_s: u64, now_s: u64, ms: f64) {
            for (ring, spec) in self.0.iter_mut().zip(VERSION_DIGEST_TIERS) {
                with_digest(ring, spec, t_s, now_s, 200.0, |d| d.add(ms));
            }
        }

        fn merged(&self, now_s: u64, window_s: u64) -> TDigest {
            let c = cover(&VERSION_DIGEST_TIERS, now_s, window_s);
            let mut d = TDigest::new(200.0);
            d.merge_all(
                c.segments
                    .iter()
                    .flat_map(|s| self.0[s.tier].range(s.from_idx, s.to_idx)),
            );
            d
        }
    }

    const WINDOWS: [u64; 11] = [1, 5, 10, 11, 30, 60, 299, 300, 600, 1800, 3600];

    /// Scenario: 20 minutes of samples, most on time, some 1–3 s late, some 5–60 s late (past
    /// the 1 s ring: straight into every tier) and some out of the hour; the sweep runs every
    /// second, but now and then a few seconds pass without one.
    /// Guarantees: every window up to 1 h holds exactly the samples it held when every tier
    /// was fed with each of them, with quantiles within 1 % in rank (+1/n); a replica kept by
    /// change sets (taken after a sweep, from the first second changed, settling included)
    /// equals the original, whether it sweeps before or after applying them.
    #[test]
    fn cascade_holds_what_every_tier_held() {
        use rand::{Rng, SeedableRng, rngs::StdRng};
        let mut rng = StdRng::seed_from_u64(12);
        let (mut v, mut old, mut replica) = (
            VersionDigests::default(),
            EveryTier::default(),
            VersionDigests::default(),
        );
        let start = 1_000_000 * 300 + 123;
        let mut changed = u64::MAX;
        for now in start..start + 1200 {
            // Now and then a few seconds pass without a sweep (data for seconds leaving the
            // 1 s ring then goes to the coarser tiers); changes are taken after one.
            let swept = now % 97 > 3;
            if swept {
                if let Some(t) = v.evict(now) {
                    changed = changed.min(t);
                }
                if now % 2 == 0 {
                    replica.evict(now);
                }
            }
            for _ in 0..rng.random_range(0..30) {
                let late = match rng.random_range(0..100) {
                    0..80 => 0,
                    80..92 => rng.random_range(1..4),
                    92..99 => rng.random_range(5..60),
                    _ => rng.random_range(3500..4000),
                };
                let t = now - late;
                let ms = 10.0 * (1.0 + rng.random::<f64>()).powi(8);
                v.add(t, now, ms, 1, 200.0);
                old.add(t, now, ms);
                changed = changed.min(t);
            }
            if swept {
                replica.overwrite(&v.since(changed));
                changed = u64::MAX;
                if now % 2 == 1 {
                    replica.evict(now);
                }
            }
            for w in WINDOWS {
                let parts: Vec<&TDigest> = v.parts(now, w).unwrap().collect();
                let mut mine = TDigest::new(200.0);
                mine.merge_all(parts.iter().copied());
                let theirs = old.merged(now, w);
                assert_eq!(
                    mine.count(),
                    theirs.count(),
                    "window {w}s at +{}",
                    now - start
                );
                for q in [0.5, 0.9, 0.99] {
                    // Rank error against the old tiers' digest (values are too sparse at
                    // the first seconds for a value error to mean much).
                    let rank = theirs.cdf(mine.quantile(q));
                    assert!(
                        mine.is_empty() || (rank - q).abs() <= 0.01 + 1.0 / mine.count() as f64,
                        "p{q} over {w}s at +{}: at rank {rank} of the old tiers",
                        now - start
                    );
                }
                if swept {
                    let copy = replica
                        .parts(now, w)
                        .unwrap()
                        .map(TDigest::count)
                        .sum::<u64>();
                    assert_eq!(copy, mine.count(), "replica, window {w}s");
                }
            }
        }
        v.evict(start + 1200);
        replica.evict(start + 1200);
        assert_eq!(replica, v);
    }

    /// Guarantees: the settled mark travels in checkpoints; without it (a layout that fed
    /// every tier) the 1 s digests kept count as settled, so nothing is counted twice.
    #[test]
    fn the_settled_mark_is_kept_or_inferred() {
        let now = 1_000_000 * 300 + 17;
        let mut v = VersionDigests::default();
        for t in now - 30..=now {
            v.add(t, now, 5.0, 2, 200.0);
            v.evict(t);
        }
        let bytes = serde_json::to_value(&v).unwrap();
        assert_eq!(
            serde_json::from_value::<VersionDigests>(bytes.clone()).unwrap(),
            v
        );
        let fed = v.every_tier_fed();
        let mut old = serde_json::to_value(&fed).unwrap();
        old.as_object_mut().unwrap().remove("settled");
        let read: VersionDigests = serde_json::from_value(old).unwrap();
        for w in WINDOWS {
            let count =
                |d: &VersionDigests| d.parts(now, w).unwrap().map(TDigest::count).sum::<u64>();
            assert_eq!(count(&read), count(&v), "window {w}s");
        }
    }
}
