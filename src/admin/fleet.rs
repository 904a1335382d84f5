//! One API for the whole fleet (DESIGN §6). On a gateway or a processor, a question about one
//! service (`?service=NAME` on `/api/v1/slis`, `slos`, `gate`, `canaries`, `history`) is
//! answered by the processor that owns the service's partition: asked elsewhere, the request
//! is passed to it (with the caller's credentials) and its answer returned as is. A list (the
//! same paths without a service, and `/api/v1/decisions`) is gathered from every live
//! processor and merged; members that did not answer are named in `"unreachable"`.
//! `/api/v1/fleet` lists the members, their partitions and lag.
//!
//! A forwarded request carries [`FORWARDED`], and is answered where it lands: no loops.

use super::AdminState;
use axum::extract::{Request, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use serde_json::Value;
use std::sync::Arc;
use std::time::Duration;
use trike_runtime::fleet::members::{Member, Members};

/// Marks a request one member passed to another.
pub const FORWARDED: &str = "x-trike-forwarded";

/// What the admin API knows of the fleet.
#[derive(Debug)]
pub struct FleetView {
    /// The directory.
    pub members: Arc<Members>,
    client: reqwest::Client,
}

impl FleetView {
    /// The live processors.
    pub(super) fn processors(&self) -> Vec<Member> {
        self.members
            .live()
            .into_iter()
            .filter(|m| m.role == "processor")
            .collect()
    }

    /// A view over `members`, asking them with `client` (see [`member_client`]).
    pub fn new(members: Arc<Members>, client: reqwest::Client) -> Self {
        Self { members, client }
    }

    /// The client that asks other members.
    pub fn client(&self) -> &reqwest::Client {
        &self.client
    }
}

/// The client one member asks another's admin API with. Without `tls:` the members speak
/// plain HTTP. Under `tls:` they speak HTTPS, and the client trusts `fleet.ca_file`, else
/// `tls.client_ca_file` (in an mTLS fleet, the CA that issues the members' certificates), else
/// the system's roots; it presents this member's own certificate and key (`tls.cert_file`,
/// `tls.key_file`, which must then allow client authentication too, as cert-manager's
/// `usages: [server auth, client auth]` does) when the admin API requires client certificates
/// (`tls.client_ca_file`); and it checks the other member's certificate against
/// `fleet.server_name` when set, instead of the address in its URL.
pub fn member_client(
    tls: Option<&trike_ingest::tls::TlsFiles>,
    fleet: &crate::config::fleet::FleetConfig,
) -> anyhow::Result<reqwest::Client> {
    let b = reqwest::Client::builder().timeout(Duration::from_secs(10));
    let ca = match (&fleet.ca_file, tls.and_then(|t| t.client_ca_file.as_ref())) {
        (Some(ca), _) => Some((ca, "fleet.ca_file")),
        (None, Some(ca)) => Some((ca, "tls.client_ca_file")),
        (None, None) => None,
    };
    let b = match (tls, ca) {
        (Some(_), Some((ca, field))) => b.tls_backend_preconfigured(
            trike_ingest::tls::member_client_config(tls, ca, field, fleet.server_name.as_deref())?,
        ),
        (Some(_), None) => {
            anyhow::ensure!(
                fleet.server_name.is_none(),
                "fleet.server_name: needs a CA to check it with (fleet.ca_file or tls.client_ca_file)"
            );
            b
        }
        (None, _) => {
            anyhow::ensure!(
                fleet.server_name.is_none() && fleet.ca_file.is_none(),
                "fleet.ca_file, fleet.server_name: need tls: (without it the members speak plain HTTP)"
            );
            b
        }
    };
    Ok(b.build()?)
}

/// The paths a service's owner answers, and the list each one returns.
fn list_key(path: &str) -> Option<&'static str> {
    Some(match path {
        "/api/v1/slis" => "series",
        "/api/v1/slos" => "slos",
        "/api/v1/gate" => "gates",
        "/api/v1/canaries" => "canaries",
        "/api/v1/history" => "history",
        "/api/v1/decisions" => "decisions",
        "/api/v1/rollouts" => "rollouts",
        "/api/v1/exemplars" => "exemplars",
        "/api/v1/anomalies" => "anomalies",
        "/api/v1/forecast" => "forecasts",
        "/api/v1/graph" => "edges",
        "/api/v1/regions" => "regions",
        "/api/v1/cost" => "costs",
        "/api/v1/usage" => "usage",
        _ => return None,
    })
}

