//! Archive, query and backtest harness (issue 5's figures), all in one run:
//!
//! 1. **Ingest overhead of the archive**: the engine ingests event-time seconds of traffic
//!    (`--series` series, `--rps` requests per series per second) with and without sealing
//!    each second into a real archive writer (Parquet on disk, its own thread), alternating
//!    runs; throughput is requests ingested per wall second of the engine thread's work.
//! 2. **Query latency**: a day of archive (`--day-services` services × 2 series, one request
//!    per series per second) and SQL over it for one service, against the same query for all
//!    services as the baseline.
//! 3. **Backtest speed**: the day replayed through a policy (SLO, canary, rules), in event
//!    seconds per wall second.
//!
//! Run: `cargo run --release -p trike-benches --bin archive`

use clap::Parser;
use rand::{Rng, SeedableRng};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};
use trike_engine::{Batch, Engine, EngineConfig, RequestObs, SecondObs, SeriesKey};
use trike_sql::archive::{ArchiveConfig, ArchiveHandle, ArchiveWriter};

#[derive(Debug, Parser)]
struct Args {
    /// Series in the ingest-overhead runs.
    #[arg(long, default_value_t = 2000)]
    series: usize,
    /// Requests per series per second in the ingest-overhead runs.
    #[arg(long, default_value_t = 50)]
    rps: usize,
    /// Seconds of event time per ingest-overhead run.
    #[arg(long, default_value_t = 60)]
    seconds: u64,
    /// Runs of each kind (alternating).
    #[arg(long, default_value_t = 3)]
    runs: usize,
    /// Services in the day of archive (2 series each).
    #[arg(long, default_value_t = 50)]
    day_services: usize,
}

const S: u64 = 1_000_000_000;
/// 2026-12-02T00:00:00Z.
const DAY0: u64 = 1_796_169_600;

