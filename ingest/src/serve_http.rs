//! Serves an axum router on a [`Listener`] with the limits `axum::serve` does not have: a
//! bound on the time a client may take to send its request headers (slowloris), and the
//! peer (address, client certificate) in each request's extensions as
//! `ConnectInfo<PeerInfo>`. HTTP/1.1 and HTTP/2 (prior knowledge, or by ALPN over TLS).

use crate::listen::{Listener, PeerInfo};
use axum::extract::ConnectInfo;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto::Builder;
use hyper_util::server::graceful::GracefulShutdown;
use std::convert::Infallible;
use std::time::Duration;

/// One connection's service: the router, with the peer put into every request.
#[derive(Clone)]
struct WithPeer {
    router: axum::Router,
    peer: PeerInfo,
}

impl hyper::service::Service<http::Request<hyper::body::Incoming>> for WithPeer {
    type Response = axum::response::Response;
    type Error = Infallible;
    type Future = axum::routing::future::RouteFuture<Infallible>;

    fn call(&self, mut req: http::Request<hyper::body::Incoming>) -> Self::Future {
        req.extensions_mut().insert(ConnectInfo(self.peer));
        tower_service::Service::call(&mut self.router.clone(), req.map(axum::body::Body::new))
    }
}

/// Serves `router` on `listener` until `shutdown` resolves, then lets open requests finish
/// (for at most `drain`).
pub async fn serve(
    mut listener: Listener,
    router: axum::Router,
    header_read_timeout: Duration,
    drain: Duration,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) {
    let mut builder = Builder::new(TokioExecutor::new());
    builder
        .http1()
        .timer(TokioTimer::new())
        .header_read_timeout(header_read_timeout);
    builder.http2().timer(TokioTimer::new());
    let graceful = GracefulShutdown::new();
    tokio::pin!(shutdown);
    loop {
        let conn = tokio::select! {
            c = listener.next() => c,
            _ = &mut shutdown => break,
        };
        let service = WithPeer {
            router: router.clone(),
            peer: conn.peer(),
        };
        let served = builder
            .serve_connection_with_upgrades(TokioIo::new(conn), service)
            .into_owned();
        let watched = graceful.watch(served);
        tokio::spawn(async move {
            // Errors here are the client's (reset, bad request, header timeout): nothing to do.
            let _ = watched.await;
        });
    }
    drop(listener);
    let _ = tokio::time::timeout(drain, graceful.shutdown()).await;
}
