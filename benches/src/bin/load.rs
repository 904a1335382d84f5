//! End-to-end load and freshness harness.
//!
//! Starts `trike run` in this process on ephemeral loopback ports, drives OTLP/HTTP protobuf
//! load at it from `--clients` concurrent senders, and meanwhile measures freshness: every
//! 100 ms a probe sends one span for a fresh service and polls `/api/v1/slis` until it is
//! visible; the time from sending to visible is one freshness sample.
//!
//! Options for the trust-boundary measurements: `--tls` (server TLS with generated
//! certificates) and `--token` (an ingest token) for the cost of both, `--memory-limit` and
//! `--rate` for overload (2× the sustainable rate: every accepted span must be applied, the
//! refusals carry `Retry-After`, resident memory stays under the limit, and freshness is
//! probed again for `--recovery-s` after the load stops), `--queries N` for N heavy SQL queries
//! running back to back during the load (freshness under queries).
//!
//! `--forward grpc|http` forwards every request to an in-process next hop (`forward:`, gzipped
//! unless `--forward-compression none`) and counts what it receives, for the SLI path's
//! throughput with and without forwarding.
//!
//! `--fleet` runs the same load through a gateway and a processor (both in this process, over
//! an in-process broker): span sent to the gateway → visible in the processor's API.
//!
//! Run: `cargo run --release -p trike-benches --bin load -- --duration-s 20 [--fleet]`

use clap::Parser;
use prost::Message;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::time::{Duration, Instant};
use trike::config::validate::Overrides;
use trike::config::{Config, RawConfig};

#[derive(Debug, Parser)]
struct Args {
    /// Seconds of load.
    #[arg(long, default_value_t = 20)]
    duration_s: u64,
    /// Concurrent senders.
    #[arg(long, default_value_t = 4)]
    clients: usize,
    /// Spans per export request.
    #[arg(long, default_value_t = 500)]
    spans_per_request: usize,
    /// Distinct routes (series) per client.
    #[arg(long, default_value_t = 50)]
    routes: usize,
    /// Target spans/s across all clients (0: as fast as possible).
    #[arg(long, default_value_t = 0)]
    rate: u64,
    /// Serve OTLP/HTTP and the admin API over TLS (generated certificates).
    #[arg(long)]
    tls: bool,
    /// Require an ingest bearer token (and send it).
    #[arg(long)]
    token: bool,
    /// `limits.memory_limit` (e.g. 512MiB); default: Trike's default.
    #[arg(long)]
    memory_limit: Option<String>,
    /// Heavy SQL queries kept running back to back during the load.
    #[arg(long, default_value_t = 0)]
    queries: usize,
    /// Seconds of freshness probes after the load stops (recovery).
    #[arg(long, default_value_t = 0)]
    recovery_s: u64,
    /// The fleet path (DESIGN §6): load goes to a `--role gateway`, which publishes partials to
    /// an in-process Kafka-protocol broker (librdkafka's mock cluster); a `--role processor` in
    /// this process reads them, and freshness is measured at the processor's API.
    #[arg(long)]
    fleet: bool,
    /// Forward every request to a next hop over this protocol (`grpc` or `http`): an
    /// in-process OTLP sink that counts what it receives (`forward:`, DESIGN §10).
    #[arg(long)]
    forward: Option<String>,
    /// The next hop's `compression` (`gzip`, the default, or `none`).
    #[arg(long, default_value = "gzip")]
    forward_compression: String,
}

