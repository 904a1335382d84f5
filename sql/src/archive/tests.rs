//! The archive writer: layout, round trip, file size bound, retention, crash safety.

use super::*;
use trike_engine::SeriesKey;
use trike_engine::sketch::TDigest;

const HOUR: u64 = 3600;
/// 2026-12-02T07:00:00Z.
const T0: u64 = 1_796_194_800;

fn row(service: &str, version: &str, second: u64, requests: u64) -> SecondObs {
    let mut d = TDigest::new(100.0);
    for i in 0..requests {
        d.add(10.0 + i as f64);
    }
    SecondObs {
        key: SeriesKey::new(service, "/pay", version),
        second,
        requests,
        errors: requests / 10,
        timed: requests,
        thresholds_ms: vec![300.0],
        within: vec![requests - 1],
        digest: Some(d),
    }
}

fn event(id: &str, second: u64) -> serde_json::Value {
    let t = chrono::DateTime::from_timestamp(second as i64, 0)
        .unwrap()
        .to_rfc3339_opts(chrono::SecondsFormat::Millis, true);
    serde_json::json!({
        "specversion": "1.0", "id": id, "source": "trike://t", "type": "io.trike.control.rollback",
        "subject": "checkout", "time": t,
        "data": {"decision_id": id, "action": "rollback", "target": {"service": "checkout", "version": "1.5.0"},
                 "params": {"weight": 0}, "severity": "page", "reason": "canary failed", "rule": "r",
                 "slo": null, "policy_revision": "abc", "dry_run": false, "evidence": {"kind": "canary"},
                 "detected_at": t, "observed_until": t}
    })
}

fn cfg(dir: &Path) -> ArchiveConfig {
    ArchiveConfig {
        flush_every: Duration::from_secs(3600),
        ..ArchiveConfig::new(dir.to_path_buf())
    }
}

/// Scenario: seconds of two services across two hours and two decisions, then a flush.
/// Guarantees: files land per table and hour (`slis/date=2026-12-02/hour=07/…`), read back to the same
/// rows (digests included) and events, and nothing half-written is left.
#[test]
fn writes_hourly_files_that_read_back() {
    let dir = tempfile::tempdir().unwrap();
    let w = ArchiveWriter::start(cfg(dir.path())).unwrap();
    let h = w.handle();
    let mut rows = Vec::new();
    for s in [T0, T0 + 1, T0 + HOUR - 1, T0 + HOUR, T0 + HOUR + 5] {
        rows.push(row("checkout", "1.4.0", s, 50));
        rows.push(row("search", "2", s, 7));
    }
    h.seconds(rows.clone());
    h.decision(event("a", T0 + 10));
    h.decision(event("b", T0 + HOUR + 10));
    h.flush();
    let slis = files::files(dir.path(), SLIS);
    assert_eq!(slis.len(), 2, "{slis:?}");
    let name = |i: usize| slis[i].0.to_string_lossy().into_owned();
    assert!(
        name(0).contains("slis/date=2026-12-02/hour=07/1796194800-1796198399-"),
        "{slis:?}"
    );
    assert!(
        name(1).contains("slis/date=2026-12-02/hour=08/"),
        "{slis:?}"
    );
    assert_eq!(files::files(dir.path(), DECISIONS).len(), 2);

    let back = read_slis(dir.path(), T0, T0 + 2 * HOUR).unwrap();
    let mut want = rows.clone();
    want.sort_by(|a, b| (a.second, &a.key).cmp(&(b.second, &b.key)));
    assert_eq!(back.len(), want.len());
    for (a, b) in back.iter().zip(&want) {
        assert_eq!(
            (&a.key, a.second, a.requests, a.errors),
            (&b.key, b.second, b.requests, b.errors)
        );
        assert_eq!(
            (&a.thresholds_ms, &a.within, a.timed),
            (&b.thresholds_ms, &b.within, b.timed)
        );
        let (x, y) = (a.digest.as_ref().unwrap(), b.digest.as_ref().unwrap());
        assert_eq!((x.count(), x.quantile(0.99)), (y.count(), y.quantile(0.99)));
    }
    assert_eq!(
        read_slis(dir.path(), T0 + HOUR, T0 + HOUR + 1)
            .unwrap()
            .len(),
        2
    );
    let events = read_decisions(dir.path()).unwrap();
    assert_eq!(
        events,
        vec![event("a", T0 + 10), event("b", T0 + HOUR + 10)]
    );
    assert_eq!(w.handle().stats.files.load(Relaxed), 4);
    drop(h);
    w.stop();
    assert_eq!(files::remove_temporaries(dir.path()), 0);
}

