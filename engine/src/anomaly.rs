//! Streaming anomaly detection for one SLI stream (request rate, error ratio, a latency
//! quantile): a robust level, a time-of-day seasonal profile and a robust scale, each updated
//! in O(1) with bounded memory (one number per time-of-day bin).
//!
//! - Expected value = level + season[bin of the time of day]; residual r = x − expected.
//! - Score = z / (z + sensitivity), z = |r| / scale: in [0, 1), 0.5 at `sensitivity` scales.
//!   A point is labelled anomalous when its score reaches 0.5 (after a short warm-up).
//! - Updates are Huber-clipped, so spikes do not drag the baseline; the scale adapts to a
//!   variance change after flagging its start.
//! - A level shift is flagged, then adopted: after `relevel_after` consecutive anomalies on the
//!   same side, the level jumps to their median, so a new normal stops alerting.
//!
//! Pure: time is the sample's timestamp; nothing reads a clock.

use serde::{Deserialize, Serialize};

/// Settings.
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct DetectorConfig {
    /// Standard deviations (robustly estimated) at which the score reaches 0.5 and points are
    /// labelled (default 4).
    pub sensitivity: f64,
    /// Samples before anything is labelled (default 12).
    pub warmup: u32,
    /// Length of the seasonal cycle in seconds (default one day; 0 disables seasonality).
    pub season_s: u64,
    /// Time-of-day bins per season (default 96: 15 minutes each for a day).
    pub season_bins: u32,
    /// Level smoothing (default 0.1).
    pub level_alpha: f64,
    /// Seasonal profile smoothing (default 0.1 per visit of a bin).
    pub season_alpha: f64,
    /// Scale smoothing (default 0.05).
    pub scale_alpha: f64,
    /// Consecutive same-side anomalies after which the level is moved to them (default 6).
    pub relevel_after: u32,
}

impl Default for DetectorConfig {
    fn default() -> Self {
        Self {
            sensitivity: 4.0,
            warmup: 12,
            season_s: 86_400,
            season_bins: 96,
            level_alpha: 0.1,
            season_alpha: 0.1,
            scale_alpha: 0.05,
            relevel_after: 6,
        }
    }
}

/// The verdict on one sample.
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
pub struct Scored {
    /// What was expected.
    pub expected: f64,
    /// Anomaly score in [0, 1).
    pub score: f64,
    /// Labelled anomalous.
    pub anomaly: bool,
}

/// One stream's detector state.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Detector {
    cfg: DetectorConfig,
    /// Fast level: tracks everything, used until a time-of-day bin is learned.
    fast: Option<f64>,
    /// Slow level: the de-seasonalised mean.
    level: f64,
    scale: f64,
    season: Vec<f64>,
    /// Samples seen per bin (saturating).
    visits: Vec<u16>,
    n: u64,
    /// Recent consecutive anomalous residuals on one side (for re-levelling).
    run: Vec<f64>,
}

const MIN_SCALE: f64 = 1e-9;
/// Samples a bin needs before its seasonal value is trusted.
const BIN_TRUSTED: u16 = 3;

impl Detector {
    /// A detector with no history.
    pub fn new(cfg: DetectorConfig) -> Self {
        let bins = if cfg.season_s == 0 {
            0
        } else {
            cfg.season_bins.max(1) as usize
        };
        Self {
            cfg,
            fast: None,
            level: 0.0,
            scale: 0.0,
            season: vec![0.0; bins],
            visits: vec![0; bins],
            n: 0,
            run: Vec::new(),
        }
    }

    fn bin(&self, t_s: u64) -> Option<usize> {
        if self.season.is_empty() {
            return None;
        }
        let within = t_s % self.cfg.season_s;
        Some((within * self.season.len() as u64 / self.cfg.season_s) as usize)
    }

    /// Scores `value` observed at `t_s` (Unix seconds), then learns from it.
    pub fn observe(&mut self, t_s: u64, value: f64) -> Scored {
        let Some(fast) = self.fast else {
            if value.is_finite() {
                self.fast = Some(value);
                self.level = value;
                self.n = 1;
            }
            return Scored {
                expected: value,
                score: 0.0,
                anomaly: false,
            };
        };
        if !value.is_finite() {
            return Scored {
                expected: fast,
                score: 0.0,
                anomaly: false,
            };
        }
        self.n += 1;
        let bin = self.bin(t_s);
        let trusted = bin.filter(|b| self.visits[*b] >= BIN_TRUSTED);
        let expected = match (bin, trusted) {
            (None, _) => self.level,
            (Some(_), Some(b)) => self.level + self.season[b],
            (Some(_), None) => fast,
        };
        let r = value - expected;
        // The scale never drops below a small share of the level, so a flat series does not
        // turn its first wiggle into an alarm.
        let floor = (expected.abs() * 1e-3).max(MIN_SCALE);
        let scale = self.scale.max(floor);
        // The scale is a mean absolute deviation; × √(π/2) makes it a standard deviation for
        // Gaussian noise, so `sensitivity` reads as "standard deviations".
        let z = r.abs() / (scale * 1.253_314);
        let score = z / (z + self.cfg.sensitivity);
        let warm = self.n > u64::from(self.cfg.warmup);
        let anomaly = warm && score >= 0.5;

        // Learn, with residuals clipped at the labelling threshold (Huber) once warm.
        let k = if warm {
            self.cfg.sensitivity * scale
        } else {
            f64::INFINITY
        };
        let clip = |x: f64| x.clamp(-k, k);
        self.fast = Some(fast + 0.3 * clip(value - fast));
        match bin {
            None => self.level += self.cfg.level_alpha * clip(r),
            Some(b) => {
                // De-seasonalised level moves slowly; the bin learns fast at first.
                let seasonal = if self.visits[b] > 0 {
                    self.season[b]
                } else {
                    0.0
                };
                self.level += 0.02 * clip(value - seasonal - self.level);
                let v = self.visits[b].saturating_add(1);
                self.visits[b] = v;
                let a = (1.0 / f64::from(v)).max(self.cfg.season_alpha);
                self.season[b] += a * clip(value - self.level - self.season[b]);
            }
        }
        // The scale learns from deviations capped at 2 scales: an anomaly nudges it up by at
        // most 5 %, so a level shift stays flagged long enough to be adopted.
        let dev = if warm {
            r.abs().min(2.0 * scale)
        } else {
            r.abs()
        };
        self.scale = if self.scale == 0.0 {
            dev.max(floor)
        } else {
            self.scale + self.cfg.scale_alpha * (dev - self.scale)
        };
        // A new normal: consecutive anomalies on one side move the level to them.
        if anomaly {
            if self.run.last().is_some_and(|p| p.signum() != r.signum()) {
                self.run.clear();
            }
            self.run.push(r);
            if self.run.len() >= self.cfg.relevel_after as usize {
                let mut v = self.run.clone();
                v.sort_by(f64::total_cmp);
                let shift = v[v.len() / 2];
                self.level += shift;
                self.fast = self.fast.map(|f| f + shift);
                self.run.clear();
            }
        } else {
            self.run.clear();
        }
        Scored {
            expected,
            score,
            anomaly,
        }
    }
}

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
    /// Service, metric, detector and its latest verdict.
    pub streams: Vec<(String, SliMetric, Detector, Option<AnomalyPoint>)>,
}

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
                let cfg = self.cfg;
                let (d, last) = self
                    .streams
                    .entry(key)
                    .or_insert_with(|| (Detector::new(cfg), None));
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
