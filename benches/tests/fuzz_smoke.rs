//! The fuzz harness's short run for CI: every target, a few thousand cases each (the full run,
//! ≥ 10^6 cases per target, is `cargo run --release -p trike-benches --bin fuzz`; figures in
//! BENCHMARKS.md). A crash fails with the input in hex, to become a regression test.

use trike_benches::fuzz::{Target, accepted, run, seeds};

/// Guarantees: no decoder that reads network or disk bytes panics on 3 000 mutated inputs,
/// and every seed is accepted as-is (so mutations start from inputs that reach deep).
#[test]
fn every_decoder_survives_mutated_inputs() {
    for t in Target::ALL {
        let corpus = seeds(t);
        assert!(!corpus.is_empty(), "{}", t.name());
        for (i, s) in corpus.iter().enumerate() {
            assert!(
                accepted(t, s),
                "{} seed {i} is not accepted whole",
                t.name()
            );
        }
        let r = run(t, 3_000, 7);
        let shown: Vec<String> = r
            .crashes
            .iter()
            .map(|(input, msg)| {
                let hex: String = input.iter().map(|b| format!("{b:02x}")).collect();
                format!("{msg}: {hex}")
            })
            .collect();
        assert!(
            shown.is_empty(),
            "{} crashed:\n{}",
            t.name(),
            shown.join("\n")
        );
    }
}
