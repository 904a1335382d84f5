//! A short history of service versions' SLIs, for the dashboard's charts
//! (`/api/v1/history?service=S`): sampled every [`STEP`] over the trailing [`WINDOW`], kept
//! for [`POINTS`] samples (10 minutes), for at most [`MAX_STREAMS`] service versions.
//!
//! The engine keeps exact windows ending *now*; a chart needs the past as well, so the admin
//! side records what the engine said at each step. It must cost nothing when nobody looks and
//! must not grow with traffic: only *watched* services are sampled — those whose history was
//! asked for in the last [`WATCH_FOR`] (at most [`MAX_WATCHED`]), plus pinned ones (the demo's)
//! — so each sample holds the engine lock only for their series; streams and points are
//! capped, and streams idle for the whole history are dropped.

use parking_lot::Mutex;
use serde::Serialize;
use std::collections::{BTreeMap, VecDeque};
use std::time::Duration;
use trike_engine::{Engine, Span};

/// Sampling interval.
pub const STEP: Duration = Duration::from_secs(2);
/// Window each sample covers.
pub const WINDOW: Span = Span(10);
/// Samples kept per stream (10 minutes at [`STEP`]).
pub const POINTS: usize = 300;
/// Service versions recorded, at most (further ones are counted, not recorded).
pub const MAX_STREAMS: usize = 200;
/// How long a service stays watched after its history was last asked for, in milliseconds.
pub const WATCH_FOR: u64 = 10 * 60 * 1000;
/// Services watched at once, at most.
pub const MAX_WATCHED: usize = 50;

/// One sample of one service version.
#[derive(Clone, Copy, Debug, PartialEq, Serialize)]
pub struct Point {
    /// Sample time, Unix milliseconds.
    pub t_ms: u64,
    /// Requests per second over [`WINDOW`].
    pub rate_per_s: f64,
    /// Bad / all requests.
    pub error_ratio: f64,
    /// Latency quantiles, ms (null without latency data).
    pub p50: Option<f64>,
    /// p95, ms.
    pub p95: Option<f64>,
    /// p99, ms.
    pub p99: Option<f64>,
}

/// The recorded streams, keyed by (service, version).
#[derive(Debug, Default)]
pub struct History {
    streams: Mutex<BTreeMap<(String, String), VecDeque<Point>>>,
    /// Watched services and until when (Unix ms; `u64::MAX`: pinned).
    watched: Mutex<BTreeMap<String, u64>>,
    /// Service versions not recorded because [`MAX_STREAMS`] were already, and services not
    /// watched because [`MAX_WATCHED`] were.
    pub refused: std::sync::atomic::AtomicU64,
}

impl History {
    /// Samples `service` from now on for [`WATCH_FOR`] after `now_ms`; false when
    /// [`MAX_WATCHED`] services are watched already.
    pub fn watch(&self, service: &str, now_ms: u64) -> bool {
        let mut w = self.watched.lock();
        w.retain(|_, until| *until > now_ms);
        if let Some(until) = w.get_mut(service) {
            *until = (*until).max(now_ms + WATCH_FOR);
            return true;
        }
        if w.len() >= MAX_WATCHED {
            self.refused
                .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            return false;
        }
        w.insert(service.to_string(), now_ms + WATCH_FOR);
        true
    }

    /// Samples `service` for as long as the process runs.
    pub fn pin(&self, service: &str) {
        self.watched.lock().insert(service.to_string(), u64::MAX);
    }

    /// Records one sample of every watched service's versions from `engine` (at its `now`).
    pub fn sample(&self, engine: &Engine) {
        let t_ms = engine.now() / 1_000_000;
        let services: Vec<String> = {
            let mut w = self.watched.lock();
            w.retain(|_, until| *until > t_ms);
            w.keys().cloned().collect()
        };
        let mut rows = Vec::new();
        for s in &services {
            rows.extend(engine.version_slis(Some(s), WINDOW).unwrap_or_default());
        }
        let mut streams = self.streams.lock();
        for r in rows {
            let key = (r.service, r.version.unwrap_or_default());
            let len = streams.len();
            let points = match streams.get_mut(&key) {
                Some(p) => p,
                None if len >= MAX_STREAMS => {
                    self.refused
                        .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                    continue;
                }
                None => streams.entry(key).or_default(),
            };
            if points.len() == POINTS {
                points.pop_front();
            }
            points.push_back(Point {
                t_ms,
                rate_per_s: r.rate_per_s,
                error_ratio: r.error_ratio,
                p50: r.latency_ms.map(|q| q.p50),
                p95: r.latency_ms.map(|q| q.p95),
                p99: r.latency_ms.map(|q| q.p99),
            });
        }
        // A stream with no sample in the whole history is gone.
        let horizon = t_ms.saturating_sub(POINTS as u64 * STEP.as_millis() as u64);
        streams.retain(|_, p| p.back().is_some_and(|last| last.t_ms >= horizon));
    }