/// A query string's parameters, decoded as the handlers' `Query` extractor decodes them.
fn params(query: Option<&str>) -> std::collections::HashMap<String, String> {
    query
        .and_then(|q| axum::http::Uri::try_from(format!("/?{q}")).ok())
        .and_then(|u| axum::extract::Query::try_from_uri(&u).ok())
        .map(|axum::extract::Query(m)| m)
        .unwrap_or_default()
}

fn service_of(query: Option<&str>) -> Option<String> {
    params(query).remove("service").filter(|v| !v.is_empty())
}

/// The caller's credentials, passed on (a bearer token, or the dashboard's cookie).
pub(super) fn credentials(h: &HeaderMap) -> Vec<(header::HeaderName, HeaderValue)> {
    [header::AUTHORIZATION, header::COOKIE]
        .into_iter()
        .filter_map(|n| h.get(&n).map(|v| (n, v.clone())))
        .collect()
}

pub(super) async fn ask(
    client: reqwest::Client,
    url: String,
    path_and_query: String,
    creds: Vec<(header::HeaderName, HeaderValue)>,
) -> Result<(StatusCode, Vec<u8>), String> {
    ask_with(
        client,
        reqwest::Method::GET,
        url,
        path_and_query,
        creds,
        None,
    )
    .await
}

/// Calls another member with `method` and an optional JSON body, marked as forwarded.
pub(super) async fn ask_with(
    client: reqwest::Client,
    method: reqwest::Method,
    url: String,
    path_and_query: String,
    creds: Vec<(header::HeaderName, HeaderValue)>,
    body: Option<Vec<u8>>,
) -> Result<(StatusCode, Vec<u8>), String> {
    let mut req = client
        .request(method, format!("{url}{path_and_query}"))
        .header(FORWARDED, "1");
    for (n, v) in &creds {
        req = req.header(n.as_str(), v.as_bytes());
    }
    if let Some(body) = body {
        req = req
            .header(header::CONTENT_TYPE.as_str(), "application/json")
            .body(body);
    }
    let r = req.send().await.map_err(|e| format!("{url}: {e}"))?;
    let status = StatusCode::from_u16(r.status().as_u16()).unwrap_or(StatusCode::BAD_GATEWAY);
    let body = r.bytes().await.map_err(|e| format!("{url}: {e}"))?;
    Ok((status, body.to_vec()))
}

pub(super) fn json_response(status: StatusCode, body: Vec<u8>) -> Response {
    (status, [(header::CONTENT_TYPE, "application/json")], body).into_response()
}

