//! SQL over an archive written from a scripted run through the engine: known traffic, a known
//! incident.

use super::*;
use crate::archive::{ArchiveConfig, ArchiveWriter};
use trike_engine::{Batch, EngineConfig, RequestObs, SeriesKey};

const S: u64 = 1_000_000_000;
/// 2026-12-02T00:00:00Z.
const DAY0: u64 = 1_796_169_600;

/// Latency of request `i` of second `s` (deterministic, spread 10–209 ms).
fn latency(s: u64, i: u64) -> f64 {
    10.0 + ((s * 7919 + i * 104_729) % 200) as f64
}

/// Errors in second `s` of `service`: 1 per second, and 20 per second during the incident
/// (minute 10 of hour 1).
fn errors(service: &str, s: u64) -> u64 {
    let incident = (DAY0 + 3600 + 600..DAY0 + 3600 + 660).contains(&s);
    if service == "checkout" && incident {
        20
    } else {
        u64::from(s.is_multiple_of(2))
    }
}

/// Runs `services` through an engine for `seconds` seconds from `from` (`per_second` requests
/// each), archiving each second 5 s after it ends, as the processor does. Returns every
/// latency of `checkout` (the exact reference).
fn scripted(dir: &Path, services: &[&str], from: u64, seconds: u64, per_second: u64) -> Vec<f64> {
    let mut engine = Engine::new(Arc::new(EngineConfig {
        keep_second_digests: true,
        ..EngineConfig::default()
    }));
    let writer = ArchiveWriter::start(ArchiveConfig {
        flush_every: Duration::from_secs(3600),
        ..ArchiveConfig::new(dir.to_path_buf())
    })
    .unwrap();
    let h = writer.handle();
    let mut exact = Vec::new();
    let mut pending = Vec::new();
    for s in from..from + seconds + 6 {
        if s < from + seconds {
            let mut b = Batch::default();
            for service in services {
                let k = b.key_index(SeriesKey::new(service, "/pay", "1.0"));
                let bad = errors(service, s);
                for i in 0..per_second {
                    let l = latency(s, i);
                    if *service == "checkout" {
                        exact.push(l);
                    }
                    b.requests.push(RequestObs {
                        key: k,
                        time: s * S + S / 2,
                        latency_ms: l,
                        bad: i < bad,
                    });
                }
            }
            engine.ingest(&b, s * S + S / 2);
        }
        engine.advance((s + 1) * S);
        if s >= from + 5 {
            // Handed over in chunks: the writer's queue is bounded, and this runs far faster
            // than real time.
            pending.extend(engine.second_rows(s - 5));
            if pending.len() >= 20_000 {
                h.seconds(std::mem::take(&mut pending));
                h.flush();
            }
        }
    }
    h.seconds(pending);
    h.flush();
    assert_eq!(
        h.stats
            .dropped_rows
            .load(std::sync::atomic::Ordering::Relaxed),
        0
    );
    drop(h);
    writer.stop();
    exact
}

async fn query(dir: &Path, sql: &str) -> Vec<serde_json::Value> {
    let ctx = session(None, Some(dir)).unwrap();
    run(&ctx, sql, Limits::default())
        .await
        .unwrap()
        .json_rows()
        .unwrap()
}

