//! Inline forwarding (DESIGN §10 `forward:`): every accepted OTLP request goes on, unchanged,
//! to the next hops — a real OTLP/gRPC server (the OTLP crate's generated tonic service) and an
//! OTLP/HTTP endpoint — while the SLI path counts it as before; a dead hop only drops, and
//! counts what it drops.

use prost::Message;
use rand::SeedableRng;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use trike_proto::collector::trace::v1::trace_service_server::{TraceService, TraceServiceServer};
use trike_proto::collector::trace::v1::{ExportTraceServiceRequest, ExportTraceServiceResponse};
use trike_tests::{checkout, metrics_text, sample, start_trike, wait_for_requests};

/// (`grpc-encoding`, `x-team`, message encoded again) of each request a gRPC hop got.
type Seen = Arc<Mutex<Vec<(String, String, Vec<u8>)>>>;

/// What an HTTP hop got of one request.
#[derive(Clone, Debug)]
struct HttpRequest {
    content_type: String,
    content_encoding: String,
    x_team: String,
    /// The body, gunzipped when it came gzipped.
    body: Vec<u8>,
}
type SeenHttp = Arc<Mutex<Vec<HttpRequest>>>;

/// A next hop speaking OTLP/gRPC (gzip accepted, as the Collector's receiver): keeps each
/// request it gets.
struct GrpcHop(Seen);

#[tonic::async_trait]
impl TraceService for GrpcHop {
    async fn export(
        &self,
        request: tonic::Request<ExportTraceServiceRequest>,
    ) -> Result<tonic::Response<ExportTraceServiceResponse>, tonic::Status> {
        let metadata = |key: &str| {
            request
                .metadata()
                .get(key)
                .and_then(|v| v.to_str().ok())
                .unwrap_or("")
                .to_string()
        };
        let (encoding, team) = (metadata("grpc-encoding"), metadata("x-team"));
        self.0
            .lock()
            .unwrap()
            .push((encoding, team, request.into_inner().encode_to_vec()));
        Ok(tonic::Response::new(ExportTraceServiceResponse::default()))
    }
}

/// A next hop speaking OTLP/HTTP on `/v1/traces`: keeps each request it gets.
async fn http_hop() -> (std::net::SocketAddr, SeenHttp) {
    let seen: SeenHttp = Default::default();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let keep = seen.clone();
    let app = axum::Router::new().route(
        "/v1/traces",
        axum::routing::post(
            move |headers: axum::http::HeaderMap, body: axum::body::Bytes| {
                let keep = keep.clone();
                async move {
                    let header = |name: &str| {
                        headers
                            .get(name)
                            .and_then(|v| v.to_str().ok())
                            .unwrap_or("")
                            .to_string()
                    };
                    let content_encoding = header("content-encoding");
                    let body = if content_encoding == "gzip" {
                        let mut plain = Vec::new();
                        std::io::Read::read_to_end(
                            &mut flate2::read::GzDecoder::new(&body[..]),
                            &mut plain,
                        )
                        .unwrap();
                        plain
                    } else {
                        body.to_vec()
                    };
                    keep.lock().unwrap().push(HttpRequest {
                        content_type: header("content-type"),
                        content_encoding,
                        x_team: header("x-team"),
                        body,
                    });
                    axum::http::StatusCode::OK
                }
            },
        ),
    );
    tokio::spawn(async move { axum::serve(listener, app).await });
    (addr, seen)
}

/// What `/metrics` (the text `m`) counts of a hop's requests of `outcome`.
fn forwarded(m: &str, hop: impl std::fmt::Display, outcome: &str) -> f64 {
    sample(
        m,
        &format!("trike_forward_requests_total{{endpoint=\"{hop}\",outcome=\"{outcome}\"}}"),
    )
    .unwrap()
}

/// Serves `service` as an OTLP/gRPC next hop taking gzip, on a socket held from the start (no
/// other process can take its port between choosing it and serving on it).
async fn serve_trace_hop(service: impl TraceService) -> std::net::SocketAddr {
    let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = l.local_addr().unwrap();
    let server =
        TraceServiceServer::new(service).accept_compressed(tonic::codec::CompressionEncoding::Gzip);
    let incoming: tonic::transport::server::TcpIncoming = l.into();
    tokio::spawn(
        tonic::transport::Server::builder()
            .add_service(server)
            .serve_with_incoming(incoming),
    );
    addr
}

/// A [`GrpcHop`] serving, and what it keeps.
async fn grpc_hop() -> (std::net::SocketAddr, Seen) {
    let seen: Seen = Default::default();
    (serve_trace_hop(GrpcHop(seen.clone())).await, seen)
}

