//! Decoding tables: spans and metrics in protobuf and JSON, and malformed payloads.

use super::*;
use prost::Message;
use trike_engine::Temporality;
use trike_proto::collector::metrics::v1::ExportMetricsServiceRequest;
use trike_proto::collector::trace::v1::ExportTraceServiceRequest;
use trike_proto::common::v1::{AnyValue, KeyValue, any_value::Value as Av};
use trike_proto::metrics::v1::{
    self as pm, AggregationTemporality, ExponentialHistogram, ExponentialHistogramDataPoint,
    Histogram, HistogramDataPoint, Metric, NumberDataPoint, ResourceMetrics, ScopeMetrics, Sum,
};
use trike_proto::resource::v1::Resource;
use trike_proto::trace::v1::{
    ResourceSpans, ScopeSpans, Span, Status, span::SpanKind as Kind, status::StatusCode,
};

pub(crate) fn kv(k: &str, v: Av) -> KeyValue {
    KeyValue {
        key: k.into(),
        value: Some(AnyValue { value: Some(v) }),
        ..Default::default()
    }
}

pub(crate) fn s(x: &str) -> Av {
    Av::StringValue(x.into())
}

pub(crate) fn span(
    name: &str,
    kind: Kind,
    start: u64,
    dur_ms: u64,
    attrs: Vec<KeyValue>,
    error: bool,
) -> Span {
    Span {
        // Distinct per span (1 + the duration), never all zero.
        trace_id: vec![1 + dur_ms as u8; 16],
        span_id: vec![2; 8],
        name: name.into(),
        kind: kind as i32,
        start_time_unix_nano: start,
        end_time_unix_nano: start + dur_ms * 1_000_000,
        attributes: attrs,
        status: Some(Status {
            code: if error {
                StatusCode::Error as i32
            } else {
                StatusCode::Ok as i32
            },
            ..Default::default()
        }),
        ..Default::default()
    }
}

