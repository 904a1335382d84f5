//! Admin HTTP API on `127.0.0.1:8480`: health, readiness, Prometheus metrics, SLI JSON.

mod prom;
mod rfc3339;
mod slis;

pub use rfc3339::rfc3339;

use crate::worker::EngineWorker;
use axum::Router;
use axum::extract::{Query, State};
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering::Relaxed};
use trike_engine::Span;
use trike_ingest::IngestMetrics;

/// What the admin handlers read.
#[derive(Debug)]
pub struct AdminState {
    /// The engine thread (and the engine behind it).
    pub worker: EngineWorker,
    /// Ingestion counters.
    pub ingest: Arc<IngestMetrics>,
    /// Set once every listener is bound.
    pub ready: AtomicBool,
    /// Windows exported as SLI gauges.
    pub metrics_windows: Vec<Span>,
    /// Services exported as SLI gauges, at most.
    pub metrics_max_services: usize,
}

/// The admin routes.
pub fn router(state: Arc<AdminState>) -> Router {
    Router::new()
        .route("/", get(index))
        .route("/healthz", get(|| async { "ok\n" }))
        .route("/readyz", get(readyz))
        .route("/metrics", get(metrics))
        .route("/api/v1/slis", get(slis_handler))
        .with_state(state)
}

async fn index() -> impl IntoResponse {
    "Trike admin API\n\n\
     GET /healthz                          liveness\n\
     GET /readyz                           readiness (receivers bound, engine running)\n\
     GET /metrics                          Prometheus text\n\
     GET /api/v1/slis?service=S&window=5m  SLIs per series (JSON)\n"
}

async fn readyz(State(s): State<Arc<AdminState>>) -> Response {
    if !s.ready.load(Relaxed) {
        return (
            StatusCode::SERVICE_UNAVAILABLE,
            "starting: receivers are not bound yet\n",
        )
            .into_response();
    }
    if !s.worker.is_alive() {
        return (
            StatusCode::SERVICE_UNAVAILABLE,
            "engine thread has stopped\n",
        )
            .into_response();
    }
    (StatusCode::OK, "ready\n").into_response()
}

async fn metrics(State(s): State<Arc<AdminState>>) -> Response {
    let body = prom::render(&s);
    (
        [(
            header::CONTENT_TYPE,
            "text/plain; version=0.0.4; charset=utf-8",
        )],
        body,
    )
        .into_response()
}

#[derive(Debug, serde::Deserialize)]
struct SliParams {
    service: Option<String>,
    window: Option<String>,
}

fn json_error(status: StatusCode, message: String) -> Response {
    (status, axum::Json(serde_json::json!({ "error": message }))).into_response()
}

async fn slis_handler(State(s): State<Arc<AdminState>>, Query(p): Query<SliParams>) -> Response {
    let window: Span = match p.window.as_deref().unwrap_or("5m").parse() {
        Ok(w) => w,
        Err(e) => return json_error(StatusCode::BAD_REQUEST, format!("window: {e}")),
    };
    // `?service=` (empty) means every service.
    let service = p.service.filter(|s| !s.is_empty());
    match slis::document(&s.worker.engine().lock(), service, window) {
        Ok(doc) => axum::Json(doc).into_response(),
        Err(e) => json_error(StatusCode::BAD_REQUEST, e.to_string()),
    }
}
