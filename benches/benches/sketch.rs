//! t-digest costs: adding samples, and merging 1000 partial digests (what a window query or a
//! cross-instance merge does). Baseline in the same run: sorting the raw samples.

use criterion::{BatchSize, Criterion, Throughput, criterion_group, criterion_main};
use rand::SeedableRng;
use rand_distr::{Distribution, LogNormal};
use std::hint::black_box;
use trike_engine::sketch::TDigest;

fn samples(n: usize) -> Vec<f64> {
    let mut rng = rand::rngs::StdRng::seed_from_u64(1);
    let d = LogNormal::new(3.0, 1.0).unwrap();
    (0..n).map(|_| d.sample(&mut rng)).collect()
}

fn sketch(c: &mut Criterion) {
    let xs = samples(100_000);
    let mut g = c.benchmark_group("tdigest");
    g.throughput(Throughput::Elements(xs.len() as u64));
    g.bench_function("add_100k", |b| {
        b.iter(|| {
            let mut d = TDigest::default();
            for &x in &xs {
                d.add(x);
            }
            d.compress();
            black_box(d.quantile(0.99))
        })
    });
    g.bench_function("baseline_sort_100k", |b| {
        b.iter_batched(
            || xs.clone(),
            |mut v| {
                v.sort_unstable_by(f64::total_cmp);
                black_box(v[v.len() * 99 / 100])
            },
            BatchSize::LargeInput,
        )
    });
    let partials: Vec<TDigest> = xs
        .chunks(100)
        .map(|c| {
            let mut d = TDigest::default();
            c.iter().for_each(|&x| d.add(x));
            d.shrink();
            d
        })
        .collect();
    g.throughput(Throughput::Elements(partials.len() as u64));
    g.bench_function("merge_1000_partials", |b| {
        b.iter(|| {
            let mut d = TDigest::default();
            d.merge_all(&partials);
            black_box(d.quantile(0.99))
        })
    });
    g.finish();
}

criterion_group!(benches, sketch);
criterion_main!(benches);
