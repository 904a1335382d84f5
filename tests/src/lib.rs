//! Helpers for the end-to-end tests: run the real processor in-process on ephemeral ports
//! and read its admin API.

mod chromium;
#[path = "../bin/common/ports.rs"]
mod ports;
#[path = "../bin/common/required.rs"]
mod required;
mod run;
pub mod traced_calls;
pub use chromium::{chromium, run_chromium};
pub use run::run_id;

use std::time::{Duration, Instant};
use trike::app::Running;
use trike::config::validate::Overrides;
use trike::config::{Config, RawConfig};

/// Exports `n` spans of `svc`, ending now and spread over the preceding `spread_ns`, to
/// `running` over OTLP/HTTP (protobuf), as an SDK exporter would; panics unless it is accepted.
pub async fn post_spans(
    client: &reqwest::Client,
    running: &Running,
    svc: &trike::synth::Service,
    n: usize,
    spread_ns: u64,
    rng: &mut impl rand::Rng,
) {
    use prost::Message;
    let body = svc
        .request(n, trike_runtime::clock::now_nanos(), spread_ns, rng)
        .encode_to_vec();
    let r = client
        .post(format!("http://{}/v1/traces", running.http_addr))
        .header("content-type", "application/x-protobuf")
        .body(body)
        .send()
        .await
        .expect("the OTLP/HTTP receiver answers");
    assert!(r.status().is_success(), "export refused: {}", r.status());
}

/// Starts `trike run` in this process with `yaml` as its config, on `127.0.0.1:0` ports.
pub async fn start_trike(yaml: &str) -> Running {
    start_trike_with_env(yaml, &|_| None, &[]).await
}

/// Like [`start_trike`], with `${VAR}` replaced by `env(VAR)`; panics when the validated
/// config's printed form (`check-config`'s output) shows any of `secrets`.
pub async fn start_trike_with_env(
    yaml: &str,
    env: &dyn Fn(&str) -> Option<String>,
    secrets: &[&str],
) -> Running {
    let raw = RawConfig::from_yaml_with(yaml, env).expect("test config parses");
    let o = Overrides {
        otlp_grpc_addr: Some("127.0.0.1:0".into()),
        otlp_http_addr: Some("127.0.0.1:0".into()),
        admin_addr: Some("127.0.0.1:0".into()),
        ..Default::default()
    };
    let cfg = Config::validate(raw, &o).expect("test config validates");
    let printed = format!("{cfg:?}");
    for s in secrets {
        assert!(
            !printed.contains(s),
            "a secret shows in check-config's output"
        );
    }
    trike::app::start(cfg).await.expect("trike starts")
}

/// Sends `n` server spans (`GET /pay`) of `service` with the real OpenTelemetry SDK through the
/// exporter `make` builds, and waits for the export to end. Runs on a blocking thread: an HTTP
/// exporter's client is a blocking one.
pub async fn emit_spans(
    make: impl FnOnce() -> opentelemetry_otlp::SpanExporter + Send + 'static,
    service: &'static str,
    n: usize,
) {
    use opentelemetry::KeyValue;
    use opentelemetry::trace::{Span as _, SpanKind, Tracer as _, TracerProvider as _};
    tokio::task::spawn_blocking(move || {
        let provider = opentelemetry_sdk::trace::SdkTracerProvider::builder()
            .with_batch_exporter(make())
            .with_resource(
                opentelemetry_sdk::Resource::builder()
                    .with_service_name(service)
                    .build(),
            )
            .build();
        let tracer = provider.tracer("trike-tests");
        for _ in 0..n {
            let mut span = tracer
                .span_builder("GET /pay")
                .with_kind(SpanKind::Server)
                .with_attributes(vec![KeyValue::new("http.route", "/pay")])
                .start(&tracer);
            span.end();
        }
        let _ = provider.force_flush();
        let _ = provider.shutdown();
    })
    .await
    .unwrap();
}

/// GETs `/api/v1/slis` for one service and window.
pub async fn slis(running: &Running, service: &str, window: &str) -> serde_json::Value {
    let url = format!(
        "http://{}/api/v1/slis?service={service}&window={window}",
        running.admin_addr
    );
    reqwest::get(url)
        .await
        .expect("admin API answers")
        .json()
        .await
        .expect("JSON")
}

/// Total requests over all series of `service` in the 5m window.
pub async fn total_requests(running: &Running, service: &str) -> u64 {
    let doc = slis(running, service, "5m").await;
    doc["series"].as_array().map_or(0, |s| {
        s.iter().map(|r| r["requests"].as_u64().unwrap_or(0)).sum()
    })
}