/// A next hop for `--forward`: OTLP/HTTP `/v1/traces` and OTLP/gRPC trace export (both take
/// gzip), counting requests and bytes (HTTP: as they came over the wire; gRPC: the message).
async fn start_sink(
    protocol: &str,
    requests: Arc<AtomicU64>,
    bytes: Arc<AtomicU64>,
) -> anyhow::Result<std::net::SocketAddr> {
    use trike_proto::collector::trace::v1::trace_service_server::{
        TraceService, TraceServiceServer,
    };
    use trike_proto::collector::trace::v1::{
        ExportTraceServiceRequest, ExportTraceServiceResponse,
    };
    struct Sink(Arc<AtomicU64>, Arc<AtomicU64>);
    #[tonic::async_trait]
    impl TraceService for Sink {
        async fn export(
            &self,
            r: tonic::Request<ExportTraceServiceRequest>,
        ) -> Result<tonic::Response<ExportTraceServiceResponse>, tonic::Status> {
            self.0.fetch_add(1, Relaxed);
            self.1
                .fetch_add(r.into_inner().encoded_len() as u64, Relaxed);
            Ok(tonic::Response::new(ExportTraceServiceResponse::default()))
        }
    }
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let addr = listener.local_addr()?;
    if protocol == "grpc" {
        drop(listener);
        tokio::spawn(
            tonic::transport::Server::builder()
                .add_service(
                    TraceServiceServer::new(Sink(requests, bytes))
                        .accept_compressed(tonic::codec::CompressionEncoding::Gzip),
                )
                .serve(addr),
        );
    } else {
        let app = axum::Router::new().route(
            "/v1/traces",
            axum::routing::post(move |body: axum::body::Bytes| {
                let (r, b) = (requests.clone(), bytes.clone());
                async move {
                    r.fetch_add(1, Relaxed);
                    b.fetch_add(body.len() as u64, Relaxed);
                    axum::http::StatusCode::OK
                }
            }),
        );
        tokio::spawn(async move { axum::serve(listener, app).await });
    }
    Ok(addr)
}

/// The allocator `trike` runs with (resident memory falls again after a burst).
#[global_allocator]
static ALLOC: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

const TOKEN: &str = "load-ingest-token-0123456789abcdef";

/// This process's resident memory (bytes).
fn rss() -> u64 {
    trike_ingest::memory::process_rss().unwrap_or(0)
}

fn now_ns() -> u64 {
    trike_runtime::clock::now_nanos()
}

fn cpu_seconds() -> f64 {
    trike_benches::cpu_seconds_of("self")
}

/// CPU seconds per thread name (threads of one name summed), largest first.
fn thread_cpu() -> String {
    let v = trike_benches::thread_cpu_of("self");
    v.iter()
        .map(|(n, s)| format!("{n} {s:.1}"))
        .collect::<Vec<_>>()
        .join(", ")
}

fn percentile(sorted: &[f64], q: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    sorted[((q * sorted.len() as f64).ceil() as usize).clamp(1, sorted.len()) - 1]
}

