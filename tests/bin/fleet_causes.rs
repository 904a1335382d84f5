//! The root cause across processors: checkout → payments → db with checkout and payments
//! owned by different processors (separate `trike run --role processor` processes on the
//! real broker, tansu, started by `scripts/test`), a gateway pairing the calls, the real
//! OpenTelemetry SDK tracing them, and a real `trike actuate` executing the pages.
//!
//! Needs `TRIKE_TEST_KAFKA_BROKERS`; without it the test says SKIPPED locally and fails in CI.

#[path = "../src/run.rs"]
mod run;

// Shared with trike-tests, which uses all of it.
#[allow(dead_code)]
#[path = "../src/pki.rs"]
mod pki;

#[path = "common/killed.rs"]
mod killed;
use killed::Killed;

#[path = "common/required.rs"]
mod required;
use required::brokers;

#[path = "common/ports.rs"]
mod ports;
use ports::free_port;

#[allow(dead_code)]
#[path = "common/members.rs"]
mod members;
use members::*;

#[path = "../src/traced_calls.rs"]
mod traced_calls;

#[allow(dead_code)]
#[path = "common/prom.rs"]
mod prom;

use opentelemetry_otlp::{Protocol, SpanExporter, WithExportConfig};
use serde_json::Value;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};
use trike_runtime::fleet::partition::partition_of;

const PARTITIONS: i32 = 2;

/// An HTTP exporter of `service`'s spans to the gateway.
fn provider(gateway: &Trike, service: &str) -> opentelemetry_sdk::trace::SdkTracerProvider {
    traced_calls::provider(
        SpanExporter::builder()
            .with_http()
            .with_protocol(Protocol::HttpBinary)
            .with_endpoint(format!("http://127.0.0.1:{}/v1/traces", gateway.http))
            .build()
            .unwrap(),
        service,
    )
}

/// The decisions `t` itself made (its events' data).
fn decisions(t: &Trike) -> Vec<Value> {
    let doc: Value = serde_json::from_str(&get_local(t, "/api/v1/decisions").unwrap()).unwrap();
    doc["decisions"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["data"].clone())
        .collect()
}

