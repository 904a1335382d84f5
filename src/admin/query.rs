//! `POST /api/v1/query`: SQL text in, JSON rows out (DESIGN §5: an array of objects), over the
//! live tables and the archive. Read-only (DESIGN §8): anything but a query is refused with 400
//! naming the statement, before planning. Within `query:` limits: rows (`?limit=N` asks for
//! fewer; header `trike-truncated: true` when cut), wall time (504), memory (400 saying so) and
//! queries at once (429 with `Retry-After`). Queries run on their own threads, never on the
//! runtime that serves ingestion. Header `trike-columns` gives the column order.

use super::{AdminState, json_error};
use axum::extract::{Query, State};
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use tokio::sync::Semaphore;
use trike_sql::query::{Limits, LiveTables, QueryConfig};

/// Threads the query runtime has.
pub const QUERY_THREADS: usize = 2;

/// Response header: `true` when the rows were cut at the limit.
pub const TRUNCATED: &str = "trike-truncated";
/// Response header: the result's column names, comma-separated, in order.
pub const COLUMNS: &str = "trike-columns";
/// Response header, in a fleet: the processors whose live tables are missing from the answer.
pub const UNREACHABLE: &str = "trike-unreachable";

/// The query service: its limits, the gate on queries at once, and the threads queries run on.
#[derive(Debug)]
pub struct QueryService {
    /// The limits.
    pub config: QueryConfig,
    permits: Arc<Semaphore>,
    runtime: Option<tokio::runtime::Runtime>,
    /// Queries running now.
    pub running: Arc<AtomicU64>,
    /// Queries refused, by reason (index: position in [`REFUSALS`]).
    pub refused: [AtomicU64; 4],
}

/// Why a query is refused, in `/metrics` order.
pub const REFUSALS: [&str; 4] = ["busy", "statement", "memory", "timeout"];

impl QueryService {
    /// A service with `config`'s limits and its own runtime (`trike-query` threads).
    pub fn new(config: QueryConfig) -> std::io::Result<Self> {
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(QUERY_THREADS)
            .thread_name("trike-query")
            .enable_all()
            .build()?;
        Ok(Self {
            permits: Arc::new(Semaphore::new(config.max_concurrent)),
            config,
            runtime: Some(runtime),
            running: Default::default(),
            refused: Default::default(),
        })
    }

    fn refuse(&self, reason: &str) {
        if let Some(i) = REFUSALS.iter().position(|r| *r == reason) {
            self.refused[i].fetch_add(1, Relaxed);
        }
    }

    /// Renders the query families.
    pub fn render(&self, out: &mut String) {
        use std::fmt::Write;
        trike_engine::expo::gauge(
            out,
            "trike_query_running",
            "SQL queries running now.",
            self.running.load(Relaxed) as f64,
        );
        let name = "trike_query_refused_total";
        trike_engine::expo::header(out, name, "SQL queries refused, by reason.", "counter");
        for (i, r) in REFUSALS.iter().enumerate() {
            let v = self.refused[i].load(Relaxed);
            let _ = writeln!(out, "{name}{{reason=\"{r}\"}} {v}");
        }
    }
}

impl Drop for QueryService {
    fn drop(&mut self) {
        // Dropped wherever the admin state goes last, possibly inside async code: never block.
        if let Some(rt) = self.runtime.take() {
            rt.shutdown_background();
        }
    }
}

/// Counts a running query for as long as it lives.
struct Running(Arc<AtomicU64>);

impl Drop for Running {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Relaxed);
    }
}

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
    // In a fleet, an SLO's status is its owner's (the others hold none of its data).
    let mine = |service: &str| {
        s.fleet.as_ref().is_none_or(|v| {
            v.members
                .owner_of(service)
                .is_none_or(|o| o.url == v.members.me())
        })
    };
    let slos: Vec<_> = s
        .rules()
        .slos
        .iter()
        .filter(|slo| mine(&slo.service))
        .map(|slo| trike_engine::slo::evaluate(&engine, slo))
        .collect();
    LiveTables::snapshot(&engine, &slos, &decisions)
}

/// `GET /api/v1/query/live`: this member's live `slis` and `slo_status` for another fleet
/// member's SQL (see `trike_sql::fleet`).
pub async fn live_handler(State(s): State<Arc<AdminState>>) -> Response {
    let state = s.clone();
    let encoded = tokio::task::spawn_blocking(move || {
        live_tables(&state).and_then(|l| trike_sql::fleet::encode(&l))
    })
    .await;
    match encoded {
        Ok(Ok(bytes)) => (
            [(header::CONTENT_TYPE, trike_sql::fleet::CONTENT_TYPE)],
            bytes,
        )
            .into_response(),
        Ok(Err(e)) => json_error(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()),
        Err(e) => json_error(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()),
    }
}

