//! `POST /api/v1/query`: SQL text in, JSON rows out (DESIGN §5: an array of objects), over the
//! live tables and the archive, within a row limit (`?limit=N`, default 10 000, at most
//! 100 000; header `trike-truncated: true` when cut) and a time limit (30 s). Header
//! `trike-columns` gives the column order.

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

/// Response header: `true` when the rows were cut at the limit.
pub const TRUNCATED: &str = "trike-truncated";
/// Response header: the result's column names, comma-separated, in order.
pub const COLUMNS: &str = "trike-columns";

/// `?limit=N`.
#[derive(Debug, serde::Deserialize)]
pub struct QueryParams {
    limit: Option<usize>,
}

/// Snapshots the live tables: SLIs per series and window, SLO status, recent decisions.
pub fn live_tables(s: &AdminState) -> trike_sql::Result<LiveTables> {
    let decisions = {
        let mut d: Vec<serde_json::Value> = s
            .decisions
            .recent(None, trike_runtime::hooks::outbox::STORE_CAPACITY)
            .iter()
            .map(trike_sinks::ControlEvent::to_value)
            .collect();
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
            // The body is the rows (DESIGN §5: "JSON rows back"); the column order and whether
            // the rows were cut at the limit travel in headers.
            Ok(rows) => {
                let columns = out
                    .batches
                    .first()
                    .map(|b| {
                        b.schema()
                            .fields()
                            .iter()
                            .map(|f| f.name().clone())
                            .collect::<Vec<_>>()
                            .join(",")
                    })
                    .unwrap_or_default();
                let mut resp = axum::Json(rows).into_response();
                let h = resp.headers_mut();
                h.insert(
                    TRUNCATED,
                    axum::http::HeaderValue::from_static(if out.truncated {
                        "true"
                    } else {
                        "false"
                    }),
                );
                if let Ok(v) = axum::http::HeaderValue::from_str(&columns) {
                    h.insert(COLUMNS, v);
                }
                resp
            }
            Err(e) => json_error(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()),
        },
        Err(e @ trike_sql::Error::Timeout(_)) => {
            json_error(StatusCode::GATEWAY_TIMEOUT, e.to_string())
        }
        Err(e) => json_error(StatusCode::BAD_REQUEST, e.to_string()),
    }
}
