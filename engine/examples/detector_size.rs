//! Prints one anomaly detector's saved size (CBOR, as checkpoints and the changelog carry it,
//! and JSON), with and without the silence statistic, after 20 000 samples of a stream that
//! spikes every 50 samples: `cargo run --release -p trike-engine --example detector_size`.

use trike_engine::anomaly::{Detector, DetectorConfig};

fn main() {
    for silence in [false, true] {
        let mut d = Detector::new(DetectorConfig {
            silence,
            ..Default::default()
        });
        for i in 0..20_000u64 {
            let v = if i % 50 == 0 {
                100.0
            } else {
                10.0 + ((i * 7919) % 13) as f64 / 13.0
            };
            d.observe(i * 10, v);
        }
        let mut cbor = Vec::new();
        ciborium::into_writer(&d, &mut cbor).expect("a detector serializes");
        let json = serde_json::to_vec(&d).expect("a detector serializes");
        println!(
            "silence {silence}: CBOR {} B, JSON {} B",
            cbor.len(),
            json.len()
        );
    }
}
