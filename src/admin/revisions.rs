//! `GET /api/v1/revisions[/{revision}]`: the rule sets behind decisions' `policy_revision`.
//! The running one is always known; earlier ones are read from the archive's `revisions/`
//! directory (one canonical JSON file per revision, written when a processor starts).

use super::{AdminState, json_error};
use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use std::sync::Arc;

/// The archive's sub-directory of rule sets.
pub const DIR: &str = "revisions";
/// Revisions listed at most.
const MAX_LISTED: usize = 1000;

/// Writes the rule set's text to `archive/revisions/<revision>.json` (atomically; a file that
/// exists already holds the same text, since the name is its hash).
pub fn archive(archive: &std::path::Path, revision: &str, text: &str) -> std::io::Result<()> {
    let dir = archive.join(DIR);
    std::fs::create_dir_all(&dir)?;
    let path = dir.join(format!("{revision}.json"));
    if path.exists() {
        return Ok(());
    }
    trike_runtime::checkpoint::write_atomic(&path, text.as_bytes())
}

fn archived(s: &AdminState) -> Vec<String> {
    let Some((dir, _)) = &s.archive else {
        return Vec::new();
    };
    let Ok(entries) = std::fs::read_dir(dir.join(DIR)) else {
        return Vec::new();
    };
    let mut out: Vec<String> = entries
        .filter_map(|e| e.ok())
        .filter_map(|e| {
            let name = e.file_name().into_string().ok()?;
            let rev = name.strip_suffix(".json")?;
            crate::config::revision::is_revision(rev).then(|| rev.to_string())
        })
        .take(MAX_LISTED)
        .collect();
    out.sort();
    out
}

/// `GET /api/v1/revisions`: `{"current", "revisions": [...], "reloads": [...]}` (the last
/// reload attempts, newest first: trigger, time, applied or refused with the problems).
pub async fn list(State(s): State<Arc<AdminState>>) -> Response {
    let s2 = s.clone();
    let mut revisions = tokio::task::spawn_blocking(move || archived(&s2))
        .await
        .unwrap_or_default();
    let earlier = s
        .reloader
        .as_ref()
        .map(|r| r.earlier_revisions())
        .unwrap_or_default();
    for r in earlier.into_iter().chain([s.rules().revision.clone()]) {
        if !revisions.contains(&r) {
            revisions.push(r);
        }
    }
    revisions.sort();
    let reloads = s
        .reloader
        .as_ref()
        .map(|r| r.attempts())
        .unwrap_or_default();
    axum::Json(serde_json::json!({
        "current": s.rules().revision,
        "revisions": revisions,
        "reloads": reloads,
    }))
    .into_response()
}

/// `GET /api/v1/revisions/{revision}`: `{"revision", "current", "rule_set"}`, or 404.
pub async fn show(State(s): State<Arc<AdminState>>, Path(revision): Path<String>) -> Response {
    if !crate::config::revision::is_revision(&revision) {
        return json_error(
            StatusCode::BAD_REQUEST,
            format!("revision: {revision:?} is not a revision (16 hex digits)"),
        );
    }
    let text = if revision == s.rules().revision {
        Some(s.rules().rule_set.clone())
    } else if let Some(t) = s.reloader.as_ref().and_then(|r| r.earlier(&revision)) {
        Some(t)
    } else {
        s.archive.as_ref().and_then(|(dir, _)| {
            std::fs::read_to_string(dir.join(DIR).join(format!("{revision}.json"))).ok()
        })
    };
    match text.and_then(|t| serde_json::from_str::<serde_json::Value>(&t).ok()) {
        Some(rule_set) => axum::Json(serde_json::json!({
            "revision": revision,
            "current": revision == s.rules().revision,
            "rule_set": rule_set,
        }))
        .into_response(),
        None => json_error(
            StatusCode::NOT_FOUND,
            format!("revision {revision}: not the running rule set, nor in the archive"),
        ),
    }
}
