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

/// Adds to every SERVER span of `req` a CLIENT child calling the peer `peer_of` names for its
/// route (`peer.service`), spanning the middle of the request; the call never fails (the
/// server's own failures stay its own).
pub fn add_calls<'a>(
    req: &mut ExportTraceServiceRequest,
    peer_of: impl Fn(&str) -> Option<&'a str>,
) {
    for ss in req
        .resource_spans
        .iter_mut()
        .flat_map(|rs| rs.scope_spans.iter_mut())
    {
        let mut calls = Vec::new();
        for s in &ss.spans {
            let route = s
                .attributes
                .iter()
                .find(|a| a.key == "http.route")
                .and_then(|a| match a.value.as_ref()?.value.as_ref()? {
                    Value::StringValue(r) => Some(r.as_str()),
                    _ => None,
                });
            let Some(peer) = route.and_then(&peer_of) else {
                continue;
            };
            let quarter = (s.end_time_unix_nano - s.start_time_unix_nano) / 4;
            let mut span_id = s.span_id.clone();
            span_id[7] ^= 0x5a;
            calls.push(Span {
                trace_id: s.trace_id.clone(),
                span_id,
                parent_span_id: s.span_id.clone(),
                name: "POST".into(),
                kind: SpanKind::Client as i32,
                start_time_unix_nano: s.start_time_unix_nano + quarter,
                end_time_unix_nano: s.end_time_unix_nano - quarter,
                attributes: vec![kv("peer.service", Value::StringValue(peer.into()))],
                ..Default::default()
            });
        }
        ss.spans.extend(calls);
    }
}

/// Traces through a chain of services: `chain[0]` calls `chain[1]` and so on, and the last
/// calls `peer`, which sends no spans (a database, named by `peer.service`). Each service
/// exports its own request (as real services do): for each trace, a SERVER span (parented by
/// the caller's CLIENT span, W3C-style) and a CLIENT span to the next, which names the next by
/// `server.address` only (`<next>.internal`). Trace `i` fails, at the peer and so all the way
/// up, when `fails(i)`; latencies are fixed: the peer call 5 ms, each hop 5 ms more.
pub fn call_chain(
    chain: &[&str],
    peer: &str,
    traces: std::ops::Range<u64>,
    end_ns: u64,
    fails: impl Fn(u64) -> bool,
    rng: &mut impl Rng,
) -> Vec<ExportTraceServiceRequest> {
    let mut spans: Vec<Vec<Span>> = vec![Vec::new(); chain.len()];
    let ms = 1_000_000u64;
    for i in traces {
        let failed = fails(i);
        let mut trace_id = [0u8; 16];
        rng.fill(&mut trace_id);
        trace_id[0] |= 1;
        let status = |error: bool| Status {
            code: if error {
                StatusCode::Error as i32
            } else {
                StatusCode::Unset as i32
            },
            ..Default::default()
        };
        let mut parent: Vec<u8> = Vec::new();
        for (depth, service) in chain.iter().enumerate() {
            let hops = (chain.len() - depth) as u64;
            let (server_id, client_id) = (rng.random::<u64>() | 1, rng.random::<u64>() | 1);
            let server_end = end_ns - depth as u64 * ms;
            let client_end = server_end - ms;
            let route = format!("/{service}");
            spans[depth].push(Span {
                trace_id: trace_id.to_vec(),
                span_id: server_id.to_be_bytes().to_vec(),
                parent_span_id: parent.clone(),
                name: format!("POST {route}"),
                kind: SpanKind::Server as i32,
                start_time_unix_nano: server_end - (5 * hops + 2) * ms,
                end_time_unix_nano: server_end,
                attributes: vec![
                    kv("http.route", Value::StringValue(route)),
                    kv(
                        "http.response.status_code",
                        Value::IntValue(if failed { 500 } else { 200 }),
                    ),
                ],
                status: Some(status(failed)),
                ..Default::default()
            });
            let callee = match chain.get(depth + 1) {
                Some(next) => kv(
                    "server.address",
                    Value::StringValue(format!("{next}.internal")),
                ),
                None => kv("peer.service", Value::StringValue(peer.into())),
            };
            spans[depth].push(Span {
                trace_id: trace_id.to_vec(),
                span_id: client_id.to_be_bytes().to_vec(),
                parent_span_id: server_id.to_be_bytes().to_vec(),
                name: "POST".into(),
                kind: SpanKind::Client as i32,
                start_time_unix_nano: client_end - 5 * hops * ms,
                end_time_unix_nano: client_end,
                attributes: vec![callee],
                status: Some(status(failed)),
                ..Default::default()
            });
            parent = client_id.to_be_bytes().to_vec();
        }
    }
    chain
        .iter()
        .zip(spans)
        .map(|(service, spans)| ExportTraceServiceRequest {
            resource_spans: vec![ResourceSpans {
                resource: Some(Resource {
                    attributes: vec![kv("service.name", Value::StringValue(service.to_string()))],
                    ..Default::default()
                }),
                scope_spans: vec![ScopeSpans {
                    spans,
                    ..Default::default()
                }],
                ..Default::default()
            }],
        })
        .collect()
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

    /// Guarantees: a chain's requests decode to one observation per service and trace, and to
    /// call halves that pair into exactly the chain's edges, with the failures.
    #[test]
    fn a_call_chain_pairs_into_its_edges() {
        let mut rng = rand::rngs::StdRng::seed_from_u64(1);
        let end = 2_000_000_000_000_000_000;
        let reqs = call_chain(&["a", "b"], "db", 0..10, end, |i| i < 3, &mut rng);
        let mut graph = trike_engine::graph::Graph::new(Default::default(), 100.0);
        for r in &reqs {
            let d = trike_ingest::decode::traces_proto(
                &prost::Message::encode_to_vec(r),
                &Default::default(),
            )
            .unwrap();
            assert_eq!(d.batch.requests.len(), 10);
            for c in &d.batch.calls {
                graph.call(c, end);
            }
        }
        graph.advance(end + 10_000_000_000);
        let edges: Vec<(String, String, u64, u64)> = graph
            .edges(trike_engine::Span::minutes(5), end + 10_000_000_000)
            .into_iter()
            .map(|e| (e.client, e.server, e.requests, e.errors))
            .collect();
        assert_eq!(
            edges,
            [
                ("a".into(), "b".into(), 10, 3),
                ("b".into(), "db".into(), 10, 3)
            ]
        );
    }
}
