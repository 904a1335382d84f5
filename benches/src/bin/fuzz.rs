//! The fuzz harness as a benchmark-style command: mutated inputs through every decoder that
//! reads network or disk bytes; prints one row per target and keeps each crashing input.
//!
//! Run: `cargo run --release -p trike-benches --bin fuzz -- --cases 1000000`
//! (`--target NAME` to run one, `--seed N` to vary the run, `--crashes DIR` for the inputs).

use clap::Parser;
use std::path::PathBuf;
use trike_benches::fuzz::{Target, run};

#[derive(Parser)]
struct Args {
    /// Cases per target.
    #[arg(long, default_value_t = 1_000_000)]
    cases: u64,
    /// Seed of the run.
    #[arg(long, default_value_t = 0)]
    seed: u64,
    /// Only these targets (default: all).
    #[arg(long)]
    target: Vec<String>,
    /// Where crashing inputs are written.
    #[arg(long, default_value = "fuzz-crashes")]
    crashes: PathBuf,
}

fn main() -> std::process::ExitCode {
    let args = Args::parse();
    let targets: Vec<Target> = Target::ALL
        .into_iter()
        .filter(|t| args.target.is_empty() || args.target.iter().any(|n| n == t.name()))
        .collect();
    if targets.is_empty() {
        let names: Vec<_> = Target::ALL.iter().map(|t| t.name()).collect();
        eprintln!("no such target; targets: {}", names.join(", "));
        return std::process::ExitCode::from(2);
    }
    println!("| target | cases | decoded without error | crashes | seconds | cases/s |");
    println!("|---|---:|---:|---:|---:|---:|");
    let mut crashed = false;
    for t in targets {
        let r = run(t, args.cases, args.seed);
        println!(
            "| {} | {} | {:.1} % | {} | {:.1} | {:.0} |",
            t.name(),
            r.cases,
            100.0 * r.accepted as f64 / r.cases as f64,
            r.crashes.len(),
            r.elapsed.as_secs_f64(),
            r.cases as f64 / r.elapsed.as_secs_f64()
        );
        for (i, (input, msg)) in r.crashes.iter().enumerate() {
            crashed = true;
            let _ = std::fs::create_dir_all(&args.crashes);
            let path = args.crashes.join(format!("{}-{i}.bin", t.name()));
            let _ = std::fs::write(&path, input);
            eprintln!("  crash {}: {msg}", path.display());
        }
    }
    if crashed {
        std::process::ExitCode::from(1)
    } else {
        std::process::ExitCode::SUCCESS
    }
}
