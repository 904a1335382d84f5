//! Engine costs: applying decoded span batches (1000 series), answering a 5m SLI query over
//! all of them, and a fleet processor applying one flush of partials for 1000 series as the
//! spans behind each series grow 1000× (the processor's cost follows series × flushes); the
//! graph's ingest cost; a fleet processor's root-cause explanations per decide step.

use criterion::{BatchSize, Criterion, Throughput, criterion_group, criterion_main};
use prost::Message;
use std::hint::black_box;
use std::sync::Arc;
use trike_engine::{Batch, Engine, EngineConfig, SliQuery};
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

/// One gateway flush (250 ms) of 1000 series with `per_series` spans each, applied by a
/// processor: the partials carry counts and a digest per series-second, whatever the spans.
fn processor(c: &mut Criterion) {
    let cfg = Arc::new(EngineConfig::default());
    let mut g = c.benchmark_group("processor");
    g.throughput(Throughput::Elements(1000));
    for per_series in [1usize, 10, 100, 1000] {
        // Mid-second, so each series' spans fall in one second: one partial per series.
        let mid = T0 + 500_000_000;
        let mut spans = trike_engine::Batch::default();
        for r in 0..1000 {
            let key = spans.key_index(trike_engine::SeriesKey::new(
                "checkout",
                &format!("/api/r{r}"),
                "1.0",
            ));
            for k in 0..per_series {
                spans.requests.push(trike_engine::RequestObs {
                    key,
                    time: mid,
                    latency_ms: 1.0 + ((r * 31 + k * 97) % 997) as f64,
                    bad: k % 50 == 0,
                });
            }
        }
        let mut builder = trike_engine::partials::PartialBuilder::new(cfg.clone());
        builder.add(&spans, mid);
        let mut flush = trike_engine::Batch::default();
        for s in builder.take() {
            flush.append(s.batch);
        }
        assert_eq!(flush.partials.len(), 1000);
        g.bench_function(
            format!("apply_flush_1000_series_{per_series}_spans_each"),
            |b| {
                let mut e = Engine::new(cfg.clone());
                let mut now = T0;
                b.iter_batched(
                    || {
                        // The next flush: its partials are of the current second.
                        now += 250_000_000;
                        let mut f = flush.clone();
                        for p in &mut f.partials {
                            p.second = now / 1_000_000_000;
                            p.last_event = now;
                        }
                        (f, now)
                    },
                    |(f, now)| black_box(e.ingest(&f, now)),
                    BatchSize::SmallInput,
                )
            },
        );
    }
    g.finish();
}

/// The service graph's cost in the engine: 1000 parented server spans a batch (every one a
/// call half that waits for its client span, which never comes: the costliest case), fresh
/// trace ids each batch, with the graph on and off (the baseline: the halves not read).
fn graph(c: &mut Criterion) {
    let on = traces_proto(
        &trike_benches::trace_request(1000, 20, T0).encode_to_vec(),
        &DecodeConfig::default(),
    )
    .unwrap()
    .batch;
    let off = Batch {
        calls: Vec::new(),
        ..on.clone()
    };
    let mut g = c.benchmark_group("engine_graph");
    g.throughput(Throughput::Elements(on.requests.len() as u64));
    for (name, batch) in [
        ("ingest_1000_spans_graph_off", &off),
        ("ingest_1000_spans_graph_on", &on),
    ] {
        g.bench_function(name, |b| {
            let mut e = Engine::new(Arc::new(EngineConfig::default()));
            let mut now = T0;
            let mut n = 0u64;
            b.iter_batched(
                || {
                    n += 1;
                    let mut b = batch.clone();
                    for c in &mut b.calls {
                        c.trace_id[8..].copy_from_slice(&n.to_be_bytes());
                    }
                    b
                },
                |b| {
                    now += 1_000_000;
                    e.advance(now);
                    black_box(e.ingest(&b, now))
                },
                BatchSize::LargeInput,
            )
        });
    }
    g.finish();
}

/// A fleet processor's root-cause explanations (`Causes::explain`, every decide step) with
/// 5000 services and 10 000 edges (each service calls the next two), a minute of traffic, when
/// nothing fails and when about 100 services' calls fail (chains three deep), beside
/// the facts every decide step gathers for the same services (the baseline).
fn causes(c: &mut Criterion) {
    use trike_engine::causes::Causes;
    use trike_engine::facts::{StaleRule, gather};
    use trike_engine::{EdgeObs, RequestObs, SeriesKey};
    const SERVICES: usize = 5000;
    let name = |i: usize| format!("svc-{:04}", i % SERVICES);
    let build = |failing: usize| {
        let mut e = Engine::new(Arc::new(EngineConfig::default()));
        let keys: Vec<SeriesKey> = (0..SERVICES)
            .map(|i| SeriesKey::new(&name(i), "/", "1"))
            .collect();
        for s in 0..60u64 {
            let t = T0 + s * 1_000_000_000;
            let mut b = Batch {
                keys: keys.clone(),
                ..Default::default()
            };
            for i in 0..SERVICES {
                // Chains of three failing services (50k, 50k+1, 50k+2), each failing its
                // calls to the next.
                let bad = i % 50 < 3 && i / 50 < failing.div_ceil(3) && s % 2 == 0;
                b.requests.push(RequestObs {
                    key: i as u32,
                    time: t,
                    latency_ms: 20.0,
                    bad,
                });
                for k in 1..=2 {
                    b.edges.push(EdgeObs {
                        client: name(i).into(),
                        server: name(i + k).into(),
                        second: t / 1_000_000_000,
                        requests: 1,
                        errors: u64::from(bad && k == 1),
                        digest: None,
                    });
                }
            }
            e.ingest(&b, t);
            e.advance(t + 1_000_000_000);
        }
        e
    };
    let mut g = c.benchmark_group("causes_5000_services");
    for failing in [0, 100] {
        let e = build(failing);
        g.bench_function(format!("explain_{failing}_failing"), |b| {
            let mut causes = Causes::default();
            b.iter(|| {
                causes.explain(&e);
                black_box(causes.take())
            })
        });
        g.bench_function(format!("gather_facts_baseline_{failing}_failing"), |b| {
            b.iter(|| black_box(gather(&e, &[], &[], StaleRule::default(), None)))
        });
    }
    g.finish();
}

criterion_group!(benches, engine, processor, graph, causes);
criterion_main!(benches);
