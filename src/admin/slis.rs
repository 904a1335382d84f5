//! The `/api/v1/slis` document (DESIGN §5): fields may be added, never renamed.

use super::rfc3339;
use serde::Serialize;
use std::collections::BTreeMap;
use trike_engine::{Engine, SliQuery, Span};

/// Latency quantiles in ms (null when unknown).
#[derive(Debug, Serialize)]
pub struct LatencyJson {
    p50: Option<f64>,
    p90: Option<f64>,
    p95: Option<f64>,
    p99: Option<f64>,
    p999: Option<f64>,
}

/// One series.
#[derive(Debug, Serialize)]
pub struct SeriesJson {
    service: String,
    operation: String,
    version: String,
    dimensions: BTreeMap<String, String>,
    overflow: bool,
    requests: u64,
    errors: u64,
    error_ratio: Option<f64>,
    rate_per_s: f64,
    latency_ms: LatencyJson,
    latency_good: Vec<trike_engine::sli::LatencyGood>,
}

/// The whole document.
#[derive(Debug, Serialize)]
pub struct SlisJson {
    window: String,
    as_of: String,
    series: Vec<SeriesJson>,
}

fn finite(x: f64) -> Option<f64> {
    x.is_finite().then_some(x)
}

/// Builds the document for `service` (all when None) over `window`.
pub fn document(
    engine: &Engine,
    service: Option<String>,
    window: Span,
) -> trike_engine::Result<SlisJson> {
    let rows = engine.slis(&SliQuery { service, window })?;
    let series = rows
        .into_iter()
        .map(|r| {
            let q = r.latency_ms;
            SeriesJson {
                overflow: r.key.is_overflow(),
                service: r.key.service.to_string(),
                operation: r.key.operation.to_string(),
                version: r.key.version.to_string(),
                dimensions: r
                    .key
                    .dims
                    .iter()
                    .map(|(k, v)| (k.to_string(), v.to_string()))
                    .collect(),
                requests: r.requests,
                errors: r.errors,
                error_ratio: r.error_ratio,
                rate_per_s: r.rate_per_s,
                latency_ms: LatencyJson {
                    p50: q.and_then(|q| finite(q.p50)),
                    p90: q.and_then(|q| finite(q.p90)),
                    p95: q.and_then(|q| finite(q.p95)),
                    p99: q.and_then(|q| finite(q.p99)),
                    p999: q.and_then(|q| finite(q.p999)),
                },
                latency_good: r.latency_good,
            }
        })
        .collect();
    Ok(SlisJson {
        window: window.to_string(),
        as_of: rfc3339(engine.now()),
        series,
    })
}