/// Scenario: two hours of two services, with an incident in checkout at 01:10. Guarantees:
/// SQL over the archive returns the known per-minute error ratios (including the incident's),
/// and the decision written for the incident is in `archive_decisions` with its evidence.
#[tokio::test]
async fn per_minute_error_ratios_and_the_incident_decision() {
    let dir = tempfile::tempdir().unwrap();
    scripted(dir.path(), &["checkout", "search"], DAY0 + 3600, 1800, 20);
    let rows = query(
        dir.path(),
        "SELECT date_trunc('minute', time) AS minute, sum(requests) AS requests, \
         sum(errors) AS errors, CAST(sum(errors) AS DOUBLE) / CAST(sum(requests) AS DOUBLE) AS ratio \
         FROM archive_slis WHERE service = 'checkout' GROUP BY 1 ORDER BY 1",
    )
    .await;
    assert_eq!(rows.len(), 30, "{rows:?}");
    for (m, r) in rows.iter().enumerate() {
        let want_errors = if m == 10 { 60 * 20 } else { 30 };
        assert_eq!(r["requests"], 1200, "minute {m}: {r}");
        assert_eq!(r["errors"], want_errors, "minute {m}: {r}");
        let ratio = r["ratio"].as_f64().unwrap();
        assert!((ratio - want_errors as f64 / 1200.0).abs() < 1e-12, "{r}");
    }
    assert!(
        rows[10]["minute"]
            .as_str()
            .unwrap()
            .starts_with("2026-12-02T01:10"),
        "{}",
        rows[10]
    );

    // The decision the incident caused, archived as the processor archives control events.
    let event = serde_json::json!({
        "specversion": "1.0", "id": "d-1", "source": "trike://t", "type": "io.trike.control.page",
        "subject": "checkout", "time": "2026-12-02T01:10:42.000Z",
        "data": {"decision_id": "d-1", "action": "page", "target": {"service": "checkout", "version": "1.0"},
                 "params": {}, "severity": "page", "reason": "checkout-availability is burning its budget",
                 "rule": "page-fast-burn", "slo": "checkout-availability", "policy_revision": "r1",
                 "dry_run": false, "evidence": {"kind": "burn_rate", "tier": {"name": "page_fast", "burn_long": 16.7}},
                 "detected_at": "2026-12-02T01:10:42.000Z", "observed_until": "2026-12-02T01:10:41.900Z"}
    });
    let w = ArchiveWriter::start(ArchiveConfig::new(dir.path().to_path_buf())).unwrap();
    w.handle().decision(event);
    w.stop();
    let d = query(
        dir.path(),
        "SELECT id, action, rule, slo, evidence, policy_revision FROM archive_decisions \
         WHERE service = 'checkout' AND time >= '2026-12-02T01:00:00Z'",
    )
    .await;
    assert_eq!(d.len(), 1, "{d:?}");
    assert_eq!(
        (d[0]["id"].as_str(), d[0]["action"].as_str()),
        (Some("d-1"), Some("page"))
    );
    let evidence: serde_json::Value =
        serde_json::from_str(d[0]["evidence"].as_str().unwrap()).unwrap();
    assert_eq!(evidence["tier"]["burn_long"], 16.7);
}

/// Scenario: a whole day of checkout at 5 requests per second, archived per second. Guarantees:
/// `tdigest_quantile` over the day, merged from 86 400 archived digests, is within the sketch's
/// tolerance (1 % of value for p50/p90/p99) of the exact quantile of every request.
#[tokio::test]
async fn quantiles_over_a_day_merge_the_archived_digests() {
    let dir = tempfile::tempdir().unwrap();
    let mut exact = scripted(dir.path(), &["checkout"], DAY0, 86_400, 5);
    exact.sort_by(f64::total_cmp);
    let rows = query(
        dir.path(),
        "SELECT count(*) AS seconds, sum(requests) AS requests, \
         tdigest_quantile(digest, 0.5) AS p50, tdigest_quantile(digest, 0.9) AS p90, \
         tdigest_quantile(digest, 0.99) AS p99 FROM archive_slis \
         WHERE service = 'checkout' AND time >= '2026-12-02T00:00:00Z' AND time < '2026-12-03T00:00:00Z'",
    )
    .await;
    assert_eq!(rows[0]["seconds"], 86_400);
    assert_eq!(rows[0]["requests"], exact.len() as u64);
    for (name, q) in [("p50", 0.5), ("p90", 0.9), ("p99", 0.99)] {
        let want = exact[((exact.len() - 1) as f64 * q).round() as usize];
        let got = rows[0][name].as_f64().unwrap();
        assert!(
            (got - want).abs() / want < 0.01,
            "{name}: {got} vs exact {want}"
        );
    }
}

