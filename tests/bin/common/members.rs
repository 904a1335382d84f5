//! The fleet's processes for the multi-process tests (`fleet`, `fleet_mtls`): `trike run
//! --role …` children on loopback ports, asked over their admin API (HTTP, or HTTPS with a
//! client certificate), and what their clients were told was accepted.

use super::pki;
use super::ports::free_port;
use serde_json::Value;
use std::collections::BTreeMap;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};
use trike::synth::{Behaviour, Service};

pub struct Trike {
    pub child: Child,
    pub admin: u16,
    pub grpc: u16,
    pub http: u16,
    /// Where its admin API is (`http://127.0.0.1:PORT`, or `https://trike-member:PORT`).
    pub base: String,
    /// A client it answers (under mTLS: one with a client certificate).
    pub client: reqwest::blocking::Client,
}

impl Drop for Trike {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

pub fn spawn(config: &Path, role: &str, admin: u16) -> Trike {
    spawn_with(config, role, admin, None)
}

/// A client of an mTLS member: it trusts the test CA, presents the trusted client
/// certificate, and reaches [`pki::MEMBER`] (the only name on the members' certificates) at
/// 127.0.0.1.
pub fn mtls_client(p: &pki::Pki) -> reqwest::blocking::Client {
    let identity = format!("{}{}", p.client_cert_pem, p.client_key_pem);
    reqwest::blocking::Client::builder()
        .tls_certs_only([reqwest::Certificate::from_pem(p.ca_pem.as_bytes()).unwrap()])
        .identity(reqwest::Identity::from_pem(identity.as_bytes()).unwrap())
        .resolve(pki::MEMBER, ([127, 0, 0, 1], 0).into())
        .timeout(Duration::from_secs(10))
        .build()
        .unwrap()
}

/// Starts `trike run --role ROLE`; with `pki`, it serves HTTPS for [`pki::MEMBER`].
pub fn spawn_with(config: &Path, role: &str, admin: u16, pki: Option<&pki::Pki>) -> Trike {
    let (grpc, http) = (free_port(), free_port());
    let child = Command::new(env!("CARGO_BIN_EXE_trike"))
        .args(["run", "--role", role, "--config"])
        .arg(config)
        .args(["--otlp-grpc-addr", &format!("127.0.0.1:{grpc}")])
        .args(["--otlp-http-addr", &format!("127.0.0.1:{http}")])
        .args(["--admin-addr", &format!("127.0.0.1:{admin}")])
        .env(
            "TRIKE_LOG",
            std::env::var("FLEET_TEST_LOG").unwrap_or_else(|_| "warn".into()),
        )
        .stdout(Stdio::null())
        .stderr(Stdio::inherit())
        .spawn()
        .expect("the trike binary starts");
    let (base, client) = match pki {
        None => (
            format!("http://127.0.0.1:{admin}"),
            reqwest::blocking::Client::new(),
        ),
        Some(p) => (format!("https://{}:{admin}", pki::MEMBER), mtls_client(p)),
    };
    let t = Trike {
        child,
        admin,
        grpc,
        http,
        base,
        client,
    };
    let start = Instant::now();
    while get(&t, "/readyz").is_none() {
        assert!(
            start.elapsed() < Duration::from_secs(30),
            "trike --role {role} did not become ready"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    t
}

/// Stops `t` with SIGTERM (a clean stop: it leaves the group) and waits for it to exit.
pub fn terminate(mut t: Trike) {
    let pid = t.child.id().to_string();
    let ok = Command::new("kill")
        .args(["-TERM", &pid])
        .status()
        .unwrap()
        .success();
    assert!(ok, "kill -TERM {pid}");
    let started = Instant::now();
    while t.child.try_wait().unwrap().is_none() {
        assert!(
            started.elapsed() < Duration::from_secs(60),
            "a processor took over a minute to stop"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// Waits until `t` owns `n` partitions; returns how long it took.
pub fn wait_owned(t: &Trike, n: u64, timeout: Duration) -> Duration {
    let started = Instant::now();
    while metric(t, "trike_fleet_partitions_owned") as u64 != n {
        assert!(
            started.elapsed() < timeout,
            "no {n} partitions owned after {timeout:?}"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    started.elapsed()
}

pub fn get(t: &Trike, path: &str) -> Option<String> {
    let r = t.client.get(format!("{}{path}", t.base)).send().ok()?;
    (r.status() == 200).then(|| r.text().ok()).flatten()
}

/// What `t` itself holds, not the fleet (a request marked as already forwarded is answered
/// where it lands).
pub fn get_local(t: &Trike, path: &str) -> Option<String> {
    let r = t
        .client
        .get(format!("{}{path}", t.base))
        .header("x-trike-forwarded", "1")
        .send()
        .ok()?;
    (r.status() == 200).then(|| r.text().ok()).flatten()
}

/// Per series (operation, version): (requests, errors, [p50, p90, p99]).
pub type Slis = BTreeMap<(String, String), (u64, u64, Vec<f64>)>;

pub fn slis(t: &Trike, service: &str) -> Slis {
    slis_from(get(t, &format!("/api/v1/slis?service={service}&window=5m")))
}

/// The SLIs `t` itself holds for `service`.
pub fn local_slis(t: &Trike, service: &str) -> Slis {
    slis_from(get_local(
        t,
        &format!("/api/v1/slis?service={service}&window=5m"),
    ))
}

pub fn slis_from(text: Option<String>) -> Slis {
    let Some(text) = text else {
        return Slis::new();
    };
    let doc: Value = serde_json::from_str(&text).unwrap();
    doc["series"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| {
            let q = ["p50", "p90", "p99"]
                .iter()
                .map(|k| s["latency_ms"][k].as_f64().unwrap_or(f64::NAN))
                .collect();
            (
                (
                    s["operation"].as_str().unwrap().to_string(),
                    s["version"].as_str().unwrap().to_string(),
                ),
                (
                    s["requests"].as_u64().unwrap(),
                    s["errors"].as_u64().unwrap(),
                    q,
                ),
            )
        })
        .collect()
}

pub fn total(s: &Slis) -> u64 {
    s.values().map(|v| v.0).sum()
}

/// Waits until `t` counts at least `want` requests of `service` (or `timeout` passes).
pub fn wait_total(t: &Trike, service: &str, want: u64, timeout: Duration) -> Slis {
    let start = Instant::now();
    loop {
        let s = slis(t, service);
        if total(&s) >= want || start.elapsed() > timeout {
            // A little longer, so a count above `want` (counted twice) would show.
            std::thread::sleep(Duration::from_millis(1500));
            return slis(t, service);
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

pub fn metric(t: &Trike, name: &str) -> f64 {
    let text = get(t, "/metrics").unwrap_or_default();
    text.lines()
        .find_map(|l| l.strip_prefix(name)?.strip_prefix(' ')?.trim().parse().ok())
        .unwrap_or(0.0)
}

pub fn svc(name: &str, version: &str, error_ratio: f64) -> Service {
    Service {
        name: name.into(),
        version: version.into(),
        routes: vec!["/pay".into(), "/cart".into(), "/ship".into()],
        behaviour: Behaviour {
            median_ms: 40.0,
            sigma: 0.8,
            error_ratio,
        },
    }
}

/// What the clients were told was accepted, per (service, route, version): (requests, errors).
pub type Acked = BTreeMap<(String, String, String), (u64, u64)>;

pub fn count(
    acked: &mut Acked,
    req: &trike_proto::collector::trace::v1::ExportTraceServiceRequest,
) {
    for rs in &req.resource_spans {
        let attr = |k: &str| {
            rs.resource.as_ref().and_then(|r| {
                r.attributes.iter().find(|a| a.key == k).and_then(|a| {
                    match a.value.as_ref()?.value.as_ref()? {
                        trike_proto::common::v1::any_value::Value::StringValue(s) => {
                            Some(s.clone())
                        }
                        _ => None,
                    }
                })
            })
        };
        let (service, version) = (
            attr("service.name").unwrap(),
            attr("service.version").unwrap(),
        );
        for s in rs.scope_spans.iter().flat_map(|ss| &ss.spans) {
            let route = s.name.trim_start_matches("GET ").to_string();
            let bad = s.status.as_ref().is_some_and(|st| st.code == 2);
            let e = acked
                .entry((service.clone(), route, version.clone()))
                .or_default();
            e.0 += 1;
            e.1 += u64::from(bad);
        }
    }
}

pub fn write_config(dir: &Path, name: &str, yaml: &str) -> std::path::PathBuf {
    let p = dir.join(name);
    std::fs::write(&p, yaml).unwrap();
    p
}

/// Every control event on `topic`, read from the beginning until 3 s pass without a new one.
pub fn read_control(brokers: &str, topic: &str) -> Vec<Value> {
    use rdkafka::Message;
    use rdkafka::consumer::{BaseConsumer, Consumer};
    let reader: BaseConsumer = rdkafka::ClientConfig::new()
        .set("bootstrap.servers", brokers)
        .set("group.id", "fleet-test-control-reader")
        .set("enable.auto.commit", "false")
        .create()
        .unwrap();
    let md = reader
        .fetch_metadata(Some(topic), Duration::from_secs(5))
        .unwrap();
    let mut tpl = rdkafka::TopicPartitionList::new();
    for p in md.topics().iter().flat_map(|t| t.partitions()) {
        tpl.add_partition_offset(topic, p.id(), rdkafka::Offset::Beginning)
            .unwrap();
    }
    reader.assign(&tpl).unwrap();
    let (start, mut last) = (Instant::now(), Instant::now());
    let mut out = Vec::new();
    while last.elapsed() < Duration::from_secs(3) && start.elapsed() < Duration::from_secs(30) {
        if let Some(Ok(m)) = reader.poll(Duration::from_millis(100)) {
            out.push(
                serde_json::from_slice(m.payload().unwrap_or_default()).unwrap_or(Value::Null),
            );
            last = Instant::now();
        }
    }
    out
}
