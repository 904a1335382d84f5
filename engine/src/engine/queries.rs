//! The engine's read side: SLIs per series, service and version over windows ending now, and
//! the sums, digests and freshness the SLO, canary and staleness evaluations read. Nothing here
//! changes state.

use super::Engine;
use crate::observation::SeriesKey;
use crate::sketch::TDigest;
use crate::sli::{LatencyGood, Quantiles, REPORTED_QUANTILES, ServiceSli, SliQuery, SliRow};
use crate::time::{NANOS_PER_SEC, Span, UnixNanos, secs};
use crate::window::{MAX_COUNTER_WINDOW_S, MAX_DIGEST_WINDOW_S, ProratedSums};
use crate::{Error, Result};
use std::collections::HashMap;
use std::sync::Arc;

impl Engine {
    /// SLIs per series over a window ending now. Series without requests in the window are
    /// left out. Rows are sorted by series key.
    pub fn slis(&self, q: &SliQuery) -> Result<Vec<SliRow>> {
        let window_s = q.window.secs();
        if window_s > MAX_COUNTER_WINDOW_S {
            return Err(Error::Invalid(format!(
                "window {}: the longest window kept is 30d",
                q.window
            )));
        }
        let now_s = secs(self.now);
        let mut rows = Vec::new();
        for e in &self.entries {
            if q.service.as_deref().is_some_and(|s| s != &*e.key.service) {
                continue;
            }
            let sums = e.state.sums(now_s, window_s);
            if sums.requests == 0 {
                continue;
            }
            let covered_ns = self
                .now
                .saturating_sub(sums.start_s * NANOS_PER_SEC)
                .max(NANOS_PER_SEC);
            let digest = e.state.digest(now_s, window_s, self.cfg.digest_compression);
            let latency_ms = digest.as_ref().filter(|d| !d.is_empty()).map(quantiles_of);
            let ratio = |x: u64| x as f64 / sums.requests as f64;
            let latency_good = self
                .cfg
                .thresholds_for(&e.key.service)
                .iter()
                .zip(sums.within)
                .map(|(&t, good)| LatencyGood {
                    threshold_ms: t,
                    good,
                    good_ratio: Some(ratio(good)),
                })
                .collect();
            rows.push(SliRow {
                key: e.key.clone(),
                window: q.window,
                requests: sums.requests,
                errors: sums.errors,
                error_ratio: Some(ratio(sums.errors)),
                rate_per_s: sums.requests as f64 * NANOS_PER_SEC as f64 / covered_ns as f64,
                latency_ms,
                latency_good,
            });
        }
        rows.sort_by(|a, b| a.key.cmp(&b.key));
        Ok(rows)
    }

    /// SLIs per service (all its series merged) over a window ending now, sorted by service.
    pub fn service_slis(&self, window: Span) -> Result<Vec<ServiceSli>> {
        self.grouped_slis(None, window, false)
    }

    /// SLIs per service version (all its series merged) over a window ending now, of one
    /// service (all when None), sorted by service, then version.
    pub fn version_slis(&self, service: Option<&str>, window: Span) -> Result<Vec<ServiceSli>> {
        self.grouped_slis(service, window, true)
    }

