//! `GET /api/v1/regions[?service=S]` and `GET /api/v1/cost[?service=S]` (pattern 6, L10):
//! each service's regions' health over the last 5 minutes (worst first), and its spend against
//! its `cost:` budget; `/metrics` carries `trike_cost_spend_burn{service,window}` and
//! `trike_cost_per_request{service}`. Computed on request from the engine; on a fleet the
//! owners answer (`fleet.rs`).

use super::AdminState;
use axum::extract::{Query, State};
use axum::response::{IntoResponse, Response};
use std::fmt::Write;
use std::sync::Arc;
use trike_engine::expo::{escape, header};

#[derive(Debug, serde::Deserialize)]
pub(super) struct Params {
    #[serde(default)]
    service: Option<String>,
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

/// `trike_cost_spend_burn{service,window}` and `trike_cost_per_request{service}`.
pub(super) fn render(s: &AdminState, out: &mut String) {
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
        "Price of one request.",
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
}
