//! Bearer tokens end to end (DESIGN §8), with the real OpenTelemetry SDK exporters: tokens from
//! `${VAR}` in the config; OTLP over gRPC (metadata) and HTTP (header) accepted with the ingest
//! token and refused without it; the admin API's read and write scopes; the dashboard's cookie;
//! every refusal counted on `/metrics`.

use opentelemetry_otlp::{
    Protocol, SpanExporter, WithExportConfig, WithHttpConfig, WithTonicConfig,
};
use reqwest::StatusCode;
use std::time::Duration;
use trike_tests::{emit_spans, sample};

const INGEST: &str = "ingest-token-0123456789abcdef";
const READ: &str = "read-token-0123456789abcdef";
const WRITE: &str = "write-token-0123456789abcdef";

async fn start() -> trike::app::Running {
    let yaml = r#"
auth:
  ingest_tokens: ["${TEST_INGEST_TOKEN}"]
  admin_read_tokens: ["${TEST_READ_TOKEN}"]
  admin_write_tokens: ["${TEST_WRITE_TOKEN}"]
"#;
    let env = |name: &str| {
        Some(
            match name {
                "TEST_INGEST_TOKEN" => INGEST,
                "TEST_READ_TOKEN" => READ,
                "TEST_WRITE_TOKEN" => WRITE,
                _ => return None,
            }
            .to_string(),
        )
    };
    trike_tests::start_trike_with_env(yaml, &env, &[INGEST, READ, WRITE]).await
}

fn grpc(running: &trike::app::Running, token: Option<&str>) -> SpanExporter {
    let mut metadata = tonic::metadata::MetadataMap::new();
    if let Some(t) = token {
        metadata.insert("authorization", format!("Bearer {t}").parse().unwrap());
    }
    SpanExporter::builder()
        .with_tonic()
        .with_endpoint(format!("http://{}", running.grpc_addr))
        .with_metadata(metadata)
        .with_timeout(Duration::from_secs(5))
        .build()
        .unwrap()
}

fn http(running: &trike::app::Running, token: Option<&str>) -> SpanExporter {
    let headers = token
        .map(|t| [("authorization".to_string(), format!("Bearer {t}"))].into())
        .unwrap_or_default();
    SpanExporter::builder()
        .with_http()
        .with_protocol(Protocol::HttpBinary)
        .with_endpoint(format!("http://{}/v1/traces", running.http_addr))
        .with_headers(headers)
        .with_timeout(Duration::from_secs(5))
        .build()
        .unwrap()
}

async fn get(url: &str, token: Option<&str>) -> reqwest::Response {
    let mut r = reqwest::Client::new().get(url);
    if let Some(t) = token {
        r = r.bearer_auth(t);
    }
    r.send().await.unwrap()
}

async fn requests_of(running: &trike::app::Running, service: &str) -> u64 {
    let doc: serde_json::Value = get(
        &format!(
            "http://{}/api/v1/slis?service={service}&window=5m",
            running.admin_addr
        ),
        Some(READ),
    )
    .await
    .json()
    .await
    .unwrap();
    doc["series"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s["requests"].as_u64().unwrap())
        .sum()
}