/// The handler.
pub async fn handler(
    State(s): State<Arc<AdminState>>,
    Query(p): Query<QueryParams>,
    headers: axum::http::HeaderMap,
    sql: String,
) -> Response {
    if sql.trim().is_empty() {
        return json_error(
            StatusCode::BAD_REQUEST,
            "body: give the SQL text, e.g. SELECT * FROM slis WHERE time_window = '5m'".into(),
        );
    }
    let q = &s.query;
    // Statements are checked before anything else is spent on them.
    if let Err(e) = trike_sql::query::guard::check(&sql) {
        q.refuse("statement");
        return json_error(StatusCode::BAD_REQUEST, e.to_string());
    }
    let Ok(permit) = q.permits.clone().try_acquire_owned() else {
        q.refuse("busy");
        let mut r = json_error(
            StatusCode::TOO_MANY_REQUESTS,
            format!(
                "{} queries are running (query.max_concurrent); retry shortly",
                q.config.max_concurrent
            ),
        );
        r.headers_mut().insert(
            header::RETRY_AFTER,
            axum::http::HeaderValue::from_static("1"),
        );
        return r;
    };
    q.running.fetch_add(1, Relaxed);
    let running = Running(q.running.clone());
    let limits = Limits {
        max_rows: p
            .limit
            .unwrap_or(q.config.max_rows)
            .clamp(1, q.config.max_rows),
        timeout: q.config.timeout,
    };
    // On a fleet member, the live tables are the whole fleet's.
    let mut unreachable = Vec::new();
    let live = match s.fleet.as_ref() {
        Some(view) if !headers.contains_key(super::fleet::FORWARDED) => {
            match super::fleet::live_tables(&s, view, &headers).await {
                Ok((l, missing)) => {
                    unreachable = missing;
                    l
                }
                Err(e) => return json_error(StatusCode::BAD_GATEWAY, e),
            }
        }
        _ => {
            let state = s.clone();
            match tokio::task::spawn_blocking(move || live_tables(&state)).await {
                Ok(Ok(l)) => l,
                Ok(Err(e)) => return json_error(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()),
                Err(e) => return json_error(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()),
            }
        }
    };
    let archive = s.archive.as_ref().map(|(dir, _)| dir.clone());
    let memory_limit = q.config.memory_limit;
    let Some(rt) = q.runtime.as_ref() else {
        return json_error(StatusCode::SERVICE_UNAVAILABLE, "shutting down".into());
    };
    let mut task = rt.spawn(async move {
        let _held = (permit, running);
        let ctx = trike_sql::query::session_limited(Some(live), archive.as_deref(), memory_limit)?;
        trike_sql::query::run(&ctx, &sql, limits).await
    });
    // The query enforces its own time limit wherever its plan yields; this guard, on the admin
    // runtime, answers on time even when a plan does not (the task is aborted at its next
    // yield; until then it holds one of the query threads, never an ingest one).
    let guard = limits.timeout + std::time::Duration::from_secs(1);
    let result = match tokio::time::timeout(guard, &mut task).await {
        Ok(r) => r,
        Err(_) => {
            task.abort();
            Ok(Err(trike_sql::Error::Timeout(limits.timeout)))
        }
    };
    let out = match result {
        Ok(Ok(out)) => out,
        Ok(Err(e @ trike_sql::Error::Timeout(_))) => {
            q.refuse("timeout");
            return json_error(StatusCode::GATEWAY_TIMEOUT, e.to_string());
        }
        Ok(Err(e @ trike_sql::Error::OverMemory(_))) => {
            q.refuse("memory");
            return json_error(StatusCode::BAD_REQUEST, e.to_string());
        }
        Ok(Err(e @ trike_sql::Error::Refused(_))) => {
            q.refuse("statement");
            return json_error(StatusCode::BAD_REQUEST, e.to_string());
        }
        Ok(Err(e)) => return json_error(StatusCode::BAD_REQUEST, e.to_string()),
        Err(e) => return json_error(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()),
    };
    match out.json_rows() {
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
                axum::http::HeaderValue::from_static(if out.truncated { "true" } else { "false" }),
            );
            if let Ok(v) = axum::http::HeaderValue::from_str(&columns) {
                h.insert(COLUMNS, v);
            }
            if !unreachable.is_empty()
                && let Ok(v) = axum::http::HeaderValue::from_str(&unreachable.join(", "))
            {
                h.insert(UNREACHABLE, v);
            }
            resp
        }
        Err(e) => json_error(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()),
    }
}