pub(crate) fn request(resource: Vec<KeyValue>, spans: Vec<Span>) -> ExportTraceServiceRequest {
    ExportTraceServiceRequest {
        resource_spans: vec![ResourceSpans {
            resource: Some(Resource {
                attributes: resource,
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

const T: u64 = 1_800_000_000_000_000_000;

fn sample_request() -> ExportTraceServiceRequest {
    let resource = vec![
        kv("service.name", s("checkout")),
        kv("service.version", s("1.5.0")),
        kv("deployment.environment", s("prod")),
    ];
    let mut bad_ids = span("bad ids", Kind::Server, T, 5, vec![], false);
    bad_ids.trace_id = vec![0; 16];
    let mut backwards = span("backwards", Kind::Server, T, 5, vec![], false);
    backwards.end_time_unix_nano = T - 1;
    request(
        resource,
        vec![
            span(
                "GET /pay/{id}",
                Kind::Server,
                T,
                120,
                vec![
                    kv("http.route", s("/pay/{id}")),
                    kv("http.response.status_code", Av::IntValue(200)),
                ],
                false,
            ),
            span(
                "GET /pay/{id}",
                Kind::Server,
                T,
                80,
                vec![
                    kv("http.route", s("/pay/{id}")),
                    kv("http.response.status_code", Av::IntValue(503)),
                ],
                false,
            ),
            span(
                "Pay",
                Kind::Server,
                T,
                7,
                vec![
                    kv("rpc.method", s("Pay")),
                    kv("rpc.grpc.status_code", Av::IntValue(14)),
                ],
                false,
            ),
            span(
                "consume",
                Kind::Consumer,
                T,
                3,
                vec![kv("deployment.environment", s("canary"))],
                true,
            ),
            span("db query", Kind::Client, T, 2, vec![], true),
            span("internal", Kind::Internal, T, 2, vec![], false),
            bad_ids,
            backwards,
        ],
    )
}

pub(crate) fn cfg() -> DecodeConfig {
    DecodeConfig {
        dimensions: vec!["deployment.environment".into()],
        ..Default::default()
    }
}

/// Table: which spans become observations, with which key, latency and outcome.
/// Guarantees: entry spans only; operation from `http.route`, then `rpc.method`, then the
/// name; bad from ERROR status, HTTP ≥ 500 or a bad gRPC code; dimensions from the span
/// first, then the resource; invalid spans rejected with a reason and the rest kept.
#[test]
fn spans_to_observations() {
    let d = traces_proto(&sample_request().encode_to_vec(), &cfg()).unwrap();
    assert_eq!(d.received, 8);
    assert_eq!(d.rejected, 2);
    assert!(
        d.first_rejection.as_deref().unwrap().contains("trace_id"),
        "{:?}",
        d.first_rejection
    );
    let got: Vec<(String, f64, bool)> = d
        .batch
        .requests
        .iter()
        .map(|r| {
            (
                d.batch.keys[r.key as usize].to_string(),
                r.latency_ms,
                r.bad,
            )
        })
        .collect();
    let want = vec![
        (
            "checkout//pay/{id}@1.5.0,deployment.environment=prod".to_string(),
            120.0,
            false,
        ),
        (
            "checkout//pay/{id}@1.5.0,deployment.environment=prod".to_string(),
            80.0,
            true,
        ),
        (
            "checkout/Pay@1.5.0,deployment.environment=prod".to_string(),
            7.0,
            true,
        ),
        (
            "checkout/consume@1.5.0,deployment.environment=canary".to_string(),
            3.0,
            true,
        ),
    ];
    assert_eq!(got, want);
    assert_eq!(d.batch.keys.len(), 3, "keys are shared within a request");
    assert_eq!(
        d.batch.requests[0].time,
        T + 120_000_000,
        "event time is the span end"
    );
    // The failing requests' traces are kept as examples, with their keys; good ones are not.
    let bad: Vec<(u32, [u8; 16], f64)> = d
        .batch
        .requests
        .iter()
        .zip(
            sample_request().resource_spans[0].scope_spans[0]
                .spans
                .iter(),
        )
        .filter(|(r, _)| r.bad)
        .map(|(r, span)| {
            (
                r.key,
                span.trace_id.clone().try_into().unwrap(),
                r.latency_ms,
            )
        })
        .collect();
    let kept: Vec<(u32, [u8; 16], f64)> = d
        .batch
        .exemplars
        .iter()
        .map(|x| (x.key, x.trace_id, x.latency_ms))
        .collect();
    assert_eq!(kept, bad);
}

/// Guarantees: OTLP/JSON (as the spec writes it: hex ids, camelCase, string int64s, integer
/// enums) decodes to exactly what the protobuf does.
#[test]
fn json_matches_protobuf() {
    let req = sample_request();
    let json = serde_json::to_vec(&req).unwrap();
    assert!(
        String::from_utf8_lossy(&json).contains("\"traceId\":\"79797979"),
        "hex ids in JSON"
    );
    let a = traces_proto(&req.encode_to_vec(), &cfg()).unwrap();
    let b = traces_json(&json, &cfg()).unwrap();
    assert_eq!(a, b);
    // Hand-written, as in the OTLP specification's examples.
    let text = r#"{"resourceSpans":[{"resource":{"attributes":[{"key":"service.name","value":{"stringValue":"cart"}}]},
      "scopeSpans":[{"scope":{"name":"x"},"spans":[{"traceId":"5b8efff798038103d269b633813fc60c","spanId":"eee19b7ec3c1b174",
      "name":"GET /cart","kind":2,"startTimeUnixNano":"1544712660000000000","endTimeUnixNano":"1544712661000000000",
      "attributes":[{"key":"http.response.status_code","value":{"intValue":"500"}}],"status":{}}]}]}]}"#;
    let d = traces_json(text.as_bytes(), &DecodeConfig::default()).unwrap();
    assert_eq!(d.batch.requests.len(), 1);
    assert_eq!(d.batch.requests[0].latency_ms, 1000.0);
    assert!(d.batch.requests[0].bad);
    assert_eq!(&*d.batch.keys[0].service, "cart");
}

/// Guarantees: malformed payloads are errors naming the problem, never panics.
#[test]
fn malformed_payloads() {
    let bytes = sample_request().encode_to_vec();
    for cut in [1, 5, bytes.len() / 2, bytes.len() - 1] {
        let err = traces_proto(&bytes[..cut], &cfg()).unwrap_err();
        assert!(
            matches!(err, DecodeError::Truncated | DecodeError::Malformed(_)),
            "cut {cut}: {err}"
        );
    }
    assert!(traces_json(b"{\"resourceSpans\": [", &cfg()).is_err());
    assert!(traces_json(b"{\"resourceSpans\": 7}", &cfg()).is_err());
    assert!(metrics_proto(&[0x0a, 0x05, 0x01], &cfg()).is_err());
    assert!(logs_proto(&[0x0a, 0x05, 0x01], &cfg()).is_err());
}

pub(crate) fn metric_request(metrics: Vec<Metric>) -> ExportMetricsServiceRequest {
    ExportMetricsServiceRequest {
        resource_metrics: vec![ResourceMetrics {
            resource: Some(Resource {
                attributes: vec![kv("service.name", s("api")), kv("service.version", s("2"))],
                ..Default::default()
            }),
            scope_metrics: vec![ScopeMetrics {
                metrics,
                ..Default::default()
            }],
            ..Default::default()
        }],
    }
}

fn hist_point(attrs: Vec<KeyValue>, bounds: Vec<f64>, counts: Vec<u64>) -> HistogramDataPoint {
    HistogramDataPoint {
        attributes: attrs,
        start_time_unix_nano: T - 10,
        time_unix_nano: T,
        count: counts.iter().sum(),
        bucket_counts: counts,
        explicit_bounds: bounds,
        ..Default::default()
    }
}

/// Table: duration histograms (seconds → ms, explicit and exponential), request counters,
/// status attributes, and invalid points.
#[test]
fn metrics_to_observations() {
    let route = kv("http.route", s("/users"));
    let req = metric_request(vec![
        Metric {
            name: "http.server.request.duration".into(),
            unit: "s".into(),
            data: Some(pm::metric::Data::Histogram(Histogram {
                aggregation_temporality: AggregationTemporality::Cumulative as i32,
                data_points: vec![
                    hist_point(
                        vec![
                            route.clone(),
                            kv("http.response.status_code", Av::IntValue(200)),
                        ],
                        vec![0.1, 0.5],
                        vec![5, 3, 1],
                    ),
                    hist_point(
                        vec![
                            route.clone(),
                            kv("http.response.status_code", Av::IntValue(500)),
                        ],
                        vec![0.1, 0.5],
                        vec![1, 0, 0],
                    ),
                    hist_point(vec![route.clone()], vec![0.1, 0.5], vec![1, 0]), // wrong count
                ],
            })),
            ..Default::default()
        },
        Metric {
            name: "rpc.server.duration".into(),
            unit: "ms".into(),
            data: Some(pm::metric::Data::ExponentialHistogram(
                ExponentialHistogram {
                    aggregation_temporality: AggregationTemporality::Delta as i32,
                    data_points: vec![ExponentialHistogramDataPoint {
                        attributes: vec![kv("rpc.method", s("Get"))],
                        time_unix_nano: T,
                        scale: 0,
                        zero_count: 1,
                        positive: Some(pm::exponential_histogram_data_point::Buckets {
                            offset: 3,
                            bucket_counts: vec![2, 4],
                        }),
                        ..Default::default()
                    }],
                },
            )),
            ..Default::default()
        },
        Metric {
            name: "http.server.request.count".into(),
            data: Some(pm::metric::Data::Sum(Sum {
                aggregation_temporality: AggregationTemporality::Delta as i32,
                is_monotonic: true,
                data_points: vec![NumberDataPoint {
                    attributes: vec![route.clone(), kv("error.type", s("timeout"))],
                    time_unix_nano: T,
                    value: Some(pm::number_data_point::Value::AsInt(12)),
                    ..Default::default()
                }],
            })),
            ..Default::default()
        },
        Metric {
            name: "process.cpu.time".into(),
            ..Default::default()
        },
    ]);
    let d = metrics_proto(&req.encode_to_vec(), &cfg()).unwrap();
    assert_eq!((d.received, d.rejected), (5, 1));
    assert!(d.first_rejection.unwrap().contains("bucket_counts"));
    let h = &d.batch.histograms;
    assert_eq!(h.len(), 3);
    assert_eq!(&*h[0].bounds_ms, &[100.0, 500.0]);
    assert_eq!(h[0].temporality, Temporality::Cumulative);
    assert!(!h[0].bad && h[1].bad);
    assert_ne!(
        h[0].stream, h[1].stream,
        "different attributes, different streams"
    );
    assert_eq!(
        d.batch.keys[h[0].key as usize].to_string(),
        "api//users@2,deployment.environment="
    );
    // Exponential, scale 0: buckets (8, 16] and (16, 32] after the zero bucket.
    assert_eq!(&*h[2].bounds_ms, &[8.0, 16.0, 32.0]);
    assert_eq!(h[2].counts, vec![1, 2, 4, 0]);
    let c = &d.batch.counters;
    assert_eq!(c.len(), 1);
    assert_eq!((c[0].value, c[0].bad), (12.0, true));
    // The same request in JSON decodes identically.
    let j = metrics_json(&serde_json::to_vec(&req).unwrap(), &cfg()).unwrap();
    assert_eq!(j, metrics_proto(&req.encode_to_vec(), &cfg()).unwrap());
    // Stream identities are stable across decodes (cumulative state depends on it).
    assert_eq!(j.batch.histograms[0].stream, h[0].stream);
}

fn duration_metric(data: pm::metric::Data) -> ExportMetricsServiceRequest {
    metric_request(vec![Metric {
        name: "http.server.request.duration".into(),
        unit: "s".into(),
        data: Some(data),
        ..Default::default()
    }])
}

/// Table: hostile or inconsistent histogram points are rejected with a reason (never a panic
/// or a huge allocation); a point without buckets still counts its requests.
#[test]
fn hostile_histogram_points() {
    let hist = |p: HistogramDataPoint| {
        pm::metric::Data::Histogram(Histogram {
            aggregation_temporality: AggregationTemporality::Delta as i32,
            data_points: vec![p],
        })
    };
    let exp = |scale: i32, offset: i32, counts: Vec<u64>| {
        pm::metric::Data::ExponentialHistogram(ExponentialHistogram {
            aggregation_temporality: AggregationTemporality::Delta as i32,
            data_points: vec![ExponentialHistogramDataPoint {
                time_unix_nano: T,
                scale,
                count: counts.iter().sum(),
                positive: Some(pm::exponential_histogram_data_point::Buckets {
                    offset,
                    bucket_counts: counts,
                }),
                ..Default::default()
            }],
        })
    };
    let mut lying = hist_point(vec![], vec![0.1], vec![1, 1]);
    lying.count = 5;
    let mut huge = hist_point(vec![], vec![0.1], vec![u64::MAX, 0]);
    huge.count = u64::MAX;
    let too_many = hist_point(vec![], (1..=5000).map(f64::from).collect(), vec![0; 5001]);
    let cases: Vec<(&str, pm::metric::Data, Option<Reason>)> = vec![
        (
            "count disagrees with buckets",
            hist(lying),
            Some(Reason::InvalidPoint),
        ),
        ("u64::MAX requests", hist(huge), Some(Reason::InvalidPoint)),
        ("5001 buckets", hist(too_many), Some(Reason::InvalidPoint)),
        (
            "offset near i32::MAX",
            exp(0, i32::MAX - 1, vec![1, 1, 1]),
            Some(Reason::InvalidPoint),
        ),
        (
            "scale -10: infinite bounds",
            exp(-10, 1, vec![1]),
            Some(Reason::InvalidPoint),
        ),
        ("scale 3, ordinary", exp(3, -20, vec![1, 2, 3]), None),
    ];
    for (name, data, want) in cases {
        let d = metrics_proto(&duration_metric(data).encode_to_vec(), &cfg()).unwrap();
        match want {
            Some(r) => {
                assert_eq!(d.rejected, 1, "{name}");
                assert_eq!(d.rejected_by[r as usize], 1, "{name}");
                assert!(d.batch.histograms.is_empty(), "{name}");
            }
            None => assert_eq!((d.rejected, d.batch.histograms.len()), (0, 1), "{name}"),
        }
    }
    // No buckets at all: the point's count is still requests (as a counter, no latency).
    let mut bare = hist_point(vec![], vec![], vec![]);
    bare.count = 7;
    let d = metrics_proto(&duration_metric(hist(bare)).encode_to_vec(), &cfg()).unwrap();
    assert_eq!(d.rejected, 0);
    assert_eq!(d.batch.counters.len(), 1);
    assert_eq!(d.batch.counters[0].value, 7.0);
}

/// Guarantees: series-key parts from clients are bounded in length (cut at a character boundary).
#[test]
fn key_parts_are_clipped() {
    let long = "é".repeat(400); // 800 bytes
    let req = request(
        vec![kv("service.name", s(&long))],
        vec![span(
            "x",
            Kind::Server,
            T,
            1,
            vec![kv("http.route", s(&long))],
            false,
        )],
    );
    let d = traces_proto(&req.encode_to_vec(), &cfg()).unwrap();
    let k = &d.batch.keys[0];
    assert_eq!(k.service.len(), MAX_KEY_PART_BYTES);
    assert_eq!(k.operation.len(), MAX_KEY_PART_BYTES);
    assert!(k.service.chars().all(|c| c == 'é'));
}

/// Scenario: spans whose names carry raw paths with ids and e-mail addresses (no
/// `http.route`), a dimension holding a host name, and metric points with a raw route; a
/// scrub rule for the host names.
/// Guarantees: the series keys carry `{id}` instead of the ids and the rule's replacement
/// instead of the host, for spans and metric points alike; spans that differ only by id
/// share one key.
#[test]
fn ids_and_rule_matches_are_scrubbed_before_keys() {
    let mut cfg = cfg();
    cfg.scrub.rules.push(scrub::Rule {
        pattern: regex::Regex::new(r"^ip-\d+-\d+-\d+-\d+$").unwrap(),
        replacement: "ip-host".into(),
    });
    let env = |v: &str| kv("deployment.environment", s(v));
    let req = request(
        vec![kv("service.name", s("users"))],
        vec![
            span(
                "GET /users/123",
                Kind::Server,
                T,
                5,
                vec![env("ip-10-0-0-1")],
                false,
            ),
            span(
                "GET /users/456",
                Kind::Server,
                T,
                5,
                vec![env("ip-10-0-0-2")],
                false,
            ),
            span(
                "POST /mail/jane.doe@example.com",
                Kind::Server,
                T,
                5,
                vec![env("prod")],
                false,
            ),
        ],
    );
    let d = traces_proto(&req.encode_to_vec(), &cfg).unwrap();
    let keys: Vec<String> = d
        .batch
        .requests
        .iter()
        .map(|r| d.batch.keys[r.key as usize].to_string())
        .collect();
    assert_eq!(
        keys,
        [
            "users/GET /users/{id}@,deployment.environment=ip-host",
            "users/GET /users/{id}@,deployment.environment=ip-host",
            "users/POST /mail/{id}@,deployment.environment=prod",
        ]
    );
    assert_eq!(d.batch.keys.len(), 2, "ids no longer split series");
    let m = duration_metric(pm::metric::Data::Histogram(Histogram {
        data_points: vec![hist_point(
            vec![
                kv(
                    "http.route",
                    s("/orders/3f2b8c1e-9a4d-4e6f-8b7a-1c2d3e4f5a6b"),
                ),
                env("ip-10-0-0-3"),
            ],
            vec![10.0],
            vec![1, 0],
        )],
        aggregation_temporality: AggregationTemporality::Delta as i32,
    }));
    let d = metrics_proto(&m.encode_to_vec(), &cfg).unwrap();
    let key = d.batch.keys[0].to_string();
    assert!(
        key.contains("/orders/{id}") && key.contains("deployment.environment=ip-host"),
        "{key}"
    );
}

/// Scenario: a span with 200 attributes where `http.route` comes 150th, a resource whose
/// `deployment.environment` value is 8 KiB, and a metric point with 200 attributes where its
/// `http.route` comes last; the default caps (128 attributes, 4 KiB).
/// Guarantees: attributes beyond the count cap and over-long ones are not read (the span's
/// operation falls back to its name, the dimension is empty) and are counted; the spans and
/// points themselves are kept; a request within the caps reads every attribute.
#[test]
fn attribute_caps_bound_what_is_read() {
    let mut attrs: Vec<KeyValue> = (0..149).map(|i| kv(&format!("a{i}"), s("v"))).collect();
    attrs.push(kv("http.route", s("/r")));
    attrs.extend((0..50).map(|i| kv(&format!("b{i}"), s("v"))));
    let req = request(
        vec![
            kv("service.name", s("svc")),
            kv("deployment.environment", s(&"x".repeat(8192))),
        ],
        vec![span("GET", Kind::Server, T, 1, attrs, false)],
    );
    let d = traces_proto(&req.encode_to_vec(), &cfg()).unwrap();
    assert_eq!(d.batch.requests.len(), 1);
    assert_eq!(
        d.batch.keys[0].to_string(),
        "svc/GET@,deployment.environment="
    );
    assert_eq!(d.attributes_dropped, 200 - 128 + 1);

    let mut point_attrs: Vec<KeyValue> = (0..199).map(|i| kv(&format!("a{i}"), s("v"))).collect();
    point_attrs.push(kv("http.route", s("/late")));
    let m = duration_metric(pm::metric::Data::Histogram(Histogram {
        data_points: vec![hist_point(point_attrs, vec![10.0], vec![1, 0])],
        aggregation_temporality: AggregationTemporality::Delta as i32,
    }));
    let d = metrics_proto(&m.encode_to_vec(), &cfg()).unwrap();
    assert_eq!(d.attributes_dropped, 200 - 128);
    assert_eq!(d.batch.histograms.len(), 1);
    let key = d.batch.keys[d.batch.histograms[0].key as usize].to_string();
    assert!(!key.contains("/late"), "{key}");

    let ok = request(
        vec![kv("service.name", s("svc"))],
        vec![span(
            "GET",
            Kind::Server,
            T,
            1,
            vec![kv("http.route", s("/r"))],
            false,
        )],
    );
    let d = traces_proto(&ok.encode_to_vec(), &cfg()).unwrap();
    assert_eq!(
        (d.attributes_dropped, d.batch.keys[0].operation.as_ref()),
        (0, "/r")
    );
}
