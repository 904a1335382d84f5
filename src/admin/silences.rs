//! Silences over the API (DESIGN §9), in Alertmanager's shape: `POST /api/v1/silences` (write
//! scope) with `{matchers: [{name, value, isRegex, isEqual}], startsAt, endsAt, createdBy,
//! comment}` (also `start`, `end`, `author`) answers `{"silenceID"}`; posting an existing id
//! replaces it. `GET /api/v1/silences` lists them with their status; `DELETE
//! /api/v1/silences/{id}` expires one. In a fleet, the member that takes the call passes it to
//! every live processor (each decides for its own services).

use super::fleet::FORWARDED;
use super::{AdminState, json_error};
use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use serde_json::{Value, json};
use std::sync::Arc;
use trike_runtime::silences::{Matcher, Silence};
use trike_sinks::{parse_rfc3339, rfc3339};

/// The body of `POST /api/v1/silences`.
#[derive(Debug, serde::Deserialize, serde::Serialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct NewSilence {
    /// Set to replace an existing silence (the fleet's forwarding sets it too).
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

/// Passes a silence call on to every other live processor (best effort: each answers for
/// itself; a processor that is down gets it from nobody, so the answer names it).
async fn to_processors(
    s: &AdminState,
    headers: &HeaderMap,
    method: reqwest::Method,
    path: String,
    body: Option<Vec<u8>>,
) -> Vec<String> {
    let Some(view) = s.fleet.as_ref() else {
        return Vec::new();
    };
    if headers.contains_key(FORWARDED) {
        return Vec::new();
    }
    let me = view.members.me().to_string();
    let mut missed = Vec::new();
    for m in view.processors().into_iter().filter(|m| m.url != me) {
        let answer = super::fleet::ask_with(
            view.client().clone(),
            method.clone(),
            m.url.clone(),
            path.clone(),
            super::fleet::credentials(headers),
            body.clone(),
        )
        .await;
        match answer {
            Ok((status, _)) if status.is_success() => {}
            Ok((status, _)) => missed.push(format!("{}: {status}", m.url)),
            Err(e) => missed.push(e),
        }
    }
    missed
}

/// `POST /api/v1/silences`.
pub async fn create(
    State(s): State<Arc<AdminState>>,
    headers: HeaderMap,
    body: String,
) -> Response {
    let mut new: NewSilence = match serde_json::from_str(&body) {
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
    if let Err(e) = s.silences.add(silence, at) {
        return json_error(StatusCode::BAD_REQUEST, e.to_string());
    }
    tracing::info!(%id, created_by = %new.created_by, comment = %new.comment, "silence set");
    new.id = Some(id.clone());
    let forwarded = serde_json::to_vec(&new).unwrap_or_default();
    let missed = to_processors(
        &s,
        &headers,
        reqwest::Method::POST,
        "/api/v1/silences".into(),
        Some(forwarded),
    )
    .await;
    axum::Json(json!({ "silenceID": id, "not_reached": missed })).into_response()
}

/// `DELETE /api/v1/silences/{id}`: expires it now.
pub async fn expire(
    State(s): State<Arc<AdminState>>,
    headers: HeaderMap,
    Path(id): Path<String>,
) -> Response {
    let found = match s.silences.expire(&id, now(&s)) {
        Ok(found) => found,
        Err(e) => return json_error(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()),
    };
    let missed = to_processors(
        &s,
        &headers,
        reqwest::Method::DELETE,
        format!("/api/v1/silences/{id}"),
        None,
    )
    .await;
    if !found && s.fleet.is_none() {
        return json_error(StatusCode::NOT_FOUND, format!("no silence {id}"));
    }
    axum::Json(json!({ "expired": id, "not_reached": missed })).into_response()
}