/// The routing middleware (on the fleet's GET paths).
pub async fn route(State(s): State<Arc<AdminState>>, req: Request, next: Next) -> Response {
    let Some(view) = s.fleet.as_ref() else {
        return next.run(req).await;
    };
    let path = req.uri().path().to_string();
    let Some(key) = list_key(&path) else {
        return next.run(req).await;
    };
    if req.headers().contains_key(FORWARDED) || req.method() != axum::http::Method::GET {
        return next.run(req).await;
    }
    let pq = req
        .uri()
        .path_and_query()
        .map_or(path.clone(), |p| p.as_str().to_string());
    let creds = credentials(req.headers());
    let me = view.members.me().to_string();
    let service = service_of(req.uri().query());
    if let Some(service) = service.filter(|_| path != "/api/v1/decisions") {
        // One service: its owner answers (here when it is this member, or none is known).
        return match view.members.owner_of(&service) {
            Some(owner) if owner.url != me => match ask(
                view.client.clone(),
                owner.url.clone(),
                pq.clone(),
                creds.clone(),
            )
            .await
            {
                Ok((status, body)) => json_response(status, body),
                Err(e) => super::json_error(
                    StatusCode::BAD_GATEWAY,
                    format!("the processor that owns {service} did not answer: {e}"),
                ),
            },
            _ => next.run(req).await,
        };
    }
    // A list: every live processor's, merged.
    let processors = view.processors();
    let local = processors.iter().any(|m| m.url == me);
    let others: Vec<&Member> = processors.iter().filter(|m| m.url != me).collect();
    let asked: Vec<_> = others
        .iter()
        .map(|m| {
            tokio::spawn(ask(
                view.client.clone(),
                m.url.clone(),
                pq.clone(),
                creds.clone(),
            ))
        })
        .collect();
    let mut merged: Option<Value> = None;
    let mut unreachable = Vec::new();
    let members = &view.members;
    // An entry about a service counts only from the service's owner: every processor
    // evaluates every configured SLO and canary, but only the owner has the service's data.
    let mut add = |mut doc: Value, from: &str| {
        if let Some(list) = doc.get_mut(key).and_then(Value::as_array_mut) {
            list.retain(|e| {
                e.get("service")
                    .and_then(Value::as_str)
                    .and_then(|svc| members.owner_of(svc))
                    .is_none_or(|o| o.url == from)
            });
        }
        match &mut merged {
            None => merged = Some(doc),
            Some(m) => {
                if let (Some(to), Some(from)) = (
                    m.get_mut(key).and_then(Value::as_array_mut),
                    doc.get(key).and_then(Value::as_array),
                ) {
                    to.extend(from.iter().cloned());
                }
            }
        }
    };
    if local || processors.is_empty() {
        let r = next.run(req).await;
        let status = r.status();
        let body = axum::body::to_bytes(r.into_body(), 64 << 20)
            .await
            .unwrap_or_default();
        if !status.is_success() {
            return json_response(status, body.to_vec());
        }
        if let Ok(doc) = serde_json::from_slice::<Value>(&body) {
            add(doc, &me);
        }
    }
    for (m, r) in others.iter().zip(asked) {
        let r = r.await.unwrap_or_else(|e| Err(format!("{}: {e}", m.url)));
        match r {
            Ok((status, body)) if status.is_success() => {
                match serde_json::from_slice::<Value>(&body) {
                    Ok(doc) => add(doc, &m.url),
                    Err(e) => unreachable.push(format!("{}: {e}", m.url)),
                }
            }
            Ok((status, body)) => {
                // The same question fails the same way everywhere (a bad parameter): say so.
                if status.is_client_error() {
                    return json_response(status, body);
                }
                unreachable.push(format!("{}: {status}", m.url));
            }
            Err(e) => unreachable.push(e),
        }
    }
    let mut doc = merged.unwrap_or_else(|| serde_json::json!({ key: [] }));
    if key == "decisions" {
        newest_first(&mut doc, limit_of(&pq));
    }
    if !unreachable.is_empty()
        && let Some(o) = doc.as_object_mut()
    {
        o.insert("unreachable".into(), serde_json::json!(unreachable));
    }
    axum::Json(doc).into_response()
}

