//! Decoding usage metrics (CPU time, memory) into usage points.

use super::tests::{kv, metric_request, s};
use super::*;
use prost::Message;
use trike_engine::{Temporality, UsageKind};
use trike_proto::metrics::v1::{self as pm, AggregationTemporality, Metric, NumberDataPoint};
use trike_proto::metrics::v1::{metric::Data, number_data_point::Value as Nv};

const T: u64 = 1_800_000_000_000_000_000;

fn cfg() -> DecodeConfig {
    DecodeConfig {
        usage_metrics: vec!["process.cpu.time".into(), "process.memory.usage".into()],
        ..Default::default()
    }
}

fn point(mode: &str, time: u64, v: Nv) -> NumberDataPoint {
    NumberDataPoint {
        attributes: vec![kv("cpu.mode", s(mode))],
        start_time_unix_nano: T - 60,
        time_unix_nano: time,
        value: Some(v),
        ..Default::default()
    }
}

fn sum(
    name: &str,
    monotonic: bool,
    t: AggregationTemporality,
    points: Vec<NumberDataPoint>,
) -> Metric {
    Metric {
        name: name.into(),
        unit: "s".into(),
        data: Some(Data::Sum(pm::Sum {
            data_points: points,
            aggregation_temporality: t as i32,
            is_monotonic: monotonic,
        })),
        ..Default::default()
    }
}

/// Table: `process.cpu.time` as a cumulative monotonic sum with two `cpu.mode`s, as a delta
/// sum, and `process.memory.usage` as a gauge and as a non-monotonic sum; then bad points (a
/// negative CPU time, no time, no value), a non-monotonic delta sum, a histogram named as a
/// usage metric, and an unnamed sum; the same in OTLP/JSON.
/// Guarantees: monotonic sums are rates with their temporality, each mode its own stream;
/// gauges and non-monotonic cumulative sums are levels; bad points, the delta level and the
/// histogram are rejected with a reason naming the metric; a sum no one reads is nothing; no request observation comes of
/// any of it; JSON decodes the same.
#[test]
fn usage_metrics_become_usage_points() {
    let cum = AggregationTemporality::Cumulative;
    let delta = AggregationTemporality::Delta;
    let req = metric_request(vec![
        sum(
            "process.cpu.time",
            true,
            cum,
            vec![
                point("user", T, Nv::AsDouble(12.5)),
                point("system", T, Nv::AsDouble(3.0)),
            ],
        ),
        sum(
            "process.cpu.time",
            true,
            delta,
            vec![point("user", T + 1, Nv::AsInt(2))],
        ),
        Metric {
            name: "process.memory.usage".into(),
            unit: "By".into(),
            data: Some(Data::Gauge(pm::Gauge {
                data_points: vec![point("", T, Nv::AsInt(500_000_000))],
            })),
            ..Default::default()
        },
        sum(
            "process.memory.usage",
            false,
            cum,
            vec![point("", T, Nv::AsDouble(-4.0))],
        ),
        sum(
            "process.cpu.time",
            true,
            cum,
            vec![
                point("user", T, Nv::AsDouble(-1.0)),
                point("user", 0, Nv::AsDouble(1.0)),
                NumberDataPoint {
                    time_unix_nano: T,
                    ..Default::default()
                },
            ],
        ),
        Metric {
            name: "process.cpu.time".into(),
            data: Some(Data::Histogram(pm::Histogram {
                data_points: vec![pm::HistogramDataPoint::default()],
                aggregation_temporality: cum as i32,
            })),
            ..Default::default()
        },
        sum(
            "process.memory.usage",
            false,
            delta,
            vec![point("", T, Nv::AsInt(7))],
        ),
        sum("jvm.threads", true, cum, vec![point("", T, Nv::AsInt(1))]),
    ]);
    let d = metrics_proto(&req.encode_to_vec(), &cfg()).unwrap();
    let u = &d.batch.usage;
    assert_eq!(u.len(), 5, "{u:#?}");
    assert!(d.batch.requests.is_empty() && d.batch.counters.is_empty());
    assert!(u.iter().all(|p| &*p.service == "api"));
    assert_eq!(
        (u[0].kind, u[0].temporality, u[0].value, &*u[0].metric),
        (
            UsageKind::Rate,
            Temporality::Cumulative,
            12.5,
            "process.cpu.time"
        )
    );
    assert_eq!((u[0].time, u[0].start_time), (T, T - 60));
    assert_eq!(u[1].value, 3.0);
    assert_ne!(u[0].stream, u[1].stream, "one stream per cpu.mode");
    assert_eq!((u[2].temporality, u[2].value), (Temporality::Delta, 2.0));
    assert_eq!((u[3].kind, u[3].value), (UsageKind::Level, 5e8));
    assert_eq!((u[4].kind, u[4].value), (UsageKind::Level, -4.0));
    assert_eq!(
        d.rejected, 5,
        "three bad points, the histogram's and the delta level's"
    );
    assert_eq!(d.rejected_by[Reason::InvalidPoint as usize], 3);
    assert_eq!(d.rejected_by[Reason::UnsupportedMetric as usize], 2);
    let first = d.first_rejection.unwrap();
    assert!(
        first.contains("process.cpu.time") && first.contains("≥ 0"),
        "{first}"
    );
    let json = metrics_json(&serde_json::to_vec(&req).unwrap(), &cfg()).unwrap();
    assert_eq!(json.batch.usage, d.batch.usage);
}

/// Scenario: the same CPU sum with no usage metric configured.
/// Guarantees: nothing is read from it, and nothing rejected.
#[test]
fn usage_metrics_are_read_only_when_named() {
    let req = metric_request(vec![sum(
        "process.cpu.time",
        true,
        AggregationTemporality::Cumulative,
        vec![point("user", T, Nv::AsDouble(1.0))],
    )]);
    let d = metrics_proto(&req.encode_to_vec(), &DecodeConfig::default()).unwrap();
    assert!(d.batch.usage.is_empty());
    assert_eq!(d.rejected, 0);
}
