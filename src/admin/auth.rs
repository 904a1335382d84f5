//! Who may call the admin API (DESIGN §8). `/healthz` and `/readyz` are always open. Once any
//! admin token is configured, every other call needs one:
//! - read scope (every GET and HEAD: `/api…`, `/metrics`, the dashboard; and
//!   `POST /api/v1/query`, which only reads): a read or a write token;
//! - write scope (every other call: state-changing ones): a write token; a read token gets 403.
//!
//! Refusals are 401 with `WWW-Authenticate: Bearer` (403 for a read token on a write call),
//! counted in `trike_auth_refused_total{surface="admin"}`.
//!
//! Browsers cannot put a header on a page they open, so the dashboard is opened once as
//! `/?token=T`: a valid read token is answered with a redirect to `/` and an `HttpOnly`,
//! `SameSite=Strict` cookie that the page's own requests then carry. The cookie grants read
//! scope only, never write (a cookie rides along on forged cross-site requests).

use super::AdminState;
use axum::extract::{Request, State};
use axum::http::{HeaderValue, Method, StatusCode, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use std::sync::Arc;
use trike_ingest::auth::{AuthStats, Refusal, Surface, Tokens, bearer};
use trike_ingest::listen::PeerInfo;

/// The dashboard's cookie.
pub const COOKIE: &str = "trike_token";

/// The admin API's tokens.
#[derive(Debug, Default)]
pub struct AdminAuth {
    /// Read or write tokens (read scope).
    read: Tokens,
    /// Write tokens.
    write: Tokens,
    /// Refusal counters (shared with the receivers).
    pub stats: Arc<AuthStats>,
    /// `tls.client_ca_file` is set: every call but the probes needs a verified client
    /// certificate on its connection.
    client_cert_required: bool,
}

impl AdminAuth {
    /// Admin auth from the configured read and write tokens.
    pub fn new(read: &Tokens, write: &Tokens, stats: Arc<AuthStats>) -> Self {
        Self {
            read: read.union(write),
            write: write.clone(),
            stats,
            client_cert_required: false,
        }
    }

    /// Requires a verified client certificate on every call but `/healthz` and `/readyz`.
    pub fn with_client_certs(mut self, required: bool) -> Self {
        self.client_cert_required = required;
        self
    }

    fn is_open(&self) -> bool {
        self.read.is_open()
    }
}

/// Scope a call needs.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Scope {
    Open,
    Read,
    Write,
}

fn scope_of(method: &Method, path: &str) -> Scope {
    if path == "/healthz" || path == "/readyz" {
        Scope::Open
    } else if method == Method::GET
        || method == Method::HEAD
        || path == "/api/v1/query"
        || path.starts_with("/api/v1/flagger/")
    {
        Scope::Read
    } else {
        Scope::Write
    }
}

fn cookie_token(req: &Request) -> Option<String> {
    req.headers()
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .find_map(|c| {
            let (k, v) = c.trim().split_once('=')?;
            (k == COOKIE).then(|| v.to_string())
        })
}

fn refuse(auth: &AdminAuth, why: Refusal) -> Response {
    auth.stats.refused(Surface::Admin, why);
    let status = match why {
        Refusal::Scope | Refusal::ClientCert => StatusCode::FORBIDDEN,
        Refusal::Missing | Refusal::Invalid => StatusCode::UNAUTHORIZED,
    };
    let mut r = super::json_error(status, why.message().into());
    if status == StatusCode::UNAUTHORIZED {
        r.headers_mut()
            .insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
    }
    r
}

/// The middleware.
pub async fn require(State(s): State<Arc<AdminState>>, req: Request, next: Next) -> Response {
    let auth = &s.auth;
    let scope = scope_of(req.method(), req.uri().path());
    if auth.client_cert_required && scope != Scope::Open {
        // Set by the listener for each connection; absent (a router served some other way)
        // counts as no certificate.
        let verified = req
            .extensions()
            .get::<axum::extract::ConnectInfo<PeerInfo>>()
            .is_some_and(|c| c.0.client_cert);
        if !verified {
            return refuse(auth, Refusal::ClientCert);
        }
    }
    if auth.is_open() || scope == Scope::Open {
        return next.run(req).await;
    }
    // The dashboard's way in: `/?token=T` sets the read cookie.
    if req.uri().path() == "/"
        && let Some(t) = req
            .uri()
            .query()
            .and_then(|q| q.split('&').find_map(|kv| kv.strip_prefix("token=")))
    {
        if !auth.read.accepts(t) {
            return refuse(auth, Refusal::Invalid);
        }
        let cookie = format!("{COOKIE}={t}; HttpOnly; SameSite=Strict; Path=/");
        return match HeaderValue::from_str(&cookie) {
            Ok(v) => (
                StatusCode::SEE_OTHER,
                [
                    (header::LOCATION, HeaderValue::from_static("/")),
                    (header::SET_COOKIE, v),
                ],
            )
                .into_response(),
            Err(_) => refuse(auth, Refusal::Invalid),
        };
    }
    let header_token = req
        .headers()
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(bearer)
        .map(str::to_string);
    let verdict = match (scope, header_token) {
        (Scope::Write, Some(t)) if auth.write.accepts(&t) => Ok(()),
        (Scope::Write, Some(t)) if auth.read.accepts(&t) => Err(Refusal::Scope),
        (Scope::Write, Some(_)) => Err(Refusal::Invalid),
        (Scope::Write, None) => Err(Refusal::Missing),
        (_, Some(t)) if auth.read.accepts(&t) => Ok(()),
        (_, Some(_)) => Err(Refusal::Invalid),
        (_, None) => match cookie_token(&req) {
            Some(t) if auth.read.accepts(&t) => Ok(()),
            Some(_) => Err(Refusal::Invalid),
            None => Err(Refusal::Missing),
        },
    };
    match verdict {
        Ok(()) => next.run(req).await,
        Err(why) => refuse(auth, why),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Table: which calls need which scope.
    #[test]
    fn scopes() {
        for (m, p, want) in [
            (Method::GET, "/healthz", Scope::Open),
            (Method::GET, "/readyz", Scope::Open),
            (Method::GET, "/", Scope::Read),
            (Method::GET, "/metrics", Scope::Read),
            (Method::GET, "/api/v1/slos", Scope::Read),
            (Method::POST, "/api/v1/query", Scope::Read),
            (Method::POST, "/api/v1/reload", Scope::Write),
            (Method::POST, "/api/v1/rollouts", Scope::Write),
            (Method::GET, "/api/v1/rollouts", Scope::Read),
            (Method::DELETE, "/api/v1/silences/x", Scope::Write),
        ] {
            assert_eq!(scope_of(&m, p), want, "{m} {p}");
        }
    }
}
