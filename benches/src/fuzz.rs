//! Fuzzing on the stable toolchain (no `cargo fuzz`, no nightly): every decoder that reads
//! network or disk bytes is fed mutations of valid inputs, and a panic is a crash.
//!
//! Targets: OTLP traces, metrics and logs in protobuf and JSON (the receivers and the Kafka
//! source), control events as the actuator reads them (JSON, signature, time), engine
//! checkpoints (decode, restore, and a query over the restored state) and the config file
//! (YAML, then validation). Each case starts from a seed of its target (or a splice of two)
//! and applies 1–4 byte-level mutations; text targets also get token insertions. Runs are
//! seeded and reproducible; crashes are kept with the panic message.

use prost::Message;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use std::panic::AssertUnwindSafe;
use std::sync::Arc;
use std::time::{Duration, Instant};
use trike_ingest::decode::{self, DecodeConfig};
use trike_proto::collector::logs::v1::ExportLogsServiceRequest;
use trike_proto::collector::metrics::v1::ExportMetricsServiceRequest;
use trike_proto::common::v1::{AnyValue, KeyValue, any_value};
use trike_proto::logs::v1::{LogRecord, ResourceLogs, ScopeLogs};
use trike_proto::metrics::v1::{
    self as pm, AggregationTemporality, ExponentialHistogram, ExponentialHistogramDataPoint,
    Histogram, HistogramDataPoint, Metric, NumberDataPoint, ResourceMetrics, ScopeMetrics, Sum,
    exponential_histogram_data_point::Buckets,
};
use trike_proto::resource::v1::Resource;

/// One decoder under test.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Target {
    /// `ExportTraceServiceRequest`, protobuf.
    TracesProto,
    /// `ExportTraceServiceRequest`, OTLP/JSON.
    TracesJson,
    /// `ExportMetricsServiceRequest`, protobuf.
    MetricsProto,
    /// `ExportMetricsServiceRequest`, OTLP/JSON.
    MetricsJson,
    /// `ExportLogsServiceRequest`, protobuf.
    LogsProto,
    /// `ExportLogsServiceRequest`, OTLP/JSON.
    LogsJson,
    /// A control event as the actuator reads it.
    ControlEvent,
    /// `engine.ckpt`: decode, restore, query.
    Checkpoint,
    /// The config file: YAML, then validation.
    Config,
}

impl Target {
    /// Every target.
    pub const ALL: [Target; 9] = [
        Target::TracesProto,
        Target::TracesJson,
        Target::MetricsProto,
        Target::MetricsJson,
        Target::LogsProto,
        Target::LogsJson,
        Target::ControlEvent,
        Target::Checkpoint,
        Target::Config,
    ];

    /// Its name on the command line and in reports.
    pub const fn name(self) -> &'static str {
        match self {
            Target::TracesProto => "otlp_traces_proto",
            Target::TracesJson => "otlp_traces_json",
            Target::MetricsProto => "otlp_metrics_proto",
            Target::MetricsJson => "otlp_metrics_json",
            Target::LogsProto => "otlp_logs_proto",
            Target::LogsJson => "otlp_logs_json",
            Target::ControlEvent => "control_event",
            Target::Checkpoint => "checkpoint",
            Target::Config => "config",
        }
    }

    fn is_text(self) -> bool {
        matches!(
            self,
            Target::TracesJson
                | Target::MetricsJson
                | Target::LogsJson
                | Target::ControlEvent
                | Target::Config
        )
    }
}

/// What a run found.
#[derive(Debug)]
pub struct Report {
    /// The target.
    pub target: Target,
    /// Cases run.
    pub cases: u64,
    /// Cases decoded without error (the rest were refused, as they should be mostly).
    pub accepted: u64,
    /// Inputs that made the decoder panic, with the message.
    pub crashes: Vec<(Vec<u8>, String)>,
    /// Wall time.
    pub elapsed: Duration,
}

/// The state a target needs beside its input.
struct Harness {
    decode: DecodeConfig,
    /// The same, with log records as events (`logs.errors_as: bad_events`).
    logs: DecodeConfig,
    keys: trike_sinks::signing::VerifyKeys,
    engine_cfg: Arc<trike_engine::EngineConfig>,
}

const KEY: &[u8] = b"fuzz-signing-key-0123456789";

