//! TLS and mTLS end to end (DESIGN §8), with the real OpenTelemetry SDK exporters and real
//! certificates (generated per run): OTLP over gRPC and HTTP through TLS with a client
//! certificate and a bearer token is counted; a plain-text client, a client without a
//! certificate, one with a certificate from another CA, and one with a token of the wrong scope
//! are refused and nothing of theirs is counted. The admin API keeps `/healthz` and `/readyz`
//! open to probes without a certificate and refuses everything else without one. Every refusal
//! is counted on `/metrics`.

use opentelemetry_otlp::tonic_types::transport::{Certificate, ClientTlsConfig, Identity};
use opentelemetry_otlp::{
    Protocol, SpanExporter, WithExportConfig, WithHttpConfig, WithTonicConfig,
};
use std::time::Duration;
use trike_tests::emit_spans;
use trike_tests::pki::Pki;
use trike_tests::sample;

const INGEST: &str = "ingest-token-tls-0123456789";
const READ: &str = "read-token-tls-0123456789";

async fn start(pki: &Pki, mtls: bool) -> trike::app::Running {
    let yaml = format!(
        "{}auth:\n  ingest_tokens: [\"{INGEST}\"]\n  admin_read_tokens: [\"{READ}\"]\n",
        pki.yaml(mtls)
    );
    trike_tests::start_trike(&yaml).await
}

/// Who a client says it is.
#[derive(Clone, Copy, Debug)]
enum Cert {
    Trusted,
    Rogue,
    None,
}

fn identity_pem(pki: &Pki, cert: Cert) -> Option<(String, String)> {
    match cert {
        Cert::Trusted => Some((pki.client_cert_pem.clone(), pki.client_key_pem.clone())),
        Cert::Rogue => Some((pki.rogue_cert_pem.clone(), pki.rogue_key_pem.clone())),
        Cert::None => None,
    }
}

fn grpc(addr: std::net::SocketAddr, pki: &Pki, tls: bool, cert: Cert, token: &str) -> SpanExporter {
    let mut metadata = tonic::metadata::MetadataMap::new();
    metadata.insert("authorization", format!("Bearer {token}").parse().unwrap());
    let b = SpanExporter::builder().with_tonic().with_metadata(metadata);
    let b = if tls {
        let mut c = ClientTlsConfig::new()
            .ca_certificate(Certificate::from_pem(&pki.ca_pem))
            .domain_name("localhost");
        if let Some((cert, key)) = identity_pem(pki, cert) {
            c = c.identity(Identity::from_pem(cert, key));
        }
        b.with_endpoint(format!("https://localhost:{}", addr.port()))
            .with_tls_config(c)
    } else {
        b.with_endpoint(format!("http://{addr}"))
    };
    b.with_timeout(Duration::from_secs(5)).build().unwrap()
}

fn https_client(pki: &Pki, cert: Cert) -> reqwest::blocking::Client {
    let mut b = reqwest::blocking::Client::builder()
        .add_root_certificate(reqwest::Certificate::from_pem(pki.ca_pem.as_bytes()).unwrap())
        .timeout(Duration::from_secs(5));
    if let Some((cert, key)) = identity_pem(pki, cert) {
        b = b.identity(reqwest::Identity::from_pem(format!("{cert}{key}").as_bytes()).unwrap());
    }
    b.build().unwrap()
}

fn http(addr: std::net::SocketAddr, pki: &Pki, cert: Cert, token: &str) -> SpanExporter {
    SpanExporter::builder()
        .with_http()
        .with_http_client(https_client(pki, cert))
        .with_protocol(Protocol::HttpBinary)
        .with_endpoint(format!("https://localhost:{}/v1/traces", addr.port()))
        .with_headers([("authorization".to_string(), format!("Bearer {token}"))].into())
        .with_timeout(Duration::from_secs(5))
        .build()
        .unwrap()
}

/// A GET on the admin API over HTTPS with `cert` (status, body).
async fn admin_get(
    running: &trike::app::Running,
    pki: &Pki,
    cert: Cert,
    path: &str,
    token: Option<&str>,
) -> Result<(u16, String), String> {
    let (pki, token) = (pki.clone(), token.map(str::to_string));
    let url = format!("https://localhost:{}{path}", running.admin_addr.port());
    tokio::task::spawn_blocking(move || {
        let mut r = https_client(&pki, cert).get(url);
        if let Some(t) = token {
            r = r.bearer_auth(t);
        }
        let resp = r.send().map_err(|e| format!("{e:?}"))?;
        Ok((resp.status().as_u16(), resp.text().unwrap_or_default()))
    })
    .await
    .unwrap()
}

