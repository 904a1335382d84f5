//! Bytes per active series with the default windows, at several request rates.
//!
//! Each scenario fills one series' whole history the cheap way (one request per minute for
//! 30 days, so every minute and hour bucket exists), then runs the last hour at the full rate
//! (which is what the digests hold). Reports the engine's own accounting of heap bytes: the
//! series (counter rings, its 5 minutes of 1-minute digests, key) and, apart, its version's
//! digests (1 s × 10 s, 10 s × 5 min, 5 min × 1 h), which every series of the version shares.
//!
//! Run: `cargo run --release -p trike-benches --bin memory`

use rand::SeedableRng;
use rand_distr::{Distribution, LogNormal};
use std::sync::Arc;
use trike_engine::{Batch, Engine, EngineConfig, RequestObs, SeriesKey};

const S: u64 = 1_000_000_000;

fn main() {
    let t_end = 1_800_000_000 * S;
    let start = t_end - 30 * 86_400 * S;
    let mut rng = rand::rngs::StdRng::seed_from_u64(3);
    let dist = LogNormal::new(3.0, 0.8).unwrap();
    println!(
        "| requests/s per series | heap bytes per series | counter rings | digest rings | version's digests (shared) |"
    );
    println!("|---:|---:|---:|---:|---:|");
    for rate in [1u64, 10, 100, 1000] {
        let cfg = EngineConfig {
            latency_thresholds_ms: vec![300.0],
            ..Default::default()
        };
        let mut e = Engine::new(Arc::new(cfg));
        let key = SeriesKey::new("checkout", "/api/v1/pay", "1.5.0");
        let mut batch = Batch {
            keys: vec![key],
            ..Default::default()
        };
        let mut t = start;
        while t < t_end - 3600 * S {
            batch.requests = vec![RequestObs {
                key: 0,
                time: t,
                latency_ms: dist.sample(&mut rng),
                bad: false,
            }];
            e.ingest(&batch, t);
            e.advance(t);
            t += 60 * S;
        }
        while t < t_end {
            batch.requests = (0..rate)
                .map(|i| RequestObs {
                    key: 0,
                    time: t + i * (S / rate),
                    latency_ms: dist.sample(&mut rng),
                    bad: i % 100 == 0,
                })
                .collect();
            e.ingest(&batch, t + S - 1);
            e.advance(t + S - 1);
            t += S;
        }
        let version = e.version_heap_bytes();
        let series = e.heap_bytes() - version;
        let (counters, digests) = e.window_heap_split();
        println!(
            "| {rate} | {series} ({:.1} KiB) | {counters} | {digests} | {version} ({:.1} KiB) |",
            series as f64 / 1024.0,
            version as f64 / 1024.0
        );
    }
}