    fn grouped_slis(
        &self,
        service: Option<&str>,
        window: Span,
        by_version: bool,
    ) -> Result<Vec<ServiceSli>> {
        if window.secs() > MAX_COUNTER_WINDOW_S {
            return Err(Error::Invalid(format!(
                "window {window}: the longest window kept is 30d"
            )));
        }
        let now_s = secs(self.now);
        let window_s = window.secs();
        type Acc = (u64, u64, u64, Option<TDigest>);
        let mut by: std::collections::BTreeMap<(&str, Option<&str>), Acc> = Default::default();
        for e in &self.entries {
            if service.is_some_and(|s| s != &*e.key.service) {
                continue;
            }
            let sums = e.state.sums(now_s, window_s);
            if sums.requests == 0 {
                continue;
            }
            let group = (&*e.key.service, by_version.then_some(&*e.key.version));
            let acc = by.entry(group).or_insert((
                0,
                0,
                sums.start_s,
                Some(TDigest::new(self.cfg.digest_compression)),
            ));
            acc.0 += sums.requests;
            acc.1 += sums.errors;
            acc.2 = acc.2.min(sums.start_s);
        }
        // Quantiles come from the versions' digests.
        for v in &self.versions {
            let group = (&*v.key.0, by_version.then_some(&*v.key.1));
            let Some(acc) = by.get_mut(&group) else {
                continue;
            };
            match (v.digests.parts(now_s, window_s), acc.3.as_mut()) {
                (Some(parts), Some(total)) => parts.for_each(|d| total.merge(d)),
                _ => acc.3 = None,
            }
        }
        Ok(by
            .into_iter()
            .map(
                |((service, version), (requests, errors, start_s, digest))| {
                    let covered_ns = self
                        .now
                        .saturating_sub(start_s * NANOS_PER_SEC)
                        .max(NANOS_PER_SEC);
                    ServiceSli {
                        service: service.to_string(),
                        version: version.map(str::to_string),
                        window,
                        requests,
                        errors,
                        error_ratio: errors as f64 / requests as f64,
                        rate_per_s: requests as f64 * NANOS_PER_SEC as f64 / covered_ns as f64,
                        latency_ms: digest.filter(|d| !d.is_empty()).as_ref().map(quantiles_of),
                    }
                },
            )
            .collect())
    }

    /// [`Engine::service_sums_prorated`] of every service at once (one pass over the series).
    pub fn sums_by_service(&self, window: Span) -> HashMap<Arc<str>, ProratedSums> {
        let now_s = secs(self.now);
        let mut out: HashMap<Arc<str>, ProratedSums> = HashMap::new();
        for e in &self.entries {
            *out.entry(e.key.service.clone()).or_insert(ProratedSums {
                complete: true,
                ..Default::default()
            }) += e.state.sums_prorated(now_s, window.secs());
        }
        out
    }

    /// Whether `service` has telemetry here (series, or recent spans or metrics).
    pub fn has_service(&self, service: &str) -> bool {
        self.services.contains_key(service)
    }

    /// Counter sums of all series of `service` over a window ending now, exact to the second at
    /// the oldest edge (see [`crate::window::SeriesState::sums_prorated`]).
    pub fn service_sums_prorated(&self, service: &str, window: Span) -> ProratedSums {
        let now_s = secs(self.now);
        let mut out = ProratedSums {
            complete: true,
            ..Default::default()
        };
        for e in self.entries.iter().filter(|e| &*e.key.service == service) {
            out += e.state.sums_prorated(now_s, window.secs());
        }
        out
    }

    /// The counter sums of each series of `service` over a window ending now, exact to the
    /// second at the oldest edge (no digests: cheap enough for every evaluation; what
    /// [`crate::attribution`] reads).
    pub fn series_sums(&self, service: &str, window: Span) -> Vec<(&SeriesKey, ProratedSums)> {
        let now_s = secs(self.now);
        self.entries
            .iter()
            .filter(|e| &*e.key.service == service)
            .map(|e| (&e.key, e.state.sums_prorated(now_s, window.secs())))
            .filter(|(_, s)| s.requests > 0.0)
            .collect()
    }

    /// Like [`Engine::service_sums_prorated`], over the series of `service` that `keep`.
    pub fn service_sums_prorated_where(
        &self,
        service: &str,
        window: Span,
        keep: impl Fn(&crate::observation::SeriesKey) -> bool,
    ) -> ProratedSums {
        let now_s = secs(self.now);
        let mut out = ProratedSums {
            complete: true,
            ..Default::default()
        };
        for e in self
            .entries
            .iter()
            .filter(|e| &*e.key.service == service && keep(&e.key))
        {
            out += e.state.sums_prorated(now_s, window.secs());
        }
        out
    }