/// Scenario: two hours of 40 services. Guarantees: a query for one service over a time range
/// reads only that service's row groups (Parquet statistics prune the rest), visible in the
/// scan's metrics; without the filter every row group is read.
#[tokio::test]
async fn filters_on_service_and_time_prune_the_scan() {
    let dir = tempfile::tempdir().unwrap();
    let services: Vec<String> = (0..40).map(|i| format!("svc{i:02}")).collect();
    let names: Vec<&str> = services.iter().map(String::as_str).collect();
    scripted(dir.path(), &names, DAY0, 7200, 1);
    let ctx = session(None, Some(dir.path())).unwrap();
    let explain = |sql: &str| {
        let ctx = ctx.clone();
        let sql = format!("EXPLAIN ANALYZE {sql}");
        async move {
            let out = run(&ctx, &sql, Limits::default()).await.unwrap();
            out.table().unwrap()
        }
    };
    // "row_groups_pruned_statistics=36 total → 2 matched"
    let row_groups = |plan: &str| -> (u64, u64) {
        let rest = plan
            .split("row_groups_pruned_statistics=")
            .nth(1)
            .unwrap_or_else(|| panic!("no row-group metrics:\n{plan}"));
        let mut nums = rest
            .split(|c: char| !c.is_ascii_digit())
            .filter(|x| !x.is_empty())
            .map(|x| x.parse::<u64>().unwrap());
        (nums.next().unwrap(), nums.next().unwrap())
    };
    let one = explain(
        "SELECT sum(requests) FROM archive_slis WHERE service = 'svc07' \
         AND time >= '2026-12-02T00:30:00Z' AND time < '2026-12-02T01:30:00Z'",
    )
    .await;
    let all = explain("SELECT sum(requests) FROM archive_slis").await;
    let (total_one, read_one) = row_groups(&one);
    let (total_all, read_all) = row_groups(&all);
    // (Files whose time range misses the filter are skipped before their row groups count.)
    assert!(total_one <= total_all);
    assert_eq!(read_all, total_all, "no filter: every row group is read");
    assert!(total_all >= 30, "{total_all} row groups in all");
    // Each file holds every service's rows sorted by service: svc07's rows sit in one row
    // group per file, so at most one row group per file whose time range meets the filter.
    let (from, to) = (DAY0 + 1800, DAY0 + 5400);
    let files_in_range = crate::archive::files::files(dir.path(), crate::archive::SLIS)
        .iter()
        .filter(|(p, _)| {
            let name = p.file_name().unwrap().to_string_lossy().into_owned();
            let mut it = name.split('-').map(|x| x.parse::<u64>().unwrap_or(0));
            let (first, last) = (it.next().unwrap(), it.next().unwrap());
            first < to && last >= from
        })
        .count() as u64;
    assert!(
        read_one <= files_in_range && read_one * 2 < total_one,
        "one service over one hour reads {read_one} of {total_one} row groups ({files_in_range} files)\n{one}"
    );
    let total = query(
        dir.path(),
        "SELECT sum(requests) AS n FROM archive_slis WHERE service = 'svc07' \
         AND time >= '2026-12-02T00:30:00Z' AND time < '2026-12-02T01:30:00Z'",
    )
    .await;
    assert_eq!(total[0]["n"], 3600);
}

/// Guarantees: the live tables answer SQL; results past the row limit are cut and marked;
/// a query past its time limit is an error; bad SQL is a clear error.
#[tokio::test]
async fn live_tables_limits_and_errors() {
    let mut engine = Engine::new(Arc::new(EngineConfig {
        keep_second_digests: true,
        ..EngineConfig::default()
    }));
    let now = DAY0 * S;
    let mut b = Batch::default();
    for (i, svc) in ["a", "b", "c"].iter().enumerate() {
        let k = b.key_index(SeriesKey::new(svc, "/x", "1"));
        for j in 0..10 {
            b.requests.push(RequestObs {
                key: k,
                time: now,
                latency_ms: 5.0 + j as f64,
                bad: j < i,
            });
        }
    }
    engine.ingest(&b, now);
    let live = LiveTables::snapshot(&engine, &[], &[]).unwrap();
    let ctx = session(Some(live), None).unwrap();
    let out = run(
        &ctx,
        "SELECT service, errors, error_ratio, p50_ms FROM slis WHERE time_window = '5m' ORDER BY service",
        Limits::default(),
    )
    .await
    .unwrap();
    let rows = out.json_rows().unwrap();
    assert_eq!(rows.len(), 3);
    assert_eq!(
        (rows[2]["service"].as_str(), rows[2]["errors"].as_u64()),
        (Some("c"), Some(2))
    );
    assert!((rows[1]["error_ratio"].as_f64().unwrap() - 0.1).abs() < 1e-12);
    let cut = run(
        &ctx,
        "SELECT * FROM slis",
        Limits {
            max_rows: 5,
            ..Limits::default()
        },
    )
    .await
    .unwrap();
    assert!(cut.truncated);
    assert_eq!(cut.json_rows().unwrap().len(), 5);
    let slow = run(
        &ctx,
        "SELECT sum(a.requests * b.requests * c.requests * d.requests * e.requests) \
         FROM slis a, slis b, slis c, slis d, slis e",
        Limits {
            timeout: Duration::from_millis(1),
            ..Limits::default()
        },
    )
    .await;
    assert!(matches!(slow, Err(Error::Timeout(_))), "{slow:?}");
    let bad = run(&ctx, "SELEKT 1", Limits::default()).await.unwrap_err();
    assert!(bad.to_string().contains("SELEKT"), "{bad}");
    let missing = run(&ctx, "SELECT * FROM nope", Limits::default())
        .await
        .unwrap_err();
    assert!(missing.to_string().contains("nope"), "{missing}");
}