/// Guarantees: a file holds at most `max_file_rows` rows; the flush interval writes without
/// an explicit flush.
#[test]
fn files_are_size_bounded_and_flushed_on_time() {
    let dir = tempfile::tempdir().unwrap();
    let w = ArchiveWriter::start(ArchiveConfig {
        max_file_rows: 10,
        flush_every: Duration::from_millis(100),
        ..ArchiveConfig::new(dir.path().to_path_buf())
    })
    .unwrap();
    w.handle()
        .seconds((0..25).map(|i| row("checkout", "1", T0 + i, 3)).collect());
    let start = Instant::now();
    while files::files(dir.path(), SLIS).len() < 3 && start.elapsed() < Duration::from_secs(10) {
        std::thread::sleep(Duration::from_millis(20));
    }
    assert_eq!(files::files(dir.path(), SLIS).len(), 3);
    assert_eq!(read_slis(dir.path(), 0, u64::MAX).unwrap().len(), 25);
    w.stop();
}

/// Guarantees: retention removes hours older than the age limit, then the oldest files while
/// the total size is over the limit, and empty directories with them.
#[test]
fn retention_by_age_then_size() {
    let dir = tempfile::tempdir().unwrap();
    let w = ArchiveWriter::start(cfg(dir.path())).unwrap();
    for hour in 0..4 {
        w.handle()
            .seconds(vec![row("checkout", "1", T0 + hour * HOUR, 100)]);
    }
    w.handle().flush();
    let sizes: Vec<u64> = files::files(dir.path(), SLIS).iter().map(|f| f.1).collect();
    assert_eq!(sizes.len(), 4);
    let now = T0 + 3 * HOUR + 10;
    // Hours that ended 2 h ago or more: only 07 (it ended at 08:00, 2 h 0 m 10 s ago).
    let removed = files::enforce_retention(dir.path(), &[SLIS, DECISIONS], now, 2 * HOUR, u64::MAX);
    assert_eq!(removed, 1);
    let left = files::files(dir.path(), SLIS);
    assert_eq!(left.len(), 3);
    assert!(
        left[0].0.to_string_lossy().contains("/hour=08/"),
        "{left:?}"
    );
    // Room for one file only: the two older ones go.
    let removed =
        files::enforce_retention(dir.path(), &[SLIS, DECISIONS], now, u64::MAX / 2, left[2].1);
    assert_eq!(removed, 2);
    let left = files::files(dir.path(), SLIS);
    assert_eq!(left.len(), 1);
    assert!(
        left[0].0.to_string_lossy().contains("/hour=10/"),
        "{left:?}"
    );
    assert!(
        !dir.path().join("slis/date=2026-12-02/hour=07").exists(),
        "empty hour removed"
    );
    w.stop();
}

/// The child of `killed_writer_leaves_no_unreadable_file`: writes files as fast as it can
/// until killed.
#[test]
fn child_writer() {
    let Ok(dir) = std::env::var("TRIKE_ARCHIVE_CHILD_DIR") else {
        return; // only as a child process
    };
    let w = ArchiveWriter::start(ArchiveConfig {
        max_file_rows: 2_000,
        flush_every: Duration::from_millis(1),
        ..ArchiveConfig::new(PathBuf::from(dir))
    })
    .unwrap();
    let h = w.handle();
    for i in 0.. {
        h.seconds(
            (0..2_000)
                .map(|j| row(&format!("svc{}", j % 50), "1", T0 + i, 20))
                .collect(),
        );
        h.flush();
    }
}