    /// The versions of `service` with requests over a window ending now, and their request
    /// counts, most requests first (ties by name).
    pub fn versions_of(&self, service: &str, window: Span) -> Vec<(String, u64)> {
        let now_s = secs(self.now);
        let mut by: std::collections::BTreeMap<&str, u64> = std::collections::BTreeMap::new();
        for e in self.entries.iter().filter(|e| &*e.key.service == service) {
            let n = e.state.sums(now_s, window.secs()).requests;
            if n > 0 {
                *by.entry(&e.key.version).or_default() += n;
            }
        }
        let mut out: Vec<(String, u64)> = by.into_iter().map(|(v, n)| (v.to_string(), n)).collect();
        out.sort_by(|a, b| b.1.cmp(&a.1).then_with(|| a.0.cmp(&b.0)));
        out
    }

    /// Requests, errors and the merged latency digest of one service version over a window
    /// ending now (the digest is None beyond the 1 h digest history).
    pub fn version_totals(
        &self,
        service: &str,
        version: &str,
        window: Span,
    ) -> (u64, u64, Option<TDigest>) {
        self.version_totals_at(service, version, secs(self.now), window)
    }

    /// Like [`Engine::version_totals`], over the window ending at second `end_s` (included)
    /// instead of now: `(s, Span(1))` is second `s` alone, while it is in the 1 s history.
    pub fn version_totals_at(
        &self,
        service: &str,
        version: &str,
        end_s: u64,
        window: Span,
    ) -> (u64, u64, Option<TDigest>) {
        let now_s = end_s;
        let window_s = window.secs();
        let (mut requests, mut errors) = (0, 0);
        let mut digest = Some(TDigest::new(self.cfg.digest_compression));
        for e in self
            .entries
            .iter()
            .filter(|e| &*e.key.service == service && &*e.key.version == version)
        {
            let s = e.state.sums(now_s, window_s);
            requests += s.requests;
            errors += s.errors;
        }
        let key = (Arc::<str>::from(service), Arc::<str>::from(version));
        let parts = self
            .version_index
            .get(&key)
            .map(|&i| self.versions[i].digests.parts(now_s, window_s));
        match (parts, digest.as_mut()) {
            (Some(Some(parts)), Some(total)) => total.merge_all(parts),
            // No latency in the hour, but the window is within it.
            (None, _) if window_s <= MAX_DIGEST_WINDOW_S => {}
            _ => digest = None,
        }
        if let Some(d) = digest.as_mut() {
            d.compress();
        }
        (requests, errors, digest)
    }

    /// Newest event time and newest arrival over all series of `service` (None when unknown).
    pub fn service_freshness(&self, service: &str) -> Option<(UnixNanos, UnixNanos)> {
        self.entries
            .iter()
            .filter(|e| &*e.key.service == service)
            .map(|e| (e.state.last_event, e.state.last_arrival))
            .reduce(|a, b| (a.0.max(b.0), a.1.max(b.1)))
    }

    /// [`Engine::service_freshness`] of every service at once (one pass over the series).
    pub fn freshness_by_service(&self) -> HashMap<Arc<str>, (UnixNanos, UnixNanos)> {
        let mut out: HashMap<Arc<str>, (UnixNanos, UnixNanos)> = HashMap::new();
        for e in &self.entries {
            let f = out.entry(e.key.service.clone()).or_insert((0, 0));
            f.0 = f.0.max(e.state.last_event);
            f.1 = f.1.max(e.state.last_arrival);
        }
        out
    }

    /// Services with data (sorted).
    pub fn services(&self) -> Vec<Arc<str>> {
        let mut v: Vec<Arc<str>> = self.services.keys().cloned().collect();
        v.sort();
        v
    }

    /// The merged latency digest of one series over a window (None when unknown or longer than
    /// the series' 5 minutes).
    pub fn series_digest(&self, key: &SeriesKey, window: Span) -> Option<TDigest> {
        let e = &self.entries[*self.index.get(key)?];
        e.state
            .digest(secs(self.now), window.secs(), self.cfg.digest_compression)
    }
}

fn quantiles_of(d: &TDigest) -> Quantiles {
    let v = d.quantiles(&REPORTED_QUANTILES);
    Quantiles {
        p50: v[0],
        p90: v[1],
        p95: v[2],
        p99: v[3],
        p999: v[4],
    }
}
