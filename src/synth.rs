//! Synthetic services: OTLP trace export requests with a chosen rate, latency distribution and
//! error ratio. Used by `trike demo` and the end-to-end load/freshness harness.

use rand::Rng;
use rand_distr::{Distribution, LogNormal};
use trike_proto::collector::trace::v1::ExportTraceServiceRequest;
use trike_proto::common::v1::{AnyValue, KeyValue, any_value::Value};
use trike_proto::resource::v1::Resource;
use trike_proto::trace::v1::{
    ResourceSpans, ScopeSpans, Span, Status, span::SpanKind, status::StatusCode,
};

/// How a synthetic service behaves.
#[derive(Clone, Debug, PartialEq)]
pub struct Behaviour {
    /// Median latency, ms.
    pub median_ms: f64,
    /// Log-normal sigma of latency.
    pub sigma: f64,
    /// Fraction of requests that fail (HTTP 500, status ERROR).
    pub error_ratio: f64,
}

/// One synthetic service version.
#[derive(Clone, Debug, PartialEq)]
pub struct Service {
    /// `service.name`.
    pub name: String,
    /// `service.version`.
    pub version: String,
    /// `http.route` values, picked uniformly.
    pub routes: Vec<String>,
    /// Current behaviour.
    pub behaviour: Behaviour,
}

fn kv(k: &str, v: Value) -> KeyValue {
    KeyValue {
        key: k.into(),
        value: Some(AnyValue { value: Some(v) }),
        ..Default::default()
    }
}

impl Service {
    /// `n` server spans ending at `end_ns` (spread over the preceding `spread_ns`).
    pub fn request(
        &self,
        n: usize,
        end_ns: u64,
        spread_ns: u64,
        rng: &mut impl Rng,
    ) -> ExportTraceServiceRequest {
        let b = &self.behaviour;
        let dist = LogNormal::new(b.median_ms.max(1e-3).ln(), b.sigma.max(1e-6))
            .expect("valid log-normal");
        let spans = (0..n)
            .map(|_| {
                let latency_ns = (dist.sample(rng) * 1e6) as u64;
                let end = end_ns - rng.random_range(0..spread_ns.max(1));
                let failed = rng.random_bool(b.error_ratio.clamp(0.0, 1.0));
                let route = &self.routes[rng.random_range(0..self.routes.len())];
                let mut trace_id = [0u8; 16];
                rng.fill(&mut trace_id);
                trace_id[0] |= 1;
                let mut span_id = [0u8; 8];
                rng.fill(&mut span_id);
                span_id[0] |= 1;
                Span {
                    trace_id: trace_id.to_vec(),
                    span_id: span_id.to_vec(),
                    name: format!("GET {route}"),
                    kind: SpanKind::Server as i32,
                    start_time_unix_nano: end - latency_ns,
                    end_time_unix_nano: end,
                    attributes: vec![
                        kv("http.request.method", Value::StringValue("GET".into())),
                        kv("http.route", Value::StringValue(route.clone())),
                        kv(
                            "http.response.status_code",
                            Value::IntValue(if failed { 500 } else { 200 }),
                        ),
                    ],
                    status: Some(Status {
                        code: if failed {
                            StatusCode::Error as i32
                        } else {
                            StatusCode::Unset as i32
                        },
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
                        kv("service.name", Value::StringValue(self.name.clone())),
                        kv("service.version", Value::StringValue(self.version.clone())),
                        kv("deployment.environment", Value::StringValue("demo".into())),
                    ],
                    ..Default::default()
                }),
                scope_spans: vec![ScopeSpans {
                    spans,
                    ..Default::default()
                }],
                ..Default::default()
            }],
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::SeedableRng;

    /// Guarantees: generated requests decode to the intended count, outcome mix and latency.
    #[test]
    fn generated_spans_decode_as_intended() {
        let svc = Service {
            name: "checkout".into(),
            version: "1.0".into(),
            routes: vec!["/pay".into()],
            behaviour: Behaviour {
                median_ms: 50.0,
                sigma: 0.1,
                error_ratio: 0.5,
            },
        };
        let mut rng = rand::rngs::StdRng::seed_from_u64(1);
        let req = svc.request(1000, 2_000_000_000_000_000_000, 1_000_000_000, &mut rng);
        let bytes = prost::Message::encode_to_vec(&req);
        let d = trike_ingest::decode::traces_proto(&bytes, &Default::default()).unwrap();
        assert_eq!(d.batch.requests.len(), 1000);
        let bad = d.batch.requests.iter().filter(|r| r.bad).count();
        assert!((400..600).contains(&bad), "{bad}");
        let mut l: Vec<f64> = d.batch.requests.iter().map(|r| r.latency_ms).collect();
        l.sort_by(f64::total_cmp);
        assert!((l[500] - 50.0).abs() < 5.0, "median {}", l[500]);
    }
}