/// Guarantees: the README's example queries plan against the archive's tables (types of
/// `time` against `now() - INTERVAL`, the quantile aggregate, the decisions table).
#[tokio::test]
async fn readme_examples_plan() {
    let dir = tempfile::Builder::new()
        .prefix("trike-readme")
        .tempdir()
        .unwrap();
    let ctx = session(None, Some(dir.path())).unwrap();
    for sql in [
        "SELECT date_trunc('minute', time) AS minute, sum(errors) * 1.0 / sum(requests) AS error_ratio, \
         tdigest_quantile(digest, 0.99) AS p99_ms FROM archive_slis WHERE service = 'checkout' \
         AND time >= now() - INTERVAL '1 day' GROUP BY 1 ORDER BY 1",
        "SELECT time, action, reason, evidence FROM archive_decisions WHERE service = 'checkout'",
    ] {
        let out = run(&ctx, sql, Limits::default()).await;
        assert!(out.is_ok(), "{sql}: {out:?}");
        assert!(out.unwrap().json_rows().unwrap().is_empty());
    }
}

/// Scenario: a query whose sort needs far more than the session's memory limit (1 MiB).
/// Guarantees: it fails with `OverMemory` (nothing spills to disk), and a small query in a
/// session with the same limit still runs.
#[tokio::test]
async fn queries_over_their_memory_limit_fail_saying_so() {
    let ctx = crate::query::session_limited(None, None, 1 << 20).unwrap();
    let big = run(
        &ctx,
        "SELECT v FROM generate_series(1, 2000000) AS t(v) ORDER BY v DESC",
        Limits::default(),
    )
    .await;
    assert!(matches!(big, Err(Error::OverMemory(_))), "{big:?}");
    assert!(
        big.unwrap_err().to_string().contains("memory limit"),
        "says why"
    );
    let small = run(
        &ctx,
        "SELECT count(*) AS n FROM generate_series(1, 1000)",
        Limits::default(),
    )
    .await
    .unwrap();
    assert_eq!(small.json_rows().unwrap()[0]["n"], 1000);
}

/// Guarantees: `run` refuses what is not a query before planning, with the statement named,
/// and `COPY … TO` writes no file.
#[tokio::test]
async fn run_refuses_statements_before_planning() {
    let dir = tempfile::tempdir().unwrap();
    let ctx = session(None, None).unwrap();
    let target = dir.path().join("pwned.csv");
    let copy = format!(
        "COPY (SELECT 1 AS x) TO '{}' STORED AS CSV",
        target.display()
    );
    let e = run(&ctx, &copy, Limits::default()).await.unwrap_err();
    assert!(matches!(e, Error::Refused(_)), "{e:?}");
    assert!(e.to_string().starts_with("COPY is not allowed"), "{e}");
    assert!(!target.exists(), "no file written");
    let e = run(
        &ctx,
        "CREATE EXTERNAL TABLE p STORED AS CSV LOCATION '/etc/passwd'",
        Limits::default(),
    )
    .await
    .unwrap_err();
    assert!(
        e.to_string()
            .starts_with("CREATE EXTERNAL TABLE is not allowed")
            && !e.to_string().contains("root:"),
        "{e}"
    );
}