/// Scenario: a processor with ingest, admin-read and admin-write tokens from `${VAR}`.
/// Guarantees: the SDK's gRPC and HTTP exporters with the ingest token are counted exactly;
/// without it (or with a wrong one) nothing of theirs is counted, HTTP answers 401 with
/// `WWW-Authenticate: Bearer`; the admin API needs a token except for `/healthz` and
/// `/readyz`, a read token cannot call a write endpoint (403), the dashboard opens with
/// `/?token=` and its cookie reads but never writes; `/metrics` counts each refusal.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tokens_guard_ingest_and_admin() {
    let running = start().await;
    let admin = format!("http://{}", running.admin_addr);

    let e = grpc(&running, Some(INGEST));
    emit_spans(move || e, "grpc-ok", 30).await;
    let e = http(&running, Some(INGEST));
    emit_spans(move || e, "http-ok", 20).await;
    let e = grpc(&running, None);
    emit_spans(move || e, "grpc-none", 10).await;
    let e = grpc(&running, Some(READ));
    emit_spans(move || e, "grpc-wrong", 10).await;
    let e = http(&running, None);
    emit_spans(move || e, "http-none", 10).await;
    let start = std::time::Instant::now();
    while requests_of(&running, "grpc-ok").await < 30 || requests_of(&running, "http-ok").await < 20
    {
        assert!(
            start.elapsed() < Duration::from_secs(10),
            "accepted spans never counted"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // The refused exports had ended before the accepted ones were counted.
    for refused in ["grpc-none", "grpc-wrong", "http-none"] {
        assert_eq!(requests_of(&running, refused).await, 0, "{refused}");
    }
    assert_eq!(
        (
            requests_of(&running, "grpc-ok").await,
            requests_of(&running, "http-ok").await
        ),
        (30, 20)
    );
    let plain = reqwest::Client::new()
        .post(format!("http://{}/v1/traces", running.http_addr))
        .header("content-type", "application/x-protobuf")
        .body(Vec::new())
        .send()
        .await
        .unwrap();
    assert_eq!(plain.status(), StatusCode::UNAUTHORIZED);
    assert_eq!(plain.headers()["www-authenticate"], "Bearer");

    // Admin: open health, read scope, write scope.
    assert_eq!(get(&format!("{admin}/healthz"), None).await.status(), 200);
    assert_eq!(get(&format!("{admin}/readyz"), None).await.status(), 200);
    let none = get(&format!("{admin}/api/v1/slos"), None).await;
    assert_eq!(none.status(), StatusCode::UNAUTHORIZED);
    assert_eq!(none.headers()["www-authenticate"], "Bearer");
    assert_eq!(
        get(&format!("{admin}/metrics"), Some("nope-nope-nope-nope"))
            .await
            .status(),
        StatusCode::UNAUTHORIZED
    );
    assert_eq!(
        get(&format!("{admin}/api/v1/slos"), Some(READ))
            .await
            .status(),
        200
    );
    assert_eq!(
        get(&format!("{admin}/api/v1/slos"), Some(WRITE))
            .await
            .status(),
        200
    );
    let client = reqwest::Client::new();
    let query = client
        .post(format!("{admin}/api/v1/query"))
        .bearer_auth(READ)
        .body("SELECT 1 AS one")
        .send()
        .await
        .unwrap();
    assert_eq!(query.status(), 200, "a query is a read");
    // A state-changing call (POST to a read-only resource stands in until the write
    // endpoints exist): a read token is forbidden, a write token passes the gate.
    let write = |t: &'static str| {
        client
            .post(format!("{admin}/api/v1/slos"))
            .bearer_auth(t)
            .send()
    };
    assert_eq!(write(READ).await.unwrap().status(), StatusCode::FORBIDDEN);
    assert_eq!(
        write(WRITE).await.unwrap().status(),
        StatusCode::METHOD_NOT_ALLOWED,
        "past the gate, the route answers"
    );

    // The dashboard: `/?token=` sets the read cookie.
    let no_redirect = reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .unwrap();
    assert_eq!(
        no_redirect
            .get(format!("{admin}/"))
            .send()
            .await
            .unwrap()
            .status(),
        StatusCode::UNAUTHORIZED
    );
    let login = no_redirect
        .get(format!("{admin}/?token={READ}"))
        .send()
        .await
        .unwrap();
    assert_eq!(login.status(), StatusCode::SEE_OTHER);
    let cookie = login.headers()["set-cookie"].to_str().unwrap().to_string();
    assert!(
        cookie.contains("HttpOnly") && cookie.contains("SameSite=Strict"),
        "{cookie}"
    );
    let pair = cookie.split(';').next().unwrap().to_string();
    let with_cookie = |path: &str| {
        no_redirect
            .get(format!("{admin}{path}"))
            .header("cookie", pair.clone())
            .send()
    };
    let page = with_cookie("/").await.unwrap();
    assert_eq!(page.status(), 200);
    assert!(page.text().await.unwrap().contains("<html"));
    assert_eq!(with_cookie("/api/v1/services").await.unwrap().status(), 200);
    let cookie_write = no_redirect
        .post(format!("{admin}/api/v1/slos"))
        .header("cookie", pair.clone())
        .send()
        .await
        .unwrap();
    assert_eq!(
        cookie_write.status(),
        StatusCode::UNAUTHORIZED,
        "a cookie never writes"
    );

    let m = get(&format!("{admin}/metrics"), Some(READ))
        .await
        .text()
        .await
        .unwrap();
    let refused = |surface: &str, reason: &str| {
        sample(
            &m,
            &format!("trike_auth_refused_total{{surface=\"{surface}\",reason=\"{reason}\"}}"),
        )
        .unwrap()
    };
    assert!(refused("otlp_grpc", "missing") >= 1.0);
    assert!(refused("otlp_grpc", "invalid") >= 1.0);
    assert!(refused("otlp_http", "missing") >= 2.0);
    assert_eq!(refused("admin", "scope"), 1.0);
    assert!(refused("admin", "missing") >= 3.0);
    assert_eq!(refused("admin", "invalid"), 1.0);
    running.stop().await.unwrap();
}
