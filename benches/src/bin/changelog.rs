//! A partition's state on `trike.changelog`: its size, the time to write it, and the time a
//! new owner takes to restore it (read to the high watermark, check, decode, merge).
//!
//! Builds one partition's engine state of `--series` series (services × 10 routes × 2
//! versions) with an hour of traffic at `--rate` requests per second per series (default 1;
//! every default window and digest filled), then writes it to the changelog `--rounds` times; then 10 s more
//! traffic, written as a change set (what a processor writes between full states); then a new
//! owner restores both (full state + change set) and answers as the engine that wrote them.
//! Against `--brokers` (tansu, a real cluster) or, without it, the embedded broker.
//!
//! Run: `cargo run --release -p trike-benches --bin changelog -- [--series 10000] [--brokers host:port]`

use clap::Parser;
use rand::SeedableRng;
use rand_distr::{Distribution, LogNormal};
use std::sync::Arc;
use std::time::Instant;
use trike_engine::SliQuery;
use trike_engine::anomaly::{DetectorConfig, SliWatch};
use trike_engine::policy::{Policy, PolicyEngine};
use trike_engine::{Batch, Engine, EngineConfig, RequestObs, SeriesKey};
use trike_runtime::fleet::changelog::{Changelog, PartitionState, encode, encode_changes};
use trike_runtime::fleet::owner::FULL_EVERY;
use trike_sinks::kafka_client::ClientProps;

const S: u64 = 1_000_000_000;

#[derive(Parser)]
struct Args {
    /// Series in the partition.
    #[arg(long, default_value_t = 10_000)]
    series: usize,
    /// Seconds of traffic before the state is taken (3600: the 1 h windows full).
    #[arg(long, default_value_t = 3600)]
    seconds: u64,
    /// Requests per second per series.
    #[arg(long, default_value_t = 1)]
    rate: u64,
    /// Writes to time.
    #[arg(long, default_value_t = 3)]
    rounds: u32,
    /// A Kafka-protocol broker; default: the embedded one.
    #[arg(long)]
    brokers: Option<String>,
    /// Only the sizes of the state and of a change set (no broker): for states larger than
    /// the broker takes within the write timeout.
    #[arg(long)]
    size_only: bool,
}

fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_env("TRIKE_LOG")
                .unwrap_or_else(|_| "warn".into()),
        )
        .with_writer(std::io::stderr)
        .init();
    let t_end = 1_800_000_000 * S;
    let cfg = Arc::new(EngineConfig::default());
    let mut e = Engine::new(cfg.clone());
    e.track_changes();
    let services = args.series.div_ceil(20);
    let keys: Vec<SeriesKey> = (0..args.series)
        .map(|i| {
            let s = i / 20;
            SeriesKey::new(
                &format!("svc-{s:04}"),
                &format!("/api/r{}", i % 10),
                if (i / 10) % 2 == 0 { "1.0" } else { "1.1" },
            )
        })
        .collect();
    let mut rng = rand::rngs::StdRng::seed_from_u64(7);
    let dist = LogNormal::new(3.5, 0.8).unwrap();
    let started = Instant::now();
    let mut batch = Batch {
        keys: keys.clone(),
        ..Default::default()
    };
    let mut traffic = |e: &mut Engine, from: u64, to: u64| {
        for sec in from..to {
            let now = t_end - (args.seconds - sec) * S;
            batch.requests.clear();
            for k in 0..keys.len() {
                for i in 0..args.rate {
                    batch.requests.push(RequestObs {
                        key: k as u32,
                        time: now + i * (S / args.rate),
                        latency_ms: dist.sample(&mut rng),
                        bad: (k as u64 + i) % 97 == sec % 97,
                    });
                }
            }
            e.ingest(&batch, now + S - 1);
            e.advance(now + S - 1);
        }
    };
    traffic(&mut e, 0, args.seconds);
    eprintln!(
        "built {} series of {services} services in {:.1?}",
        e.series_count(),
        started.elapsed()
    );

    // Every service's anomaly detectors (rate, error ratio, p99) travel with the partition.
    let mut watch = SliWatch::new(DetectorConfig::default(), 10, 30_000);
    watch.sample(&e);
    let t = Instant::now();
    let state = PartitionState {
        partition: 0,
        offset: 1_000_000,
        engine: e.snapshot_of(|_| true),
        policy: PolicyEngine::new(Policy::new(vec![])).snapshot_of(|_| true),
        outbox: Vec::new(),
        watch: watch.snapshot_of(|_| true),
        forecasts: Default::default(),
    };
    e.clear_changes(|_| true);
    let snapshot_ms = t.elapsed().as_secs_f64() * 1e3;
    let t = Instant::now();
    let chunks = encode(&state, 1, 1)?;
    let encode_ms = t.elapsed().as_secs_f64() * 1e3;
    let bytes: usize = chunks.iter().map(|c| c.value.len()).sum();
    eprintln!(
        "state of {} series: {bytes} bytes in {} chunks ({} per series); snapshot {snapshot_ms:.0} ms, encode {encode_ms:.0} ms",
        e.series_count(),
        chunks.len(),
        bytes / e.series_count().max(1)
    );

    if args.size_only {
        traffic(&mut e, args.seconds, args.seconds + 10);
        let t = Instant::now();
        let changes = PartitionState {
            engine: e.take_changes(|_| true),
            ..state
        };
        let take_ms = t.elapsed().as_secs_f64() * 1e3;
        let change_bytes: usize = encode_changes(&changes, 1, 1, 1)?
            .iter()
            .map(|c| c.value.len())
            .sum();
        let per_cycle = bytes + (FULL_EVERY as usize - 1) * change_bytes;
        println!(
            "| series | state bytes (per series) | change set of 10 s (per series) | take ms | changelog bytes/s at checkpoint_every 10s (full every {FULL_EVERY}) | full states only |"
        );
        println!("|---:|---:|---:|---:|---:|---:|");
        let n = e.series_count().max(1);
        println!(
            "| {n} | {bytes} ({}) | {change_bytes} ({}) | {take_ms:.0} | {} | {} |",
            bytes / n,
            change_bytes / n,
            per_cycle / (FULL_EVERY as usize * 10),
            bytes / 10
        );
        return Ok(());
    }
    let embedded;
    let brokers = match &args.brokers {
        Some(b) => b.clone(),
        None => {
            embedded =
                trike::embedded_broker::EmbeddedBroker::start(&[("bench.changelog".into(), 1)])?;
            embedded.bootstrap_servers().to_string()
        }
    };
    let topic = format!("bench{}.changelog", std::process::id());
    let topic = if args.brokers.is_some() {
        topic
    } else {
        "bench.changelog".to_string()
    };
    let cl = Changelog::open(&brokers, &ClientProps::default(), &topic, 1, 1)
        .map_err(|e| anyhow::anyhow!("{e}"))?;
    // As a processor does on assignment: claim the partition, then write under the token.
    let owner = cl.claim(0).map_err(anyhow::Error::msg)?;
    let mut write_ms = Vec::new();
    for g in 1..=u64::from(args.rounds) {
        let t = Instant::now();
        let _ = cl.write(&state, owner, g).map_err(anyhow::Error::msg)?;
        write_ms.push(t.elapsed().as_secs_f64() * 1e3);
    }
    // 10 s more (one checkpoint_every), written as a change set on the last full state.
    traffic(&mut e, args.seconds, args.seconds + 10);
    let t = Instant::now();
    let changes = PartitionState {
        partition: 0,
        offset: 1_000_010,
        engine: e.take_changes(|_| true),
        policy: state.policy.clone(),
        outbox: Vec::new(),
        watch: state.watch.clone(),
        forecasts: Default::default(),
    };
    let take_ms = t.elapsed().as_secs_f64() * 1e3;
    let change_bytes: usize = encode_changes(&changes, 1, u64::from(args.rounds), 1)?
        .iter()
        .map(|c| c.value.len())
        .sum();
    let t = Instant::now();
    let _ = cl
        .write_changes(&changes, owner, u64::from(args.rounds), 1)
        .map_err(anyhow::Error::msg)?;
    let change_write_ms = t.elapsed().as_secs_f64() * 1e3;
    eprintln!(
        "change set of 10 s: {change_bytes} bytes ({} per series); taken in {take_ms:.0} ms, written in {change_write_ms:.0} ms",
        change_bytes / e.series_count().max(1)
    );

    let t = Instant::now();
    let Some(restored) = cl.read(0).map_err(anyhow::Error::msg)? else {
        anyhow::bail!(
            "the state written is not on {topic} any more: the broker kept only part of the log (the embedded broker keeps a few tens of MB per partition; use --brokers)"
        );
    };
    let read_ms = t.elapsed().as_secs_f64() * 1e3;
    let t = Instant::now();
    let mut fresh = Engine::new(cfg);
    let generation = restored.generation;
    assert_eq!(restored.changes.len(), 1, "the change set is read back");
    let taken = fresh.merge(restored.full.engine)?;
    for c in restored.changes {
        fresh.apply_changes(c.engine)?;
    }
    let merge_ms = t.elapsed().as_secs_f64() * 1e3;
    assert_eq!(generation, u64::from(args.rounds));
    assert_eq!(taken, e.series_count());
    for w in ["1m", "5m", "1h", "1d"] {
        let q = SliQuery {
            service: None,
            window: w.parse()?,
        };
        assert!(
            fresh.slis(&q)? == e.slis(&q)?,
            "restored full state + change set answers {w} as the engine that wrote them"
        );
    }
    let write_med = {
        let mut w = write_ms.clone();
        w.sort_by(f64::total_cmp);
        w[w.len() / 2]
    };
    // One full state and FULL_EVERY − 1 change sets every FULL_EVERY × 10 s.
    let per_cycle = bytes + (FULL_EVERY as usize - 1) * change_bytes;
    println!(
        "| series | state bytes | bytes/series | chunks | snapshot ms | encode ms | write ms (median of {}) | change set of 10 s (bytes/series) | change set write ms | restore ms (read + decode) | merge + apply ms | changelog bytes/s at checkpoint_every 10s (full every {FULL_EVERY}) | full states only |",
        args.rounds
    );
    println!("|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|");
    println!(
        "| {} | {} | {} | {} | {:.0} | {:.0} | {:.0} | {} ({}) | {:.0} | {:.0} | {:.0} | {} | {} |",
        taken,
        bytes,
        bytes / taken.max(1),
        chunks.len(),
        snapshot_ms,
        encode_ms,
        write_med,
        change_bytes,
        change_bytes / taken.max(1),
        change_write_ms,
        read_ms,
        merge_ms,
        per_cycle / (FULL_EVERY as usize * 10),
        bytes / 10
    );
    Ok(())
}
