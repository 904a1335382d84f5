//! The canary verdict for the delivery tools SRE teams run (DESIGN §9): Argo Rollouts' web
//! metric provider (`GET /api/v1/analysis`) and Flagger's webhooks
//! (`POST /api/v1/flagger/rollout`, `POST /api/v1/flagger/confirm-promotion`).
//!
//! Both ask the canary judge of `/api/v1/canaries` about one canary version of one service:
//! with the thresholds of a configured `canary:` entry for it when there is one, else the
//! judge's defaults; against the given baseline, else the configured one, else the version of
//! the service carrying the most traffic over the judge's window. The analysis answers 200
//! whatever happens (a non-2xx is an *Error* to Argo, which retries and then aborts with no
//! reason shown; a body with `"verdict": "inconclusive"` and an `"error"` says why). In a fleet,
//! a member that does not hold the service asks the processor that owns it.

use super::AdminState;
use super::fleet::{FORWARDED, FleetView};
use axum::extract::{Query, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use serde_json::{Value, json};
use std::sync::Arc;
use trike_engine::canary::{CanarySpec, judge};

/// `?service=S&canary=V[&baseline=B]`.
#[derive(Debug, Default, serde::Deserialize)]
pub struct Target {
    service: Option<String>,
    canary: Option<String>,
    baseline: Option<String>,
}

/// What a verdict answers when none could be reached.
fn inconclusive(t: &Target, error: String) -> Value {
    json!({
        "service": t.service,
        "baseline": t.baseline,
        "canary": t.canary,
        "verdict": "inconclusive",
        "score": 0.0,
        "evidence": [],
        "error": error,
    })
}

/// Judges `canary` of `service` on this member's engine.
fn judge_here(
    s: &AdminState,
    engine: &trike_engine::Engine,
    service: &str,
    canary: &str,
    baseline: Option<&str>,
) -> Value {
    let rules = s.rules();
    let configured = rules
        .canaries
        .iter()
        .find(|c| {
            !c.detect
                && c.service == service
                && c.canary == canary
                && baseline.is_none_or(|b| b == c.baseline)
        })
        .or_else(|| {
            rules
                .canaries
                .iter()
                .find(|c| c.detect && c.service == service)
        });
    let mut spec = configured
        .cloned()
        .unwrap_or_else(|| CanarySpec::new(service, "", canary));
    let busiest = || {
        engine
            .version_slis(Some(service), spec.window)
            .unwrap_or_default()
            .into_iter()
            .filter(|v| v.version.as_deref().is_some_and(|v| v != canary) && v.requests > 0)
            .max_by_key(|v| v.requests)
            .and_then(|v| v.version)
    };
    let baseline = match baseline.map(str::to_string) {
        Some(b) => Some(b),
        None if configured.is_some_and(|c| !c.detect) => Some(spec.baseline.clone()),
        None => busiest(),
    };
    let Some(baseline) = baseline else {
        return inconclusive(
            &Target {
                service: Some(service.into()),
                canary: Some(canary.into()),
                baseline: None,
            },
            format!(
                "no baseline: give &baseline=, or send traffic of another version of {service}"
            ),
        );
    };
    spec.baseline = baseline;
    let r = judge(engine, &spec);
    json!({
        "service": r.service,
        "baseline": r.baseline,
        "canary": r.canary,
        "verdict": r.verdict,
        "score": r.score,
        "window": spec.window.to_string(),
        "evidence": r.metrics,
    })
}

/// The verdict document for `t`: judged here, or by the processor that owns the service.
async fn verdict(s: &Arc<AdminState>, t: Target, headers: &HeaderMap) -> Value {
    let (Some(service), Some(canary)) = (
        t.service.clone().filter(|v| !v.is_empty()),
        t.canary.clone().filter(|v| !v.is_empty()),
    ) else {
        return inconclusive(
            &t,
            "give the service and the canary version: ?service=S&canary=V[&baseline=B]".into(),
        );
    };
    if let Some(view) = s.fleet.as_ref()
        && !headers.contains_key(FORWARDED)
        && let Some(owner) = view.members.owner_of(&service)
        && owner.url != view.members.me()
    {
        return ask_owner(view, &owner.url, &t, headers).await;
    }
    let baseline = t.baseline.clone().filter(|v| !v.is_empty());
    let s = s.clone();
    tokio::task::spawn_blocking(move || {
        let engine = s.worker.engine().lock();
        judge_here(&s, &engine, &service, &canary, baseline.as_deref())
    })
    .await
    .unwrap_or_else(|e| inconclusive(&t, format!("the judge failed: {e}")))
}

async fn ask_owner(view: &FleetView, url: &str, t: &Target, headers: &HeaderMap) -> Value {
    let mut query = vec![
        ("service", t.service.clone().unwrap_or_default()),
        ("canary", t.canary.clone().unwrap_or_default()),
    ];
    if let Some(b) = t.baseline.clone().filter(|b| !b.is_empty()) {
        query.push(("baseline", b));
    }
    let Ok(target) = reqwest::Url::parse_with_params("http://owner/api/v1/analysis", &query) else {
        return inconclusive(t, "the analysis query could not be encoded".into());
    };
    let path_and_query = format!("{}?{}", target.path(), target.query().unwrap_or_default());
    let answer = super::fleet::ask(
        view.client().clone(),
        url.to_string(),
        path_and_query,
        super::fleet::credentials(headers),
    )
    .await;
    match answer.and_then(|(_, body)| serde_json::from_slice(&body).map_err(|e| e.to_string())) {
        Ok(v) => v,
        Err(e) => inconclusive(
            t,
            format!("the processor that owns the service did not answer: {e}"),
        ),
    }
}

/// `GET /api/v1/analysis`: Argo Rollouts' web metric provider (`jsonPath: "{$.verdict}"`).
pub async fn analysis_handler(
    State(s): State<Arc<AdminState>>,
    headers: HeaderMap,
    Query(t): Query<Target>,
) -> Response {
    axum::Json(verdict(&s, t, &headers).await).into_response()
}

/// Flagger's webhook payload: `{name, namespace, phase, metadata}`.
#[derive(Debug, Default, serde::Deserialize)]
pub struct FlaggerHook {
    #[serde(default)]
    name: String,
    #[serde(default)]
    namespace: String,
    #[serde(default)]
    phase: String,
    #[serde(default)]
    metadata: std::collections::BTreeMap<String, String>,
}

/// Which way a Flagger hook answers.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Hook {
    /// `rollout`: go on unless the canary fails.
    Rollout,
    /// `confirm-promotion`: only on a pass.
    ConfirmPromotion,
}