impl Harness {
    fn new() -> Self {
        let decode = DecodeConfig {
            dimensions: vec!["deployment.environment".into(), "cloud.region".into()],
            usage_metrics: vec!["process.cpu.time".into(), "process.memory.usage".into()],
            ..Default::default()
        };
        Self {
            logs: DecodeConfig {
                logs_as_bad_events: true,
                ..decode.clone()
            },
            decode,
            keys: trike_sinks::signing::VerifyKeys::single(KEY.to_vec()),
            engine_cfg: Arc::new(trike_engine::EngineConfig::default()),
        }
    }

    /// Runs one input; true when it was decoded (an error is a refusal, which is fine), a
    /// panic is a crash.
    fn run(&self, target: Target, input: &[u8]) -> bool {
        match target {
            Target::TracesProto => decode::traces_proto(input, &self.decode).is_ok(),
            Target::TracesJson => decode::traces_json(input, &self.decode).is_ok(),
            Target::MetricsProto => decode::metrics_proto(input, &self.decode).is_ok(),
            Target::MetricsJson => decode::metrics_json(input, &self.decode).is_ok(),
            // Both paths: counting, and records as events.
            Target::LogsProto => {
                let counted = decode::logs_proto(input, &self.decode).is_ok();
                decode::logs_proto(input, &self.logs).is_ok() || counted
            }
            Target::LogsJson => {
                let counted = decode::logs_json(input, &self.decode).is_ok();
                decode::logs_json(input, &self.logs).is_ok() || counted
            }
            Target::ControlEvent => {
                let Ok(v) = serde_json::from_slice::<serde_json::Value>(input) else {
                    return false;
                };
                let _ = self.keys.verify(&v);
                match trike_sinks::ControlEvent::from_value(v) {
                    Ok(e) => {
                        let _ = trike_sinks::parse_rfc3339(&e.time);
                        let _ = (e.data.action.name(), e.version(), e.to_json());
                        true
                    }
                    Err(_) => false,
                }
            }
            Target::Checkpoint => {
                let Ok(c) = trike_runtime::checkpoint::decode_engine(input) else {
                    return false;
                };
                let Ok(mut engine) =
                    trike_engine::Engine::restore(self.engine_cfg.clone(), c.engine)
                else {
                    return false;
                };
                let now = engine.now();
                for window in [trike_engine::Span(60), trike_engine::Span(3600)] {
                    let _ = engine.slis(&trike_engine::sli::SliQuery {
                        service: None,
                        window,
                    });
                    let _ = engine.service_slis(window);
                }
                engine.advance(now.saturating_add(1_000_000_000));
                let _ = engine.snapshot();
                true
            }
            Target::Config => {
                let Ok(text) = std::str::from_utf8(input) else {
                    return false;
                };
                match trike::config::RawConfig::from_yaml_with(text, &env) {
                    Ok(raw) => trike::config::Config::validate(raw, &Default::default()).is_ok(),
                    Err(_) => false,
                }
            }
        }
    }
}

/// `${VAR}` in config text: every variable is set (as a deployment would set them).
fn env(_: &str) -> Option<String> {
    Some("fuzz-placeholder-0123456789".into())
}

fn kv(k: &str, v: any_value::Value) -> KeyValue {
    KeyValue {
        key: k.into(),
        value: Some(AnyValue { value: Some(v) }),
        ..Default::default()
    }
}

fn s(x: &str) -> any_value::Value {
    any_value::Value::StringValue(x.into())
}

const T: u64 = 1_800_000_000_000_000_000;

