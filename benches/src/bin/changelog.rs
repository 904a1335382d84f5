//! A partition's state on `trike.changelog`: its size, the time to write it, and the time a
//! new owner takes to restore it (read to the high watermark, check, decode, merge).
//!
//! Builds one partition's engine state of `--series` series (services × 10 routes × 2
//! versions) with an hour of traffic at one request per second per series (every default
//! window and digest filled), then writes it to the changelog `--rounds` times and restores it.
//! Against `--brokers` (tansu, a real cluster) or, without it, the embedded broker.
//!
//! Run: `cargo run --release -p trike-benches --bin changelog -- [--series 10000] [--brokers host:port]`

use clap::Parser;
use rand::SeedableRng;
use rand_distr::{Distribution, LogNormal};
use std::sync::Arc;
use std::time::Instant;
use trike_engine::policy::{Policy, PolicyEngine};
use trike_engine::{Batch, Engine, EngineConfig, RequestObs, SeriesKey};
use trike_runtime::fleet::changelog::{Changelog, PartitionState, encode};
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
    /// Writes to time.
    #[arg(long, default_value_t = 3)]
    rounds: u32,
    /// A Kafka-protocol broker; default: the embedded one.
    #[arg(long)]
    brokers: Option<String>,
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
    for sec in 0..args.seconds {
        let now = t_end - (args.seconds - sec) * S;
        batch.requests.clear();
        for k in 0..keys.len() {
            batch.requests.push(RequestObs {
                key: k as u32,
                time: now,
                latency_ms: dist.sample(&mut rng),
                bad: k % 97 == (sec % 97) as usize,
            });
        }
        e.ingest(&batch, now);
        e.advance(now);
    }
    eprintln!(
        "built {} series of {services} services in {:.1?}",
        e.series_count(),
        started.elapsed()
    );

    let t = Instant::now();
    let state = PartitionState {
        partition: 0,
        offset: 1_000_000,
        engine: e.snapshot_of(|_| true),
        policy: PolicyEngine::new(Policy::new(vec![])).snapshot_of(|_| true),
        outbox: Vec::new(),
    };
    let snapshot_ms = t.elapsed().as_secs_f64() * 1e3;
    let t = Instant::now();
    let chunks = encode(&state, 1)?;
    let encode_ms = t.elapsed().as_secs_f64() * 1e3;
    let bytes: usize = chunks.iter().map(|c| c.value.len()).sum();
    eprintln!(
        "state of {} series: {bytes} bytes in {} chunks ({} per series); snapshot {snapshot_ms:.0} ms, encode {encode_ms:.0} ms",
        e.series_count(),
        chunks.len(),
        bytes / e.series_count().max(1)
    );

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
    let mut write_ms = Vec::new();
    for g in 1..=u64::from(args.rounds) {
        let t = Instant::now();
        cl.write(&state, g).map_err(anyhow::Error::msg)?;
        write_ms.push(t.elapsed().as_secs_f64() * 1e3);
    }
    let t = Instant::now();
    let Some((generation, back)) = cl.read(0).map_err(anyhow::Error::msg)? else {
        anyhow::bail!(
            "the state written is not on {topic} any more: the broker kept only part of the log (the embedded broker keeps a few tens of MB per partition; use --brokers)"
        );
    };
    let read_ms = t.elapsed().as_secs_f64() * 1e3;
    let t = Instant::now();
    let mut fresh = Engine::new(cfg);
    let taken = fresh.merge(back.engine)?;
    let merge_ms = t.elapsed().as_secs_f64() * 1e3;
    assert_eq!(generation, u64::from(args.rounds));
    assert_eq!(taken, e.series_count());
    let write_med = {
        let mut w = write_ms.clone();
        w.sort_by(f64::total_cmp);
        w[w.len() / 2]
    };
    println!(
        "| series | state bytes | bytes/series | chunks | snapshot ms | encode ms | write ms (median of {}) | restore ms (read + decode) | merge ms | changelog bytes/s at checkpoint_every 10s |",
        args.rounds
    );
    println!("|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|");
    println!(
        "| {} | {} | {} | {} | {:.0} | {:.0} | {:.0} | {:.0} | {:.0} | {} |",
        taken,
        bytes,
        bytes / taken.max(1),
        chunks.len(),
        snapshot_ms,
        encode_ms,
        write_med,
        read_ms,
        merge_ms,
        bytes / 10
    );
    Ok(())
}