async fn flagger(s: Arc<AdminState>, headers: HeaderMap, body: &[u8], hook: Hook) -> Response {
    let payload: FlaggerHook = match serde_json::from_slice(body) {
        Ok(p) => p,
        Err(e) => {
            return super::json_error(
                StatusCode::BAD_REQUEST,
                format!(
                    "not a Flagger webhook payload ({{name, namespace, phase, metadata}}): {e}"
                ),
            );
        }
    };
    let m = &payload.metadata;
    let t = Target {
        service: m
            .get("service")
            .cloned()
            .or_else(|| (!payload.name.is_empty()).then(|| payload.name.clone())),
        canary: m.get("canary").cloned(),
        baseline: m.get("baseline").cloned(),
    };
    let mut doc = verdict(&s, t, &headers).await;
    let v = doc["verdict"]
        .as_str()
        .unwrap_or("inconclusive")
        .to_string();
    let go = match hook {
        Hook::Rollout => v != "fail",
        Hook::ConfirmPromotion => v == "pass",
    };
    doc["canary_resource"] = json!({
        "name": payload.name,
        "namespace": payload.namespace,
        "phase": payload.phase,
    });
    let status = if go {
        StatusCode::OK
    } else {
        StatusCode::CONFLICT
    };
    (status, axum::Json(doc)).into_response()
}

/// `POST /api/v1/flagger/rollout`: 200 while the canary is not failing, 409 when it fails.
pub async fn flagger_rollout(
    State(s): State<Arc<AdminState>>,
    headers: HeaderMap,
    body: axum::body::Bytes,
) -> Response {
    flagger(s, headers, &body, Hook::Rollout).await
}

/// `POST /api/v1/flagger/confirm-promotion`: 200 only when the canary passes.
pub async fn flagger_confirm_promotion(
    State(s): State<Arc<AdminState>>,
    headers: HeaderMap,
    body: axum::body::Bytes,
) -> Response {
    flagger(s, headers, &body, Hook::ConfirmPromotion).await
}