/// A port nobody listens on, held for as long as the socket lives (bound, never listening:
/// connections to it are refused).
fn refusing_port() -> (tokio::net::TcpSocket, std::net::SocketAddr) {
    let socket = tokio::net::TcpSocket::new_v4().unwrap();
    socket.bind("127.0.0.1:0".parse().unwrap()).unwrap();
    let addr = socket.local_addr().unwrap();
    (socket, addr)
}

/// Scenario: Trike forwards to an OTLP/gRPC hop, an OTLP/HTTP hop with a header, an OTLP/HTTP
/// hop with `compression: none` and a hop nobody listens on (a 64 KiB queue); a client sends
/// 20 uncompressed OTLP/HTTP protobuf requests of 50 spans.
/// Guarantees: the live hops receive exactly the 20 requests, byte for byte (the HTTP hops the
/// very bytes, with the content type, gzipped by default and as they are with `none`, the
/// header only where configured; the gRPC hop the same message, gzipped); Trike counted all
/// 1 000 spans as without forwarding; `/metrics` says 20 sent to each live hop and counts every
/// request to the dead one as retried-then-dropped or dropped because its queue was full.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn requests_are_forwarded_unchanged() {
    let (grpc_addr, grpc_seen) = grpc_hop().await;
    let (http_addr, http_seen) = http_hop().await;
    let (plain_addr, plain_seen) = http_hop().await;
    let (_held, dead) = refusing_port();
    let running = start_trike(&format!(
        "forward:\n  - {{ endpoint: \"{grpc_addr}\", protocol: grpc, headers: {{ x-team: grpc-sre }} }}\n  - {{ endpoint: \"{http_addr}\", protocol: http, headers: {{ x-team: sre }} }}\n  - {{ endpoint: \"{plain_addr}\", protocol: http, compression: none }}\n  - {{ endpoint: \"{dead}\", protocol: http, queue_bytes: 64KiB }}\n"
    ))
    .await;
    tokio::time::sleep(Duration::from_millis(300)).await;

    let client = reqwest::Client::new();
    let mut rng = rand::rngs::StdRng::seed_from_u64(9);
    let svc = checkout("1.0", 0.05);
    let mut sent = Vec::new();
    for _ in 0..20 {
        let body = svc
            .request(50, trike_runtime::clock::now_nanos(), 1_000_000, &mut rng)
            .encode_to_vec();
        let r = client
            .post(format!("http://{}/v1/traces", running.http_addr))
            .header("content-type", "application/x-protobuf")
            .body(body.clone())
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 200);
        sent.push(body);
    }
    assert_eq!(
        wait_for_requests(&running, "checkout", 1000, Duration::from_secs(10)).await,
        1000
    );
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    while (grpc_seen.lock().unwrap().len() < 20
        || http_seen.lock().unwrap().len() < 20
        || plain_seen.lock().unwrap().len() < 20)
        && std::time::Instant::now() < deadline
    {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let mut want = sent.clone();
    want.sort();
    let grpc = grpc_seen.lock().unwrap().clone();
    assert!(
        grpc.iter()
            .all(|(e, team, _)| e == "gzip" && team == "grpc-sre"),
        "gzipped to the gRPC hop, with its header"
    );
    let mut got_grpc: Vec<Vec<u8>> = grpc.into_iter().map(|(_, _, m)| m).collect();
    got_grpc.sort();
    assert_eq!(got_grpc, want, "the gRPC hop got every request, unchanged");
    for (hop, encoding) in [(&http_seen, "gzip"), (&plain_seen, "")] {
        let http = hop.lock().unwrap().clone();
        assert!(
            http.iter()
                .all(|r| r.content_type == "application/x-protobuf"
                    && r.content_encoding == encoding),
            "{encoding:?}: {:?}",
            http.first().map(|r| (&r.content_type, &r.content_encoding))
        );
        let mut got_http: Vec<Vec<u8>> = http.into_iter().map(|r| r.body).collect();
        got_http.sort();
        assert_eq!(
            got_http, want,
            "the HTTP hop ({encoding:?}) got the very bytes"
        );
    }
    assert!(http_seen.lock().unwrap().iter().all(|r| r.x_team == "sre"));
    assert!(
        plain_seen
            .lock()
            .unwrap()
            .iter()
            .all(|r| r.x_team.is_empty())
    );

    // The dead hop: every request retried and dropped, or dropped at its full queue.
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    let m = loop {
        let m = metrics_text(&running).await;
        let dead_of = |outcome: &str| forwarded(&m, dead, outcome);
        if dead_of("dropped_failed") + dead_of("dropped_full") >= 20.0 {
            assert!(dead_of("retried") >= dead_of("dropped_failed"), "{m}");
            assert_eq!(dead_of("sent"), 0.0);
            break m;
        }
        assert!(std::time::Instant::now() < deadline, "{m}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    for hop in [grpc_addr, http_addr, plain_addr] {
        assert_eq!(forwarded(&m, hop, "sent"), 20.0, "{m}");
    }
    running.stop().await.unwrap();
}

/// Scenario: the next hop is another Trike whose receivers require TLS with client
/// certificates (mTLS, a test CA); Trike forwards to it over gRPC (to 127.0.0.1) and HTTPS (to
/// `localhost`), presenting a client certificate from that CA, and to the same gRPC port with
/// `tls: {}` (the system's roots, which do not know the test CA). 10 requests of 20 spans.
/// Guarantees: the hop counts every span twice (once per TLS hop, so the handshakes and the
/// client certificate worked, in both protocols); the hop that does not trust the hop's
/// certificate sends nothing, retries every attempt, and counts every request as dropped.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hops_are_reached_over_tls() {
    let dir = std::env::temp_dir().join(format!("trike-forward-tls-{}", trike_tests::run_id()));
    let pki = trike_tests::pki::Pki::write(&dir);
    std::fs::write(dir.join("client.crt"), &pki.client_cert_pem).unwrap();
    std::fs::write(dir.join("client.key"), &pki.client_key_pem).unwrap();
    let hop = start_trike(&pki.yaml(true)).await;
    let d = dir.display();
    let tls =
        format!("{{ ca_file: {d}/ca.crt, cert_file: {d}/client.crt, key_file: {d}/client.key }}");
    let (grpc, http) = (hop.grpc_addr, hop.http_addr);
    let running = start_trike(&format!(
        "forward:\n  - {{ endpoint: \"{grpc}\", protocol: grpc, tls: {tls} }}\n  - {{ endpoint: \"localhost:{}\", protocol: http, tls: {tls} }}\n  - {{ endpoint: \"localhost:{}\", protocol: grpc, tls: {{}} }}\n",
        http.port(),
        grpc.port()
    ))
    .await;
    let client = reqwest::Client::new();
    let mut rng = rand::rngs::StdRng::seed_from_u64(4);
    let svc = checkout("1.0", 0.0);
    for _ in 0..10 {
        trike_tests::post_spans(&client, &running, &svc, 20, 1_000_000, &mut rng).await;
    }
    // The hop's admin API wants a client certificate too: read its engine in process.
    let at_hop = || {
        let engine = hop.state.worker.engine().lock();
        engine
            .service_sums_prorated("checkout", trike_engine::Span::minutes(5))
            .requests
    };
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    while at_hop() < 400.0 && std::time::Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(at_hop(), 400.0, "each span once per TLS hop");
    let untrusting = format!("localhost:{}", grpc.port());
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    loop {
        let m = metrics_text(&running).await;
        let of = |outcome: &str| forwarded(&m, &untrusting, outcome);
        if of("dropped_failed") >= 10.0 {
            assert_eq!(of("sent"), 0.0, "{m}");
            // A failed handshake is retried, as a connection error is (and as the
            // Collector retries it: UNAVAILABLE).
            assert_eq!(of("retried"), 4.0 * of("dropped_failed"), "{m}");
            break;
        }
        assert!(std::time::Instant::now() < deadline, "{m}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(at_hop(), 400.0);
    running.stop().await.unwrap();
    hop.stop().await.unwrap();
    let _ = std::fs::remove_dir_all(&dir);
}

/// Scenario: three hops accept TCP connections and never answer (nor read): one spoken to over
/// gRPC with TLS (the handshake stalls), one over plaintext gRPC, one over HTTP; each with
/// `timeout: 1s`. A client sends 4 requests.
/// Guarantees: every attempt ends at the timeout, so each hop retries each request and drops
/// it within seconds (at the default 10 s this takes 51 s per request); nothing is counted as
/// sent; the SLI path counted every span.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hops_that_stall_are_timed_out() {
    let mut stalling = Vec::new();
    let mut held = Vec::new();
    for _ in 0..3 {
        let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        stalling.push(l.local_addr().unwrap());
        let (tx, rx) = std::sync::mpsc::channel();
        held.push(rx);
        // Accepts, and keeps every connection open without a byte either way.
        tokio::spawn(async move {
            while let Ok((conn, _)) = l.accept().await {
                let _ = tx.send(conn);
            }
        });
    }
    let [tls_grpc, grpc, http] = [stalling[0], stalling[1], stalling[2]];
    let running = start_trike(&format!(
        "forward:\n  - {{ endpoint: \"{tls_grpc}\", protocol: grpc, tls: {{}}, timeout: 1s }}\n  - {{ endpoint: \"{grpc}\", protocol: grpc, timeout: 1s }}\n  - {{ endpoint: \"{http}\", protocol: http, timeout: 1s }}\n"
    ))
    .await;
    let client = reqwest::Client::new();
    let mut rng = rand::rngs::StdRng::seed_from_u64(5);
    let svc = checkout("1.0", 0.0);
    for _ in 0..4 {
        trike_tests::post_spans(&client, &running, &svc, 10, 1_000_000, &mut rng).await;
    }
    assert_eq!(
        wait_for_requests(&running, "checkout", 40, Duration::from_secs(10)).await,
        40
    );
    // Four senders per hop, five attempts of at most 1 s and 1.5 s of backoff per request.
    let deadline = std::time::Instant::now() + Duration::from_secs(25);
    loop {
        let m = metrics_text(&running).await;
        let of = |hop: std::net::SocketAddr, outcome: &str| forwarded(&m, hop, outcome);
        if stalling.iter().all(|h| of(*h, "dropped_failed") >= 4.0) {
            for h in &stalling {
                assert_eq!((of(*h, "sent"), of(*h, "retried")), (0.0, 16.0), "{h}: {m}");
            }
            break;
        }
        assert!(std::time::Instant::now() < deadline, "{m}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    running.stop().await.unwrap();
    drop(held);
}

/// The times a scripted hop was called, and what it answers to its `n`th call (from 0).
type Calls = Arc<Mutex<Vec<std::time::Instant>>>;
type Script = Box<dyn Fn(usize) -> Result<(), tonic::Status> + Send + Sync>;

/// A next hop speaking OTLP/gRPC that answers as its script says.
struct ScriptedHop(Calls, Script);

#[tonic::async_trait]
impl TraceService for ScriptedHop {
    async fn export(
        &self,
        _: tonic::Request<ExportTraceServiceRequest>,
    ) -> Result<tonic::Response<ExportTraceServiceResponse>, tonic::Status> {
        let n = {
            let mut calls = self.0.lock().unwrap();
            calls.push(std::time::Instant::now());
            calls.len() - 1
        };
        (self.1)(n)?;
        Ok(tonic::Response::new(ExportTraceServiceResponse::default()))
    }
}

async fn scripted_grpc_hop(script: Script) -> (std::net::SocketAddr, Calls) {
    let calls: Calls = Default::default();
    (
        serve_trace_hop(ScriptedHop(calls.clone(), script)).await,
        calls,
    )
}

/// Scenario: three hops refuse a request as OTLP servers do when busy: a gRPC hop answers
/// RESOURCE_EXHAUSTED without `RetryInfo` every time; a gRPC hop answers RESOURCE_EXHAUSTED
/// with `RetryInfo` (1 s) once, then takes it; an HTTP hop answers 429 with `Retry-After: 1`
/// once, then takes it. One request is sent.
/// Guarantees: the first hop is tried once and the request dropped (the spec: not retryable
/// without RetryInfo); the other two get it twice and keep it, the second attempt at least the
/// 1 s they asked for after the first (the backoff alone would be 100 ms).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hops_are_retried_when_and_as_they_ask() {
    use axum::response::IntoResponse;
    use tonic_types::{ErrorDetails, StatusExt};
    let (exhausted, exhausted_calls) = scripted_grpc_hop(Box::new(|_| {
        Err(tonic::Status::resource_exhausted("busy, no word on when"))
    }))
    .await;
    let (throttled, throttled_calls) = scripted_grpc_hop(Box::new(|n| match n {
        0 => Err(tonic::Status::with_error_details(
            tonic::Code::ResourceExhausted,
            "busy: come back in a second",
            ErrorDetails::with_retry_info(Some(Duration::from_secs(1))),
        )),
        _ => Ok(()),
    }))
    .await;
    let http_calls: Calls = Default::default();
    let http_listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let http = http_listener.local_addr().unwrap();
    let calls = http_calls.clone();
    let app = axum::Router::new().route(
        "/v1/traces",
        axum::routing::post(move || {
            let calls = calls.clone();
            async move {
                let n = {
                    let mut c = calls.lock().unwrap();
                    c.push(std::time::Instant::now());
                    c.len() - 1
                };
                match n {
                    0 => (
                        axum::http::StatusCode::TOO_MANY_REQUESTS,
                        [(axum::http::header::RETRY_AFTER, "1")],
                    )
                        .into_response(),
                    _ => axum::http::StatusCode::OK.into_response(),
                }
            }
        }),
    );
    tokio::spawn(async move { axum::serve(http_listener, app).await });
    let running = start_trike(&format!(
        "forward:\n  - {{ endpoint: \"{exhausted}\", protocol: grpc }}\n  - {{ endpoint: \"{throttled}\", protocol: grpc }}\n  - {{ endpoint: \"{http}\", protocol: http }}\n"
    ))
    .await;
    let client = reqwest::Client::new();
    let mut rng = rand::rngs::StdRng::seed_from_u64(11);
    trike_tests::post_spans(
        &client,
        &running,
        &checkout("1.0", 0.0),
        10,
        1_000_000,
        &mut rng,
    )
    .await;
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    let m = loop {
        let m = metrics_text(&running).await;
        if forwarded(&m, exhausted, "dropped_failed") >= 1.0
            && forwarded(&m, throttled, "sent") >= 1.0
            && forwarded(&m, http, "sent") >= 1.0
        {
            break m;
        }
        assert!(std::time::Instant::now() < deadline, "{m}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    let of = |hop, outcome: &str| forwarded(&m, hop, outcome);
    assert_eq!(
        (of(exhausted, "retried"), of(exhausted, "sent")),
        (0.0, 0.0),
        "{m}"
    );
    assert_eq!(exhausted_calls.lock().unwrap().len(), 1, "tried once");
    for (hop, calls) in [(throttled, &throttled_calls), (http, &http_calls)] {
        assert_eq!(
            (of(hop, "retried"), of(hop, "dropped_failed")),
            (1.0, 0.0),
            "{hop}: {m}"
        );
        let calls = calls.lock().unwrap().clone();
        assert_eq!(calls.len(), 2, "{hop}");
        let waited = calls[1] - calls[0];
        assert!(
            waited >= Duration::from_secs(1),
            "{hop}: retried after {waited:?}"
        );
    }
    running.stop().await.unwrap();
}

/// Scenario: Trike forwards to an OTLP/gRPC hop and an OTLP/HTTP hop; a client sends one
/// OTLP/JSON request of 30 spans.
/// Guarantees: the gRPC hop gets it re-encoded as protobuf (gRPC's only encoding), the same
/// message; the HTTP hop gets the very JSON bytes with their content type; both count it sent,
/// none unsupported.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn json_requests_reach_a_grpc_hop_as_protobuf() {
    let (grpc_addr, grpc_seen) = grpc_hop().await;
    let (http_addr, http_seen) = http_hop().await;
    let running = start_trike(&format!(
        "forward:\n  - {{ endpoint: \"{grpc_addr}\", protocol: grpc }}\n  - {{ endpoint: \"{http_addr}\", protocol: http }}\n"
    ))
    .await;
    let mut rng = rand::rngs::StdRng::seed_from_u64(21);
    let request =
        checkout("1.0", 0.1).request(30, trike_runtime::clock::now_nanos(), 1_000_000, &mut rng);
    let json = serde_json::to_vec(&request).unwrap();
    let r = reqwest::Client::new()
        .post(format!("http://{}/v1/traces", running.http_addr))
        .header("content-type", "application/json")
        .body(json.clone())
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    while (grpc_seen.lock().unwrap().is_empty() || http_seen.lock().unwrap().is_empty())
        && std::time::Instant::now() < deadline
    {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let grpc = grpc_seen.lock().unwrap().clone();
    assert_eq!(grpc.len(), 1);
    assert_eq!(
        grpc[0].2,
        request.encode_to_vec(),
        "the same message, as protobuf"
    );
    let http = http_seen.lock().unwrap().clone();
    assert_eq!(http.len(), 1);
    assert_eq!(http[0].content_type, "application/json");
    assert_eq!(http[0].body, json, "the very JSON bytes");
    // (A hop's answer is counted as it reaches the sender, just after the hop kept it.)
    let m = loop {
        let m = metrics_text(&running).await;
        if [grpc_addr, http_addr]
            .iter()
            .all(|hop| forwarded(&m, hop, "sent") >= 1.0)
        {
            break m;
        }
        assert!(std::time::Instant::now() < deadline, "{m}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    for hop in [grpc_addr, http_addr] {
        assert_eq!(forwarded(&m, hop, "sent"), 1.0, "{m}");
        assert_eq!(forwarded(&m, hop, "unsupported"), 0.0, "{m}");
    }
    running.stop().await.unwrap();
}
