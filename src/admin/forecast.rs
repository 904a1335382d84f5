//! `GET /api/v1/forecast[?service=S[&metric=M]]` (DESIGN §10): each service's request-rate
//! forecast (and its usage metrics' with a `capacity:` limit) and, with a limit, the days
//! until it reaches it. Learned hourly in the decide hook
//! (a gateway has none: on a fleet, the owners answer, `fleet.rs`).

use super::{AdminState, json_error};
use axum::extract::{Query, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use std::sync::Arc;
use trike_engine::forecast::{ForecastPoint, REQUEST_RATE};

fn json(service: &str, p: &ForecastPoint) -> serde_json::Value {
    let finite = |x: f64| x.is_finite().then_some(x);
    let mut v = serde_json::json!({
        "service": service,
        "metric": &*p.metric,
        "limit": p.limit,
        "days_to_limit": p.days_to_limit,
        "value": finite(p.value),
        "trend_per_day": finite(p.trend_per_day),
        "hours_learned": p.hours,
    });
    if &*p.metric == REQUEST_RATE {
        v["rate_per_s"] = finite(p.value).into();
    }
    v
}

#[derive(Debug, serde::Deserialize)]
pub(super) struct Params {
    #[serde(default)]
    service: Option<String>,
    /// `request_rate` (the default) or a usage metric with a limit.
    #[serde(default)]
    metric: Option<String>,
}

/// One service's forecast of one metric (`{"service","metric","limit","days_to_limit",…}`;
/// 404 when it has none yet), or every forecast (`{"forecasts":[…]}`).
pub(super) async fn handler(State(s): State<Arc<AdminState>>, Query(p): Query<Params>) -> Response {
    let Some(forecasts) = &s.forecasts else {
        return json_error(
            StatusCode::NOT_FOUND,
            "this member forecasts nothing (a gateway): ask a processor, or any member of a fleet with ?service=".into(),
        );
    };
    let f = forecasts.lock();
    match p.service.filter(|v| !v.is_empty()) {
        Some(service) => {
            let metric = p.metric.filter(|m| !m.is_empty());
            let metric = metric.as_deref().unwrap_or(REQUEST_RATE);
            match f.get(&service, metric) {
                Some(point) => axum::Json(json(&service, &point)).into_response(),
                None => json_error(
                    StatusCode::NOT_FOUND,
                    format!(
                        "no forecast of {service}'s {metric} yet: it is learned from each hour of its traffic (a usage metric is forecast only with a capacity limit)"
                    ),
                ),
            }
        }
        None => {
            let list: Vec<serde_json::Value> = f.all().map(|(svc, p)| json(svc, p)).collect();
            axum::Json(serde_json::json!({ "forecasts": list })).into_response()
        }
    }
}
