//! Progressive rollouts through the real `trike run` binary (DESIGN §9): started over the API
//! with the write scope, acknowledged only once durable (the process is SIGKILLed right after
//! the acknowledgement and restarted on the same state directory), then driven by live OTLP
//! traffic to `promote`; a canary nobody sends traffic to is held and paged, never promoted.
//! Control events are read from the process's stdout (the default sink).

use prost::Message;
use rand::SeedableRng;
use serde_json::{Value, json};
use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering::Relaxed};
use std::sync::{Arc, mpsc};
use std::time::{Duration, Instant};
use trike::synth::{Behaviour, Service};

#[path = "common/ports.rs"]
mod ports;
use ports::free_port;

const READ: &str = "read-token-rollouts-0123456789";
const WRITE: &str = "write-token-rollouts-0123456789";

fn svc(name: &str, version: &str) -> Service {
    Service {
        name: name.into(),
        version: version.into(),
        routes: vec!["/pay".into()],
        // Both versions alike and steady (the statistics have their own tests: this one is
        // about the rollout's life), so the good canary passes every evaluation.
        behaviour: Behaviour {
            median_ms: 30.0,
            sigma: 0.01,
            error_ratio: 0.0,
        },
    }
}

struct Trike {
    child: Child,
    http: u16,
    admin: u16,
    lines: mpsc::Receiver<String>,
}