/// The fleet's live tables for SQL asked of this member: every live processor's `slis` and
/// `slo_status` (this member's own without a round trip), and the decisions of all of them
/// once per id; with the processors that did not answer. Asked of each with the caller's
/// credentials.
pub async fn live_tables(
    s: &Arc<AdminState>,
    view: &FleetView,
    headers: &HeaderMap,
) -> Result<(trike_sql::query::LiveTables, Vec<String>), String> {
    let creds = credentials(headers);
    let me = view.members.me().to_string();
    let processors = view.processors();
    let local = processors.is_empty() || processors.iter().any(|m| m.url == me);
    let limit = trike_runtime::hooks::outbox::STORE_CAPACITY;
    let asked: Vec<_> = processors
        .iter()
        .filter(|m| m.url != me)
        .map(|m| {
            let (client, url, creds) = (view.client.clone(), m.url.clone(), creds.clone());
            tokio::spawn(async move {
                let tables = ask(
                    client.clone(),
                    url.clone(),
                    "/api/v1/query/live".into(),
                    creds.clone(),
                )
                .await;
                let decisions = ask(
                    client,
                    url.clone(),
                    format!("/api/v1/decisions?limit={limit}"),
                    creds,
                )
                .await;
                (url, tables, decisions)
            })
        })
        .collect();
    let mut parts = Vec::new();
    let mut decisions: Vec<Value> = Vec::new();
    let mut unreachable = Vec::new();
    if local {
        let state = s.clone();
        let l = tokio::task::spawn_blocking(move || super::query::live_tables(&state))
            .await
            .map_err(|e| e.to_string())?
            .map_err(|e| e.to_string())?;
        let d = s.decisions.recent(None, limit);
        decisions.extend(d.iter().map(trike_sinks::ControlEvent::to_value));
        parts.push((l.slis, l.slo_status));
    }
    for a in asked {
        let (url, tables, listed) = a.await.map_err(|e| e.to_string())?;
        let tables = match tables {
            Ok((status, body)) if status.is_success() => {
                trike_sql::fleet::decode(&body).map_err(|e| e.to_string())
            }
            Ok((status, body))
                if status == StatusCode::UNAUTHORIZED || status == StatusCode::FORBIDDEN =>
            {
                return Err(format!(
                    "{url}: {status}: {}",
                    String::from_utf8_lossy(&body)
                ));
            }
            Ok((status, _)) => Err(status.to_string()),
            Err(e) => Err(e),
        };
        let listed = listed.and_then(|(status, body)| {
            if !status.is_success() {
                return Err(status.to_string());
            }
            serde_json::from_slice::<Value>(&body).map_err(|e| e.to_string())
        });
        match (tables, listed) {
            (Ok(t), Ok(doc)) => {
                parts.push(t);
                if let Some(list) = doc.get("decisions").and_then(Value::as_array) {
                    decisions.extend(list.iter().cloned());
                }
            }
            (Err(e), _) | (_, Err(e)) => unreachable.push(format!("{url}: {e}")),
        }
    }
    let mut doc = serde_json::json!({ "decisions": decisions });
    newest_first(&mut doc, usize::MAX);
    let mut decisions = match doc {
        Value::Object(mut o) => match o.remove("decisions") {
            Some(Value::Array(a)) => a,
            _ => Vec::new(),
        },
        _ => Vec::new(),
    };
    decisions.reverse(); // oldest first, as the local table
    let live = trike_sql::fleet::union(parts, &decisions).map_err(|e| e.to_string())?;
    Ok((live, unreachable))
}

/// `?limit=` of a decisions request (default 100, as the handler's).
fn limit_of(pq: &str) -> usize {
    params(pq.split_once('?').map(|(_, q)| q))
        .get("limit")
        .and_then(|v| v.parse().ok())
        .unwrap_or(100)
}

/// Decisions gathered from several processors: one per id (a moved partition's new owner
/// publishes its predecessor's recent events again, under their ids), newest first, `limit`.
fn newest_first(doc: &mut Value, limit: usize) {
    let Some(list) = doc.get_mut("decisions").and_then(Value::as_array_mut) else {
        return;
    };
    let mut seen = std::collections::BTreeSet::new();
    list.retain(|e| {
        seen.insert(
            e.get("id")
                .and_then(Value::as_str)
                .unwrap_or("")
                .to_string(),
        )
    });
    list.sort_by(|a, b| {
        let t = |e: &Value| {
            e.get("time")
                .and_then(Value::as_str)
                .unwrap_or("")
                .to_string()
        };
        t(b).cmp(&t(a))
    });
    list.truncate(limit);
}

