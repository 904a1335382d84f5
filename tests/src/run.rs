//! Names for one test run. Plain std, so the root crate's process-level tests (`tests/bin/`)
//! include it by path without depending on this crate.

/// A name unique to this run (process id and start time): tansu keeps data between runs, so
/// topics and groups are named per run.
pub fn run_id() -> String {
    format!(
        "{}x{}",
        std::process::id(),
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_millis()
    )
}
