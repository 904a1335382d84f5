//! Anomaly detection on SLI streams: [`Detector`] scores one stream (see its module for the
//! method); [`SliWatch`] runs one per service and SLI (request rate, error ratio, p99) on
//! engine time, and its latest points feed the policy's `anomaly` conditions, the API and
//! `/metrics`.

mod detector;
mod features;
mod tail;

pub use detector::{Detector, DetectorConfig, Scored};
use serde::{Deserialize, Serialize};

/// The SLI streams watched per service.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum SliMetric {
    /// Requests per second over the last minute.
    RequestRate,
    /// Error ratio over the last minute.
    ErrorRatio,
    /// p99 latency over the last minute.
    LatencyP99,
}

impl SliMetric {
    /// Every metric.
    pub const ALL: [SliMetric; 3] = [
        SliMetric::RequestRate,
        SliMetric::ErrorRatio,
        SliMetric::LatencyP99,
    ];
    /// The name in `when: anomaly.<name>`.
    pub const fn name(self) -> &'static str {
        match self {
            SliMetric::RequestRate => "request_rate",
            SliMetric::ErrorRatio => "error_ratio",
            SliMetric::LatencyP99 => "latency_p99",
        }
    }
}

/// The latest verdict on one stream.
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
pub struct AnomalyPoint {
    /// Which stream.
    pub metric: SliMetric,
    /// Observed value.
    pub value: f64,
    /// Expected value.
    pub expected: f64,
    /// Score in [0, 1).
    pub score: f64,
    /// Labelled anomalous.
    pub anomaly: bool,
    /// Sample time (Unix seconds).
    pub at_s: u64,
}

/// Some services' SLI stream detectors, as [`SliWatch::snapshot_of`] takes them.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct WatchSnapshot {
    /// Service, metric, detector and its latest verdict. A stream written by a release with
    /// another detector is left out when read (it starts afresh; the rest of the record is
    /// read as written); one written before silences were judged, or with other settings,
    /// is read, and takes on the watch's settings when the watch next samples it.
    #[serde(deserialize_with = "crate::saved::of_this_release")]
    pub streams: Vec<Stream>,
}

/// One saved stream: service, metric, detector and its latest verdict.
pub type Stream = (String, SliMetric, Detector, Option<AnomalyPoint>);

/// Detectors over every service's SLI streams, sampled every `every_s` of engine time.
#[derive(Clone, Debug)]
pub struct SliWatch {
    cfg: DetectorConfig,
    every_s: u64,
    last_s: u64,
    max_streams: usize,
    streams: std::collections::BTreeMap<(String, SliMetric), (Detector, Option<AnomalyPoint>)>,
}

impl SliWatch {
    /// Watches with `cfg`, sampling every `every_s` seconds, at most `max_streams` streams.
    pub fn new(cfg: DetectorConfig, every_s: u64, max_streams: usize) -> Self {
        Self {
            cfg,
            every_s: every_s.max(1),
            last_s: 0,
            max_streams,
            streams: Default::default(),
        }
    }

    /// Samples every service's 1-minute SLIs when a sampling period has passed.
    pub fn sample(&mut self, engine: &crate::engine::Engine) {
        let now_s = crate::time::secs(engine.now());
        if now_s < self.last_s + self.every_s {
            return;
        }
        self.last_s = now_s;
        let Ok(rows) = engine.service_slis(crate::time::Span::minutes(1)) else {
            return;
        };
        for r in rows {
            let values = [
                (SliMetric::RequestRate, Some(r.rate_per_s)),
                (SliMetric::ErrorRatio, Some(r.error_ratio)),
                (SliMetric::LatencyP99, r.latency_ms.map(|q| q.p99)),
            ];
            for (metric, value) in values {
                let Some(v) = value else { continue };
                let key = (r.service.clone(), metric);
                if !self.streams.contains_key(&key) && self.streams.len() >= self.max_streams {
                    continue;
                }
                // A request rate that stops spiking has lost work (a batch client stopped);
                // errors and slow requests that stop spiking are good news.
                let silence = self.cfg.silence && metric == SliMetric::RequestRate;
                let cfg = DetectorConfig {
                    silence,
                    ..self.cfg
                };
                let (d, last) = self
                    .streams
                    .entry(key)
                    .or_insert_with(|| (Detector::new(cfg), None));
                // A detector taken over from a checkpoint or another processor was saved
                // with the settings of its time (or before silences were judged).
                d.follow(cfg);
                let s = d.observe(now_s, v);
                *last = Some(AnomalyPoint {
                    metric,
                    value: v,
                    expected: s.expected,
                    score: s.score,
                    anomaly: s.anomaly,
                    at_s: now_s,
                });
            }
        }
    }

    /// The detectors of the services for which `owns(service)` holds (a fleet processor's
    /// partition: they move with it, so a new owner's anomaly facts keep their learned level,
    /// scale and seasonal profile instead of warming up for a day).
    pub fn snapshot_of(&self, owns: impl Fn(&str) -> bool) -> WatchSnapshot {
        WatchSnapshot {
            streams: self
                .streams
                .iter()
                .filter(|((service, _), _)| owns(service))
                .map(|((service, metric), (d, last))| (service.clone(), *metric, d.clone(), *last))
                .collect(),
        }
    }

    /// Takes over the streams of `snap` (from [`SliWatch::snapshot_of`]), replacing those of
    /// the same service and metric; streams beyond the cap are left out.
    pub fn merge(&mut self, snap: WatchSnapshot) {
        for (service, metric, d, last) in snap.streams {
            let key = (service, metric);
            if !self.streams.contains_key(&key) && self.streams.len() >= self.max_streams {
                continue;
            }
            self.streams.insert(key, (d, last));
        }
    }

    /// Forgets the streams of the services for which `gone(service)` holds.
    pub fn drop_services(&mut self, gone: impl Fn(&str) -> bool) {
        self.streams.retain(|(service, _), _| !gone(service));
    }

    /// The detector settings of every stream.
    pub fn config(&self) -> &DetectorConfig {
        &self.cfg
    }

    /// Every stream's latest point no older than two sampling periods, by service and metric.
    pub fn all_latest(&self, now_s: u64) -> Vec<(&str, AnomalyPoint)> {
        self.streams
            .iter()
            .filter_map(|((service, _), (_, last))| Some((service.as_str(), (*last)?)))
            .filter(|(_, p)| p.at_s + 2 * self.every_s >= now_s)
            .collect()
    }

    /// The latest points of `service`'s streams that are no older than two sampling periods.
    pub fn latest(&self, service: &str, now_s: u64) -> Vec<AnomalyPoint> {
        SliMetric::ALL
            .iter()
            .filter_map(|m| self.streams.get(&(service.to_string(), *m))?.1)
            .filter(|p| p.at_s + 2 * self.every_s >= now_s)
            .collect()
    }
}

#[cfg(test)]
#[path = "anomaly_tests.rs"]
mod tests;

#[cfg(test)]
#[path = "anomaly_follow_tests.rs"]
mod follow_tests;
