use super::*;
use crate::observation::CallSide;
use crate::time::NANOS_PER_SEC;

const S: u64 = NANOS_PER_SEC;
const T0: u64 = 1_800_000_000 * S;

fn half(service: &str, side: CallSide, trace: u64, span: u64, time: u64, bad: bool) -> CallObs {
    let mut trace_id = [0; 16];
    trace_id[..8].copy_from_slice(&trace.to_be_bytes());
    CallObs {
        service: service.into(),
        side,
        trace_id,
        span_id: span.to_be_bytes(),
        time,
        latency_ms: 10.0 + (span % 10) as f64,
        bad,
    }
}

fn client(service: &str, peer: Option<&str>, trace: u64, span: u64, t: u64, bad: bool) -> CallObs {
    half(
        service,
        CallSide::Client {
            peer: peer.map(Into::into),
        },
        trace,
        span,
        t,
        bad,
    )
}

fn server(service: &str, trace: u64, span: u64, t: u64, bad: bool) -> CallObs {
    half(service, CallSide::Server, trace, span, t, bad)
}

fn graph() -> Graph {
    Graph::new(GraphSettings::default(), 100.0)
}

fn row<'a>(rows: &'a [EdgeRow], client: &str, server: &str) -> Option<&'a EdgeRow> {
    rows.iter()
        .find(|r| r.client == client && r.server == server)
}

/// Scenario: checkout calls payments 100 times; half the server spans arrive before their
/// client span, half after; 10 of the calls fail on the server side only, 5 on the client
/// side only. The client spans name a wrong peer.
/// Guarantees: every call is paired, whichever half came first; the edge is named by the
/// server span's service, not the peer attribute; errors count either side's failure; the
/// latency is the client span's.
#[test]
fn halves_pair_in_either_order() {
    let mut g = graph();
    for i in 0..100u64 {
        let t = T0 + i * S / 10;
        let c = client("checkout", Some("payments-lb"), i, i, t, i % 20 == 1);
        let s = server("payments", i, i, t, i % 10 == 0);
        if i % 2 == 0 {
            g.call(&c, t);
            g.call(&s, t + S);
        } else {
            g.call(&s, t);
            g.call(&c, t + S);
        }
    }
    g.advance(T0 + 30 * S);
    let rows = g.edges(Span::minutes(5), T0 + 30 * S);
    assert_eq!(rows.len(), 1, "{rows:?}");
    let r = &rows[0];
    assert_eq!((&*r.client, &*r.server), ("checkout", "payments"));
    assert_eq!((r.requests, r.errors), (100, 15));
    assert!((r.error_ratio - 0.15).abs() < 1e-12);
    assert_eq!(r.p99_ms, Some(19.0));
    assert_eq!(g.stats().paired, 100);
    assert_eq!(g.waiting(), 0);
}

/// Scenario: payments calls db (which sends no spans) with `peer.service: db`; a client span
/// naming no peer and a server span whose caller sent nothing also arrive.
/// Guarantees: the db calls wait `wait` (10 s of arrival time) and then count toward db, each
/// once; the other two are counted as unpaired and dropped; later calls to db count at once,
/// until one pairs with a server span.
#[test]
fn a_callee_without_spans_is_named_by_the_peer_attribute() {
    let mut g = graph();
    for i in 0..50u64 {
        g.call(&client("payments", Some("db"), i, i, T0, i < 5), T0);
    }
    g.call(&client("payments", None, 99, 99, T0, false), T0);
    g.call(&server("payments", 98, 98, T0, false), T0);
    g.advance(T0 + 9 * S);
    assert!(
        g.edges(Span::minutes(5), T0 + 9 * S).is_empty(),
        "still waiting"
    );
    g.advance(T0 + 10 * S);
    let rows = g.edges(Span::minutes(5), T0 + 10 * S);
    let db = row(&rows, "payments", "db").expect("edge");
    assert_eq!((db.requests, db.errors), (50, 5));
    assert_eq!(rows.len(), 1);
    let st = g.stats();
    assert_eq!((st.by_peer, st.unpaired, st.paired), (50, 2, 0));
    assert_eq!(g.waiting(), 0);
    // db is known to send no spans now: its next calls count at once.
    let t = T0 + 11 * S;
    g.call(&client("payments", Some("db"), 500, 1, t, true), t);
    assert_eq!(g.stats().by_peer, 51, "counted at once");
    let db = g.edges(Span::minutes(5), t)[0].clone();
    assert_eq!((db.requests, db.errors), (51, 6));
    // Until one of them pairs with a server span (here the server half comes first): then
    // they wait again.
    g.call(&server("db", 501, 1, t, false), t);
    g.call(&client("payments", Some("db"), 501, 1, t, false), t);
    assert_eq!(g.stats().paired, 1, "paired, not counted at once");
    g.call(&client("payments", Some("db"), 502, 1, t, false), t);
    assert_eq!(g.stats().by_peer, 51, "the next one waits");
}