/// Polls until `service` has `want` requests in its 5m window (or `timeout` passes); returns
/// what it saw last.
pub async fn wait_for_requests(
    running: &Running,
    service: &str,
    want: u64,
    timeout: Duration,
) -> u64 {
    let start = Instant::now();
    loop {
        let got = total_requests(running, service).await;
        if got >= want || start.elapsed() > timeout {
            return got;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// GETs an admin API path (`/api/v1/…?…`) as JSON.
pub async fn get_json(running: &Running, path: &str) -> serde_json::Value {
    reqwest::get(format!("http://{}{path}", running.admin_addr))
        .await
        .expect("admin API answers")
        .json()
        .await
        .expect("JSON")
}

/// An OpenTelemetry SDK meter provider for `service` exporting over OTLP/gRPC to `running`,
/// only when flushed (its periodic reader waits an hour).
pub fn sdk_meter_provider(
    running: &Running,
    service: &'static str,
) -> opentelemetry_sdk::metrics::SdkMeterProvider {
    use opentelemetry_otlp::WithExportConfig;
    let exporter = opentelemetry_otlp::MetricExporter::builder()
        .with_tonic()
        .with_endpoint(format!("http://{}", running.grpc_addr))
        .build()
        .unwrap();
    let reader = opentelemetry_sdk::metrics::PeriodicReader::builder(exporter)
        .with_interval(Duration::from_secs(3600))
        .build();
    opentelemetry_sdk::metrics::SdkMeterProvider::builder()
        .with_reader(reader)
        .with_resource(
            opentelemetry_sdk::Resource::builder()
                .with_service_name(service)
                .build(),
        )
        .build()
}

/// GETs `/metrics`.
pub async fn metrics_text(running: &Running) -> String {
    reqwest::get(format!("http://{}/metrics", running.admin_addr))
        .await
        .unwrap()
        .text()
        .await
        .unwrap()
}

/// The value of one sample line (`name{labels}`) in a Prometheus exposition.
pub fn sample(text: &str, series: &str) -> Option<f64> {
    text.lines().find_map(|l| {
        l.strip_prefix(series)?
            .strip_prefix(' ')?
            .trim()
            .parse()
            .ok()
    })
}

/// A synthetic `checkout` service version with the given error ratio (30 ms median latency).
pub fn checkout(version: &str, error_ratio: f64) -> trike::synth::Service {
    trike::synth::Service {
        name: "checkout".into(),
        version: version.into(),
        routes: vec!["/pay".into()],
        behaviour: trike::synth::Behaviour {
            median_ms: 30.0,
            sigma: 0.4,
            error_ratio,
        },
    }
}

/// The real Kafka-protocol broker for tests (`TRIKE_TEST_KAFKA_BROKERS`, set by `scripts/test`,
/// which starts tansu). Without it: `None` and a SKIPPED line locally; a panic under CI, where
/// the broker must be there.
pub fn real_brokers() -> Option<String> {
    required::brokers()
}

/// Every record on `topic` (all partitions, from the beginning) as JSON, with its key: reads
/// until nothing new arrives for `idle` after the first record (or 15 s pass with none, or 30 s
/// in all).
pub fn read_topic(brokers: &str, topic: &str, idle: Duration) -> Vec<(String, serde_json::Value)> {
    use rdkafka::Message;
    use rdkafka::consumer::{BaseConsumer, Consumer};
    let reader: BaseConsumer = rdkafka::ClientConfig::new()
        .set("bootstrap.servers", brokers)
        .set("group.id", "trike-tests-reader")
        .set("enable.auto.commit", "false")
        .create()
        .expect("a Kafka reader");
    let md = reader
        .fetch_metadata(Some(topic), Duration::from_secs(5))
        .expect("topic metadata");
    let mut tpl = rdkafka::TopicPartitionList::new();
    for p in md.topics().iter().flat_map(|t| t.partitions()) {
        tpl.add_partition_offset(topic, p.id(), rdkafka::Offset::Beginning)
            .expect("partition");
    }
    reader.assign(&tpl).expect("assign");
    let (start, mut last) = (Instant::now(), Instant::now());
    let mut out = Vec::new();
    let wait = |out: &Vec<_>| {
        if out.is_empty() {
            Duration::from_secs(15)
        } else {
            idle
        }
    };
    while last.elapsed() < wait(&out) && start.elapsed() < Duration::from_secs(30) {
        if let Some(Ok(m)) = reader.poll(Duration::from_millis(100)) {
            let key = String::from_utf8_lossy(m.key().unwrap_or_default()).into_owned();
            let value = serde_json::from_slice(m.payload().unwrap_or_default())
                .unwrap_or(serde_json::Value::Null);
            out.push((key, value));
            last = Instant::now();
        }
    }
    out
}

/// `trike demo`'s arguments for a test: ephemeral loopback ports, `scenario`, its trouble
/// starting `degrade_after_s` in.
pub fn demo_args(scenario: trike::demo::Scenario, degrade_after_s: u64) -> trike::cli::DemoArgs {
    let any = Some("127.0.0.1:0".to_string());
    trike::cli::DemoArgs {
        addrs: trike::cli::AddrArgs {
            otlp_grpc_addr: any.clone(),
            otlp_http_addr: any.clone(),
            admin_addr: any,
            ..Default::default()
        },
        duration_s: None,
        degrade_after_s,
        scenario,
    }
}

/// Waits (at most 120 s) until the demo's actuator has called its rollout controller.
pub async fn wait_for_rollback(demo: &trike::demo::Demo) {
    let start = Instant::now();
    while demo
        .controller
        .calls
        .load(std::sync::atomic::Ordering::Relaxed)
        == 0
        && start.elapsed() < Duration::from_secs(120)
    {
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

pub mod pki;

#[path = "../bin/common/prom.rs"]
mod prom;
pub use prom::{PromSample, parse_exposition, test_python};

/// The value of the first of `samples` named `name` (with the label `label`, if given); a
/// panic naming it when there is none.
pub fn prom_value(samples: &[PromSample], name: &str, label: Option<(&str, &str)>) -> f64 {
    samples
        .iter()
        .find(|s| {
            s.name == name
                && label.is_none_or(|(k, v)| s.labels.get(k).map(String::as_str) == Some(v))
        })
        .and_then(|s| s.value)
        .unwrap_or_else(|| panic!("{name} {label:?} on /metrics"))
}

/// A tansu broker of a test's own (to stop, restart, or run with authentication), from the
/// binary `.ci/run` installs (`$TANSU`, else `~/.cache/tansu/bin/tansu`).
pub mod tansu {
    use std::process::{Child, Command, Stdio};
    use std::time::{Duration, Instant};

    /// The tansu binary; None (and SKIPPED) locally without one; a panic in CI.
    pub fn tansu() -> Option<std::path::PathBuf> {
        let path = std::env::var_os("TANSU")
            .map(std::path::PathBuf::from)
            .unwrap_or_else(|| {
                std::path::PathBuf::from(std::env::var("HOME").unwrap_or_default())
                    .join(".cache/tansu/bin/tansu")
            });
        if path.exists() {
            return Some(path);
        }
        if std::env::var("CI").is_ok() {
            panic!(
                "CI must have tansu at {} (.ci/run installs it)",
                path.display()
            );
        }
        eprintln!("SKIPPED: no tansu binary at {} (set TANSU)", path.display());
        None
    }

    pub use crate::ports::free_port;

    /// Starts tansu on `port` with its data in `dir` (with `extra` arguments, e.g.
    /// `--authentication`); returns once it accepts connections.
    pub fn start_broker(
        bin: &std::path::Path,
        dir: &std::path::Path,
        port: u16,
        extra: &[&str],
    ) -> Child {
        let url = format!("tcp://127.0.0.1:{port}");
        let child = Command::new(bin)
            .current_dir(dir)
            .args([
                "broker",
                "--listener-url",
                &url,
                "--advertised-listener-url",
                &url,
            ])
            .args(["--storage-engine", "sqlite://tansu.db"])
            .args(extra)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("tansu starts");
        let start = Instant::now();
        while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
            assert!(
                start.elapsed() < Duration::from_secs(10),
                "tansu did not listen"
            );
            std::thread::sleep(Duration::from_millis(50));
        }
        child
    }

    /// SIGTERM, as an orchestrator stops a broker, and wait for the exit.
    pub fn stop_broker(mut child: Child) {
        let _ = Command::new("kill")
            .args(["-TERM", &child.id().to_string()])
            .status();
        let start = Instant::now();
        while child.try_wait().ok().flatten().is_none() {
            if start.elapsed() > Duration::from_secs(10) {
                let _ = child.kill();
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// Creates a SCRAM user on the (unauthenticated) broker at `port`.
    pub fn create_user(
        bin: &std::path::Path,
        port: u16,
        name: &str,
        password: &str,
        mechanism: &str,
    ) {
        let ok = Command::new(bin)
            .args([
                "user",
                "create",
                "--broker",
                &format!("tcp://127.0.0.1:{port}"),
            ])
            .args(["--mechanism", mechanism, name, password])
            .stdout(Stdio::null())
            .status()
            .expect("tansu user create runs")
            .success();
        assert!(ok, "tansu user create {name}");
    }
}
