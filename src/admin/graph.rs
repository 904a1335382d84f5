//! `GET /api/v1/graph[?window=5m]` (DESIGN §10): the service graph's edges over a window of at
//! most an hour, and the graph's gauges and counters on `/metrics`. On a fleet every processor
//! holds the edges of the callers it owns; any member merges them (`fleet.rs`).

use super::{AdminState, json_error};
use axum::extract::{Query, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use std::fmt::Write;
use std::sync::Arc;
use trike_engine::Span;
use trike_engine::expo::{gauge, header};

#[derive(Debug, serde::Deserialize)]
pub(super) struct Params {
    #[serde(default)]
    window: Option<String>,
}

/// `{"window","edges":[{"client","server","requests","errors","error_ratio","p99_ms"}]}`.
pub(super) async fn handler(State(s): State<Arc<AdminState>>, Query(p): Query<Params>) -> Response {
    let window = match window_of_the_hour(p.window, "the graph") {
        Ok(w) => w,
        Err(why) => return json_error(StatusCode::BAD_REQUEST, why),
    };
    let edges = {
        let engine = s.worker.engine().lock();
        engine.graph().edges(window, engine.now())
    };
    axum::Json(serde_json::json!({ "window": window.to_string(), "edges": edges })).into_response()
}

/// `trike_graph_edges`, `trike_graph_waiting` and `trike_graph_calls_total{outcome}`. On a
/// gateway, which pairs the halves and holds no edges (its processors do), the pairing's.
pub(super) fn render(s: &AdminState, out: &mut String) {
    let (edges, waiting, st) = match &s.gateway {
        Some(g) => {
            let (st, waiting) = *g.graph.lock();
            (0, waiting, st)
        }
        None => {
            let engine = s.worker.engine().lock();
            let g = engine.graph();
            (g.edge_count(), g.waiting(), g.stats())
        }
    };
    gauge(
        out,
        "trike_graph_edges",
        "Edges (caller, callee) the service graph holds.",
        edges as f64,
    );
    gauge(
        out,
        "trike_graph_waiting",
        "Halves of calls waiting for their other half.",
        waiting as f64,
    );
    let name = "trike_graph_calls_total";
    header(
        out,
        name,
        "Halves of calls by what became of them: paired, counted toward the peer the client names (by_peer), unpaired and dropped, stopped waiting early (evicted; also counted by what became of them), dropped at the edge cap or as too old.",
        "counter",
    );
    for (outcome, v) in [
        ("paired", st.paired),
        ("by_peer", st.by_peer),
        ("unpaired", st.unpaired),
        ("evicted", st.evicted),
        ("dropped", st.dropped),
    ] {
        let _ = writeln!(out, "{name}{{outcome=\"{outcome}\"}} {v}");
    }
    if let Some(log) = &s.cause_log {
        let (c, published) = (
            log.causes(),
            log.stats
                .published
                .load(std::sync::atomic::Ordering::Relaxed),
        );
        let name = "trike_causes_total";
        header(
            out,
            name,
            "A processor's root-cause explanations on the fleet's causes topic: made here, published, received (every processor's, its own included), burns whose walk went on along another processor's explanation and burns held waiting for one (each per decide step and SLO).",
            "counter",
        );
        for (what, v) in [
            ("made", c.made),
            ("published", published),
            ("received", c.received),
            ("extended", c.extended),
            ("held", c.held),
        ] {
            let _ = writeln!(out, "{name}{{what=\"{what}\"}} {v}");
        }
    }
}

/// `?window=` of a view that keeps an hour (default 5m): 1s to 1h; else why not (for a 400),
/// naming `what`.
pub(super) fn window_of_the_hour(text: Option<String>, what: &str) -> Result<Span, String> {
    let text = text.unwrap_or_else(|| "5m".into());
    match text.parse::<Span>() {
        Ok(w) if w.secs() > 0 && w <= Span::hours(1) => Ok(w),
        Ok(_) => Err(format!(
            "window {text:?}: {what} keeps an hour; give 1s to 1h"
        )),
        Err(e) => Err(format!("window {text:?}: {e}")),
    }
}
