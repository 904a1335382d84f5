//! The anomaly watch's latest verdicts (DESIGN §10): `GET /api/v1/anomalies[?service=S]` and
//! the `/metrics` gauges. The watch runs in the decide hook (every service's 1-minute request
//! rate, error ratio and p99, sampled every `anomaly.every`); a point older than two sampling
//! periods is not shown. A gateway runs no watch: on a fleet, the owners answer (`fleet.rs`).

use super::{AdminState, json_error, rfc3339};
use axum::extract::{Query, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use std::fmt::Write;
use std::sync::Arc;
use trike_engine::anomaly::AnomalyPoint;
use trike_engine::expo::{escape, header};

/// The latest points, by service and metric, highest score first; `service` narrows them.
fn latest(s: &AdminState, service: Option<&str>) -> Option<(f64, Vec<(String, AnomalyPoint)>)> {
    let watch = s.watch.as_ref()?;
    let now_s = trike_engine::time::secs(s.worker.engine().lock().now());
    let w = watch.lock();
    let mut points: Vec<(String, AnomalyPoint)> = w
        .all_latest(now_s)
        .into_iter()
        .filter(|(svc, _)| service.is_none_or(|want| want == *svc))
        .map(|(svc, p)| (svc.to_string(), p))
        .collect();
    points.sort_by(|a, b| b.1.score.total_cmp(&a.1.score).then(a.0.cmp(&b.0)));
    Some((w.config().threshold, points))
}

#[derive(Debug, serde::Deserialize)]
pub(super) struct Params {
    service: Option<String>,
}

/// `GET /api/v1/anomalies[?service=S]`:
/// `{"threshold","anomalies":[{"service","metric","score","anomaly","value","expected","at"}]}`.
pub(super) async fn handler(State(s): State<Arc<AdminState>>, Query(p): Query<Params>) -> Response {
    let service = p.service.filter(|v| !v.is_empty());
    let Some((threshold, points)) = latest(&s, service.as_deref()) else {
        return json_error(
            StatusCode::NOT_FOUND,
            "this member runs no anomaly watch (a gateway): ask a processor, or any member of a fleet with ?service=".into(),
        );
    };
    let list: Vec<serde_json::Value> = points
        .iter()
        .map(|(service, p)| {
            serde_json::json!({
                "service": service,
                "metric": p.metric.name(),
                "score": p.score,
                "anomaly": p.anomaly,
                "value": p.value.is_finite().then_some(p.value),
                "expected": p.expected.is_finite().then_some(p.expected),
                "at": rfc3339(p.at_s * 1_000_000_000),
            })
        })
        .collect();
    axum::Json(serde_json::json!({ "threshold": threshold, "anomalies": list })).into_response()
}

/// `trike_anomaly_score{service,metric}` and `trike_anomaly{service,metric}` (1 while the
/// latest point is anomalous), for at most `metrics_max_services` services.
pub(super) fn render(s: &AdminState, out: &mut String) {
    let Some((_, mut points)) = latest(s, None) else {
        return;
    };
    points.sort_by(|a, b| a.0.cmp(&b.0).then(a.1.metric.cmp(&b.1.metric)));
    let mut services = 0;
    let mut last: Option<&str> = None;
    let kept: Vec<&(String, AnomalyPoint)> = points
        .iter()
        .filter(|(svc, _)| {
            if last != Some(svc.as_str()) {
                services += 1;
                last = Some(svc.as_str());
            }
            services <= s.metrics_max_services
        })
        .collect();
    let label = |svc: &str, p: &AnomalyPoint| {
        format!("service=\"{}\",metric=\"{}\"", escape(svc), p.metric.name())
    };
    header(
        out,
        "trike_anomaly_score",
        "Anomaly score of the latest sample of a service's SLI, in [0, 1]: -log10 of its tail probability among the stream's history, / 5.",
        "gauge",
    );
    for (svc, p) in &kept {
        let _ = writeln!(out, "trike_anomaly_score{{{}}} {}", label(svc, p), p.score);
    }
    header(
        out,
        "trike_anomaly",
        "1 while the latest sample of a service's SLI is anomalous (score at or above the threshold).",
        "gauge",
    );
    for (svc, p) in &kept {
        let _ = writeln!(
            out,
            "trike_anomaly{{{}}} {}",
            label(svc, p),
            u8::from(p.anomaly)
        );
    }
}