/// Scenario: payments' spans are late once by more than `wait`, so checkout→payments is taken
/// for a pair without server spans; then payments' spans arrive on time again, sometimes
/// after the client half (which is then counted at once), sometimes before.
/// Guarantees: the late server half after a call counted at once shows the pair has server
/// spans: the next calls pair again (named payments, not the client's peer name), whichever
/// half comes first.
#[test]
fn a_late_server_span_does_not_stop_pairing_for_good() {
    let mut g = graph();
    g.call(
        &client("checkout", Some("payments.lb"), 1, 1, T0, false),
        T0,
    );
    g.advance(T0 + 11 * S);
    g.call(&server("payments", 1, 1, T0, false), T0 + 12 * S);
    // Counted at once toward payments.lb; its server half follows 1 s later.
    let t = T0 + 13 * S;
    g.call(&client("checkout", Some("payments.lb"), 2, 2, t, false), t);
    g.call(&server("payments", 2, 2, t, false), t + S);
    // Now they pair, whichever comes first.
    for (n, server_first) in [(3u64, true), (4, false)] {
        let t = T0 + (13 + n) * S;
        let (c, s) = (
            client("checkout", Some("payments.lb"), n, n, t, false),
            server("payments", n, n, t, false),
        );
        if server_first {
            g.call(&s, t);
            g.call(&c, t);
        } else {
            g.call(&c, t);
            g.call(&s, t);
        }
    }
    let rows = g.edges(Span::minutes(5), T0 + 20 * S);
    let named: Vec<(&str, u64)> = rows
        .iter()
        .map(|r| (r.server.as_str(), r.requests))
        .collect();
    assert_eq!(named, [("payments", 2), ("payments.lb", 2)]);
}

/// Scenario: a flood of client halves that never pair, with `max_pending` 100, and more
/// edges than `max_edges` 3.
/// Guarantees: at most 100 halves wait (the oldest stop waiting early, counted as evicted and
/// still counted toward their peer); calls on a fourth edge are counted and dropped.
#[test]
fn waiting_halves_and_edges_are_bounded() {
    let mut g = Graph::new(
        GraphSettings {
            max_pending: 100,
            max_edges: 3,
            ..GraphSettings::default()
        },
        100.0,
    );
    for i in 0..1000u64 {
        let peer = format!("peer{}", i % 4);
        g.call(&client("a", Some(&peer), i, i, T0, false), T0);
        assert!(g.waiting() <= 100);
    }
    assert_eq!(g.stats().evicted, 900);
    g.advance(T0 + 10 * S);
    let rows = g.edges(Span::minutes(5), T0 + 10 * S);
    assert_eq!(rows.len(), 3, "{rows:?}");
    let counted: u64 = rows.iter().map(|r| r.requests).sum();
    assert_eq!(counted + g.stats().dropped, 1000);
    assert_eq!(g.stats().dropped, 250);
}

/// Scenario: one call per second on an edge for 90 minutes of event time (calls on an edge
/// named by the peer attribute, so each counts once its 10 s wait is over).
/// Guarantees: a window counts the calls of its span (the oldest minute prorated), the hour's
/// window counts an hour, and minutes older than an hour are let go.
#[test]
fn windows_count_their_span_and_the_hour_is_kept() {
    let mut g = graph();
    let start = T0 - T0 % (60 * S);
    for sec in 0..5400u64 {
        let t = start + sec * S;
        g.call(&client("a", Some("b"), sec, sec, t, false), t);
        g.advance(t);
    }
    // The last call's wait is over at 5409 s; windows end at 5410 s.
    let now = start + 5410 * S;
    g.advance(now);
    assert_eq!(g.edges(Span::minutes(5), now)[0].requests, 290);
    assert_eq!(g.edges(Span::hours(1), now)[0].requests, 3590);
    assert!(g.heap_bytes() < 200_000, "{}", g.heap_bytes());
}

