//! Region health (pattern 6, L10): per service and value of the region dimension (default
//! `cloud.region`, which must be one of `series.dimensions`), over a window: requests, error
//! ratio, and a health score in [0, 1] — the share of requests that were good and, when the
//! service has latency thresholds, within its first one. A region is compared with the whole
//! service (`relative`: its health over the service's), so a policy can tell a failing region
//! from a failing service.

use crate::engine::Engine;
use crate::time::Span;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

/// The window region health is read over, and the fewest requests a region needs in it.
pub const WINDOW: Span = Span::minutes(5);
/// Requests a region needs in the window for its health to count.
pub const MIN_REQUESTS: f64 = 100.0;

/// One region of one service.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct RegionHealth {
    /// The region (the dimension's value).
    pub region: String,
    /// Requests in the window.
    pub requests: f64,
    /// errors ÷ requests.
    pub error_ratio: f64,
    /// Good (and, with a latency threshold, fast) requests ÷ requests.
    pub health: f64,
    /// This region's health ÷ the whole service's.
    pub relative: f64,
    /// The whole service's health over the same window.
    pub service_health: f64,
}

/// Health of each region of `service` (by dimension `dimension`) over `window`, worst first;
/// empty when its series do not carry the dimension.
pub fn region_health(
    engine: &Engine,
    service: &str,
    dimension: &str,
    window: Span,
) -> Vec<RegionHealth> {
    // (requests, errors, timed, within the first threshold) per region.
    let mut by: BTreeMap<String, [f64; 4]> = BTreeMap::new();
    let fast = !engine.config().thresholds_for(service).is_empty();
    for (key, s) in engine.series_sums(service, window) {
        let Some((_, region)) = key.dims.iter().find(|(d, _)| &**d == dimension) else {
            continue;
        };
        if region.is_empty() {
            continue;
        }
        let e = by.entry(region.to_string()).or_default();
        e[0] += s.requests;
        e[1] += s.errors;
        e[2] += s.timed;
        e[3] += s.within[0];
    }
    let health = |[r, e, t, w]: [f64; 4]| {
        let good = if r > 0.0 { 1.0 - e / r } else { 1.0 };
        let within = if fast && t > 0.0 { w / t } else { 1.0 };
        (good * within).clamp(0.0, 1.0)
    };
    let total = by.values().fold([0.0; 4], |mut a, v| {
        for i in 0..4 {
            a[i] += v[i];
        }
        a
    });
    let whole = health(total);
    let mut out: Vec<RegionHealth> = by
        .into_iter()
        .map(|(region, v)| {
            let h = health(v);
            RegionHealth {
                region,
                requests: v[0],
                error_ratio: if v[0] > 0.0 { v[1] / v[0] } else { 0.0 },
                health: h,
                relative: if whole > 0.0 { h / whole } else { 1.0 },
                service_health: whole,
            }
        })
        .collect();
    out.sort_by(|a, b| a.health.total_cmp(&b.health).then(a.region.cmp(&b.region)));
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::EngineConfig;
    use crate::observation::{Batch, RequestObs, SeriesKey};
    use crate::time::NANOS_PER_SEC;
    use std::sync::Arc;

    const S: u64 = NANOS_PER_SEC;
    const T0: u64 = 1_800_000_000 * S;

    fn key(route: &str, region: &str) -> SeriesKey {
        SeriesKey {
            dims: Arc::new([("cloud.region".into(), region.into())]),
            ..SeriesKey::new("shop", route, "1")
        }
    }

    /// Scenario: two minutes of shop traffic in three regions over two routes: eu-west fails
    /// 20 % of its requests, us-east 1 %, ap-south none but a third of its requests are slower
    /// than the service's 100 ms threshold.
    /// Guarantees: each region's requests and error ratio are exact; health is good × fast
    /// (0.6, 0.8, 0.99); worst first; relative to the service's health; a service whose
    /// series carry no region gives none.
    #[test]
    fn regions_are_scored_good_and_fast() {
        let cfg = EngineConfig {
            latency_thresholds_ms: vec![100.0],
            ..EngineConfig::default()
        };
        let mut e = Engine::new(Arc::new(cfg));
        for sec in 0..120u64 {
            let t = T0 + sec * S;
            let mut b = Batch::default();
            for (region, bad_every, slow_every) in
                [("eu-west", 5, 0), ("us-east", 100, 0), ("ap-south", 0, 3)]
            {
                for i in 0..10u64 {
                    let k = b.key_index(key(["/a", "/b"][(i % 2) as usize], region));
                    b.requests.push(RequestObs {
                        key: k,
                        time: t + i * S / 10,
                        latency_ms: if slow_every > 0 && i % slow_every == 0 {
                            500.0
                        } else {
                            20.0
                        },
                        bad: bad_every > 0 && (sec * 10 + i) % bad_every == 0,
                    });
                }
            }
            let k = b.key_index(SeriesKey::new("plain", "/x", "1"));
            b.requests.push(RequestObs {
                key: k,
                time: t,
                latency_ms: 1.0,
                bad: false,
            });
            e.ingest(&b, t + S / 2);
            e.advance(t + S);
        }
        let r = region_health(&e, "shop", "cloud.region", Span::minutes(5));
        let names: Vec<&str> = r.iter().map(|x| x.region.as_str()).collect();
        assert_eq!(names, ["ap-south", "eu-west", "us-east"]);
        for x in &r {
            assert_eq!(x.requests, 1200.0, "{x:?}");
        }
        assert!((r[1].error_ratio - 0.2).abs() < 1e-12);
        assert!((r[2].error_ratio - 0.01).abs() < 1e-12);
        // ap-south: 4 of 10 requests a second are slow (i = 0, 3, 6, 9).
        assert!((r[0].health - 0.6).abs() < 1e-12, "{:?}", r[0]);
        assert!((r[1].health - 0.8).abs() < 1e-12);
        assert!((r[2].health - 0.99).abs() < 1e-12);
        // The service: 252 of 3600 requests bad, 3120 fast.
        let whole = (1.0 - 252.0 / 3600.0) * (3120.0 / 3600.0);
        assert!((r[1].relative - 0.8 / whole).abs() < 1e-9);
        assert!(region_health(&e, "plain", "cloud.region", Span::minutes(5)).is_empty());
    }
}