/// One freshness sample: sends one span for a fresh service `probe-N` and polls the SLI API
/// until it is visible; milliseconds from sending to visible (5 000 when it never shows), or
/// None when the span was refused.
async fn freshness(
    client: &reqwest::Client,
    url: &str,
    slis_url: &str,
    probe: u64,
) -> anyhow::Result<Option<f64>> {
    let service = format!("probe-{probe}");
    let mut req = trike_benches::trace_request(1, 1, now_ns());
    req.resource_spans[0].resource.as_mut().unwrap().attributes[0].value =
        Some(trike_proto::common::v1::AnyValue {
            value: Some(trike_proto::common::v1::any_value::Value::StringValue(
                service.clone(),
            )),
        });
    let start = Instant::now();
    let r = client
        .post(url)
        .header("content-type", "application/x-protobuf")
        .body(req.encode_to_vec())
        .send()
        .await?;
    if !r.status().is_success() {
        return Ok(None);
    }
    let probe_url = format!("{slis_url}{service}");
    loop {
        let doc: serde_json::Value = client.get(&probe_url).send().await?.json().await?;
        if doc["series"].as_array().is_some_and(|s| !s.is_empty()) {
            return Ok(Some(start.elapsed().as_secs_f64() * 1000.0));
        }
        if start.elapsed() > Duration::from_secs(5) {
            return Ok(Some(5000.0));
        }
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
}

#[tokio::main(flavor = "multi_thread")]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let o = Overrides {
        otlp_grpc_addr: Some("127.0.0.1:0".into()),
        otlp_http_addr: Some("127.0.0.1:0".into()),
        admin_addr: Some("127.0.0.1:0".into()),
        ..Default::default()
    };
    let mut yaml = String::new();
    let pki_dir = std::env::temp_dir().join(format!("trike-load-pki-{}", std::process::id()));
    let pki = args.tls.then(|| trike_tests::pki::Pki::write(&pki_dir));
    if let Some(p) = &pki {
        yaml.push_str(&p.yaml(false));
    }
    if args.token {
        yaml.push_str(&format!("auth: {{ ingest_tokens: [\"{TOKEN}\"] }}\n"));
    }
    if let Some(m) = &args.memory_limit {
        yaml.push_str(&format!("limits: {{ memory_limit: {m} }}\n"));
    }
    let (forwarded, forwarded_bytes) = (Arc::new(AtomicU64::new(0)), Arc::new(AtomicU64::new(0)));
    if let Some(protocol) = &args.forward {
        let addr = start_sink(protocol, forwarded.clone(), forwarded_bytes.clone()).await?;
        yaml.push_str(&format!(
            "forward: [{{ endpoint: \"{addr}\", protocol: {protocol}, compression: {} }}]\n",
            args.forward_compression
        ));
    }
    let broker = if args.fleet {
        let b = trike::embedded_broker::EmbeddedBroker::start(&[
            ("trike.partials".into(), 4),
            ("trike.changelog".into(), 4),
            ("trike.members".into(), 1),
        ])?;
        yaml.push_str(&format!(
            "kafka: {{ brokers: \"{}\" }}\n",
            b.bootstrap_servers()
        ));
        Some(b)
    } else {
        None
    };
    let validate = |role| {
        let o = Overrides {
            role: Some(role),
            ..o.clone()
        };
        Config::validate(RawConfig::from_yaml(&yaml).map_err(anyhow::Error::msg)?, &o)
            .map_err(|p| anyhow::anyhow!(p.join("; ")))
    };
    use trike::config::fleet::Role;
    let cfg = validate(if args.fleet { Role::Gateway } else { Role::All })?;
    let memory_limit = cfg.memory_limit;
    let running = trike::app::start(cfg).await?;
    // With --fleet, SLIs are read (and spans counted) at the processor.
    let processor = if args.fleet {
        Some(trike::app::start(validate(Role::Processor)?).await?)
    } else {
        None
    };
    let engine_side = processor.as_ref().unwrap_or(&running);
    let scheme = if args.tls { "https" } else { "http" };
    let host = |a: std::net::SocketAddr| {
        if args.tls {
            format!("localhost:{}", a.port())
        } else {
            a.to_string()
        }
    };
    let url = format!("{scheme}://{}/v1/traces", host(running.http_addr));
    let admin = host(running.admin_addr);
    let engine_admin = host(engine_side.admin_addr);
    let mut builder = reqwest::Client::builder().pool_max_idle_per_host(64);
    if let Some(p) = &pki {
        builder =
            builder.add_root_certificate(reqwest::Certificate::from_pem(p.ca_pem.as_bytes())?);
    }
    if args.token {
        let mut h = reqwest::header::HeaderMap::new();
        h.insert(
            reqwest::header::AUTHORIZATION,
            format!("Bearer {TOKEN}").parse()?,
        );
        builder = builder.default_headers(h);
    }
    let client = builder.build()?;
    let sent = Arc::new(AtomicU64::new(0));
    let refused = Arc::new(AtomicU64::new(0));
    let retry_after = Arc::new(parking_lot::Mutex::new(Vec::<u64>::new()));
    let peak_rss = Arc::new(AtomicU64::new(rss()));
    {
        let peak = peak_rss.clone();
        std::thread::spawn(move || {
            loop {
                peak.fetch_max(rss(), Relaxed);
                std::thread::sleep(Duration::from_millis(50));
            }
        });
    }
    let queries_run = Arc::new(AtomicU64::new(0));
    let send_errors = Arc::new(AtomicU64::new(0));
    let deadline = Instant::now() + Duration::from_secs(args.duration_s);
    let cpu0 = cpu_seconds();
    let t0 = Instant::now();

    let mut senders = Vec::new();
    for c in 0..args.clients {
        let (client, url, sent, refused, retry_after, send_errors) = (
            client.clone(),
            url.clone(),
            sent.clone(),
            refused.clone(),
            retry_after.clone(),
            send_errors.clone(),
        );
        let (n, routes) = (args.spans_per_request, args.routes);
        let per_client_rate = args.rate as f64 / args.clients as f64;
        senders.push(tokio::spawn(async move {
            let mut body = Vec::new();
            let mut built_at = Instant::now() - Duration::from_secs(10);
            let mut next = Instant::now();
            while Instant::now() < deadline {
                // Fresh event times every 200 ms; encoding is then off the hot path.
                if built_at.elapsed() > Duration::from_millis(200) {
                    let req =
                        trike_benches::trace_request_of(&format!("load-{c}"), n, routes, now_ns());
                    body = req.encode_to_vec();
                    built_at = Instant::now();
                }
                if per_client_rate > 0.0 {
                    tokio::time::sleep_until(next.into()).await;
                    next += Duration::from_secs_f64(n as f64 / per_client_rate);
                }
                match client
                    .post(&url)
                    .header("content-type", "application/x-protobuf")
                    .body(body.clone())
                    .send()
                    .await
                {
                    Ok(r) if r.status().is_success() => {
                        sent.fetch_add(n as u64, Relaxed);
                    }
                    Ok(r) if r.status().as_u16() == 429 => {
                        refused.fetch_add(n as u64, Relaxed);
                        let after = r
                            .headers()
                            .get("retry-after")
                            .and_then(|v| v.to_str().ok()?.parse::<u64>().ok());
                        retry_after.lock().push(after.unwrap_or(0));
                        // A real exporter backs off; this one only briefly, to keep pressing.
                        tokio::time::sleep(Duration::from_millis(5)).await;
                    }
                    Ok(r) => anyhow::bail!("unexpected status {}", r.status()),
                    Err(e) => {
                        // Counted, as an exporter would count a failed export and retry it.
                        send_errors.fetch_add(1, Relaxed);
                        if send_errors.load(Relaxed) == 1 {
                            eprintln!("first send error: {e}");
                        }
                        tokio::time::sleep(Duration::from_millis(50)).await;
                    }
                }
            }
            Ok(())
        }));
    }

    // Heavy queries on the query threads, back to back.
    let mut query_tasks = Vec::new();
    for _ in 0..args.queries {
        let (client, admin, n) = (client.clone(), admin.clone(), queries_run.clone());
        query_tasks.push(tokio::spawn(async move {
            let url = format!("{scheme}://{admin}/api/v1/query");
            while Instant::now() < deadline {
                let _ = client
                    .post(&url)
                    .body("SELECT count(*) AS n, sum(value % 7) AS s FROM generate_series(1, 30000000)")
                    .send()
                    .await;
                n.fetch_add(1, Relaxed);
            }
        }));
    }

    // Freshness probe.
    let slis_url = format!("{scheme}://{engine_admin}/api/v1/slis?window=1m&service=");
    let mut fresh_ms = Vec::new();
    let mut probe = 0u64;
    // The processor's first group join takes a few seconds on the mock broker.
    tokio::time::sleep(Duration::from_millis(if args.fleet { 5000 } else { 500 })).await;
    while Instant::now() + Duration::from_millis(500) < deadline {
        probe += 1;
        // Refused under overload: not a freshness sample.
        if let Some(ms) = freshness(&client, &url, &slis_url, probe).await? {
            fresh_ms.push(ms);
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    for s in senders {
        s.await??;
    }
    let wall = t0.elapsed().as_secs_f64();
    let cpu = cpu_seconds() - cpu0;
    for q in query_tasks {
        let _ = q.await;
    }
    // Recovery: freshness once the load has stopped.
    let mut recovery_ms = Vec::new();
    let recovery_end = Instant::now() + Duration::from_secs(args.recovery_s);
    while Instant::now() < recovery_end {
        probe += 1;
        if let Some(ms) = freshness(&client, &url, &slis_url, probe).await? {
            recovery_ms.push(ms);
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    // Let the queue drain, then check every accepted span was applied.
    tokio::time::sleep(Duration::from_millis(if args.fleet { 3000 } else { 500 })).await;
    let applied = engine_side
        .state
        .worker
        .engine()
        .lock()
        .stats()
        .requests_applied;
    fresh_ms.sort_by(f64::total_cmp);
    let accepted = sent.load(Relaxed);
    println!(
        "load: {} clients × {} spans/request, {} routes each, {:.1} s",
        args.clients, args.spans_per_request, args.routes, wall
    );
    println!(
        "accepted spans:       {accepted} ({:.0} spans/s)",
        accepted as f64 / wall
    );
    println!("refused (429) spans:  {}", refused.load(Relaxed));
    println!("failed sends (no answer): {}", send_errors.load(Relaxed));
    println!(
        "applied by engine:    {applied} (accepted + {} probes)",
        fresh_ms.len()
    );
    println!(
        "process CPU:          {cpu:.1} s over {wall:.1} s wall ({:.0} spans per CPU-second, generator included)",
        accepted as f64 / cpu
    );
    println!(
        "freshness (send → visible in API), {} samples: p50 {:.1} ms, p99 {:.1} ms, max {:.1} ms",
        fresh_ms.len(),
        percentile(&fresh_ms, 0.5),
        percentile(&fresh_ms, 0.99),
        fresh_ms.last().copied().unwrap_or(f64::NAN)
    );
    let probes = (fresh_ms.len() + recovery_ms.len()) as u64;
    println!(
        "acknowledged, not applied: {} (applied − accepted − probes)",
        accepted as i64 + probes as i64 - applied as i64
    );
    let ra = retry_after.lock().clone();
    if !ra.is_empty() {
        println!(
            "429 answers: {}, Retry-After min {} s, max {} s, missing {}",
            ra.len(),
            ra.iter().filter(|&&x| x > 0).min().copied().unwrap_or(0),
            ra.iter().max().copied().unwrap_or(0),
            ra.iter().filter(|&&x| x == 0).count()
        );
    }
    println!(
        "resident memory: peak {:.0} MiB (limits.memory_limit {:.0} MiB)",
        peak_rss.load(Relaxed) as f64 / 1048576.0,
        memory_limit as f64 / 1048576.0
    );
    if args.queries > 0 {
        println!(
            "heavy SQL queries run: {} ({} at a time)",
            queries_run.load(Relaxed),
            args.queries
        );
    }
    if !recovery_ms.is_empty() {
        recovery_ms.sort_by(f64::total_cmp);
        println!(
            "freshness after the load stopped, {} samples: p50 {:.1} ms, p99 {:.1} ms",
            recovery_ms.len(),
            percentile(&recovery_ms, 0.5),
            percentile(&recovery_ms, 0.99)
        );
    }
    if args.forward.is_some() {
        // Let the forwarders drain before counting.
        tokio::time::sleep(Duration::from_secs(2)).await;
        println!(
            "forwarded:            {} requests, {:.1} MB at the next hop (HTTP: on the wire)",
            forwarded.load(Relaxed),
            forwarded_bytes.load(Relaxed) as f64 / 1e6
        );
    }
    println!("CPU by thread (s):    {}", thread_cpu());
    let _ = std::fs::remove_dir_all(&pki_dir);
    running.stop().await?;
    if let Some(p) = processor {
        p.stop().await?;
    }
    drop(broker);
    Ok(())
}
