//! `GET /api/v1/regions[?service=S]`, `GET /api/v1/cost[?service=S]` and
//! `GET /api/v1/usage[?service=S][&window=5m]` (patterns 1 and 6, L10): each service's regions'
//! health over the last 5 minutes (worst first), its spend against its `cost:` budget, and its
//! usage metrics (CPU seconds per second, memory…); `/metrics` carries
//! `trike_cost_spend_burn{service,window}`, `trike_cost_per_request{service}`,
//! `trike_cost_cpu_cores{service}` and `trike_usage_value{service,metric,kind}` (5 m).
//! Computed on request from the engine; on a fleet the owners answer (`fleet.rs`).

use super::AdminState;
use axum::extract::{Query, State};
use axum::response::{IntoResponse, Response};
use std::fmt::Write;
use std::sync::Arc;
use trike_engine::Span;
use trike_engine::expo::{escape, header};

#[derive(Debug, serde::Deserialize)]
pub(super) struct Params {
    #[serde(default)]
    service: Option<String>,
    #[serde(default)]
    window: Option<String>,
}

/// `{"window","usage":[{service, metric, kind, value}]}`: rates per second, levels as their
/// value, over `window` (default 5m, at most the hour kept).
pub(super) async fn usage(State(s): State<Arc<AdminState>>, Query(p): Query<Params>) -> Response {
    let window = match super::graph::window_of_the_hour(p.window, "usage") {
        Ok(w) => w,
        Err(why) => return super::json_error(axum::http::StatusCode::BAD_REQUEST, why),
    };
    let service = p.service.filter(|v| !v.is_empty());
    let rows: Vec<_> = {
        let engine = s.worker.engine().lock();
        engine.usage().rows(window, engine.now())
    };
    let rows: Vec<_> = rows
        .into_iter()
        .filter(|r| service.as_ref().is_none_or(|want| *want == r.service))
        .collect();
    axum::Json(serde_json::json!({ "window": window.to_string(), "usage": rows })).into_response()
}

/// `{"dimension","window","regions":[{service, region, requests, error_ratio, health, relative}]}`.
pub(super) async fn regions(State(s): State<Arc<AdminState>>, Query(p): Query<Params>) -> Response {
    let engine = s.worker.engine().lock();
    let dimension = engine.config().region_dimension.clone();
    let services: Vec<String> = match p.service.filter(|v| !v.is_empty()) {
        Some(one) => vec![one],
        None => engine.services().iter().map(|s| s.to_string()).collect(),
    };
    let mut list = Vec::new();
    for service in services {
        for r in trike_engine::regions::region_health(
            &engine,
            &service,
            &dimension,
            trike_engine::regions::WINDOW,
        ) {
            let mut v = serde_json::to_value(&r).unwrap_or_default();
            if let Some(o) = v.as_object_mut() {
                o.insert("service".into(), service.clone().into());
            }
            list.push(v);
        }
    }
    axum::Json(serde_json::json!({
        "dimension": dimension,
        "window": trike_engine::regions::WINDOW.to_string(),
        "regions": list,
    }))
    .into_response()
}

/// The spend of every service with a `cost:` entry (or `service`'s).
fn spends(s: &AdminState, service: Option<&str>) -> Vec<(String, trike_engine::cost::SpendPoint)> {
    let engine = s.worker.engine().lock();
    s.costs
        .iter()
        .filter(|c| service.is_none_or(|want| want == c.service))
        .map(|c| (c.service.clone(), trike_engine::cost::spend(&engine, c)))
        .collect()
}

/// `{"costs":[{service, cost_per_request, spend_per_day, budget_per_day, burn_1h, burn_5m}]}`.
pub(super) async fn cost(State(s): State<Arc<AdminState>>, Query(p): Query<Params>) -> Response {
    let service = p.service.filter(|v| !v.is_empty());
    let list: Vec<serde_json::Value> = spends(&s, service.as_deref())
        .into_iter()
        .map(|(service, p)| {
            let mut v = serde_json::to_value(p).unwrap_or_default();
            if let Some(o) = v.as_object_mut() {
                o.insert("service".into(), service.into());
            }
            v
        })
        .collect();
    axum::Json(serde_json::json!({ "costs": list })).into_response()
}

/// `trike_usage_points_dropped_total`, `trike_usage_value{service,metric,kind}` (5 m),
/// `trike_cost_spend_burn{service,window}`,
/// `trike_cost_per_request{service}` and `trike_cost_cpu_cores{service}`.
pub(super) fn render(s: &AdminState, out: &mut String) {
    let (usage, dropped) = {
        let engine = s.worker.engine().lock();
        let u = engine.usage();
        (u.rows(Span::minutes(5), engine.now()), u.dropped())
    };
    trike_engine::expo::counter(
        out,
        "trike_usage_points_dropped_total",
        "Usage metric points not kept: past the series cap or a level minute's stream cap, a metric whose kind changed, or older than the hour kept.",
        dropped,
    );
    if !usage.is_empty() {
        header(
            out,
            "trike_usage_value",
            "A usage metric over the last 5 minutes: per second for a counter (kind rate), the mean value for a gauge (kind level).",
            "gauge",
        );
        for r in &usage {
            let kind = match r.kind {
                trike_engine::UsageKind::Rate => "rate",
                trike_engine::UsageKind::Level => "level",
            };
            let _ = writeln!(
                out,
                "trike_usage_value{{service=\"{}\",metric=\"{}\",kind=\"{kind}\"}} {}",
                escape(&r.service),
                escape(&r.metric),
                r.value
            );
        }
    }
    let list = spends(s, None);
    if list.is_empty() {
        return;
    }
    header(
        out,
        "trike_cost_spend_burn",
        "Spend over the daily budget at the window's rate (1 = on budget).",
        "gauge",
    );
    for (svc, p) in &list {
        for (w, v) in [("1h", p.burn_1h), ("5m", p.burn_5m)] {
            let _ = writeln!(
                out,
                "trike_cost_spend_burn{{service=\"{}\",window=\"{w}\"}} {v}",
                escape(svc)
            );
        }
    }
    header(
        out,
        "trike_cost_per_request",
        "What one request cost over the last hour (its price and the CPU it used).",
        "gauge",
    );
    for (svc, p) in &list {
        let _ = writeln!(
            out,
            "trike_cost_per_request{{service=\"{}\"}} {}",
            escape(svc),
            p.cost_per_request
        );
    }
    let cores: Vec<_> = list
        .iter()
        .filter_map(|(svc, p)| p.cpu_cores.map(|c| (svc, c)))
        .collect();
    if !cores.is_empty() {
        header(
            out,
            "trike_cost_cpu_cores",
            "CPU seconds per second over the last hour, of services priced per CPU second.",
            "gauge",
        );
        for (svc, c) in cores {
            let _ = writeln!(
                out,
                "trike_cost_cpu_cores{{service=\"{}\"}} {c}",
                escape(svc)
            );
        }
    }
}