/// Scenario: two processors each own one of the partials topic's two partitions; checkout
/// and payments (a name chosen to land in the other partition) send their spans through one
/// gateway; db sends nothing. 100 clean requests, then 200 of which db fails every other one.
/// Both services have a 99 % availability SLO paging on a fast burn; `trike actuate` runs a
/// log pager.
/// Guarantees:
/// - checkout's owner, whose own walk stops at payments (owned elsewhere), names db as the
///   root along checkout → payments → db, read from payments' owner's explanation on the
///   causes topic; payments' owner names db along payments → db;
/// - both inhibit their service's page by one root page on db, which both derived under the
///   same id (from when payments' explanation began): the control topic carries pages only
///   for db, all under that id, and none for checkout or payments;
/// - the actuator executes that page once: one succeeded, the other processor's copy a
///   duplicate;
/// - the processors' `/metrics` count the explanations made, received and followed.
#[test]
fn a_root_cause_found_across_processors_is_paged_once() {
    let Some(brokers) = brokers() else { return };
    let run = run::run_id();
    let dir = std::env::temp_dir().join(format!("trike-fleet-causes-{run}"));
    std::fs::create_dir_all(&dir).unwrap();
    let checkout = "checkout";
    let payments = ["payments", "payments-api", "payments-svc", "billing"]
        .into_iter()
        .find(|p| partition_of(p, PARTITIONS) != partition_of(checkout, PARTITIONS))
        .unwrap();
    let control = format!("causes{run}.control");
    let mut slos = String::new();
    for svc in [checkout, payments] {
        slos.push_str(&format!(
            "  - {{ name: {svc}-availability, service: {svc}, objective: 0.99, sli: availability, tiers: [{{ name: page_fast, factor: 14.4, long: 1h, short: 5m, severity: page, min_coverage: 0 }}] }}\n"
        ));
    }
    let cfg = write_config(
        &dir,
        "member.yaml",
        &format!(
            "signing: {{ key: causes-secret }}\n\
             fleet: {{ partials_topic: causes{run}.partials, changelog_topic: causes{run}.changelog, members_topic: causes{run}.members, silences_topic: causes{run}.silences, causes_topic: causes{run}.causes, group_id: trike-causes-{run}, partitions: {PARTITIONS}, flush_interval: 250ms }}\n\
             kafka: {{ brokers: \"{brokers}\", control_topic: {control} }}\n\
             sinks: [ {{ type: kafka }} ]\n\
             graph: {{ wait: 1s }}\n\
             slos:\n{slos}\
             policies: [{{ name: page-fast-burn, when: burn_rate.page, action: page }}]\n"
        ),
    );
    let processors = [
        spawn(&cfg, "processor", free_port()),
        spawn(&cfg, "processor", free_port()),
    ];
    let gateway = spawn(&cfg, "gateway", free_port());
    for p in &processors {
        wait_owned(p, 1, Duration::from_secs(60));
    }
    let actuator_admin = free_port();
    let actuator_cfg = write_config(
        &dir,
        "actuator.yaml",
        &format!(
            "signing: {{ key: causes-secret }}\n\
             kafka: {{ control_topic: {control} }}\n\
             actuator:\n  group_id: causes-actuators-{run}\n  actions_topic: causes{run}.actions\n  claims_topic: causes{run}.claims\n  state_dir: \"{}\"\n  admin: 127.0.0.1:{actuator_admin}\n  executors:\n    - {{ name: pager, type: log, actions: [page] }}\n",
            dir.join("actuator").display()
        ),
    );
    let _actuator = Killed(
        Command::new(env!("CARGO_BIN_EXE_trike"))
            .args(["actuate", "--config"])
            .arg(&actuator_cfg)
            .args(["--kafka-brokers", &brokers])
            .stdout(Stdio::null())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("the trike binary starts"),
    );
    let actuator_metrics = || {
        reqwest::blocking::get(format!("http://127.0.0.1:{actuator_admin}/metrics"))
            .ok()
            .and_then(|r| r.text().ok())
            .unwrap_or_default()
    };

    let (c, p) = (provider(&gateway, checkout), provider(&gateway, payments));
    traced_calls::traffic(&c, &p, 0..100, |_| false);
    p.force_flush().unwrap();
    c.force_flush().unwrap();
    // db's calls wait out the 1 s for a server span that never comes (db sends no spans); then
    // payments→db is known by its peer, and the failing calls below count as they come.
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let graph: serde_json::Value = get(&gateway, "/api/v1/graph?window=5m")
            .and_then(|t| serde_json::from_str(&t).ok())
            .unwrap_or_default();
        let learned = graph["edges"].as_array().is_some_and(|edges| {
            edges.iter().any(|e| {
                e["client"] == payments
                    && e["server"] == "db"
                    && e["requests"].as_u64() >= Some(100)
            })
        });
        if learned {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "payments→db not learned: {graph}"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    traced_calls::traffic(&c, &p, 100..300, |i| i.is_multiple_of(2));
    p.force_flush().unwrap();
    c.force_flush().unwrap();

    // Each processor decides its own service's page, inhibited by a page on db.
    let page_of = |service: &str| {
        processors.iter().find_map(|t| {
            decisions(t)
                .into_iter()
                .find(|d| d["target"]["service"] == service && d["action"] == "page")
        })
    };
    let deadline = Instant::now() + Duration::from_secs(60);
    let (own_c, own_p) = loop {
        if let (Some(a), Some(b)) = (page_of(checkout), page_of(payments)) {
            break (a, b);
        }
        assert!(
            Instant::now() < deadline,
            "no pages for both services in 60 s: decisions {:?}, graph {:?}, slos {:?}",
            processors.iter().map(decisions).collect::<Vec<_>>(),
            get(&gateway, "/api/v1/graph"),
            get(&gateway, "/api/v1/slos"),
        );
        std::thread::sleep(Duration::from_millis(200));
    };
    let rc_c = &own_c["evidence"]["root_cause"];
    let rc_p = &own_p["evidence"]["root_cause"];
    assert_eq!(
        rc_c["path"],
        serde_json::json!([checkout, payments, "db"]),
        "{own_c}"
    );
    assert_eq!(rc_c["service"], "db", "{own_c}");
    assert_eq!(rc_c["edge"], format!("{payments}→db"), "{own_c}");
    assert_eq!(rc_p["path"], serde_json::json!([payments, "db"]), "{own_p}");
    let since = rc_c["since"].as_u64().expect("the root cause's since");
    assert_eq!(rc_p["since"], since, "{own_c} {own_p}");
    let root = own_c["inhibited_by"]
        .as_str()
        .expect("checkout's page is inhibited");
    // The id every processor derives: from (root_cause, db, page, since).
    let db = trike_engine::policy::Target {
        service: "db".into(),
        ..Default::default()
    };
    let page = trike_engine::policy::Action::Page;
    assert_eq!(
        root,
        trike_engine::policy::decision_id("root_cause", &db, page, since)
    );
    assert_eq!(own_p["inhibited_by"], root, "{own_p}");
    assert!(
        own_c["reason"].as_str().unwrap().contains("dependency db"),
        "{own_c}"
    );
    // The two services are owned apart, and each owner paged db under the one id.
    let owner_of = |service: &str| {
        processors
            .iter()
            .position(|t| {
                decisions(t)
                    .iter()
                    .any(|d| d["target"]["service"] == service)
            })
            .unwrap()
    };
    assert_ne!(owner_of(checkout), owner_of(payments));
    for t in &processors {
        let pages: Vec<Value> = decisions(t)
            .into_iter()
            .filter(|d| d["target"]["service"] == "db")
            .collect();
        assert_eq!(pages.len(), 1, "{pages:?}");
        assert_eq!(pages[0]["decision_id"], root, "{pages:?}");
        assert_eq!(pages[0]["action"], "page");
    }

    // On the control topic: pages for db only, one id; two copies, one from each processor.
    let events = read_control(&brokers, &control);
    let pages: Vec<&Value> = events
        .iter()
        .filter(|e| e["type"] == "io.trike.control.page")
        .collect();
    assert_eq!(pages.len(), 2, "{events:?}");
    assert!(
        pages
            .iter()
            .all(|e| e["id"] == root && e["subject"] == "db"),
        "{pages:?}"
    );
    // The actuator executed it once.
    let deadline = Instant::now() + Duration::from_secs(30);
    let text = loop {
        let text = actuator_metrics();
        let n = |outcome: &str| prom_value(&text, "trike_actuator_events_total", outcome);
        if n("succeeded") + n("duplicate") >= 2.0 {
            break text;
        }
        assert!(Instant::now() < deadline, "{text}");
        std::thread::sleep(Duration::from_millis(200));
    };
    assert_eq!(
        prom_value(&text, "trike_actuator_events_total", "succeeded"),
        1.0,
        "{text}"
    );
    assert_eq!(
        prom_value(&text, "trike_actuator_events_total", "duplicate"),
        1.0,
        "{text}"
    );

    let causes = |t: &Trike, what: &str| {
        prom_value(&get(t, "/metrics").unwrap(), "trike_causes_total", what)
    };
    let (tc, tp) = (
        &processors[owner_of(checkout)],
        &processors[owner_of(payments)],
    );
    assert!(causes(tp, "made") >= 1.0 && causes(tp, "published") >= 1.0);
    assert!(causes(tc, "received") >= 1.0 && causes(tc, "extended") >= 1.0);
    let _ = std::fs::remove_dir_all(&dir);
}

/// The value of `name`'s series whose one label has value `label`, read with the
/// Prometheus text parser.
fn prom_value(text: &str, name: &str, label: &str) -> f64 {
    prom::parse_exposition(text)
        .expect("the Prometheus parser ($TRIKE_TEST_PYTHON)")
        .into_iter()
        .find(|s| s.name == name && s.labels.values().any(|v| v == label))
        .and_then(|s| s.value)
        .unwrap_or(0.0)
}
