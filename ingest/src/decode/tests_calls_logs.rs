//! Decoding the service graph's call halves and log records as events.

use super::tests::{kv, request, s, span};
use super::*;
use prost::Message;
use trike_engine::CallSide;
use trike_proto::common::v1::{KeyValue, any_value::Value as Av};
use trike_proto::resource::v1::Resource;
use trike_proto::trace::v1::span::SpanKind as Kind;

const T: u64 = 1_800_000_000_000_000_000;

fn cfg() -> DecodeConfig {
    DecodeConfig {
        dimensions: vec!["deployment.environment".into()],
        ..Default::default()
    }
}

/// Scenario: payments sends, in one request, a SERVER span whose parent is checkout's client
/// span, a root SERVER span, CLIENT spans naming their peer by `peer.service`,
/// `server.address` and `db.system` (in that preference), one naming none, a failing one, a
/// PRODUCER span, and CLIENT spans with unusable ids; the same in OTLP/JSON.
/// Guarantees: the parented server span gives a server half keyed by its parent id; the root
/// one gives none; each usable client span gives a client half keyed by its own id with the
/// preferred peer, its latency and its failure; the unusable ones give nothing and are not
/// rejected (they are no observation); the SLI observations are as before; with the graph
/// off, no half is read.
#[test]
fn spans_give_the_halves_of_calls() {
    let mut parented = span("POST /charge", Kind::Server, T, 20, vec![], false);
    parented.parent_span_id = vec![7; 8];
    let root = span("POST /charge", Kind::Server, T, 21, vec![], false);
    let client = |name: &str, kind: Kind, id: u8, attrs: Vec<KeyValue>, error: bool| {
        let mut sp = span(name, kind, T, 5, attrs, error);
        sp.span_id = vec![id; 8];
        sp
    };
    let mut zero_id = client("zero", Kind::Client, 0, vec![], false);
    zero_id.span_id = vec![0; 8];
    let mut short_trace = client("short", Kind::Client, 9, vec![], false);
    short_trace.trace_id = vec![1; 8];
    let req = request(
        vec![kv("service.name", s("payments"))],
        vec![
            parented,
            root,
            client(
                "db query",
                Kind::Client,
                3,
                vec![
                    kv("db.system", s("postgresql")),
                    kv("peer.service", s("ledger-db")),
                    kv("server.address", s("10.0.0.7")),
                ],
                false,
            ),
            client(
                "GET",
                Kind::Client,
                4,
                vec![
                    kv("server.address", s("fraud.internal")),
                    kv("http.response.status_code", Av::IntValue(503)),
                ],
                false,
            ),
            client(
                "SET",
                Kind::Client,
                5,
                vec![kv("db.system", s("redis"))],
                true,
            ),
            client("call", Kind::Client, 6, vec![], false),
            client(
                "publish",
                Kind::Producer,
                8,
                vec![kv("peer.service", s("events"))],
                false,
            ),
            zero_id,
            short_trace,
        ],
    );
    let json = serde_json::to_vec(&req).unwrap();
    for d in [
        traces_proto(&req.encode_to_vec(), &cfg()).unwrap(),
        traces_json(&json, &cfg()).unwrap(),
    ] {
        assert_eq!(d.rejected, 0);
        assert_eq!(
            d.batch.requests.len(),
            2,
            "both server spans are observations"
        );
        let halves: Vec<(String, Option<String>, u8, bool, f64)> = d
            .batch
            .calls
            .iter()
            .map(|c| {
                assert_eq!(&*c.service, "payments");
                assert_eq!(c.time, T + c.latency_ms as u64 * 1_000_000);
                let (side, peer) = match &c.side {
                    CallSide::Server => ("server".to_string(), None),
                    CallSide::Client { peer } => {
                        ("client".to_string(), peer.as_ref().map(|p| p.to_string()))
                    }
                };
                (side, peer, c.span_id[0], c.bad, c.latency_ms)
            })
            .collect();
        let want: Vec<(String, Option<String>, u8, bool, f64)> = vec![
            ("server".into(), None, 7, false, 20.0),
            ("client".into(), Some("ledger-db".into()), 3, false, 5.0),
            ("client".into(), Some("fraud.internal".into()), 4, true, 5.0),
            ("client".into(), Some("redis".into()), 5, true, 5.0),
            ("client".into(), None, 6, false, 5.0),
            ("client".into(), Some("events".into()), 8, false, 5.0),
        ];
        assert_eq!(halves, want);
    }
    // graph.enabled: false reads no call half, and the observations are the same.
    let off = DecodeConfig {
        calls: false,
        ..cfg()
    };
    let d = traces_proto(&req.encode_to_vec(), &off).unwrap();
    assert!(d.batch.calls.is_empty());
    assert_eq!((d.batch.requests.len(), d.rejected), (2, 0));
}