fn start(config: &Path) -> Trike {
    let (grpc, http, admin) = (free_port(), free_port(), free_port());
    let mut child = Command::new(env!("CARGO_BIN_EXE_trike"))
        .args(["run", "--config"])
        .arg(config)
        .args(["--otlp-grpc-addr", &format!("127.0.0.1:{grpc}")])
        .args(["--otlp-http-addr", &format!("127.0.0.1:{http}")])
        .args(["--admin-addr", &format!("127.0.0.1:{admin}")])
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("the trike binary starts");
    let stdout = child.stdout.take().unwrap();
    let (tx, lines) = mpsc::channel::<String>();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            let _ = tx.send(line);
        }
    });
    let client = reqwest::blocking::Client::new();
    let started = Instant::now();
    while client
        .get(format!("http://127.0.0.1:{admin}/readyz"))
        .send()
        .map(|r| r.status() != 200)
        .unwrap_or(true)
    {
        assert!(
            started.elapsed() < Duration::from_secs(20),
            "trike did not become ready"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    Trike {
        child,
        http,
        admin,
        lines,
    }
}

impl Trike {
    fn post(&self, token: &str, body: &Value) -> (u16, Value) {
        let r = reqwest::blocking::Client::new()
            .post(format!("http://127.0.0.1:{}/api/v1/rollouts", self.admin))
            .bearer_auth(token)
            .json(body)
            .send()
            .unwrap();
        let status = r.status().as_u16();
        (status, r.json().unwrap_or(Value::Null))
    }

    fn rollouts(&self, service: &str) -> Vec<Value> {
        let doc: Value = reqwest::blocking::Client::new()
            .get(format!(
                "http://127.0.0.1:{}/api/v1/rollouts?service={service}",
                self.admin
            ))
            .bearer_auth(READ)
            .send()
            .unwrap()
            .json()
            .unwrap();
        doc["rollouts"].as_array().unwrap().clone()
    }

    /// Control events printed so far.
    fn events(&self, into: &mut Vec<Value>) {
        for l in self.lines.try_iter() {
            into.push(
                serde_json::from_str(&l)
                    .unwrap_or_else(|e| panic!("stdout line is not JSON ({e}): {l}")),
            );
        }
    }

    fn kill(mut self) {
        let _ = self.child.kill(); // SIGKILL
        let _ = self.child.wait();
    }
}

/// Sends spans of the given versions to `port` every 100 ms until `stop`.
fn traffic(port: Arc<std::sync::atomic::AtomicU16>, stop: Arc<AtomicBool>, versions: Vec<Service>) {
    std::thread::spawn(move || {
        let client = reqwest::blocking::Client::new();
        let mut rng = rand::rngs::StdRng::seed_from_u64(7);
        while !stop.load(Relaxed) {
            for s in &versions {
                let body = s
                    .request(20, trike_runtime::clock::now_nanos(), 100_000_000, &mut rng)
                    .encode_to_vec();
                // (Refused while the process restarts: the next round goes to the new one.)
                let _ = client
                    .post(format!("http://127.0.0.1:{}/v1/traces", port.load(Relaxed)))
                    .header("content-type", "application/x-protobuf")
                    .body(body)
                    .send();
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    });
}

fn of_type<'a>(events: &'a [Value], service: &str) -> Vec<(&'a str, &'a str, f64)> {
    events
        .iter()
        .filter(|e| e["subject"] == service)
        .map(|e| {
            (
                e["data"]["action"].as_str().unwrap(),
                e["id"].as_str().unwrap(),
                e["data"]["params"]["weight"].as_f64().unwrap_or(-1.0),
            )
        })
        .collect()
}

/// Scenario: `checkout` 1.0 → 1.1 (same behaviour) over steps [50, 100] with step_min 3s;
/// `payments` 2.0 → 2.1 with no traffic at all, step_max 4s. The process is SIGKILLed right
/// after checkout's rollout is acknowledged and restarted on the same state directory.
/// Guarantees:
/// - a read token cannot start a rollout (403); a spec that cannot run is refused (400) with
///   the field named; a second rollout of a service with one active is refused (409); the same
///   versions again answer 200 with the active rollout;
/// - the acknowledged rollout survives the SIGKILL (same id, listed after the restart) and goes
///   on to promote: the control events on stdout are set_weight 50, set_weight 100, promote, in
///   that order, with distinct ids (a re-publication after the crash keeps its id);
/// - the dark canary is held and paged once, and never promoted nor advanced.
#[test]
fn a_rollout_survives_a_crash_and_promotes_on_live_traffic() {
    let dir = std::env::temp_dir().join(format!("trike-rollouts-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    let config = dir.join("trike.yaml");
    std::fs::write(
        &config,
        format!(
            "instance: rollouts-test\nstate: {{ dir: \"{}\" }}\nauth: {{ admin_read_tokens: [\"{READ}\"], admin_write_tokens: [\"{WRITE}\"] }}\n",
            dir.join("state").display()
        ),
    )
    .unwrap();
    let trike = start(&config);
    let port = Arc::new(std::sync::atomic::AtomicU16::new(trike.http));
    let stop = Arc::new(AtomicBool::new(false));
    traffic(
        port.clone(),
        stop.clone(),
        vec![svc("checkout", "1.0"), svc("checkout", "1.1")],
    );
    let checkout = json!({"service": "checkout", "baseline": "1.0", "canary": "1.1",
        "steps": [50, 100], "step_min": "3s", "step_max": "2m", "min_requests": 50});

    let (status, body) = trike.post(READ, &checkout);
    assert_eq!(status, 403, "{body}");
    let mut bad = checkout.clone();
    bad["steps"] = json!([50, 20]);
    let (status, body) = trike.post(WRITE, &bad);
    assert_eq!(status, 400, "{body}");
    assert!(body["error"].as_str().unwrap().contains("steps"), "{body}");

    let (status, started) = trike.post(WRITE, &checkout);
    assert_eq!(status, 201, "{started}");
    assert_eq!(started["announced"], true, "{started}");
    assert_eq!(
        (started["step"].as_u64(), started["weight"].as_f64()),
        (Some(1), Some(50.0))
    );
    let id = started["id"].as_str().unwrap().to_string();
    let (status, again) = trike.post(WRITE, &checkout);
    assert_eq!((status, again["id"].as_str()), (200, Some(id.as_str())));
    let mut other = checkout.clone();
    other["canary"] = "1.2".into();
    let (status, body) = trike.post(WRITE, &other);
    assert_eq!(status, 409, "{body}");
    assert!(body["error"].as_str().unwrap().contains(&id), "{body}");

    // The acknowledgement means durable: SIGKILL now, restart on the same state.
    let mut events = Vec::new();
    trike.events(&mut events);
    trike.kill();
    let trike = start(&config);
    port.store(trike.http, Relaxed);
    let listed = trike.rollouts("checkout");
    assert_eq!(listed.len(), 1, "{listed:?}");
    assert_eq!(listed[0]["id"].as_str(), Some(id.as_str()));

    let payments = json!({"service": "payments", "baseline": "2.0", "canary": "2.1",
        "steps": [10, 100], "step_min": "1s", "step_max": "4s"});
    let (status, body) = trike.post(WRITE, &payments);
    assert_eq!(status, 201, "{body}");

    let waited = Instant::now();
    loop {
        let r = &trike.rollouts("checkout")[0];
        if r["phase"] == "promoted" {
            assert_eq!(r["passed"].as_array().unwrap().len(), 2, "{r}");
            assert_eq!(r["verdict"], "pass", "{r}");
            break;
        }
        assert!(
            waited.elapsed() < Duration::from_secs(60),
            "not promoted: {r}"
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    // Give the dark canary time past its step_max.
    std::thread::sleep(Duration::from_secs(5));
    stop.store(true, Relaxed);
    std::thread::sleep(Duration::from_millis(500));
    trike.events(&mut events);
    let held = &trike.rollouts("payments")[0];
    assert_eq!(
        (held["phase"].as_str(), held["step"].as_u64()),
        (Some("holding"), Some(1)),
        "{held}"
    );
    trike.kill();
    let _ = std::fs::remove_dir_all(&dir);

    let got = of_type(&events, "checkout");
    let mut distinct: Vec<(&str, &str, f64)> = Vec::new();
    for e in &got {
        if !distinct.iter().any(|d| d.1 == e.1) {
            distinct.push(*e);
        }
    }
    let actions: Vec<(&str, f64)> = distinct.iter().map(|(a, _, w)| (*a, *w)).collect();
    assert_eq!(
        actions,
        [
            ("set_weight", 50.0),
            ("set_weight", 100.0),
            ("promote", 100.0)
        ],
        "{got:?}"
    );
    assert_eq!(
        events
            .iter()
            .find(|e| e["data"]["action"] == "promote")
            .unwrap()["data"]["evidence"]["rollout_id"],
        id.as_str()
    );
    let dark: Vec<&str> = of_type(&events, "payments").iter().map(|e| e.0).collect();
    assert_eq!(dark, ["set_weight", "page"], "{events:#?}");
}