/// Scenario: checkout → payments → db; db fails, payments' errors are all failed db calls,
/// checkout's all failed payments calls. Then a variant where payments fails on its own.
/// Guarantees: the walk from checkout ends at db with the path and the smaller hop share;
/// from payments it ends at db too; when payments' own errors are not explained by db, the
/// walk stops at payments; a share under `min_share` names nothing.
#[test]
fn the_walk_follows_the_failing_dependency() {
    let mut g = graph();
    for i in 0..100u64 {
        let t = T0 + i * S / 10;
        g.call(&client("checkout", Some("payments"), i, i, t, i < 40), t);
        g.call(&client("payments", Some("db"), 1000 + i, i, t, i < 30), t);
        g.call(&client("checkout", Some("cache"), 2000 + i, i, t, false), t);
    }
    let now = T0 + 30 * S;
    g.advance(now);
    let w = Span::minutes(5);
    let own = |s: &str| match s {
        "payments" => Some(40.0),
        _ => None,
    };
    let rc = root_cause(&g, "checkout", 40.0, w, now, own).expect("a cause");
    assert_eq!(rc.service, "db");
    assert_eq!(rc.edge, "payments→db");
    assert_eq!(rc.path, ["checkout", "payments", "db"]);
    assert!((rc.share - 0.75).abs() < 1e-9, "{}", rc.share);
    let rc = root_cause(&g, "payments", 40.0, w, now, own).expect("a cause");
    assert_eq!((rc.service.as_str(), rc.share), ("db", 0.75));
    // payments fails 200 requests, db explains 30 of them: payments is the cause.
    let rc = root_cause(&g, "checkout", 40.0, w, now, |s| {
        (s == "payments").then_some(200.0)
    })
    .expect("a cause");
    assert_eq!(rc.path, ["checkout", "payments"]);
    // checkout's 400 bad requests are mostly its own.
    assert_eq!(root_cause(&g, "checkout", 400.0, w, now, own), None);
}

/// Scenario: a client span is sent twice (an exporter's retry) and its server span never
/// comes.
/// Guarantees: the resent half does not reset the wait: the call counts toward its peer once,
/// `wait` after the first arrival.
#[test]
fn a_resent_half_keeps_its_place() {
    let mut g = graph();
    let c = client("a", Some("b"), 1, 1, T0, false);
    g.call(&c, T0);
    g.call(&c, T0 + 5 * S);
    assert_eq!(g.waiting(), 1);
    g.advance(T0 + 10 * S);
    assert_eq!(g.waiting(), 0);
    assert_eq!(g.edges(Span::minutes(5), T0 + 10 * S)[0].requests, 1);
}

/// Scenario: a half pairs (leaving its arrival in the queue), then a new half arrives 5 s
/// later; time moves 10 s past the first.
/// Guarantees: the paired one's leftover does not make the new half stop waiting early: it
/// still pairs when its other half comes 4 s later.
#[test]
fn a_paired_half_does_not_hurry_the_next() {
    let mut g = graph();
    g.call(&client("a", Some("b"), 1, 1, T0, false), T0);
    g.call(&server("b", 1, 1, T0, false), T0);
    g.call(&client("a", Some("b-lb"), 2, 2, T0, false), T0 + 5 * S);
    g.advance(T0 + 10 * S);
    assert_eq!(g.waiting(), 1);
    g.call(&server("b", 2, 2, T0, false), T0 + 14 * S);
    let rows = g.edges(Span::minutes(5), T0 + 14 * S);
    assert_eq!(rows.len(), 1, "{rows:?}");
    assert_eq!((rows[0].server.as_str(), rows[0].requests), ("b", 2));
}

/// Scenario: a client span stamped a day ahead (a skewed clock), then calls on time.
/// Guarantees: the skewed call counts now (as every observation does), and the calls after it
/// are counted, not dropped as older than the edge's newest minute.
#[test]
fn a_call_from_the_future_counts_now() {
    let mut g = graph();
    g.call(&server("b", 1, 1, T0, false), T0);
    g.call(&client("a", None, 1, 1, T0 + 86_400 * S, false), T0);
    for n in 2..12u64 {
        g.call(&server("b", n, n, T0, false), T0 + n * S);
        g.call(&client("a", None, n, n, T0 + n * S, false), T0 + n * S);
    }
    let rows = g.edges(Span::minutes(5), T0 + 12 * S);
    assert_eq!(rows[0].requests, 11, "{rows:?}");
}
