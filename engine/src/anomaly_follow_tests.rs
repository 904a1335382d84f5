//! Detectors read from a checkpoint or taken over with a partition take on the settings of
//! now: the threshold, warm-up, rest and memory at once, a new seasonal cycle by forgetting
//! only what was learned against the old one.

use super::tests::{sample_once, samples};
use super::*;
use rand::SeedableRng;
use rand::rngs::StdRng;
use rand_distr::{Distribution, Normal};

/// The detector of `checkout`'s error ratio.
fn error_ratio(w: &SliWatch) -> Detector {
    let streams = w.snapshot_of(|_| true).streams;
    let (_, _, d, _) = streams
        .into_iter()
        .find(|(_, m, _, _)| *m == SliMetric::ErrorRatio)
        .expect("the error ratio's stream");
    d
}

/// Guarantees: detectors restored from a checkpoint or taken over with a partition take on the
/// watch's settings as it is configured now (threshold, warm-up, rest, memory, the seasonal
/// cycle), keeping what they learned (see `a_new_cycle_forgets_only_the_seasonal_profile`).
#[test]
fn restored_detectors_take_on_the_settings_of_now() {
    let then = DetectorConfig {
        silence: false,
        ..Default::default()
    };
    let mut learned = Detector::new(then);
    for i in 0..50 {
        learned.observe(i * 10, 10.0 + (i % 3) as f64);
    }
    let snap = WatchSnapshot {
        streams: vec![("checkout".into(), SliMetric::ErrorRatio, learned, None)],
    };
    let now = DetectorConfig {
        threshold: 0.8,
        warmup: 60,
        rest: 7,
        memory: 500,
        ..Default::default()
    };
    let mut w = SliWatch::new(now, 10, 100);
    w.merge(snap.clone());
    sample_once(&mut w);
    let d = &error_ratio(&w);
    // (The error ratio's stream does not judge silences.)
    let want = DetectorConfig {
        silence: false,
        ..now
    };
    assert_eq!((d.config(), samples(d)), (&want, 51));
    // Another cycle: the cycle is the new one, and the samples seen are kept.
    for cycle in [
        DetectorConfig {
            season_bins: 48,
            ..now
        },
        DetectorConfig { season_s: 0, ..now },
    ] {
        let mut w = SliWatch::new(cycle, 10, 100);
        w.merge(snap.clone());
        sample_once(&mut w);
        let d = &error_ratio(&w);
        assert_eq!(
            d.config(),
            &DetectorConfig {
                silence: false,
                ..cycle
            }
        );
        assert_eq!(samples(d), 51);
    }
}

/// Guarantees: a detector whose seasonal cycle changes forgets what it learned against the old
/// cycle (the profile, the residuals from it and their tail history, as a new detector has
/// them) and keeps the rest (samples seen, level, recent samples, density, the other tail
/// histories), so it scores a spike at once instead of warming up again.
#[test]
fn a_new_cycle_forgets_only_the_seasonal_profile() {
    let daily = DetectorConfig {
        silence: false,
        ..Default::default()
    };
    let mut d = Detector::new(daily);
    for i in 0..400 {
        d.observe(
            i * 300,
            10.0 + (i % 3) as f64 + if i % 288 < 100 { 5.0 } else { 0.0 },
        );
    }
    let before = serde_json::to_value(&d).unwrap();
    let hourly = DetectorConfig {
        season_s: 3600,
        season_bins: 12,
        ..daily
    };
    d.follow(hourly);
    let after = serde_json::to_value(&d).unwrap();
    let fresh = serde_json::to_value(Detector::new(hourly)).unwrap();
    assert_ne!(before["season"], fresh["season"], "a profile was learned");
    for forgotten in ["season", "residual", "recent_residuals"] {
        assert_eq!(after[forgotten], fresh[forgotten], "{forgotten}");
    }
    assert_eq!(
        after["ranks"][1], fresh["ranks"][1],
        "the seasonal statistic's history"
    );
    for kept in [
        "n",
        "level",
        "recent",
        "density",
        "surprises",
        "last_expected",
    ] {
        assert_eq!(after[kept], before[kept], "{kept}");
    }
    for r in [0, 2, 3] {
        assert_eq!(after["ranks"][r], before["ranks"][r], "ranks[{r}]");
    }
    assert_eq!(d.config(), &hourly);
    assert!(d.observe(400 * 300, 500.0).anomaly, "scored at once");
}

/// Guarantees: after a change of cycle the seasonal statistic warms up again before it counts:
/// streams of plain noise raise no more anomalies in the 30 samples after the change than the
/// same streams without it (its tail read off a few values would call anything rare).
#[test]
fn a_new_cycle_raises_no_false_alerts() {
    let daily = DetectorConfig {
        silence: false,
        ..Default::default()
    };
    let hourly = DetectorConfig {
        season_s: 3600,
        season_bins: 12,
        ..daily
    };
    let noise = Normal::new(100.0, 5.0).unwrap();
    let (mut changed, mut unchanged) = (0, 0);
    for seed in 0..60 {
        let mut rng = StdRng::seed_from_u64(seed);
        let mut d = Detector::new(daily);
        for i in 0..1500 {
            d.observe(i * 10, noise.sample(&mut rng));
        }
        let mut same = d.clone();
        d.follow(hourly);
        same.follow(daily);
        for i in 1500..1530 {
            let v = noise.sample(&mut rng);
            changed += usize::from(d.observe(i * 10, v).anomaly);
            unchanged += usize::from(same.observe(i * 10, v).anomaly);
        }
    }
    assert!(
        changed <= unchanged + 1,
        "{changed} anomalies after the change, {unchanged} without it"
    );
}

/// Guarantees: a rest under way when the settings change ends by the new rest at the latest.
#[test]
fn a_shorter_rest_cuts_the_rest_under_way() {
    let cfg = DetectorConfig {
        season_s: 0,
        ..Default::default()
    };
    let mut d = Detector::new(cfg);
    for i in 0..200 {
        d.observe(i * 10, 10.0 + (i % 3) as f64);
    }
    assert!(d.observe(2000, 500.0).anomaly, "a spike alerts");
    let quiet = |d: &Detector| serde_json::to_value(d).unwrap()["quiet"].as_u64().unwrap();
    assert_eq!(quiet(&d), 100);
    d.follow(DetectorConfig { rest: 7, ..cfg });
    assert_eq!(quiet(&d), 7);
    d.follow(DetectorConfig { rest: 50, ..cfg });
    assert_eq!(
        quiet(&d),
        7,
        "a longer rest does not lengthen the one under way"
    );
}