/// Scenario: a worker's log records: INFO, WARN, ERROR and FATAL by severity number, two with
/// only a severity text ("error", "Info"), one with a route, one with only an observed time,
/// one with no time at all; in protobuf and in OTLP/JSON, with `logs.errors_as: bad_events`
/// and without.
/// Guarantees: with it, each timed record is one event of the worker's series (operation its
/// `http.route`, else `logs`; version from the resource), bad at ERROR or above by number,
/// else by text; the untimed one is rejected, naming why. Without it, records are only
/// counted: no event, nothing rejected.
#[test]
fn log_records_become_events_when_configured() {
    use trike_proto::collector::logs::v1::ExportLogsServiceRequest;
    use trike_proto::logs::v1::{LogRecord, ResourceLogs, ScopeLogs};
    let record = |sev: i32, text: &str, t: u64, observed: u64, attrs: Vec<KeyValue>| LogRecord {
        time_unix_nano: t,
        observed_time_unix_nano: observed,
        severity_number: sev,
        severity_text: text.into(),
        attributes: attrs,
        ..Default::default()
    };
    let req = ExportLogsServiceRequest {
        resource_logs: vec![ResourceLogs {
            resource: Some(Resource {
                attributes: vec![
                    kv("service.name", s("worker")),
                    kv("service.version", s("3.1")),
                ],
                ..Default::default()
            }),
            scope_logs: vec![ScopeLogs {
                log_records: vec![
                    record(9, "INFO", T, 0, vec![]),
                    record(13, "WARN", T, 0, vec![]),
                    record(17, "ERROR", T, 0, vec![]),
                    record(21, "FATAL", T, 0, vec![kv("http.route", s("/jobs/{id}"))]),
                    record(0, "error", T, 0, vec![]),
                    record(0, "Info", T, 0, vec![]),
                    record(9, "", 0, T + 5, vec![]),
                    record(17, "", 0, 0, vec![]),
                ],
                ..Default::default()
            }],
            ..Default::default()
        }],
    };
    let on = DecodeConfig {
        logs_as_bad_events: true,
        ..cfg()
    };
    let json = serde_json::to_vec(&req).unwrap();
    for d in [
        logs_proto(&req.encode_to_vec(), &on).unwrap(),
        logs_json(&json, &on).unwrap(),
    ] {
        assert_eq!((d.received, d.rejected), (8, 1));
        assert!(
            d.first_rejection
                .unwrap()
                .contains("observed_time_unix_nano")
        );
        let events: Vec<(&str, u64, bool)> = d
            .batch
            .logs
            .iter()
            .map(|l| {
                let k = &d.batch.keys[l.key as usize];
                assert_eq!((&*k.service, &*k.version), ("worker", "3.1"));
                (&*k.operation, l.time, l.bad)
            })
            .collect();
        assert_eq!(
            events,
            [
                ("logs", T, false),
                ("logs", T, false),
                ("logs", T, true),
                ("/jobs/{id}", T, true),
                ("logs", T, true),
                ("logs", T, false),
                ("logs", T + 5, false),
            ]
        );
        assert_eq!(d.batch.keys.len(), 2);
    }
    for d in [
        logs_proto(&req.encode_to_vec(), &cfg()).unwrap(),
        logs_json(&json, &cfg()).unwrap(),
    ] {
        assert_eq!((d.received, d.rejected), (8, 0));
        assert!(d.batch.is_empty());
    }
}

/// Scenario: a request whose client span names its peer in bytes that are not UTF-8 (edited
/// on the wire), beside a server span.
/// Guarantees: the request is decoded (the server span is an observation, nothing rejected);
/// the client half names no peer.
#[test]
fn a_broken_peer_name_costs_only_the_graph() {
    let mut call = span(
        "GET",
        Kind::Client,
        T,
        5,
        vec![kv("peer.service", s("PEERX"))],
        false,
    );
    call.span_id = vec![4; 8];
    let req = request(
        vec![kv("service.name", s("checkout"))],
        vec![span("GET /a", Kind::Server, T, 6, vec![], false), call],
    );
    let mut bytes = req.encode_to_vec();
    let at = bytes.windows(5).position(|w| w == b"PEERX").unwrap();
    bytes[at..at + 5].copy_from_slice(&[0xff, 0xfe, 0xfd, 0xfc, 0xfb]);
    let d = traces_proto(&bytes, &cfg()).unwrap();
    assert_eq!((d.batch.requests.len(), d.rejected), (1, 0));
    assert_eq!(d.batch.calls.len(), 1);
    assert_eq!(d.batch.calls[0].side, CallSide::Client { peer: None });
}
