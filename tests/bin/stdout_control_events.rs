//! The real `trike run` binary, as a user starts it: spans over OTLP/HTTP from a baseline and a
//! failing canary; the rollback control event must appear on the process's stdout as one JSON
//! line, exactly once. (Root-package test so that Cargo builds the binary and tells us where.)

use prost::Message;
use rand::SeedableRng;
use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};
use trike::synth::{Behaviour, Service};

#[path = "common/ports.rs"]
mod ports;
use ports::free_port;

fn svc(version: &str, error_ratio: f64) -> Service {
    Service {
        name: "checkout".into(),
        version: version.into(),
        routes: vec!["/pay".into()],
        behaviour: Behaviour {
            median_ms: 30.0,
            sigma: 0.4,
            error_ratio,
        },
    }
}

#[test]
fn rollback_on_stdout() {
    let dir = std::env::temp_dir().join(format!("trike-stdout-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let config = dir.join("trike.yaml");
    std::fs::write(
        &config,
        r#"canary: [{ service: checkout, baseline: "1.4.0", canary: "1.5.0", window: 30s, min_requests: 100 }]
policies: [{ name: rollback-bad-canary, when: canary.fail, action: rollback, for: 1s }]
instance: stdout-test
"#,
    )
    .unwrap();
    let (grpc, http, admin) = (free_port(), free_port(), free_port());
    let mut child = Command::new(env!("CARGO_BIN_EXE_trike"))
        .args(["run", "--config"])
        .arg(&config)
        .args(["--otlp-grpc-addr", &format!("127.0.0.1:{grpc}")])
        .args(["--otlp-http-addr", &format!("127.0.0.1:{http}")])
        .args(["--admin-addr", &format!("127.0.0.1:{admin}")])
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("the trike binary starts");
    let stdout = child.stdout.take().unwrap();
    let (tx, rx) = mpsc::channel::<String>();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            let _ = tx.send(line);
        }
    });
    let client = reqwest::blocking::Client::new();
    let url = format!("http://127.0.0.1:{http}/v1/traces");
    let start = Instant::now();
    // Wait for readiness.
    while client
        .get(format!("http://127.0.0.1:{admin}/readyz"))
        .send()
        .map(|r| r.status() != 200)
        .unwrap_or(true)
    {
        assert!(
            start.elapsed() < Duration::from_secs(10),
            "trike did not become ready"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    let mut rng = rand::rngs::StdRng::seed_from_u64(1);
    let mut lines = Vec::new();
    while start.elapsed() < Duration::from_secs(20) {
        for (s, n) in [(svc("1.4.0", 0.001), 60), (svc("1.5.0", 0.5), 20)] {
            let body = s
                .request(n, trike_runtime::clock::now_nanos(), 50_000_000, &mut rng)
                .encode_to_vec();
            let r = client
                .post(&url)
                .header("content-type", "application/x-protobuf")
                .body(body)
                .send()
                .unwrap();
            assert!(r.status().is_success());
        }
        lines.extend(rx.try_iter());
        if lines
            .iter()
            .any(|l| l.contains("io.trike.control.rollback"))
        {
            // Keep going a little: the rollback must not repeat.
            std::thread::sleep(Duration::from_secs(2));
            lines.extend(rx.try_iter());
            break;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    let _ = child.kill();
    let _ = child.wait();
    let _ = std::fs::remove_dir_all(&dir);
    let events: Vec<serde_json::Value> = lines
        .iter()
        .map(|l| {
            serde_json::from_str(l).unwrap_or_else(|e| panic!("stdout line is not JSON ({e}): {l}"))
        })
        .collect();
    let rollbacks: Vec<_> = events
        .iter()
        .filter(|e| e["type"] == "io.trike.control.rollback")
        .collect();
    assert_eq!(rollbacks.len(), 1, "{events:#?}");
    assert_eq!(rollbacks[0]["source"], "trike://stdout-test");
    assert_eq!(rollbacks[0]["data"]["target"]["version"], "1.5.0");
    assert_eq!(rollbacks[0]["data"]["evidence"]["kind"], "canary");
}
