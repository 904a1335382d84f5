//! Engine settings: validated by the binary's config loader, then handed to [`crate::Engine`].

use crate::time::Span;
use crate::window::MAX_THRESHOLDS;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

/// Which signal counts for a service that sends both spans and request metrics.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum SignalSource {
    /// Spans when the service sent spans recently, else metrics, else log records.
    #[default]
    Auto,
    /// Only spans.
    Spans,
    /// Only metrics.
    Metrics,
    /// Only log records (`logs.errors_as: bad_events`).
    Logs,
}

/// Series across all services, unless configured (`series.max_series`).
pub const DEFAULT_MAX_SERIES: usize = 200_000;

/// Engine settings.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct EngineConfig {
    /// New series of a service beyond this many fold into its overflow series.
    pub max_series_per_service: usize,
    /// Services beyond this many fold into one shared overflow series.
    pub max_services: usize,
    /// Series across all services (DESIGN §7): beyond this many, a new series of a known
    /// service folds into that service's overflow series and a new service into the shared
    /// one, so a cardinality flood never grows memory nor changes existing series' counts.
    pub max_series: usize,
    /// Data older than `now − allowed_lateness` is counted and dropped.
    pub allowed_lateness: Span,
    /// In `auto` mode, how long after the last span a service's metrics stay ignored.
    pub spans_preferred_for: Span,
    /// Signal source for services not listed in `signal_source_per_service`.
    pub signal_source: SignalSource,
    /// Per-service signal source.
    pub signal_source_per_service: BTreeMap<String, SignalSource>,
    /// Latency thresholds (ms) whose good ratio every series reports, unless overridden.
    pub latency_thresholds_ms: Vec<f64>,
    /// Per-service latency thresholds (ms); at most 2 per service.
    pub latency_thresholds_per_service: BTreeMap<String, Vec<f64>>,
    /// t-digest compression (higher: more accurate, more memory).
    pub digest_compression: f32,
    /// Metric streams tracked for cumulative-to-delta conversion.
    pub max_metric_streams: usize,
    /// Cumulative streams silent this long are forgotten.
    pub metric_stream_ttl: Span,
    /// A series without new data for this long is folded into its service version's aggregate
    /// (its history kept in the aggregate's counts; None: series stay until their data ages
    /// out of the 30-day history).
    pub idle_series_after: Option<Span>,
    /// Each series also keeps its 1 s latency digests for 10 s, for the archive's per-second
    /// rows ([`crate::Engine::second_rows`]): set when an archive is written. Without it a
    /// series keeps only its 1-minute digests (versions keep the fine ones either way).
    pub keep_second_digests: bool,
    /// How the service graph pairs and keeps calls.
    pub graph: crate::graph::GraphSettings,
    /// The series dimension region health reads.
    pub region_dimension: String,
}

impl Default for EngineConfig {
    fn default() -> Self {
        Self {
            max_series_per_service: 10_000,
            max_services: 10_000,
            max_series: DEFAULT_MAX_SERIES,
            allowed_lateness: Span::minutes(5),
            spans_preferred_for: Span::minutes(10),
            signal_source: SignalSource::Auto,
            signal_source_per_service: BTreeMap::new(),
            latency_thresholds_ms: Vec::new(),
            latency_thresholds_per_service: BTreeMap::new(),
            digest_compression: crate::sketch::DEFAULT_COMPRESSION,
            max_metric_streams: 200_000,
            metric_stream_ttl: Span::hours(1),
            idle_series_after: Some(Span::minutes(15)),
            keep_second_digests: false,
            graph: crate::graph::GraphSettings::default(),
            region_dimension: "cloud.region".into(),
        }
    }
}

impl EngineConfig {
    /// How digests are kept.
    pub fn digest_settings(&self) -> crate::window::DigestSettings {
        crate::window::DigestSettings {
            compression: self.digest_compression,
            keep_seconds: self.keep_second_digests,
        }
    }

    /// Every problem with these settings, each naming its field under `prefix`.
    pub fn problems(&self, prefix: &str) -> Vec<String> {
        let mut out = Vec::new();
        if self.max_services == 0 {
            out.push(format!("{prefix}.max_services: must be at least 1"));
        }
        if self.max_series_per_service == 0 {
            out.push(format!(
                "{prefix}.max_series_per_service: must be at least 1"
            ));
        }
        if !(20.0..=5000.0).contains(&self.digest_compression) {
            out.push(format!(
                "{prefix}.digest_compression: {} is not in [20, 5000]",
                self.digest_compression
            ));
        }
        if !(0.0..=1.0).contains(&self.graph.min_share) {
            out.push(format!(
                "{prefix}.graph.min_share: {} is not a share in [0, 1]",
                self.graph.min_share
            ));
        }
        if self.graph.max_pending == 0 || self.graph.max_edges == 0 {
            out.push(format!(
                "{prefix}.graph: max_pending and max_edges must be at least 1"
            ));
        }
        let thresholds = std::iter::once((
            "latency_thresholds_ms".to_string(),
            &self.latency_thresholds_ms,
        ))
        .chain(
            self.latency_thresholds_per_service
                .iter()
                .map(|(s, v)| (format!("latency_thresholds_per_service.{s}"), v)),
        );
        for (field, list) in thresholds {
            if list.len() > MAX_THRESHOLDS {
                out.push(format!(
                    "{prefix}.{field}: {} thresholds given, at most {MAX_THRESHOLDS} are tracked per service",
                    list.len()
                ));
            }
            for t in list {
                if !(t.is_finite() && *t > 0.0) {
                    out.push(format!(
                        "{prefix}.{field}: {t} is not a positive number of milliseconds"
                    ));
                }
            }
        }
        out
    }

    /// Thresholds tracked for `service`.
    pub fn thresholds_for(&self, service: &str) -> &[f64] {
        let list = self
            .latency_thresholds_per_service
            .get(service)
            .unwrap_or(&self.latency_thresholds_ms);
        &list[..list.len().min(MAX_THRESHOLDS)]
    }

    /// Signal source for `service`.
    pub fn source_for(&self, service: &str) -> SignalSource {
        self.signal_source_per_service
            .get(service)
            .copied()
            .unwrap_or(self.signal_source)
    }
}