/// Scenario: a child process writes archive files continuously and is SIGKILLed mid-stream.
/// Guarantees: every `.parquet` file left behind reads back completely; what was being
/// written is only a hidden temporary, which the next writer removes.
#[test]
fn killed_writer_leaves_no_unreadable_file() {
    let dir = tempfile::tempdir().unwrap();
    let mut child = std::process::Command::new(std::env::current_exe().unwrap())
        .args(["--exact", "archive::tests::child_writer", "--nocapture"])
        .env("TRIKE_ARCHIVE_CHILD_DIR", dir.path())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let start = Instant::now();
    while files::files(dir.path(), SLIS).len() < 5 && start.elapsed() < Duration::from_secs(60) {
        std::thread::sleep(Duration::from_millis(5));
    }
    // Kill it at a moment it is most likely mid-file.
    std::thread::sleep(Duration::from_millis(37));
    child.kill().unwrap(); // SIGKILL
    child.wait().unwrap();
    let written = files::files(dir.path(), SLIS);
    assert!(
        written.len() >= 5,
        "the child wrote files: {}",
        written.len()
    );
    for (path, _) in &written {
        let batches = read_file(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
        assert_eq!(
            batches.iter().map(RecordBatch::num_rows).sum::<usize>(),
            2_000
        );
    }
    // A new writer clears whatever temporary the kill left.
    ArchiveWriter::start(cfg(dir.path())).unwrap().stop();
    let mut stack = vec![dir.path().to_path_buf()];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(d).unwrap().flatten() {
            if e.metadata().unwrap().is_dir() {
                stack.push(e.path());
            } else {
                assert!(
                    !e.file_name().to_string_lossy().ends_with(".tmp"),
                    "{:?}",
                    e.path()
                );
            }
        }
    }
}

/// Guarantees: sampled raw requests land in `observations/…` per hour and answer SQL as
/// `archive_observations` with their series, time, latency and outcome.
#[tokio::test]
async fn raw_observations_are_archived_and_queryable() {
    let dir = tempfile::tempdir().unwrap();
    let w = ArchiveWriter::start(cfg(dir.path())).unwrap();
    let obs: Vec<RawObservation> = (0..100u64)
        .map(|i| RawObservation {
            key: SeriesKey::new(if i % 2 == 0 { "a" } else { "b" }, "/x", "1"),
            time: (T0 + i * 60) * 1_000_000_000 + 123,
            latency_ms: i as f64,
            bad: i % 10 == 0,
        })
        .collect();
    w.handle().observations(obs);
    w.stop();
    assert_eq!(files::files(dir.path(), OBSERVATIONS).len(), 2, "two hours");
    let ctx = crate::query::session(None, Some(dir.path())).unwrap();
    let rows = crate::query::run(
        &ctx,
        "SELECT service, count(*) AS n, sum(CASE WHEN bad THEN 1 ELSE 0 END) AS bad, \
         max(latency_ms) AS max_ms, min(time) AS first FROM archive_observations \
         GROUP BY service ORDER BY service",
        Default::default(),
    )
    .await
    .unwrap()
    .json_rows()
    .unwrap();
    assert_eq!(rows.len(), 2, "{rows:?}");
    assert_eq!(
        (rows[0]["n"].as_u64(), rows[0]["bad"].as_u64()),
        (Some(50), Some(10))
    );
    assert_eq!(rows[1]["max_ms"], 99.0);
    assert_eq!(rows[0]["first"], "2026-12-02T07:00:00.000000123Z");
}