fn scratch(name: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("trike-bench-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    d
}

fn latency(s: u64, i: u64) -> f64 {
    5.0 + ((s * 7919 + i * 104_729) % 300) as f64
}

/// One ingest run: `seconds` of event time; returns requests per second of engine work.
fn ingest_run(args: &Args, archive: Option<&ArchiveHandle>) -> f64 {
    let mut engine = Engine::new(Arc::new(EngineConfig {
        keep_second_digests: true,
        ..EngineConfig::default()
    }));
    let keys: Vec<SeriesKey> = (0..args.series)
        .map(|i| SeriesKey::new(&format!("svc{}", i % 100), &format!("/r{i}"), "1.0"))
        .collect();
    // Log-normal-ish latencies from a seeded generator, so each series' digests differ as in
    // real traffic (a formula would repeat, and Parquet would compress it away).
    let mut rng = rand::rngs::StdRng::seed_from_u64(11);
    let mut batches = Vec::new();
    for s in 0..args.seconds {
        let t = (DAY0 + s) * S;
        let mut b = Batch::default();
        for (k, key) in keys.iter().enumerate() {
            let ki = b.key_index(key.clone());
            for i in 0..args.rps as u64 {
                b.requests.push(RequestObs {
                    key: ki,
                    time: t + i * (S / args.rps as u64),
                    latency_ms: (3.0 + rng.random::<f64>() * 1.5).exp(),
                    bad: i == 0 && k % 7 == 0,
                });
            }
        }
        batches.push(b);
    }
    let start = Instant::now();
    let mut requests = 0u64;
    for (s, b) in batches.iter().enumerate() {
        let now = (DAY0 + s as u64 + 1) * S;
        requests += b.requests.len() as u64;
        engine.ingest(b, now);
        engine.advance(now);
        if let Some(h) = archive {
            // What the engine thread's archiver does each second (sealing 5 s behind).
            if let Some(sealed) = (DAY0 + s as u64).checked_sub(5) {
                h.seconds(engine.second_rows(sealed));
            }
        }
    }
    requests as f64 / start.elapsed().as_secs_f64()
}

/// Writes a day of `services` × 2 series, one request per series per second.
fn write_day(dir: &Path, services: usize) -> (u64, Duration) {
    let start = Instant::now();
    let w = ArchiveWriter::start(ArchiveConfig {
        flush_every: Duration::from_secs(3600),
        ..ArchiveConfig::new(dir.to_path_buf())
    })
    .expect("archive writer");
    let h = w.handle();
    let mut engine = Engine::new(Arc::new(EngineConfig {
        keep_second_digests: true,
        ..EngineConfig::default()
    }));
    let keys: Vec<SeriesKey> = (0..services * 2)
        .map(|i| {
            SeriesKey::new(
                &format!("svc{:02}", i / 2),
                "/pay",
                if i % 2 == 0 { "1.4.0" } else { "1.5.0" },
            )
        })
        .collect();
    let mut pending: Vec<SecondObs> = Vec::new();
    let mut rows = 0u64;
    for s in DAY0..DAY0 + 86_400 + 6 {
        if s < DAY0 + 86_400 {
            let mut b = Batch::default();
            for (k, key) in keys.iter().enumerate() {
                let ki = b.key_index(key.clone());
                b.requests.push(RequestObs {
                    key: ki,
                    time: s * S + S / 2,
                    latency_ms: latency(s, k as u64) * if k % 2 == 1 { 1.5 } else { 1.0 },
                    bad: (s + k as u64).is_multiple_of(997),
                });
            }
            engine.ingest(&b, s * S + S / 2);
        }
        engine.advance((s + 1) * S);
        if s >= DAY0 + 5 {
            pending.extend(engine.second_rows(s - 5));
            // One file per half hour of the day: rows sorted by series within it.
            if pending.len() >= services * 2 * 1800 {
                rows += pending.len() as u64;
                h.seconds(std::mem::take(&mut pending));
                h.flush();
            }
        }
    }
    rows += pending.len() as u64;
    h.seconds(pending);
    drop(h);
    w.stop();
    (rows, start.elapsed())
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();

    // 1. Ingest with and without the archive, alternating.
    let dir = scratch("ingest");
    let writer = ArchiveWriter::start(ArchiveConfig::new(dir.clone()))?;
    let handle = writer.handle();
    let (mut without, mut with) = (Vec::new(), Vec::new());
    for _ in 0..args.runs {
        without.push(ingest_run(&args, None));
        with.push(ingest_run(&args, Some(&handle)));
    }
    handle.flush();
    let stats = handle.stats.clone();
    drop(handle);
    writer.stop();
    let (a, b) = (median(without.clone()), median(with.clone()));
    println!(
        "ingest: {} series × {} req/s × {} s per run, {} runs each",
        args.series, args.rps, args.seconds, args.runs
    );
    println!("  without archive: median {a:.0} requests/s  (runs: {without:.0?})");
    println!("  with archive:    median {b:.0} requests/s  (runs: {with:.0?})");
    println!("  ratio with/without: {:.3}", b / a);
    println!(
        "  archive: {} rows, {} files, {:.1} MiB, {} dropped",
        stats.rows.load(std::sync::atomic::Ordering::Relaxed),
        stats.files.load(std::sync::atomic::Ordering::Relaxed),
        stats.bytes.load(std::sync::atomic::Ordering::Relaxed) as f64 / (1 << 20) as f64,
        stats
            .dropped_rows
            .load(std::sync::atomic::Ordering::Relaxed)
    );
    let _ = std::fs::remove_dir_all(&dir);

    // 2. A day of archive; SQL for one service against all services.
    let day = scratch("day");
    let (rows, took) = write_day(&day, args.day_services);
    let bytes: u64 = trike_sql::archive::files::files(&day, "slis")
        .iter()
        .map(|f| f.1)
        .sum();
    println!(
        "day of archive: {rows} rows ({} services × 2 series × 86 400 s), {:.1} MiB, generated and written in {:.1} s",
        args.day_services,
        bytes as f64 / (1 << 20) as f64,
        took.as_secs_f64()
    );
    let ctx = trike_sql::query::session(None, Some(&day))?;
    let limits = trike_sql::query::Limits {
        timeout: Duration::from_secs(600),
        ..Default::default()
    };
    let day_range = "time >= '2026-12-02T00:00:00Z' AND time < '2026-12-03T00:00:00Z'";
    for (label, filter) in [
        ("one service", format!("service = 'svc07' AND {day_range}")),
        ("all services (baseline)", day_range.to_string()),
    ] {
        let sql = format!(
            "SELECT sum(requests) AS requests, sum(errors) AS errors, \
             tdigest_quantile(digest, 0.99) AS p99 FROM archive_slis WHERE {filter}"
        );
        let mut times = Vec::new();
        let mut answer = String::new();
        for _ in 0..5 {
            let t = Instant::now();
            let out = trike_sql::query::run(&ctx, &sql, limits).await?;
            times.push(t.elapsed().as_secs_f64() * 1000.0);
            answer = serde_json::to_string(&out.json_rows()?)?;
        }
        times.sort_by(f64::total_cmp);
        println!(
            "  query, {label}: median {:.1} ms, min {:.1} ms, max {:.1} ms → {answer}",
            times[2], times[0], times[4]
        );
    }

    // 3. Backtest the day.
    let yaml = r#"
slos: [{ name: svc07-availability, service: svc07, objective: 0.999, sli: availability }]
canary: [{ service: svc07, baseline: "1.4.0", canary: "1.5.0", window: 10m, min_requests: 300 }]
policies:
  - { name: page-fast-burn, when: burn_rate.page, action: page }
  - { name: rollback-bad-canary, when: canary.fail, action: rollback, for: 30s }
"#;
    let cfg = trike::config::Config::validate(
        trike::config::RawConfig::from_yaml(yaml).map_err(anyhow::Error::msg)?,
        &Default::default(),
    )
    .map_err(|p| anyhow::anyhow!(p.join("; ")))?;
    let t = Instant::now();
    let all = trike_sql::archive::read_slis(&day, 0, u64::MAX)?;
    let read = t.elapsed();
    let t = Instant::now();
    let replay = trike::backtest::replay(&cfg, &all, DAY0, DAY0 + 86_400);
    let took = t.elapsed();
    println!(
        "backtest: {} event-seconds ({} rows) in {:.1} s = {:.0} event-seconds per wall second \
         (plus {:.1} s reading the archive); {} decisions",
        replay.seconds,
        replay.rows,
        took.as_secs_f64(),
        replay.seconds as f64 / took.as_secs_f64(),
        read.as_secs_f64(),
        replay.events.len()
    );
    let _ = std::fs::remove_dir_all(&day);
    Ok(())
}
