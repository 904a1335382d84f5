//! Headless Chromium for browser tests. Plain std, so the root crate's process-level tests
//! (`tests/bin/`) include it by path without depending on this crate.

use std::time::{Duration, Instant};

/// Headless Chromium for browser tests (`TRIKE_TEST_CHROMIUM`, else `/usr/bin/chromium`, which
/// `.ci/run` installs). Without it: `None` and a SKIPPED line locally; a panic under CI.
pub fn chromium() -> Option<std::path::PathBuf> {
    let path = std::env::var_os("TRIKE_TEST_CHROMIUM")
        .map(std::path::PathBuf::from)
        .unwrap_or_else(|| "/usr/bin/chromium".into());
    if path.exists() {
        return Some(path);
    }
    if std::env::var("CI").is_ok() {
        panic!(
            "CI must provide Chromium at {} (.ci/run installs it)",
            path.display()
        );
    }
    eprintln!(
        "SKIPPED: no Chromium at {} (apt-get install chromium)",
        path.display()
    );
    None
}

/// Runs headless Chromium on `url` with `extra` arguments (e.g. `--dump-dom`), letting the
/// page's scripts run for `budget_ms` of virtual time; returns stdout. Killed after 90 s (a
/// fetch that never completes stops virtual time, and Chromium would wait for ever).
pub fn run_chromium(
    chromium: &std::path::Path,
    url: &str,
    budget_ms: u64,
    extra: &[&str],
) -> String {
    static RUNS: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
    let run = RUNS.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let base = std::env::temp_dir().join(format!("trike-chromium-{}-{run}", std::process::id()));
    let (profile, stdout) = (base.join("profile"), base.join("stdout"));
    std::fs::create_dir_all(&profile).expect("chromium's profile directory");
    let mut child = std::process::Command::new(chromium)
        .args([
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-quic",
            "--no-first-run",
            "--disable-background-networking",
            "--disable-component-update",
            "--disable-sync",
            "--disable-dev-shm-usage",
            "--window-size=1400,1600",
        ])
        .arg(format!("--user-data-dir={}", profile.display()))
        .arg(format!("--virtual-time-budget={budget_ms}"))
        .args(extra)
        .arg(url)
        .stdout(std::fs::File::create(&stdout).expect("chromium's output file"))
        .stderr(std::process::Stdio::null())
        .spawn()
        .expect("chromium runs");
    let start = Instant::now();
    let status = loop {
        if let Some(status) = child.try_wait().expect("waiting for chromium") {
            break status;
        }
        if start.elapsed() > Duration::from_secs(90) {
            let _ = child.kill();
            let _ = child.wait();
            panic!("chromium did not finish within 90 s on {url}");
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    let out = std::fs::read_to_string(&stdout).unwrap_or_default();
    let _ = std::fs::remove_dir_all(&base);
    assert!(status.success(), "chromium failed ({status}) on {url}");
    out
}