async fn requests_of(running: &trike::app::Running, pki: &Pki, service: &str) -> u64 {
    let (status, body) = admin_get(
        running,
        pki,
        Cert::Trusted,
        &format!("/api/v1/slis?service={service}&window=5m"),
        Some(READ),
    )
    .await
    .unwrap();
    assert_eq!(status, 200, "{body}");
    let doc: serde_json::Value = serde_json::from_str(&body).unwrap();
    doc["series"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s["requests"].as_u64().unwrap())
        .sum()
}

/// Scenario: a processor with `tls.client_ca_file` (mTLS) and ingest and admin tokens; SDK
/// exporters over gRPC and HTTP with and without the right certificate and token.
/// Guarantees: only TLS + a trusted client certificate + the ingest token is counted (exactly);
/// the plain-text, certificate-less, rogue-CA and wrong-scope exporters are refused and count
/// nothing; the admin API answers probes without a certificate and refuses the rest (403
/// `client_cert`), and a plain-text admin request gets no answer; `/metrics` counts the failed
/// handshakes per listener and the refusals by reason.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mtls_and_tokens_guard_every_port() {
    let dir = std::env::temp_dir().join(format!("trike-tls-e2e-{}", std::process::id()));
    let pki = Pki::write(&dir);
    let running = start(&pki, true).await;
    let (g, h) = (running.grpc_addr, running.http_addr);

    let p = pki.clone();
    emit_spans(
        move || grpc(g, &p, true, Cert::Trusted, INGEST),
        "grpc-mtls",
        30,
    )
    .await;
    let p = pki.clone();
    emit_spans(move || http(h, &p, Cert::Trusted, INGEST), "http-mtls", 20).await;
    let p = pki.clone();
    emit_spans(
        move || grpc(g, &p, false, Cert::None, INGEST),
        "grpc-plain",
        10,
    )
    .await;
    let p = pki.clone();
    emit_spans(
        move || grpc(g, &p, true, Cert::None, INGEST),
        "grpc-nocert",
        10,
    )
    .await;
    let p = pki.clone();
    emit_spans(
        move || grpc(g, &p, true, Cert::Rogue, INGEST),
        "grpc-rogue",
        10,
    )
    .await;
    let p = pki.clone();
    emit_spans(
        move || grpc(g, &p, true, Cert::Trusted, READ),
        "grpc-scope",
        10,
    )
    .await;
    let p = pki.clone();
    emit_spans(move || http(h, &p, Cert::None, INGEST), "http-nocert", 10).await;

    let t0 = std::time::Instant::now();
    while requests_of(&running, &pki, "grpc-mtls").await < 30
        || requests_of(&running, &pki, "http-mtls").await < 20
    {
        assert!(
            t0.elapsed() < Duration::from_secs(10),
            "accepted spans never counted"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(requests_of(&running, &pki, "grpc-mtls").await, 30);
    assert_eq!(requests_of(&running, &pki, "http-mtls").await, 20);
    for refused in [
        "grpc-plain",
        "grpc-nocert",
        "grpc-rogue",
        "grpc-scope",
        "http-nocert",
    ] {
        assert_eq!(requests_of(&running, &pki, refused).await, 0, "{refused}");
    }

    // The admin API: probes without a certificate, nothing else.
    assert_eq!(
        admin_get(&running, &pki, Cert::None, "/healthz", None)
            .await
            .unwrap()
            .0,
        200
    );
    assert_eq!(
        admin_get(&running, &pki, Cert::None, "/readyz", None)
            .await
            .unwrap()
            .0,
        200
    );
    let (status, body) = admin_get(&running, &pki, Cert::None, "/api/v1/slos", Some(READ))
        .await
        .unwrap();
    assert_eq!(status, 403, "{body}");
    assert!(body.contains("client certificate"), "{body}");
    assert!(
        admin_get(&running, &pki, Cert::Rogue, "/healthz", None)
            .await
            .is_err(),
        "a certificate from another CA fails the handshake even for probes"
    );
    let plain = reqwest::Client::new()
        .get(format!("http://{}/healthz", running.admin_addr))
        .timeout(Duration::from_secs(5))
        .send()
        .await;
    assert!(
        plain.is_err() || !plain.unwrap().status().is_success(),
        "plain HTTP to a TLS port is not served"
    );
    let (status, metrics) = admin_get(&running, &pki, Cert::Trusted, "/metrics", Some(READ))
        .await
        .unwrap();
    assert_eq!(status, 200);
    let failed = |l: &str| {
        sample(
            &metrics,
            &format!("trike_listener_tls_handshake_failures_total{{listener=\"{l}\"}}"),
        )
        .unwrap()
    };
    assert!(
        failed("otlp_grpc") >= 3.0,
        "plain, no cert and rogue: {}",
        failed("otlp_grpc")
    );
    assert!(failed("otlp_http") >= 1.0, "no cert over HTTP");
    assert!(failed("admin") >= 2.0, "rogue and plain on admin");
    assert!(
        sample(
            &metrics,
            "trike_auth_refused_total{surface=\"otlp_grpc\",reason=\"invalid\"}"
        )
        .unwrap()
            >= 1.0
    );
    assert_eq!(
        sample(
            &metrics,
            "trike_auth_refused_total{surface=\"admin\",reason=\"client_cert\"}"
        ),
        Some(1.0)
    );
    running.stop().await.unwrap();
    let _ = std::fs::remove_dir_all(&dir);
}

/// Scenario: server TLS only (no `client_ca_file`): clients verify the server and need no
/// certificate of their own.
/// Guarantees: the HTTP and gRPC exporters over TLS are counted; the admin API serves every
/// path to a token holder over HTTPS.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn server_tls_without_client_certificates() {
    let dir = std::env::temp_dir().join(format!("trike-tls-only-{}", std::process::id()));
    let pki = Pki::write(&dir);
    let running = start(&pki, false).await;
    let (g, h) = (running.grpc_addr, running.http_addr);
    let p = pki.clone();
    emit_spans(
        move || grpc(g, &p, true, Cert::None, INGEST),
        "grpc-tls",
        12,
    )
    .await;
    let p = pki.clone();
    emit_spans(move || http(h, &p, Cert::None, INGEST), "http-tls", 8).await;
    let t0 = std::time::Instant::now();
    while requests_of(&running, &pki, "grpc-tls").await < 12
        || requests_of(&running, &pki, "http-tls").await < 8
    {
        assert!(
            t0.elapsed() < Duration::from_secs(10),
            "spans never counted"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let (status, _) = admin_get(&running, &pki, Cert::None, "/api/v1/slos", Some(READ))
        .await
        .unwrap();
    assert_eq!(status, 200);
    running.stop().await.unwrap();
    let _ = std::fs::remove_dir_all(&dir);
}

/// Scenario: a processor with mTLS and admin tokens; `trike query` (its library call) asks it
/// for the SLIs with the CA, a client certificate and a read token, and then without the
/// token, without the certificate, and over plain HTTP.
/// Guarantees: the query answers what was counted; each refusal is an error that says what
/// the admin API wants (a token, a certificate), and plain HTTP gets no answer.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn trike_query_reaches_a_guarded_admin_api() {
    use trike::cli::QueryFormat;
    use trike::query::{Remote, run};
    let dir = std::env::temp_dir().join(format!("trike-tls-query-{}", std::process::id()));
    let pki = Pki::write(&dir);
    std::fs::write(dir.join("client.crt"), &pki.client_cert_pem).unwrap();
    std::fs::write(dir.join("client.key"), &pki.client_key_pem).unwrap();
    let running = start(&pki, true).await;
    let g = running.grpc_addr;
    let p = pki.clone();
    emit_spans(
        move || grpc(g, &p, true, Cert::Trusted, INGEST),
        "queried",
        12,
    )
    .await;
    let t0 = std::time::Instant::now();
    while requests_of(&running, &pki, "queried").await < 12 {
        assert!(
            t0.elapsed() < Duration::from_secs(10),
            "spans never counted"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let remote = Remote {
        admin_addr: format!("https://localhost:{}", running.admin_addr.port()),
        token: Some(trike_sinks::Secret::new(READ)),
        ca_file: Some(dir.join("ca.crt")),
        cert_file: Some(dir.join("client.crt")),
        key_file: Some(dir.join("client.key")),
    };
    let sql = "SELECT service, sum(requests) AS requests FROM slis WHERE service = 'queried' \
               AND time_window = '5m' GROUP BY service";
    let rows = run(sql, None, &remote, QueryFormat::Json, 100)
        .await
        .unwrap();
    let rows: serde_json::Value = serde_json::from_str(&rows).unwrap();
    assert_eq!(
        rows,
        serde_json::json!([{"service": "queried", "requests": 12}])
    );

    let refused = |r: Remote| async move {
        run(sql, None, &r, QueryFormat::Table, 100)
            .await
            .expect_err("refused")
            .to_string()
    };
    let no_token = refused(Remote {
        token: None,
        ..remote.clone()
    })
    .await;
    assert!(
        no_token.contains("401") && no_token.contains("--token"),
        "{no_token}"
    );
    let no_cert = refused(Remote {
        cert_file: None,
        key_file: None,
        ..remote.clone()
    })
    .await;
    assert!(
        no_cert.contains("403") && no_cert.contains("--cert-file"),
        "{no_cert}"
    );
    let plain = refused(Remote {
        admin_addr: running.admin_addr.to_string(),
        ca_file: None,
        cert_file: None,
        key_file: None,
        ..remote.clone()
    })
    .await;
    assert!(plain.contains("no processor answers"), "{plain}");
    running.stop().await.unwrap();
    let _ = std::fs::remove_dir_all(&dir);
}