/// `GET /api/v1/fleet`: the live members, which partitions each owns, and the partitions no
/// live processor owns.
pub async fn members_handler(State(s): State<Arc<AdminState>>) -> Response {
    let Some(view) = s.fleet.as_ref() else {
        return super::json_error(
            StatusCode::NOT_FOUND,
            "not a fleet member: run with --role gateway or --role processor".into(),
        );
    };
    let live = view.members.live();
    let total = live.iter().map(|m| m.partitions_total).max().unwrap_or(0);
    let owned: std::collections::BTreeSet<i32> = live
        .iter()
        .filter(|m| m.role == "processor")
        .flat_map(|m| m.partitions.iter().copied())
        .collect();
    let unowned: Vec<i32> = (0..total).filter(|p| !owned.contains(p)).collect();
    axum::Json(serde_json::json!({
        "me": view.members.me(),
        "partitions": total,
        "unowned": unowned,
        "members": live,
    }))
    .into_response()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Guarantees: the member client's settings are refused, each naming its field, when they
    /// cannot work: a CA or server name without `tls:`, a server name with no CA to check it, an
    /// unreadable or certificate-less CA file; with a CA and a name, it builds.
    #[test]
    fn member_client_settings_that_cannot_work_are_named() {
        let dir = std::env::temp_dir().join(format!("trike-member-client-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let key = rcgen::KeyPair::generate().unwrap();
        let cert = rcgen::CertificateParams::new(vec!["trike-member".to_string()])
            .unwrap()
            .self_signed(&key)
            .unwrap();
        std::fs::write(dir.join("m.crt"), cert.pem()).unwrap();
        std::fs::write(dir.join("m.key"), key.serialize_pem()).unwrap();
        std::fs::write(dir.join("junk.pem"), "not pem\n").unwrap();
        let tls = trike_ingest::tls::TlsFiles {
            cert_file: dir.join("m.crt"),
            key_file: dir.join("m.key"),
            client_ca_file: None,
        };
        let mut p = Vec::new();
        let base = crate::config::fleet::validate(
            Default::default(),
            crate::config::fleet::Role::Processor,
            true,
            &mut p,
        );
        let with = |ca: Option<&str>, name: Option<&str>| crate::config::fleet::FleetConfig {
            ca_file: ca.map(|c| dir.join(c)),
            server_name: name.map(str::to_string),
            ..base.clone()
        };
        let refused = |tls: Option<&trike_ingest::tls::TlsFiles>, f| {
            format!("{:#}", member_client(tls, &f).unwrap_err())
        };
        let e = refused(None, with(Some("m.crt"), None));
        assert!(
            e.starts_with("fleet.ca_file, fleet.server_name: need tls:"),
            "{e}"
        );
        let e = refused(Some(&tls), with(None, Some("trike-member")));
        assert!(e.starts_with("fleet.server_name: needs a CA"), "{e}");
        let e = refused(Some(&tls), with(Some("missing.crt"), None));
        assert!(
            e.starts_with("fleet.ca_file ") && e.contains("missing.crt: cannot read it"),
            "{e}"
        );
        let e = refused(Some(&tls), with(Some("junk.pem"), None));
        assert!(
            e.starts_with("fleet.ca_file ") && e.contains("no CERTIFICATE"),
            "{e}"
        );
        let mtls = trike_ingest::tls::TlsFiles {
            client_ca_file: Some(dir.join("m.crt")),
            ..tls.clone()
        };
        member_client(Some(&mtls), &with(None, Some("trike-member"))).unwrap();
        member_client(None, &base).unwrap();
        let _ = std::fs::remove_dir_all(&dir);
    }

    /// Guarantees: the service is read from an encoded query like the handlers read it.
    #[test]
    fn the_service_of_a_query() {
        assert_eq!(
            service_of(Some("window=5m&service=check%2Dout+eu")).as_deref(),
            Some("check-out eu")
        );
        assert_eq!(service_of(Some("service=&window=5m")), None);
        assert_eq!(service_of(None), None);
        assert_eq!(limit_of("/api/v1/decisions?limit=7"), 7);
        assert_eq!(limit_of("/api/v1/decisions"), 100);
    }

    /// Scenario: two processors' decision lists, one holding an event its predecessor
    /// published too (a moved partition's outbox).
    /// Guarantees: one entry per id, newest first, cut to the limit.
    #[test]
    fn merged_decisions_are_unique_newest_first_and_limited() {
        let mut doc = serde_json::json!({ "decisions": [
            { "id": "a", "time": "2026-12-04T10:00:01Z" },
            { "id": "b", "time": "2026-12-04T10:00:03Z" },
            { "id": "a", "time": "2026-12-04T10:00:01Z" },
            { "id": "c", "time": "2026-12-04T10:00:02Z" },
        ]});
        newest_first(&mut doc, 2);
        let ids: Vec<&str> = doc["decisions"]
            .as_array()
            .unwrap()
            .iter()
            .map(|d| d["id"].as_str().unwrap())
            .collect();
        assert_eq!(ids, ["b", "c"]);
    }
}
