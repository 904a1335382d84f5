//! The fleet on a real Kafka-protocol broker (tansu, started by `scripts/test`), as separate
//! `trike run --role …` processes: two gateways and a processor, plus a single `--role all`
//! process fed the very same requests as the reference.
//!
//! Real OTLP clients send to both gateways: the OTel project's generated gRPC client
//! (`TraceServiceClient`) with requests of known content, alternating between the gateways, and
//! the OpenTelemetry SDK's HTTP exporter. Mid-stream the processor is SIGKILLed and restarted
//! from its `state.dir`.
//!
//! Guarantees: every service's counts at the processor equal what the gateways acknowledged
//! (`fleet.ack: durable`: a request is answered once its partials are on the broker) — requests
//! and errors exactly, per series — and its latency quantiles match the single process's within
//! the digest's error; the gateways' own counters agree.
//!
//! Needs `TRIKE_TEST_KAFKA_BROKERS`; without it the test says SKIPPED locally and fails in CI.

use rand::SeedableRng;
use serde_json::Value;
use std::collections::BTreeMap;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};
use trike::synth::{Behaviour, Service};
use trike_proto::collector::trace::v1::trace_service_client::TraceServiceClient;

fn brokers() -> Option<String> {
    match std::env::var("TRIKE_TEST_KAFKA_BROKERS") {
        Ok(b) if !b.is_empty() => Some(b),
        _ if std::env::var("CI").is_ok() => {
            panic!("CI must provide TRIKE_TEST_KAFKA_BROKERS (scripts/test starts tansu)")
        }
        _ => {
            eprintln!(
                "SKIPPED: set TRIKE_TEST_KAFKA_BROKERS to a Kafka-protocol broker (scripts/test starts one)"
            );
            None
        }
    }
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

struct Trike {
    child: Child,
    admin: u16,
    grpc: u16,
    http: u16,
}

impl Drop for Trike {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn spawn(config: &Path, role: &str, admin: u16) -> Trike {
    let (grpc, http) = (free_port(), free_port());
    let child = Command::new(env!("CARGO_BIN_EXE_trike"))
        .args(["run", "--role", role, "--config"])
        .arg(config)
        .args(["--otlp-grpc-addr", &format!("127.0.0.1:{grpc}")])
        .args(["--otlp-http-addr", &format!("127.0.0.1:{http}")])
        .args(["--admin-addr", &format!("127.0.0.1:{admin}")])
        .env(
            "TRIKE_LOG",
            std::env::var("FLEET_TEST_LOG").unwrap_or_else(|_| "warn".into()),
        )
        .stdout(Stdio::null())
        .stderr(Stdio::inherit())
        .spawn()
        .expect("the trike binary starts");
    let t = Trike {
        child,
        admin,
        grpc,
        http,
    };
    let start = Instant::now();
    while get(&t, "/readyz").is_none() {
        assert!(
            start.elapsed() < Duration::from_secs(30),
            "trike --role {role} did not become ready"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    t
}

fn get(t: &Trike, path: &str) -> Option<String> {
    let r = reqwest::blocking::get(format!("http://127.0.0.1:{}{path}", t.admin)).ok()?;
    (r.status() == 200).then(|| r.text().ok()).flatten()
}

/// Per series (operation, version): (requests, errors, [p50, p90, p99]).
type Slis = BTreeMap<(String, String), (u64, u64, Vec<f64>)>;

fn slis(t: &Trike, service: &str) -> Slis {
    let Some(text) = get(t, &format!("/api/v1/slis?service={service}&window=5m")) else {
        return Slis::new();
    };
    let doc: Value = serde_json::from_str(&text).unwrap();
    doc["series"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| {
            let q = ["p50", "p90", "p99"]
                .iter()
                .map(|k| s["latency_ms"][k].as_f64().unwrap_or(f64::NAN))
                .collect();
            (
                (
                    s["operation"].as_str().unwrap().to_string(),
                    s["version"].as_str().unwrap().to_string(),
                ),
                (
                    s["requests"].as_u64().unwrap(),
                    s["errors"].as_u64().unwrap(),
                    q,
                ),
            )
        })
        .collect()
}

fn total(s: &Slis) -> u64 {
    s.values().map(|v| v.0).sum()
}

/// Waits until `t` counts at least `want` requests of `service` (or `timeout` passes).
fn wait_total(t: &Trike, service: &str, want: u64, timeout: Duration) -> Slis {
    let start = Instant::now();
    loop {
        let s = slis(t, service);
        if total(&s) >= want || start.elapsed() > timeout {
            // A little longer, so a count above `want` (counted twice) would show.
            std::thread::sleep(Duration::from_millis(1500));
            return slis(t, service);
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

fn metric(t: &Trike, name: &str) -> f64 {
    let text = get(t, "/metrics").unwrap_or_default();
    text.lines()
        .find_map(|l| l.strip_prefix(name)?.strip_prefix(' ')?.trim().parse().ok())
        .unwrap_or(0.0)
}

fn svc(name: &str, version: &str, error_ratio: f64) -> Service {
    Service {
        name: name.into(),
        version: version.into(),
        routes: vec!["/pay".into(), "/cart".into(), "/ship".into()],
        behaviour: Behaviour {
            median_ms: 40.0,
            sigma: 0.8,
            error_ratio,
        },
    }
}

/// What the clients were told was accepted, per (service, route, version): (requests, errors).
type Acked = BTreeMap<(String, String, String), (u64, u64)>;

fn count(acked: &mut Acked, req: &trike_proto::collector::trace::v1::ExportTraceServiceRequest) {
    for rs in &req.resource_spans {
        let attr = |k: &str| {
            rs.resource.as_ref().and_then(|r| {
                r.attributes.iter().find(|a| a.key == k).and_then(|a| {
                    match a.value.as_ref()?.value.as_ref()? {
                        trike_proto::common::v1::any_value::Value::StringValue(s) => {
                            Some(s.clone())
                        }
                        _ => None,
                    }
                })
            })
        };
        let (service, version) = (
            attr("service.name").unwrap(),
            attr("service.version").unwrap(),
        );
        for s in rs.scope_spans.iter().flat_map(|ss| &ss.spans) {
            let route = s.name.trim_start_matches("GET ").to_string();
            let bad = s.status.as_ref().is_some_and(|st| st.code == 2);
            let e = acked
                .entry((service.clone(), route, version.clone()))
                .or_default();
            e.0 += 1;
            e.1 += u64::from(bad);
        }
    }
}

fn write_config(dir: &Path, name: &str, yaml: &str) -> std::path::PathBuf {
    let p = dir.join(name);
    std::fs::write(&p, yaml).unwrap();
    p
}

#[test]
fn two_gateways_and_a_processor_count_exactly_what_was_acknowledged() {
    let Some(brokers) = brokers() else { return };
    let run = format!(
        "{}x{}",
        std::process::id(),
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_millis()
    );
    let dir = std::env::temp_dir().join(format!("trike-fleet-{run}"));
    std::fs::create_dir_all(dir.join("state")).unwrap();
    let common = format!(
        "fleet: {{ partials_topic: fleet{run}.partials, group_id: trike-processors-{run}, partitions: 4, flush_interval: 250ms }}\n\
         slos:\n  - {{ name: checkout-latency, service: checkout, objective: 0.99, sli: {{ latency: {{ threshold_ms: 100 }} }} }}\n\
         sinks: [ {{ type: stdout }} ]\n"
    );
    let gateway_cfg = write_config(
        &dir,
        "gateway.yaml",
        &format!(
            "{common}kafka: {{ brokers: \"{brokers}\", control_topic: fleet{run}.control }}\n"
        ),
    );
    let processor_cfg = write_config(
        &dir,
        "processor.yaml",
        // Static membership, as the Helm chart sets it (the StatefulSet pod name): a restart
        // takes its partitions back at once.
        &format!(
            "{common}state: {{ dir: {}, checkpoint_every: 1s }}\n\
             kafka: {{ brokers: \"{brokers}\", control_topic: fleet{run}.control, ingest: {{ group_instance_id: processor-0 }} }}\n",
            dir.join("state").display()
        ),
    );
    let all_cfg = write_config(
        &dir,
        "all.yaml",
        "slos:\n  - { name: checkout-latency, service: checkout, objective: 0.99, sli: { latency: { threshold_ms: 100 } } }\n",
    );

    let gateways = [
        spawn(&gateway_cfg, "gateway", free_port()),
        spawn(&gateway_cfg, "gateway", free_port()),
    ];
    let processor_admin = free_port();
    let mut processor = Some(spawn(&processor_cfg, "processor", processor_admin));
    let single = spawn(&all_cfg, "all", free_port());

    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let mut acked = Acked::new();
    let versions = [svc("checkout", "1.0", 0.02), svc("checkout", "1.1", 0.10)];
    let mut rng = rand::rngs::StdRng::seed_from_u64(20_261_203);
    let requests = 240;
    rt.block_on(async {
        let connect = |port: u16| async move {
            TraceServiceClient::connect(format!("http://127.0.0.1:{port}"))
                .await
                .unwrap()
        };
        let to_gateway = [
            connect(gateways[0].grpc).await,
            connect(gateways[1].grpc).await,
        ];
        let to_single = connect(single.grpc).await;
        // Rounds of 8 concurrent requests (a gateway answers each at its next flush).
        for round in 0..requests / 8 {
            // The processor dies a third of the way through, and comes back from its state.
            if round == requests / 8 / 3 {
                tokio::task::block_in_place(|| {
                    let mut p = processor.take().unwrap();
                    p.child.kill().unwrap();
                    p.child.wait().unwrap();
                    drop(p);
                    processor = Some(spawn(&processor_cfg, "processor", processor_admin));
                });
            }
            let now = std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .unwrap()
                .as_nanos() as u64;
            let mut sent = Vec::new();
            for j in 0..8 {
                let i = round * 8 + j;
                let req = versions[i % 2].request(50, now, 200_000_000, &mut rng);
                let (mut g, mut one) = (to_gateway[i % 2].clone(), to_single.clone());
                sent.push(tokio::spawn(async move {
                    let r = g.export(req.clone()).await;
                    one.export(req.clone()).await.unwrap();
                    (i, r.map(|_| req))
                }));
            }
            for t in sent {
                match t.await.unwrap() {
                    (_, Ok(req)) => count(&mut acked, &req),
                    (i, Err(e)) => panic!("gateway {} refused request {i}: {e}", i % 2),
                }
            }
        }
    });

    // The SDK's HTTP exporter (its blocking client) to the second gateway: a service of its own.
    {
        use opentelemetry::trace::{Span as _, SpanKind, Tracer as _, TracerProvider as _};
        use opentelemetry_otlp::WithExportConfig;
        let exporter = opentelemetry_otlp::SpanExporter::builder()
            .with_http()
            .with_endpoint(format!("http://127.0.0.1:{}/v1/traces", gateways[1].http))
            .build()
            .unwrap();
        let provider = opentelemetry_sdk::trace::SdkTracerProvider::builder()
            .with_simple_exporter(exporter)
            .with_resource(
                opentelemetry_sdk::Resource::builder()
                    .with_service_name("search")
                    .build(),
            )
            .build();
        let tracer = provider.tracer("fleet-test");
        for _ in 0..200 {
            let mut span = tracer
                .span_builder("GET /q")
                .with_kind(SpanKind::Server)
                .start(&tracer);
            span.end();
        }
        provider.force_flush().unwrap();
        provider.shutdown().unwrap();
    }

    let processor = processor.unwrap();
    let want: u64 = acked.values().map(|v| v.0).sum();
    assert_eq!(want, requests as u64 * 50);
    let fleet = wait_total(&processor, "checkout", want, Duration::from_secs(60));
    let reference = wait_total(&single, "checkout", want, Duration::from_secs(30));
    let mut by_series: BTreeMap<(String, String), (u64, u64)> = BTreeMap::new();
    for ((_, route, version), (r, e)) in &acked {
        let s = by_series
            .entry((route.clone(), version.clone()))
            .or_default();
        s.0 += r;
        s.1 += e;
    }
    let counted: BTreeMap<_, _> = fleet.iter().map(|(k, v)| (k.clone(), (v.0, v.1))).collect();
    if counted != by_series {
        let m = get(&processor, "/metrics").unwrap_or_default();
        for l in m
            .lines()
            .filter(|l| l.contains("kafka") || l.contains("engine_"))
        {
            eprintln!("processor: {l}");
        }
    }
    assert_eq!(
        counted, by_series,
        "the processor counts what was acknowledged"
    );
    for (k, (r, e, q)) in &fleet {
        let (rr, re, rq) = &reference[k];
        assert_eq!((r, e), (rr, re), "{k:?}");
        for (a, b) in q.iter().zip(rq) {
            assert!(
                (a - b).abs() <= 0.05 * b.max(1.0),
                "{k:?}: quantiles {q:?} vs {rq:?}"
            );
        }
    }
    let search = wait_total(&processor, "search", 200, Duration::from_secs(30));
    assert_eq!(total(&search), 200, "{search:?}");
    let published: f64 = gateways
        .iter()
        .map(|g| metric(g, "trike_gateway_observations_total"))
        .sum();
    assert_eq!(published as u64, want + 200);
    eprintln!(
        "fleet: {want} checkout spans + 200 search spans through 2 gateways, counted exactly by a processor SIGKILLed and restarted mid-stream"
    );
    let _ = std::fs::remove_dir_all(&dir);
}