fn metrics_seed() -> ExportMetricsServiceRequest {
    let attrs = vec![
        kv("http.route", s("/pay/{id}")),
        kv("http.response.status_code", any_value::Value::IntValue(503)),
        kv("deployment.environment", s("prod")),
    ];
    let hist = Metric {
        name: "http.server.request.duration".into(),
        unit: "s".into(),
        data: Some(pm::metric::Data::Histogram(Histogram {
            data_points: vec![HistogramDataPoint {
                attributes: attrs.clone(),
                start_time_unix_nano: T - 10_000_000_000,
                time_unix_nano: T,
                count: 10,
                sum: Some(1.5),
                bucket_counts: vec![3, 4, 2, 1],
                explicit_bounds: vec![0.05, 0.1, 0.5],
                min: Some(0.01),
                max: Some(0.9),
                ..Default::default()
            }],
            aggregation_temporality: AggregationTemporality::Cumulative as i32,
        })),
        ..Default::default()
    };
    let exp = Metric {
        name: "rpc.server.duration".into(),
        unit: "ms".into(),
        data: Some(pm::metric::Data::ExponentialHistogram(
            ExponentialHistogram {
                data_points: vec![ExponentialHistogramDataPoint {
                    attributes: attrs.clone(),
                    start_time_unix_nano: T - 1_000_000_000,
                    time_unix_nano: T,
                    count: 6,
                    scale: 3,
                    zero_count: 1,
                    positive: Some(Buckets {
                        offset: 40,
                        bucket_counts: vec![1, 2, 2],
                    }),
                    ..Default::default()
                }],
                aggregation_temporality: AggregationTemporality::Delta as i32,
            },
        )),
        ..Default::default()
    };
    let counter = Metric {
        name: "http.server.request.count".into(),
        data: Some(pm::metric::Data::Sum(Sum {
            data_points: vec![NumberDataPoint {
                attributes: attrs,
                start_time_unix_nano: T - 10_000_000_000,
                time_unix_nano: T,
                value: Some(pm::number_data_point::Value::AsInt(42)),
                ..Default::default()
            }],
            aggregation_temporality: AggregationTemporality::Cumulative as i32,
            is_monotonic: true,
        })),
        ..Default::default()
    };
    // Usage metrics: CPU time (a monotonic sum per `cpu.mode`) and memory (a gauge).
    let cpu = Metric {
        name: "process.cpu.time".into(),
        unit: "s".into(),
        data: Some(pm::metric::Data::Sum(Sum {
            data_points: vec![NumberDataPoint {
                attributes: vec![kv("cpu.mode", s("user"))],
                start_time_unix_nano: T - 10_000_000_000,
                time_unix_nano: T,
                value: Some(pm::number_data_point::Value::AsDouble(12.5)),
                ..Default::default()
            }],
            aggregation_temporality: AggregationTemporality::Cumulative as i32,
            is_monotonic: true,
        })),
        ..Default::default()
    };
    let memory = Metric {
        name: "process.memory.usage".into(),
        unit: "By".into(),
        data: Some(pm::metric::Data::Gauge(pm::Gauge {
            data_points: vec![NumberDataPoint {
                time_unix_nano: T,
                value: Some(pm::number_data_point::Value::AsInt(500_000_000)),
                ..Default::default()
            }],
        })),
        ..Default::default()
    };
    ExportMetricsServiceRequest {
        resource_metrics: vec![ResourceMetrics {
            resource: Some(Resource {
                attributes: vec![
                    kv("service.name", s("checkout")),
                    kv("service.version", s("1.5.0")),
                    kv("cloud.region", s("eu-west-1")),
                ],
                ..Default::default()
            }),
            scope_metrics: vec![ScopeMetrics {
                metrics: vec![hist, exp, counter, cpu, memory],
                ..Default::default()
            }],
            ..Default::default()
        }],
    }
}

fn logs_seed() -> ExportLogsServiceRequest {
    ExportLogsServiceRequest {
        resource_logs: vec![ResourceLogs {
            resource: Some(Resource {
                attributes: vec![kv("service.name", s("checkout"))],
                ..Default::default()
            }),
            scope_logs: vec![ScopeLogs {
                log_records: vec![
                    LogRecord {
                        time_unix_nano: T,
                        severity_text: "ERROR".into(),
                        body: Some(AnyValue {
                            value: Some(s("payment failed")),
                        }),
                        ..Default::default()
                    };
                    3
                ],
                ..Default::default()
            }],
            ..Default::default()
        }],
    }
}

/// Valid inputs of `target` to start from.
pub fn seeds(target: Target) -> Vec<Vec<u8>> {
    let mut rng = StdRng::seed_from_u64(1);
    let traces: Vec<_> = [(1, 1), (5, 3), (40, 7)]
        .iter()
        .map(|&(n, routes)| crate::trace_request(n, routes, T))
        .collect();
    match target {
        Target::TracesProto => traces.iter().map(|r| r.encode_to_vec()).collect(),
        Target::TracesJson => traces
            .iter()
            .map(|r| serde_json::to_vec(r).expect("JSON"))
            .collect(),
        Target::MetricsProto => vec![metrics_seed().encode_to_vec()],
        Target::MetricsJson => vec![serde_json::to_vec(&metrics_seed()).expect("JSON")],
        Target::LogsProto => vec![logs_seed().encode_to_vec()],
        Target::LogsJson => vec![serde_json::to_vec(&logs_seed()).expect("JSON")],
        Target::ControlEvent => {
            let unsigned = control_event_json();
            let mut v: serde_json::Value = serde_json::from_str(&unsigned).expect("JSON");
            trike_sinks::signing::sign(&mut v, KEY);
            vec![unsigned.into_bytes(), v.to_string().into_bytes()]
        }
        Target::Checkpoint => {
            let mut e = trike_engine::Engine::new(Arc::new(trike_engine::EngineConfig::default()));
            let cfg = DecodeConfig::default();
            for (i, r) in traces.iter().enumerate() {
                let d = decode::traces_proto(&r.encode_to_vec(), &cfg).expect("a valid seed");
                e.ingest(&d.batch, T + i as u64 * 1_000_000_000);
            }
            let m = decode::metrics_proto(&metrics_seed().encode_to_vec(), &cfg).expect("valid");
            e.ingest(&m.batch, T + 5_000_000_000);
            let c = trike_runtime::checkpoint::EngineCheckpoint {
                version: trike_runtime::checkpoint::VERSION,
                engine: e.snapshot(),
                offsets: vec![("otlp_spans".into(), 0, rng.random_range(0..1000))],
                watch: Default::default(),
                forecasts: Default::default(),
            };
            vec![trike_runtime::checkpoint::encode_engine(&c).expect("encodes")]
        }
        Target::Config => [
            include_str!("../../deploy/config/trike.yaml"),
            include_str!("../../deploy/config/minimal.yaml"),
            include_str!("../../deploy/config/actuator-webhook.yaml"),
        ]
        .iter()
        .map(|t| t.as_bytes().to_vec())
        .collect(),
    }
}

