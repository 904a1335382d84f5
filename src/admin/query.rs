//! `POST /api/v1/query`: SQL text in, JSON rows out (DESIGN §5), over the live tables and the
//! archive, within a row limit (`?limit=N`, default 10 000, at most 100 000) and a time
//! limit (30 s).

use super::{AdminState, json_error};
use axum::extract::{Query, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use std::sync::Arc;
use std::time::Duration;
use trike_sql::query::{Limits, LiveTables};

/// Rows returned at most, whatever `?limit=` asks.
pub const MAX_ROWS: usize = 100_000;
/// A query's time limit.
pub const TIMEOUT: Duration = Duration::from_secs(30);

/// `?limit=N`.
#[derive(Debug, serde::Deserialize)]
pub struct QueryParams {
    limit: Option<usize>,
}

/// Snapshots the live tables: SLIs per series and window, SLO status, recent decisions.
pub fn live_tables(s: &AdminState) -> trike_sql::Result<LiveTables> {
    let decisions = {
        let mut d = s.decisions.recent(None, crate::decide::STORE_CAPACITY);
        d.reverse(); // oldest first
        d
    };
    let engine = s.worker.engine().lock();
    let slos: Vec<_> = s
        .slos
        .iter()
        .map(|slo| trike_engine::slo::evaluate(&engine, slo))
        .collect();
    LiveTables::snapshot(&engine, &slos, &decisions)
}

/// The handler.
pub async fn handler(
    State(s): State<Arc<AdminState>>,
    Query(p): Query<QueryParams>,
    sql: String,
) -> Response {
    if sql.trim().is_empty() {
        return json_error(
            StatusCode::BAD_REQUEST,
            "body: give the SQL text, e.g. SELECT * FROM slis WHERE time_window = '5m'".into(),
        );
    }
    let limits = Limits {
        max_rows: p.limit.unwrap_or(10_000).clamp(1, MAX_ROWS),
        timeout: TIMEOUT,
    };
    let state = s.clone();
    let live = match tokio::task::spawn_blocking(move || live_tables(&state)).await {
        Ok(Ok(l)) => l,
        Ok(Err(e)) => return json_error(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()),
        Err(e) => return json_error(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()),
    };
    let archive = s.archive.as_ref().map(|(dir, _)| dir.as_path());
    let ctx = match trike_sql::query::session(Some(live), archive) {
        Ok(c) => c,
        Err(e) => return json_error(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()),
    };
    match trike_sql::query::run(&ctx, &sql, limits).await {
        Ok(out) => match out.json_rows() {
            Ok(rows) => axum::Json(serde_json::json!({
                "columns": out
                    .batches
                    .first()
                    .map(|b| b.schema().fields().iter().map(|f| f.name().clone()).collect::<Vec<_>>())
                    .unwrap_or_default(),
                "rows": rows,
                "truncated": out.truncated,
            }))
            .into_response(),
            Err(e) => json_error(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()),
        },
        Err(e @ trike_sql::Error::Timeout(_)) => {
            json_error(StatusCode::GATEWAY_TIMEOUT, e.to_string())
        }
        Err(e) => json_error(StatusCode::BAD_REQUEST, e.to_string()),
    }
}
