//! `trike actuate`'s admin server (`actuator.admin`): `/healthz` (200 while the actuator's
//! loop runs and turned in the last 10 s, else 503: a supervisor restarts it) and `/metrics`
//! (its counters and the decision-to-outcome latency, see `trike_actuate::live`).

use axum::http::{StatusCode, header};
use axum::response::IntoResponse;
use std::sync::Arc;
use trike_actuate::live::Live;

/// Serves on `addr` (in the background); returns the bound address.
pub async fn serve(
    addr: std::net::SocketAddr,
    live: Arc<Live>,
) -> std::io::Result<std::net::SocketAddr> {
    let listener = tokio::net::TcpListener::bind(addr).await?;
    let bound = listener.local_addr()?;
    let (health, metrics) = (live.clone(), live);
    let app = axum::Router::new()
        .route(
            "/healthz",
            axum::routing::get(move || {
                let live = health.clone();
                async move {
                    if live.healthy() {
                        (StatusCode::OK, "ok\n")
                    } else {
                        (
                            StatusCode::SERVICE_UNAVAILABLE,
                            "the actuator's loop is not running\n",
                        )
                    }
                }
            }),
        )
        .route(
            "/metrics",
            axum::routing::get(move || {
                let live = metrics.clone();
                async move {
                    (
                        [(header::CONTENT_TYPE, "text/plain; version=0.0.4")],
                        live.render(),
                    )
                        .into_response()
                }
            }),
        );
    tokio::spawn(async move { axum::serve(listener, app).await });
    Ok(bound)
}
