//! What the decide hook learns over days — capacity forecasts (three days before the first
//! one) and anomaly detectors — is checkpointed in `state.dir` with the engine, so a restart
//! goes on from it instead of learning again.

use std::sync::Arc;
use trike_engine::forecast::{Forecasts, REQUEST_RATE};
use trike_runtime::checkpoint::{ENGINE_FILE, EngineCheckpoint, VERSION};
use trike_tests::{get_json, start_trike};

/// Scenario: `state.dir` holds a checkpoint (an empty engine) whose forecasts learned five
/// days of checkout's request rate, growing 10/s a day from 100/s; `trike run` starts on it
/// with a capacity limit of 200/s for checkout, then stops.
/// Guarantees: `/api/v1/forecast?service=checkout` answers at once from the restored model
/// (120 hours learned, the trend, days to today's limit); the checkpoint written at the stop
/// carries the model again, and checkout's anomaly detectors (nothing learned is lost across
/// restarts).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn forecasts_survive_a_restart() {
    let dir = std::env::temp_dir().join(format!("trike-learned-{}", trike_tests::run_id()));
    std::fs::create_dir_all(&dir).unwrap();
    let mut f = Forecasts::new(&[], 10);
    for h in 0..5 * 24u64 {
        f.learn(
            "checkout",
            REQUEST_RATE,
            480_000 + h,
            100.0 + 10.0 * h as f64 / 24.0,
        );
    }
    // An engine with one request of checkout now, and the anomaly watch's first sample of it.
    let mut engine = trike_engine::Engine::new(Arc::new(trike_engine::EngineConfig::default()));
    let now = trike_runtime::clock::now_nanos();
    let mut b = trike_engine::Batch::default();
    let key = b.key_index(trike_engine::SeriesKey::new("checkout", "/pay", "1"));
    b.requests.push(trike_engine::RequestObs {
        key,
        time: now,
        latency_ms: 12.0,
        bad: false,
    });
    engine.ingest(&b, now);
    let mut watch = trike_engine::anomaly::SliWatch::new(Default::default(), 10, 100);
    watch.sample(&engine);
    let c = EngineCheckpoint {
        version: VERSION,
        engine: engine.snapshot(),
        offsets: Vec::new(),
        watch: watch.snapshot_of(|_| true),
        forecasts: f.snapshot_of(|_| true),
    };
    assert!(!c.watch.streams.is_empty());
    trike_runtime::checkpoint::write_atomic(
        &dir.join(ENGINE_FILE),
        &trike_runtime::checkpoint::encode_engine(&c).unwrap(),
    )
    .unwrap();

    let running = start_trike(&format!(
        "state: {{ dir: \"{}\" }}\ncapacity: [{{ service: checkout, limit: 200 }}]\n",
        dir.display()
    ))
    .await;
    let one = get_json(&running, "/api/v1/forecast?service=checkout").await;
    assert_eq!(one["hours_learned"], 120, "{one}");
    assert_eq!(one["limit"], 200.0, "{one}");
    let trend = one["trend_per_day"].as_f64().unwrap();
    assert!((trend - 10.0).abs() < 0.5, "{one}");
    let days = one["days_to_limit"].as_f64().unwrap();
    // At 149.6/s on the last hour, 10/s a day: about 5 days to 200/s.
    assert!((4.5..5.6).contains(&days), "{one}");
    running.stop().await.unwrap();

    let back = trike_runtime::checkpoint::load_engine(&dir)
        .unwrap()
        .unwrap();
    let models: Vec<_> = back
        .forecasts
        .models
        .iter()
        .map(|(s, m, _, p)| (s.as_str(), m.as_str(), p.hours))
        .collect();
    assert_eq!(models, [("checkout", "request_rate", 120)]);
    let streams: Vec<_> = back.watch.streams.iter().map(|s| s.0.as_str()).collect();
    assert!(
        !streams.is_empty() && streams.iter().all(|s| *s == "checkout"),
        "the anomaly detectors too: {streams:?}"
    );
    let _ = std::fs::remove_dir_all(&dir);
}
