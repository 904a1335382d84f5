//! Engine costs: applying decoded span batches (1000 series), and answering a 5m SLI query
//! over all of them.

use criterion::{BatchSize, Criterion, Throughput, criterion_group, criterion_main};
use prost::Message;
use std::hint::black_box;
use std::sync::Arc;
use trike_engine::{Engine, EngineConfig, SliQuery};
use trike_ingest::decode::{DecodeConfig, traces_proto};

const T0: u64 = 1_800_000_000_000_000_000;

fn engine(c: &mut Criterion) {
    let cfg = DecodeConfig::default();
    // 1000 spans over 1000 routes: one series per route.
    let batch = traces_proto(
        &trike_benches::trace_request(1000, 1000, T0).encode_to_vec(),
        &cfg,
    )
    .unwrap()
    .batch;
    let mut g = c.benchmark_group("engine");
    g.throughput(Throughput::Elements(batch.requests.len() as u64));
    g.bench_function("ingest_1000_spans_1000_series", |b| {
        let mut e = Engine::new(Arc::new(EngineConfig::default()));
        let mut now = T0;
        e.ingest(&batch, now);
        b.iter(|| {
            now += 1_000_000; // 1 ms per batch: buckets roll as they do under load
            black_box(e.ingest(&batch, now))
        })
    });
    let mut e = Engine::new(Arc::new(EngineConfig::default()));
    for s in 0..300u64 {
        let t = T0 + s * 1_000_000_000;
        let mut b = batch.clone();
        b.requests.iter_mut().for_each(|r| r.time = t);
        e.ingest(&b, t);
        e.advance(t);
    }
    g.throughput(Throughput::Elements(e.series_count() as u64));
    for window in ["1m", "5m", "1h"] {
        g.bench_function(format!("slis_{window}_1000_series"), |b| {
            b.iter_batched(
                || SliQuery {
                    service: None,
                    window: window.parse().unwrap(),
                },
                |q| black_box(e.slis(&q).unwrap().len()),
                BatchSize::SmallInput,
            )
        });
    }
    g.finish();
}

criterion_group!(benches, engine);
criterion_main!(benches);