    /// `{"service", "step_s", "window", "versions": {version: [Point, …]}}`.
    pub fn document(&self, service: &str) -> serde_json::Value {
        let streams = self.streams.lock();
        let versions: BTreeMap<&str, &VecDeque<Point>> = streams
            .iter()
            .filter(|((s, _), _)| s == service)
            .map(|((_, v), p)| (v.as_str(), p))
            .collect();
        serde_json::json!({
            "service": service,
            "step_s": STEP.as_secs(),
            "window": WINDOW.to_string(),
            "versions": versions,
        })
    }

    /// Services with a recorded stream, sorted.
    pub fn services(&self) -> Vec<String> {
        let mut s: Vec<String> = self.streams.lock().keys().map(|(s, _)| s.clone()).collect();
        s.dedup();
        s
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;
    use trike_engine::{Batch, EngineConfig, RequestObs, SeriesKey};

    const S: u64 = 1_000_000_000;
    const T0: u64 = 1_800_000_000 * S;

    fn requests(e: &mut Engine, version: &str, t: u64, n: usize, bad: usize) {
        let b = Batch {
            keys: vec![SeriesKey::new("svc", "/a", version)],
            requests: (0..n)
                .map(|i| RequestObs {
                    key: 0,
                    time: t,
                    latency_ms: 10.0 + i as f64,
                    bad: i < bad,
                })
                .collect(),
            ..Default::default()
        };
        e.ingest(&b, t);
        e.advance(t);
    }

    /// Scenario: two versions sampled at two instants. Guarantees: one point per version per
    /// sample with the window's rate, error ratio and quantiles; other services are not in
    /// the document; streams idle longer than the history are dropped.
    #[test]
    fn samples_each_version_and_forgets_idle_streams() {
        let mut e = Engine::new(Arc::new(EngineConfig::default()));
        let h = History::default();
        assert!(h.watch("svc", T0 / 1_000_000));
        requests(&mut e, "1", T0, 100, 10);
        requests(&mut e, "2", T0, 10, 0);
        h.sample(&e);
        requests(&mut e, "1", T0 + 2 * S, 100, 0);
        h.sample(&e);
        let doc = h.document("svc");
        let v1 = doc["versions"]["1"].as_array().unwrap();
        assert_eq!(v1.len(), 2);
        assert_eq!(v1[0]["t_ms"], T0 / 1_000_000);
        assert_eq!(v1[1]["error_ratio"], 0.05);
        assert!(v1[0]["p99"].as_f64().unwrap() > v1[0]["p50"].as_f64().unwrap());
        assert_eq!(doc["versions"]["2"].as_array().unwrap().len(), 2);
        assert_eq!(doc["window"], "10s");
        assert_eq!(h.document("other")["versions"], serde_json::json!({}));
        assert_eq!(h.services(), ["svc"]);

        // Long after: both windows are empty, nothing is sampled, and the streams expire.
        let later = T0 + (POINTS as u64 * 2 + 30) * S;
        e.advance(later);
        h.sample(&e);
        assert_eq!(h.document("svc")["versions"], serde_json::json!({}));
    }

    /// Guarantees: only watched services are sampled; a watch expires after [`WATCH_FOR`]
    /// unless renewed; pinned services stay; at most [`MAX_WATCHED`] are watched.
    #[test]
    fn samples_only_watched_services() {
        let mut e = Engine::new(Arc::new(EngineConfig::default()));
        let h = History::default();
        requests(&mut e, "1", T0, 10, 0);
        h.sample(&e);
        assert!(h.services().is_empty(), "nobody watches svc");
        let now_ms = T0 / 1_000_000;
        h.watch("svc", now_ms);
        h.sample(&e);
        assert_eq!(h.services(), ["svc"]);
        // The watch lapses: no new point for svc (and its old one has aged out).
        let later = T0 + (WATCH_FOR / 1000 + 1) * S;
        requests(&mut e, "1", later, 10, 0);
        h.sample(&e);
        assert_eq!(h.document("svc")["versions"], serde_json::json!({}));
        h.pin("svc");
        h.sample(&e);
        h.sample(&e);
        let points = h.document("svc")["versions"]["1"].as_array().unwrap().len();
        assert_eq!(points, 2, "pinned: sampled again");
        for i in 1..MAX_WATCHED {
            // svc holds the first slot.

            h.watch(&format!("s{i}"), now_ms);
        }
        assert!(!h.watch("one-too-many", now_ms), "bounded");
        assert_eq!(h.refused.load(std::sync::atomic::Ordering::Relaxed), 1);
    }
}
