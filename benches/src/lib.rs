//! Shared fixtures for the benchmarks: realistic OTLP payloads; and the fuzz harness.

pub mod fuzz;

use trike_proto::collector::trace::v1::ExportTraceServiceRequest;
use trike_proto::common::v1::{AnyValue, InstrumentationScope, KeyValue, any_value::Value};
use trike_proto::resource::v1::Resource;
use trike_proto::trace::v1::{ResourceSpans, ScopeSpans, Span, Status, span::SpanKind};

fn kv(k: &str, v: Value) -> KeyValue {
    KeyValue {
        key: k.into(),
        value: Some(AnyValue { value: Some(v) }),
        ..Default::default()
    }
}

fn s(x: &str) -> Value {
    Value::StringValue(x.into())
}

/// A request of `n` server spans, about 500 bytes each on the wire (the attribute set of a
/// typical instrumented HTTP server), over `routes` routes.
pub fn trace_request(n: usize, routes: usize, end_ns: u64) -> ExportTraceServiceRequest {
    let spans = (0..n)
        .map(|i| {
            let route = format!("/api/v1/items/{}", i % routes.max(1));
            Span {
                trace_id: (0..16)
                    .map(|b| (b as u8).wrapping_mul(i as u8 | 1))
                    .collect(),
                span_id: (0..8)
                    .map(|b| (b as u8).wrapping_add(i as u8) | 1)
                    .collect(),
                parent_span_id: vec![9; 8],
                name: format!("GET {route}"),
                kind: SpanKind::Server as i32,
                start_time_unix_nano: end_ns - 1_000_000 * (1 + (i as u64 % 300)),
                end_time_unix_nano: end_ns - (i as u64 % 1000),
                attributes: vec![
                    kv("http.request.method", s("GET")),
                    kv("http.route", s(&route)),
                    kv(
                        "http.response.status_code",
                        Value::IntValue(if i % 50 == 0 { 503 } else { 200 }),
                    ),
                    kv(
                        "url.path",
                        s(&format!("/api/v1/items/{}/details", i % 9973)),
                    ),
                    kv("url.scheme", s("https")),
                    kv("server.address", s("checkout.prod.svc.cluster.local")),
                    kv("server.port", Value::IntValue(8443)),
                    kv("network.protocol.version", s("1.1")),
                    kv(
                        "user_agent.original",
                        s("Mozilla/5.0 (X11; Linux x86_64) AppleWebKit/537.36"),
                    ),
                    kv("client.address", s("10.12.34.56")),
                ],
                status: Some(Status {
                    code: if i % 50 == 0 { 2 } else { 0 },
                    ..Default::default()
                }),
                ..Default::default()
            }
        })
        .collect();
    ExportTraceServiceRequest {
        resource_spans: vec![ResourceSpans {
            resource: Some(Resource {
                attributes: vec![
                    kv("service.name", s("checkout")),
                    kv("service.version", s("1.5.0")),
                    kv("deployment.environment", s("prod")),
                    kv("host.name", s("checkout-7d9f8b6c5-x2x9p")),
                    kv("k8s.pod.name", s("checkout-7d9f8b6c5-x2x9p")),
                    kv("k8s.namespace.name", s("shop")),
                    kv("telemetry.sdk.name", s("opentelemetry")),
                    kv("telemetry.sdk.language", s("rust")),
                ],
                ..Default::default()
            }),
            scope_spans: vec![ScopeSpans {
                scope: Some(InstrumentationScope {
                    name: "axum-otel".into(),
                    version: "0.9".into(),
                    ..Default::default()
                }),
                spans,
                ..Default::default()
            }],
            ..Default::default()
        }],
    }
}

/// The service whose requests the Kafka bench writes, one span per record (about 460 bytes):
/// one version, 20 long routes, log-normal latencies (median 30 ms), 1 % errors.
pub fn kafka_service() -> trike::synth::Service {
    trike::synth::Service {
        name: "bench-kafka-checkout".into(),
        version: "2026.11.23-build.4711".into(),
        routes: (0..20)
            .map(|i| format!("/api/v2/storefront/{{tenant}}/cart/items/{{item}}/checkout/confirm-payment-and-reserve-inventory/{i}"))
            .collect(),
        behaviour: trike::synth::Behaviour {
            median_ms: 30.0,
            sigma: 0.5,
            error_ratio: 0.01,
        },
    }
}

/// CPU seconds (user + system) of process `pid` (`"self"` for this one), all its threads,
/// from `/proc` (Linux).
pub fn cpu_seconds_of(pid: &str) -> f64 {
    ticks(&std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default())
}

/// CPU seconds per thread name of process `pid` (threads of one name summed), largest first;
/// threads under 0.1 s left out.
pub fn thread_cpu_of(pid: &str) -> Vec<(String, f64)> {
    let mut by: std::collections::BTreeMap<String, f64> = Default::default();
    for t in std::fs::read_dir(format!("/proc/{pid}/task"))
        .into_iter()
        .flatten()
        .flatten()
    {
        let comm = std::fs::read_to_string(t.path().join("comm")).unwrap_or_default();
        let stat = std::fs::read_to_string(t.path().join("stat")).unwrap_or_default();
        *by.entry(comm.trim().to_string()).or_default() += ticks(&stat);
    }
    let mut v: Vec<_> = by.into_iter().filter(|(_, s)| *s >= 0.1).collect();
    v.sort_by(|a, b| b.1.total_cmp(&a.1));
    v
}

/// utime + stime of a `/proc/…/stat` line, in seconds.
pub fn ticks(stat: &str) -> f64 {
    let f: Vec<&str> = stat
        .rsplit(')')
        .next()
        .unwrap_or("")
        .split_whitespace()
        .collect();
    let t: f64 = f.get(11).and_then(|v| v.parse().ok()).unwrap_or(0.0)
        + f.get(12).and_then(|v| v.parse().ok()).unwrap_or(0.0);
    t / 100.0
}

/// [`trace_request`] for the service named `service` (its resource's first attribute).
pub fn trace_request_of(
    service: &str,
    n: usize,
    routes: usize,
    end_ns: u64,
) -> ExportTraceServiceRequest {
    let mut req = trace_request(n, routes, end_ns);
    for rs in &mut req.resource_spans {
        if let Some(r) = rs.resource.as_mut() {
            r.attributes[0].value = Some(trike_proto::common::v1::AnyValue {
                value: Some(trike_proto::common::v1::any_value::Value::StringValue(
                    service.to_string(),
                )),
            });
        }
    }
    req
}
