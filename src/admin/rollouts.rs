//! Progressive rollouts over the API (DESIGN §9): `POST /api/v1/rollouts` (write scope) starts
//! one, `GET /api/v1/rollouts[?service=S]` shows each rollout's step, verdict and evidence.
//!
//! A start answers once the rollout's first `set_weight` is durable (in the policy checkpoint
//! or the fleet's changelog) and visible at `/api/v1/decisions`: 201 with the rollout, 200
//! when the same versions of the service are already rolling out, 409 when other versions
//! are, 400 for a spec that cannot run. In a fleet, a member that does not own the service
//! passes the call to the processor that does; the list merges every processor's.

use super::fleet::FORWARDED;
use super::{AdminState, json_error};
use axum::extract::{Query, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use serde_json::{Value, json};
use std::sync::Arc;
use std::time::{Duration, Instant};
use trike_engine::rollout::{Rollout, RolloutError, RolloutSpec, Rollouts};
use trike_sinks::rfc3339;

/// How long a start waits for its first decision to be durable.
const ANNOUNCE_WAIT: Duration = Duration::from_secs(5);

/// The API's view of one rollout.
pub fn rollout_json(r: &Rollout) -> Value {
    json!({
        "id": r.id,
        "service": r.spec.service,
        "baseline": r.spec.baseline,
        "canary": r.spec.canary,
        "steps": r.spec.steps,
        "step_min": r.spec.step_min.to_string(),
        "step_max": r.spec.step_max.to_string(),
        "min_requests": r.spec.min_requests,
        "phase": r.phase,
        "step": r.step + 1,
        "weight": r.weight(),
        "verdict": r.verdict,
        "started_at": rfc3339(r.started_at),
        "step_started_at": rfc3339(r.step_started),
        "judged_at": rfc3339(r.judged_at),
        "ended_at": r.ended_at.map(rfc3339),
        "passed": r.passed.iter().map(|s| json!({
            "weight": s.weight,
            "started_at": rfc3339(s.started_at),
            "ended_at": rfc3339(s.ended_at),
            "verdict": s.verdict,
        })).collect::<Vec<_>>(),
        "evidence": r.evidence,
        "decisions": r.decisions,
    })
}

#[derive(Debug, serde::Deserialize)]
pub struct ServiceParam {
    service: Option<String>,
}

/// `GET /api/v1/rollouts[?service=S]`: newest first.
pub async fn list(State(s): State<Arc<AdminState>>, Query(p): Query<ServiceParam>) -> Response {
    let Some(policy) = s.policy.clone() else {
        return axum::Json(json!({ "rollouts": [] })).into_response();
    };
    let service = p.service.filter(|v| !v.is_empty());
    let rollouts: Vec<Value> = {
        let _engine = s.worker.engine().lock();
        let policy = policy.lock();
        policy
            .rollouts()
            .all()
            .iter()
            .rev()
            .filter(|r| service.as_deref().is_none_or(|svc| svc == r.spec.service))
            .map(rollout_json)
            .collect()
    };
    axum::Json(json!({ "rollouts": rollouts })).into_response()
}

/// `POST /api/v1/rollouts` with a [`RolloutSpec`].
pub async fn start(State(s): State<Arc<AdminState>>, headers: HeaderMap, body: String) -> Response {
    let spec: RolloutSpec = match serde_json::from_str(&body) {
        Ok(spec) => spec,
        Err(e) => {
            return json_error(
                StatusCode::BAD_REQUEST,
                format!(
                    "the body is not a rollout ({e}): send {{\"service\",\"baseline\",\"canary\",\"steps\":[5,25,50,100],\"step_min\":\"2m\",\"step_max\":\"15m\"}}"
                ),
            );
        }
    };
    let forwarded = headers.contains_key(FORWARDED);
    let (status, doc) = start_spec(&s, spec, super::fleet::credentials(&headers), forwarded).await;
    (status, axum::Json(doc)).into_response()
}

/// Starts the rollout `spec` here, or at the processor that owns its service (with `creds`);
/// the status and document `POST /api/v1/rollouts` answers.
pub async fn start_spec(
    s: &Arc<AdminState>,
    spec: RolloutSpec,
    creds: Vec<(axum::http::HeaderName, axum::http::HeaderValue)>,
    forwarded: bool,
) -> (StatusCode, Value) {
    let error = |status: StatusCode, message: String| (status, json!({ "error": message }));
    if let Err(e) = spec.validate() {
        return error(StatusCode::BAD_REQUEST, e.to_string());
    }
    if let Some(view) = s.fleet.as_ref()
        && !forwarded
    {
        match view.members.owner_of(&spec.service) {
            Some(owner) if owner.url != view.members.me() => {
                let body = serde_json::to_vec(&spec).unwrap_or_default();
                let answer = super::fleet::ask_with(
                    view.client().clone(),
                    reqwest::Method::POST,
                    owner.url.clone(),
                    "/api/v1/rollouts".into(),
                    creds,
                    Some(body),
                )
                .await;
                return match answer.and_then(|(status, body)| {
                    serde_json::from_slice(&body)
                        .map(|doc| (status, doc))
                        .map_err(|e| e.to_string())
                }) {
                    Ok(x) => x,
                    Err(e) => error(
                        StatusCode::BAD_GATEWAY,
                        format!(
                            "the processor that owns {} did not answer: {e}",
                            spec.service
                        ),
                    ),
                };
            }
            Some(_) => {}
            None if s.policy.is_none() => {
                return error(
                    StatusCode::SERVICE_UNAVAILABLE,
                    format!(
                        "no processor owns {} yet: retry once the fleet's processors have joined",
                        spec.service
                    ),
                );
            }
            None => {}
        }
    }
    let Some(policy) = s.policy.clone() else {
        return error(
            StatusCode::SERVICE_UNAVAILABLE,
            "this member runs no policy (a gateway): send rollouts to a processor".into(),
        );
    };
    let started = {
        let engine = s.worker.engine().lock();
        let mut policy = policy.lock();
        policy
            .start_rollout(spec, engine.now())
            .map(|(r, created)| (r.clone(), created))
    };
    let (rollout, created) = match started {
        Ok(x) => x,
        Err(e @ RolloutError::Overlap { .. }) => return error(StatusCode::CONFLICT, e.to_string()),
        Err(e) => return error(StatusCode::BAD_REQUEST, e.to_string()),
    };
    // The first set_weight is decided at the next evaluation (every 200 ms) and reaches the
    // decision store only once it is durable: answer after that.
    let first = Rollouts::first_decision_id(&rollout);
    let waited = Instant::now();
    let mut announced = false;
    while waited.elapsed() < ANNOUNCE_WAIT {
        if s.decisions
            .recent(Some(&rollout.spec.service), 50)
            .iter()
            .any(|e| e.id == first)
        {
            announced = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let current = {
        let _engine = s.worker.engine().lock();
        let policy = policy.lock();
        policy
            .rollouts()
            .all()
            .iter()
            .find(|r| r.id == rollout.id)
            .cloned()
            .unwrap_or(rollout)
    };
    let mut doc = rollout_json(&current);
    doc["announced"] = announced.into();
    let status = match (created, announced) {
        (true, true) => StatusCode::CREATED,
        (true, false) => StatusCode::ACCEPTED,
        (false, _) => StatusCode::OK,
    };
    (status, doc)
}
