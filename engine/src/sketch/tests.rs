//! Accuracy and merge properties of the t-digest (issue 2's acceptance figures).

use super::TDigest;
use proptest::prelude::*;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use rand_distr::{Distribution, LogNormal, Pareto};

const QS: [f64; 4] = [0.5, 0.95, 0.99, 0.999];

/// 10^6 samples split into 1000 partial digests of 1000, then merged into one.
fn merged_partials(samples: &[f64]) -> TDigest {
    let partials: Vec<TDigest> = samples
        .chunks(1000)
        .map(|chunk| {
            let mut d = TDigest::default();
            chunk.iter().for_each(|&x| d.add(x));
            d.shrink();
            d
        })
        .collect();
    let mut merged = TDigest::default();
    for p in &partials {
        merged.merge(p);
    }
    merged.compress();
    merged
}

fn exact(sorted: &[f64], q: f64) -> f64 {
    let idx = ((q * sorted.len() as f64).ceil() as usize).clamp(1, sorted.len()) - 1;
    sorted[idx]
}

fn rel_errors(samples: Vec<f64>) -> Vec<f64> {
    let d = merged_partials(&samples);
    let mut sorted = samples;
    sorted.sort_by(f64::total_cmp);
    QS.iter()
        .map(|&q| {
            let truth = exact(&sorted, q);
            (d.quantile(q) - truth).abs() / truth
        })
        .collect()
}

fn assert_value_errors(name: &str, errs: &[f64]) {
    for (q, e) in QS.iter().zip(errs) {
        let bound = if *q >= 0.999 { 0.02 } else { 0.01 };
        assert!(*e <= bound, "{name}: p{q}: relative error {e:.4} > {bound}");
    }
}

/// Scenario: 10^6 log-normal latencies (median 20 ms, sigma 1) merged from 1000 partials.
/// Guarantees: ≤ 1 % relative value error at p50/p95/p99 and ≤ 2 % at p99.9.
#[test]
fn lognormal_merged_value_error() {
    let mut rng = StdRng::seed_from_u64(7);
    let dist = LogNormal::new(20f64.ln(), 1.0).unwrap();
    let samples: Vec<f64> = (0..1_000_000).map(|_| dist.sample(&mut rng)).collect();
    let errs = rel_errors(samples);
    eprintln!("lognormal errors {errs:?}");
    assert_value_errors("lognormal", &errs);
}

/// Scenario: 10^6 Pareto(alpha = 1.5) samples (scale 1 ms) merged from 1000 partials.
/// Guarantees: the heavy tail is resolved: ≤ 1 % at p50/p95/p99, ≤ 2 % at p99.9.
#[test]
fn pareto_merged_value_error() {
    let mut rng = StdRng::seed_from_u64(11);
    let dist = Pareto::new(1.0, 1.5).unwrap();
    let samples: Vec<f64> = (0..1_000_000).map(|_| dist.sample(&mut rng)).collect();
    let errs = rel_errors(samples);
    eprintln!("pareto errors {errs:?}");
    assert_value_errors("pareto", &errs);
}

/// Scenario: bimodal mix, 95 % near 2 ms and 5 % near 500 ms, merged from 1000 partials.
/// Guarantees: rank error ≤ 0.1 % at p50/p95/p99/p99.9 (the gap between modes is not smeared).
#[test]
fn bimodal_merged_rank_error() {
    let mut rng = StdRng::seed_from_u64(13);
    let fast = LogNormal::new(2f64.ln(), 0.1).unwrap();
    let slow = LogNormal::new(500f64.ln(), 0.1).unwrap();
    let samples: Vec<f64> = (0..1_000_000)
        .map(|_| {
            if rng.random_bool(0.95) {
                fast.sample(&mut rng)
            } else {
                slow.sample(&mut rng)
            }
        })
        .collect();
    let d = merged_partials(&samples);
    let mut sorted = samples;
    sorted.sort_by(f64::total_cmp);
    let n = sorted.len() as f64;
    for q in QS {
        let v = d.quantile(q);
        let lo = sorted.partition_point(|&x| x < v) as f64 / n;
        let hi = sorted.partition_point(|&x| x <= v) as f64 / n;
        // The rank of v is anywhere in [lo, hi]; its distance to q is the rank error.
        let err = if q < lo {
            lo - q
        } else if q > hi {
            q - hi
        } else {
            0.0
        };
        assert!(
            err <= 0.001,
            "bimodal p{q}: value {v:.3} rank [{lo:.5},{hi:.5}] error {err:.5}"
        );
    }
}

