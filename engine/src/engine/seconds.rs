//! Whole seconds of every series: what the archive stores ([`Engine::second_rows`]) and what a
//! backtest replays ([`Engine::apply_seconds`]).

use super::{Engine, Resolved};
use crate::engine::IngestReport;
use crate::observation::SecondObs;
use crate::time::{NANOS_PER_SEC, UnixNanos, secs};
use crate::window::MAX_THRESHOLDS;

impl Engine {
    /// The archived form of second `s`: one row per series with requests in it, from the 1 s
    /// tiers (sorted by series). Digests are included only when the engine keeps them
    /// ([`crate::EngineConfig::keep_second_digests`]) and while `s` is within their 10
    /// seconds, so archive a second a few seconds after it ends.
    pub fn second_rows(&self, s: u64) -> Vec<SecondObs> {
        let mut rows: Vec<SecondObs> = self
            .entries
            .iter()
            .filter_map(|e| {
                let (c, d) = e.state.second(s)?;
                let thresholds = self.cfg.thresholds_for(&e.key.service);
                Some(SecondObs {
                    key: e.key.clone(),
                    second: s,
                    requests: u64::from(c.requests),
                    errors: u64::from(c.errors),
                    timed: u64::from(c.timed),
                    thresholds_ms: thresholds.to_vec(),
                    within: c.within[..thresholds.len()]
                        .iter()
                        .map(|&w| u64::from(w))
                        .collect(),
                    digest: d.cloned(),
                })
            })
            .collect();
        rows.sort_by(|a, b| a.key.cmp(&b.key));
        rows
    }

    /// Applies archived seconds (a backtest's replay) arriving at `now`: each row counts in its
    /// own second, through the same series caps and lateness rules as live data. Counts within
    /// a latency threshold are taken from the row when it was archived against the same
    /// thresholds as this engine's, and estimated from its digest otherwise.
    pub fn apply_seconds(&mut self, rows: &[SecondObs], now: UnixNanos) -> IngestReport {
        self.observe_now(now);
        let mut rep = IngestReport::default();
        for row in rows {
            let res = self.resolve(&row.key);
            let whole = WholeSecond {
                second: row.second,
                requests: row.requests,
                errors: row.errors,
                timed: row.timed,
                thresholds_ms: &row.thresholds_ms,
                within: &row.within,
                last_event: (row.second + 1) * NANOS_PER_SEC - 1,
                digest: row.digest.as_ref(),
            };
            if self.apply_whole_second(res, &whole) {
                rep.applied += row.requests;
                rep.overflowed += if res.overflow { row.requests } else { 0 };
            } else {
                rep.late += row.requests;
            }
        }
        self.stats.requests_applied += rep.applied;
        rep
    }

    /// Applies one pre-aggregated second to `res`'s series; false when it is too late.
    pub(super) fn apply_whole_second(&mut self, res: Resolved, w: &WholeSecond<'_>) -> bool {
        let now_s = secs(self.now);
        let Some(t_s) = self.event_second(w.second * NANOS_PER_SEC) else {
            return false;
        };
        let mut within = [0u64; MAX_THRESHOLDS];
        let same = w.thresholds_ms.len() == res.n_thresholds
            && w.thresholds_ms
                .iter()
                .zip(&res.thresholds)
                .all(|(a, b)| a == b);
        for (i, x) in within.iter_mut().enumerate().take(res.n_thresholds) {
            *x = if same {
                w.within.get(i).copied().unwrap_or(0)
            } else {
                w.digest.map_or(0, |d| {
                    (d.cdf(res.thresholds[i]) * w.timed as f64).round() as u64
                })
            };
        }
        let counts = crate::window::Counts::from_totals(w.requests, w.errors, within, w.timed);
        let (compression, digests) = (self.cfg.digest_compression, self.cfg.digest_settings());
        let entry = &mut self.entries[res.entry];
        let e = &mut entry.state;
        if !e.apply_second(t_s, now_s, &counts, w.digest, digests) {
            return false;
        }
        entry.changed_from = entry.changed_from.min(t_s);
        if let Some(d) = w.digest {
            let v = &mut self.versions[res.version];
            v.digests.merge(t_s, now_s, d, compression);
            v.changed_from = v.changed_from.min(t_s);
        }
        e.last_event = e.last_event.max(w.last_event.min(self.now));
        e.last_arrival = self.now;
        true
    }
}

/// A whole second of one series, however it was aggregated (an archive row, a gateway's partial).
pub(super) struct WholeSecond<'a> {
    pub second: u64,
    pub requests: u64,
    pub errors: u64,
    pub timed: u64,
    pub thresholds_ms: &'a [f64],
    pub within: &'a [u64],
    pub last_event: UnixNanos,
    pub digest: Option<&'a crate::sketch::TDigest>,
}
