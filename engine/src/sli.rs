//! SLI query results: what the admin API and (later) the SLO evaluator read.

use crate::observation::SeriesKey;
use crate::time::Span;
use serde::{Deserialize, Serialize};

/// Latency quantiles of a window, in milliseconds.
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
pub struct Quantiles {
    /// Median.
    pub p50: f64,
    /// 90th percentile.
    pub p90: f64,
    /// 95th percentile.
    pub p95: f64,
    /// 99th percentile.
    pub p99: f64,
    /// 99.9th percentile.
    pub p999: f64,
}

/// The quantiles every SLI row reports.
pub const REPORTED_QUANTILES: [f64; 5] = [0.5, 0.9, 0.95, 0.99, 0.999];

/// Requests within one latency threshold.
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
pub struct LatencyGood {
    /// The threshold in milliseconds.
    pub threshold_ms: f64,
    /// Requests at or under it.
    pub good: u64,
    /// `good / requests`.
    pub good_ratio: Option<f64>,
}

/// SLIs of one series over one window.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct SliRow {
    /// The series.
    pub key: SeriesKey,
    /// Window length.
    pub window: Span,
    /// Requests in the window.
    pub requests: u64,
    /// Bad requests in the window.
    pub errors: u64,
    /// `errors / requests` (None with no requests).
    pub error_ratio: Option<f64>,
    /// Requests per second over the window.
    pub rate_per_s: f64,
    /// Latency quantiles (None when no latency was observed, or the window is longer than the
    /// 1 h digest history).
    pub latency_ms: Option<Quantiles>,
    /// Good ratio against each configured latency threshold of the service.
    pub latency_good: Vec<LatencyGood>,
}

/// Which SLIs to read.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SliQuery {
    /// Only this service (all when None).
    pub service: Option<String>,
    /// Window length.
    pub window: Span,
}

/// SLIs of a whole service (all its series merged) over one window.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ServiceSli {
    /// Service name.
    pub service: String,
    /// The version, when grouped by version ([`crate::Engine::version_slis`]).
    pub version: Option<String>,
    /// Window length.
    pub window: Span,
    /// Requests.
    pub requests: u64,
    /// Bad requests.
    pub errors: u64,
    /// `errors / requests`.
    pub error_ratio: f64,
    /// Requests per second.
    pub rate_per_s: f64,
    /// Latency quantiles of all its series' requests together.
    pub latency_ms: Option<Quantiles>,
}