fn control_event_json() -> String {
    concat!(
        r#"{"data":{"action":"rollback","decision_id":"0a1b2c3d-0000-0000-0000-000000000000","#,
        r#""detected_at":"2026-11-22T11:20:52.000Z","dry_run":false,"evidence":{"kind":"stale","lag_s":0.0,"silent_s":1.0},"#,
        r#""observed_until":"2026-11-22T11:20:51.500Z","params":{"weight":0.0},"policy_revision":"abc","#,
        r#""reason":"checkout 1.5.0 failed canary analysis","rule":"rollback-bad-canary","severity":"page","slo":null,"#,
        r#""target":{"service":"checkout","version":"1.5.0"}},"datacontenttype":"application/json","#,
        r#""id":"0a1b2c3d-0000-0000-0000-000000000000","source":"trike://trike-0","specversion":"1.0","#,
        r#""subject":"checkout","time":"2026-11-22T11:20:52.000Z","type":"io.trike.control.rollback"}"#
    )
    .to_string()
}

/// Tokens text targets get inserted (JSON, YAML and the values decoders treat specially).
const TOKENS: &[&str] = &[
    "{",
    "}",
    "[",
    "]",
    ":",
    ",",
    "\"",
    "null",
    "true",
    "-1",
    "1e309",
    "18446744073709551615",
    "\"\\u0000\"",
    "\"\\ud800\"",
    "${X}",
    "$${",
    "&a",
    "*a",
    "!!binary",
    "~",
    "\n- ",
    ": ",
    "\n  ",
    "0x",
    "NaN",
    "-0",
    "9999999999999999999999",
    "\"1970-01-01T00:00:00Z\"",
    "\"9999-12-31T23:59:59.999999999Z\"",
    "\"trikesignature\"",
    "\"sha256=\"",
];

/// Values that make interesting bytes (varint limits, field tags, wire types).
const BYTES: &[u8] = &[
    0x00, 0x01, 0x7f, 0x80, 0xff, 0x0a, 0x12, 0x1a, 0x22, 0x08, 0x09, 0x0d,
];

/// One mutation of `data`.
fn mutate(rng: &mut StdRng, data: &mut Vec<u8>, text: bool, other: &[u8]) {
    if data.is_empty() {
        data.push(rng.random());
        return;
    }
    let at = rng.random_range(0..data.len());
    match rng.random_range(0..11) {
        0 => data[at] ^= 1 << rng.random_range(0..8),
        1 => data[at] = rng.random(),
        2 => data[at] = BYTES[rng.random_range(0..BYTES.len())],
        3 => {
            let n = rng.random_range(1..=16.min(data.len() - at));
            data.drain(at..at + n);
        }
        4 => {
            let n = rng.random_range(1..=8);
            for _ in 0..n {
                data.insert(at, rng.random());
            }
        }
        5 => {
            // Duplicate a chunk (repeated fields, nested messages).
            let end = (at + rng.random_range(1..=64)).min(data.len());
            let chunk = data[at..end].to_vec();
            let to = rng.random_range(0..=data.len());
            data.splice(to..to, chunk);
        }
        6 => data.truncate(at),
        7 => {
            // A varint at `at` made huge (a length prefix claiming more than there is).
            let v: [u8; 5] = [0xff, 0xff, 0xff, 0xff, 0x0f];
            data.splice(at..at, v);
        }
        8 => {
            // Splice in part of another seed.
            if !other.is_empty() {
                let a = rng.random_range(0..other.len());
                let b = (a + rng.random_range(1..=256)).min(other.len());
                data.splice(at..at, other[a..b].iter().copied());
            }
        }
        9 if text => {
            let t = TOKENS[rng.random_range(0..TOKENS.len())];
            // Keep it valid UTF-8 where the seed is: insert at a char boundary.
            let mut i = at;
            while i > 0 && (data[i] & 0xc0) == 0x80 {
                i -= 1;
            }
            data.splice(i..i, t.bytes());
        }
        _ => {
            // Swap two bytes.
            let b = rng.random_range(0..data.len());
            data.swap(at, b);
        }
    }
}