/// Scenario: a digest with a few samples. Guarantees: small digests are exact.
#[test]
fn few_samples_are_exact() {
    let mut d = TDigest::default();
    for x in [5.0, 1.0, 3.0] {
        d.add(x);
    }
    assert_eq!(d.quantile(0.0), 1.0);
    assert_eq!(d.quantile(0.5), 3.0);
    assert_eq!(d.quantile(1.0), 5.0);
    assert_eq!(d.count(), 3);
    assert!(TDigest::default().quantile(0.5).is_nan());
}

/// Scenario: weighted adds (from histogram buckets). Guarantees: count and cdf honour weights.
#[test]
fn weighted_add_counts_weight() {
    let mut d = TDigest::default();
    d.add_weighted(10.0, 90);
    d.add_weighted(100.0, 10);
    assert_eq!(d.count(), 100);
    // Between two point masses the cdf interpolates between centroid midpoints (45 and 95).
    let mid = d.cdf(50.0);
    assert!(mid > 0.45 && mid < 0.95, "cdf {mid}");
    assert_eq!(d.cdf(9.0), 0.0);
    assert_eq!(d.cdf(100.0), 1.0);
    assert!(d.quantile(0.99) > 50.0);
    assert!(d.quantile(0.5) < 50.0);
}

proptest! {
    /// Guarantees: merging is order-insensitive in count, min and max, and a merged digest's
    /// quantiles stay within [min, max] and are monotone in q.
    #[test]
    fn merge_invariants(a in prop::collection::vec(0.0f64..1e4, 0..300),
                        b in prop::collection::vec(0.0f64..1e4, 0..300)) {
        let mut da = TDigest::default();
        a.iter().for_each(|&x| da.add(x));
        let mut db = TDigest::default();
        b.iter().for_each(|&x| db.add(x));
        let mut ab = da.clone();
        ab.merge(&db);
        let mut ba = db.clone();
        ba.merge(&da);
        prop_assert_eq!(ab.count(), (a.len() + b.len()) as u64);
        prop_assert_eq!(ab.count(), ba.count());
        if !a.is_empty() || !b.is_empty() {
            prop_assert_eq!(ab.min(), ba.min());
            prop_assert_eq!(ab.max(), ba.max());
            let mut prev = f64::NEG_INFINITY;
            for i in 0..=20 {
                let v = ab.quantile(f64::from(i) / 20.0);
                prop_assert!(v >= ab.min() - 1e-3 && v <= ab.max() + 1e-3);
                prop_assert!(v >= prev - 1e-3 * prev.abs().max(1.0));
                prev = v;
            }
        }
    }
}

/// Guarantees: the archive bytes of a digest read back to the same quantiles, count, min and
/// max; truncated or foreign bytes are refused, not misread.
#[test]
fn bytes_round_trip_and_refuse_garbage() {
    let mut d = TDigest::new(200.0);
    for i in 0..10_000 {
        d.add(f64::from(i % 977) * 1.5 + 0.25);
    }
    let b = d.to_bytes();
    let r = TDigest::from_bytes(&b).expect("reads back");
    assert_eq!(r.count(), d.count());
    assert_eq!((r.min(), r.max()), (d.min(), d.max()));
    for q in [0.01, 0.5, 0.9, 0.99, 0.999] {
        assert_eq!(r.quantile(q), d.quantile(q), "q{q}");
    }
    assert!(TDigest::from_bytes(&b[..b.len() - 3]).is_none());
    assert!(TDigest::from_bytes(b"not a digest at all, no no no").is_none());
    let empty = TDigest::new(100.0);
    assert!(TDigest::from_bytes(&empty.to_bytes()).unwrap().is_empty());
}
