//! Silences over the API (DESIGN §9), in Alertmanager's shape: `POST /api/v1/silences` (write
//! scope) with `{matchers: [{name, value, isRegex, isEqual}], startsAt, endsAt, createdBy,
//! comment}` (also `start`, `end`, `author`) answers `{"silenceID"}`; posting an existing id
//! replaces it. `GET /api/v1/silences` lists them with their status; `DELETE
//! /api/v1/silences/{id}` expires one. In a fleet, the member that takes the call publishes the
//! silence on the fleet's compacted silences topic before it answers; every member reads it.

use super::{AdminState, json_error};
use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use serde_json::{Value, json};
use std::sync::Arc;
use trike_runtime::silences::{Matcher, Silence};
use trike_sinks::{parse_rfc3339, rfc3339};

/// The body of `POST /api/v1/silences`.
#[derive(Debug, serde::Deserialize, serde::Serialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct NewSilence {
    /// Set to replace an existing silence.
    #[serde(default)]
    id: Option<String>,
    matchers: Vec<Matcher>,
    /// Default: now.
    #[serde(default, alias = "start")]
    starts_at: Option<String>,
    #[serde(alias = "end")]
    ends_at: String,
    #[serde(default, alias = "author")]
    created_by: String,
    #[serde(default)]
    comment: String,
}

fn status(s: &Silence, now: u64) -> &'static str {
    if s.active(now) {
        "active"
    } else if now < s.starts_at {
        "pending"
    } else {
        "expired"
    }
}

/// The API's view of one silence.
pub fn silence_json(s: &Silence, now: u64) -> Value {
    json!({
        "id": s.id,
        "matchers": s.matchers,
        "startsAt": rfc3339(s.starts_at),
        "endsAt": rfc3339(s.ends_at),
        "createdBy": s.created_by,
        "comment": s.comment,
        "origin": s.origin,
        "status": { "state": status(s, now) },
    })
}

fn now(s: &AdminState) -> u64 {
    s.worker.clock().now()
}

/// `GET /api/v1/silences`.
pub async fn list(State(s): State<Arc<AdminState>>) -> Response {
    let at = now(&s);
    let all: Vec<Value> = s
        .silences
        .list()
        .iter()
        .map(|x| silence_json(x, at))
        .collect();
    axum::Json(json!({ "silences": all })).into_response()
}

/// Makes `silence` hold: on a fleet, published on the silences topic first (every member
/// reads it, those that start later too), then applied here.
async fn hold(s: &Arc<AdminState>, silence: Silence) -> Result<(), Response> {
    if let Some(log) = s.silence_log.clone() {
        let copy = silence.clone();
        let published = tokio::task::spawn_blocking(move || log.publish(&copy))
            .await
            .map_err(|e| e.to_string())
            .and_then(|r| r);
        if let Err(e) = published {
            return Err(json_error(StatusCode::SERVICE_UNAVAILABLE, e));
        }
        s.silences.apply(silence);
        return Ok(());
    }
    s.silences
        .add(silence, now(s))
        .map_err(|e| json_error(StatusCode::BAD_REQUEST, e.to_string()))
}

/// `POST /api/v1/silences`.
pub async fn create(State(s): State<Arc<AdminState>>, body: String) -> Response {
    let new: NewSilence = match serde_json::from_str(&body) {
        Ok(n) => n,
        Err(e) => {
            return json_error(
                StatusCode::BAD_REQUEST,
                format!(
                    "the body is not a silence ({e}): send {{\"matchers\":[{{\"name\":\"service\",\"value\":\"checkout\"}}],\"endsAt\":\"2026-12-06T04:00:00Z\",\"createdBy\",\"comment\"}}"
                ),
            );
        }
    };
    let at = now(&s);
    let time = |field: &str, v: &str| {
        parse_rfc3339(v)
            .map(|secs| secs * 1_000_000_000)
            .ok_or_else(|| format!("{field}: {v:?} is not an RFC 3339 time"))
    };
    let starts_at = match new.starts_at.as_deref().map(|v| time("startsAt", v)) {
        None => at,
        Some(Ok(t)) => t,
        Some(Err(e)) => return json_error(StatusCode::BAD_REQUEST, e),
    };
    let ends_at = match time("endsAt", &new.ends_at) {
        Ok(t) => t,
        Err(e) => return json_error(StatusCode::BAD_REQUEST, e),
    };
    let id = new.id.clone().unwrap_or_else(|| {
        trike_engine::policy::decision_id(
            "silence",
            &trike_engine::policy::Target {
                service: format!("{:?}", new.matchers),
                version: new.comment.clone(),
                ..Default::default()
            },
            trike_engine::policy::Action::Page,
            at,
        )
    });
    if id.starts_with("maintenance:") {
        return json_error(
            StatusCode::BAD_REQUEST,
            "maintenance windows are the config's (maintenance:): edit it and reload".into(),
        );
    }
    let silence = Silence {
        id: id.clone(),
        matchers: new.matchers.clone(),
        starts_at,
        ends_at,
        created_by: new.created_by.clone(),
        comment: new.comment.clone(),
        origin: "api".into(),
    };
    if let Err(e) = silence.validate() {
        return json_error(StatusCode::BAD_REQUEST, e.to_string());
    }
    if let Err(r) = hold(&s, silence).await {
        return r;
    }
    tracing::info!(%id, created_by = %new.created_by, comment = %new.comment, "silence set");
    axum::Json(json!({ "silenceID": id })).into_response()
}

/// `DELETE /api/v1/silences/{id}`: expires it now.
pub async fn expire(State(s): State<Arc<AdminState>>, Path(id): Path<String>) -> Response {
    let Some(expired) = s.silences.expired(&id, now(&s)) else {
        return json_error(StatusCode::NOT_FOUND, format!("no silence {id}"));
    };
    if let Err(r) = hold(&s, expired).await {
        return r;
    }
    axum::Json(json!({ "expired": id })).into_response()
}