/// Runs `cases` mutated inputs through `target` with `seed`; stops collecting after 20
/// crashes.
pub fn run(target: Target, cases: u64, seed: u64) -> Report {
    let harness = Harness::new();
    let corpus = seeds(target);
    let mut rng = StdRng::seed_from_u64(seed ^ (target as u64).wrapping_mul(0x9e37_79b9));
    let mut crashes = Vec::new();
    let start = Instant::now();
    let quiet = QuietPanics::install();
    let mut input = Vec::new();
    let mut accepted = 0;
    for _ in 0..cases {
        let base = &corpus[rng.random_range(0..corpus.len())];
        let other = &corpus[rng.random_range(0..corpus.len())];
        input.clear();
        input.extend_from_slice(base);
        for _ in 0..rng.random_range(1..=4) {
            mutate(&mut rng, &mut input, target.is_text(), other);
        }
        let r = std::panic::catch_unwind(AssertUnwindSafe(|| harness.run(target, &input)));
        match r {
            Ok(ok) => accepted += u64::from(ok),
            Err(p) => {
                let msg = p
                    .downcast_ref::<String>()
                    .cloned()
                    .or_else(|| p.downcast_ref::<&str>().map(|s| s.to_string()))
                    .unwrap_or_default();
                if crashes.len() < 20 {
                    crashes.push((input.clone(), msg));
                }
            }
        }
    }
    drop(quiet);
    Report {
        target,
        cases,
        accepted,
        crashes,
        elapsed: start.elapsed(),
    }
}

/// True when `input` is accepted whole by `target` (seeds must be, so that mutations start
/// from inputs that reach the deep paths).
pub fn accepted(target: Target, input: &[u8]) -> bool {
    let h = Harness::new();
    let decoded = |d: Result<decode::Decoded, decode::DecodeError>| {
        d.is_ok_and(|d| d.rejected == 0 && d.received > 0)
    };
    match target {
        Target::TracesProto => decoded(decode::traces_proto(input, &h.decode)),
        Target::TracesJson => decoded(decode::traces_json(input, &h.decode)),
        Target::MetricsProto => decoded(decode::metrics_proto(input, &h.decode)),
        Target::MetricsJson => decoded(decode::metrics_json(input, &h.decode)),
        Target::LogsProto => decoded(decode::logs_proto(input, &h.logs)),
        Target::LogsJson => decoded(decode::logs_json(input, &h.logs)),
        Target::ControlEvent => serde_json::from_slice::<serde_json::Value>(input)
            .is_ok_and(|v| trike_sinks::ControlEvent::from_value(v).is_ok()),
        Target::Checkpoint => trike_runtime::checkpoint::decode_engine(input).is_ok_and(|c| {
            trike_engine::Engine::restore(h.engine_cfg.clone(), c.engine)
                .is_ok_and(|e| e.series_count() > 0)
        }),
        Target::Config => std::str::from_utf8(input).is_ok_and(|t| {
            trike::config::RawConfig::from_yaml_with(t, &env)
                .is_ok_and(|raw| trike::config::Config::validate(raw, &Default::default()).is_ok())
        }),
    }
}

/// Runs `input` through `target` once (for regression tests of crashes found).
pub fn run_one(target: Target, input: &[u8]) -> bool {
    Harness::new().run(target, input)
}

/// Silences the default panic message while fuzzing (panics are caught and reported).
type PanicHook = Box<dyn Fn(&std::panic::PanicHookInfo<'_>) + Sync + Send>;

struct QuietPanics(Option<PanicHook>);

impl QuietPanics {
    fn install() -> Self {
        let previous = std::panic::take_hook();
        std::panic::set_hook(Box::new(|_| {}));
        Self(Some(previous))
    }
}

impl Drop for QuietPanics {
    fn drop(&mut self) {
        if let Some(p) = self.0.take() {
            std::panic::set_hook(p);
        }
    }
}
