//! Fleet members under mTLS, as separate `trike run --role …` processes on the real broker
//! (tansu, started by `scripts/test`): a gateway and a processor whose certificates name only
//! `trike-member`, asking each other over HTTPS.
//!
//! Needs `TRIKE_TEST_KAFKA_BROKERS`; without it the test says SKIPPED locally and fails in CI.

#[path = "../src/run.rs"]
mod run;

// Shared with trike-tests, which uses all of it.
#[allow(dead_code)]
#[path = "../src/pki.rs"]
mod pki;

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

use rand::SeedableRng;
use serde_json::Value;
use std::collections::BTreeMap;
use std::time::Duration;

/// Guarantees: under mTLS (`tls.client_ca_file`, members advertising `https://`), a member
/// asks another with its own certificate and checks the other's against `fleet.server_name`
/// (the members' certificates name `trike-member`, not their address): a gateway answers for a
/// service with its owner's counts, exactly what it acknowledged, and its list names no member
/// unreachable; the failing requests' trace ids, decoded at the gateway, are listed by the
/// owner, and so are its anomaly scores; Argo's analysis asked at the gateway is judged by the owner, on its counts;
/// calls through cart → billing → ledger-db, paired at the gateway, are the owner's edges,
/// exactly, asked at the gateway.
#[test]
fn members_ask_each_other_over_mtls() {
    let Some(brokers) = brokers() else { return };
    let run = run::run_id();
    let dir = std::env::temp_dir().join(format!("trike-fleet-mtls-{run}"));
    let pki = pki::Pki::write(&dir.join("pki"));
    let (tls, server_name) = pki.member_yaml();
    let cfg = write_config(
        &dir,
        "member.yaml",
        &format!(
            "{tls}fleet: {{ partials_topic: mtls{run}.partials, changelog_topic: mtls{run}.changelog, members_topic: mtls{run}.members, silences_topic: mtls{run}.silences, group_id: trike-mtls-{run}, partitions: 2, flush_interval: 250ms, {server_name} }}\n\
             kafka: {{ brokers: \"{brokers}\", control_topic: mtls{run}.control }}\n\
             anomaly: {{ every: 1s }}\n\
             graph: {{ wait: 1s }}\n"
        ),
    );
    let processor = spawn_with(&cfg, "processor", free_port(), Some(&pki));
    let gateway = spawn_with(&cfg, "gateway", free_port(), Some(&pki));
    wait_owned(&processor, 2, Duration::from_secs(60));

    // OTLP/HTTP to the gateway, through TLS with the client certificate.
    let mut acked = Acked::new();
    let mut failed = std::collections::BTreeSet::new();
    let mut rng = rand::rngs::StdRng::seed_from_u64(7);
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_nanos() as u64;
    for version in ["1.0", "1.1"] {
        let req = svc("checkout", version, 0.1).request(50, now, 200_000_000, &mut rng);
        let r = gateway
            .client
            .post(format!(
                "https://{}:{}/v1/traces",
                pki::MEMBER,
                gateway.http
            ))
            .header("content-type", "application/x-protobuf")
            .body(prost::Message::encode_to_vec(&req))
            .send()
            .unwrap();
        assert_eq!(r.status(), 200, "{:?}", r.text());
        count(&mut acked, &req);
        failed.extend(
            req.resource_spans
                .iter()
                .flat_map(|rs| &rs.scope_spans)
                .flat_map(|ss| &ss.spans)
                .filter(|s| s.status.as_ref().is_some_and(|st| st.code == 2))
                .map(|s| {
                    s.trace_id
                        .iter()
                        .map(|b| format!("{b:02x}"))
                        .collect::<String>()
                }),
        );
    }
    let want: u64 = acked.values().map(|v| v.0).sum();
    assert_eq!(want, 100);

    // Asked at the gateway, answered by the owner.
    let at_gateway = wait_total(&gateway, "checkout", want, Duration::from_secs(30));
    let at_owner = local_slis(&processor, "checkout");
    assert_eq!(total(&at_gateway), want, "{at_gateway:?}");
    assert_eq!(at_gateway, at_owner);
    let per_series: BTreeMap<(String, String), (u64, u64)> = acked
        .iter()
        .map(|((_, route, version), c)| ((route.clone(), version.clone()), *c))
        .collect();
    let counted: BTreeMap<(String, String), (u64, u64)> = at_gateway
        .iter()
        .map(|(k, v)| (k.clone(), (v.0, v.1)))
        .collect();
    assert_eq!(counted, per_series);
    let list: Value = serde_json::from_str(&get(&gateway, "/api/v1/slis").unwrap()).unwrap();
    assert!(
        list["unreachable"].as_array().is_none_or(|u| u.is_empty()),
        "{}",
        list["unreachable"]
    );
    assert!(
        list["series"]
            .as_array()
            .unwrap()
            .iter()
            .any(|s| s["service"] == "checkout"),
        "{list}"
    );
    // Failing requests' trace ids, decoded at the gateway, listed by the owner and asked at
    // the gateway: each one a trace that failed.
    let traces: Value =
        serde_json::from_str(&get(&gateway, "/api/v1/exemplars?service=checkout").unwrap())
            .unwrap();
    let listed: Vec<&str> = traces["exemplars"]
        .as_array()
        .unwrap()
        .iter()
        .map(|x| x["trace_id"].as_str().unwrap())
        .collect();
    assert!(!failed.is_empty());
    assert_eq!(listed.len(), failed.len().min(20), "{traces}");
    assert!(listed.iter().all(|t| failed.contains(*t)), "{traces}");
    // The anomaly watch runs at the owner (a gateway has none), answering through the gateway.
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    let anomalies = loop {
        let a: Value =
            serde_json::from_str(&get(&gateway, "/api/v1/anomalies?service=checkout").unwrap())
                .unwrap();
        if a["anomalies"].as_array().is_some_and(|l| l.len() == 3) {
            break a;
        }
        assert!(std::time::Instant::now() < deadline, "{a}");
        std::thread::sleep(Duration::from_millis(300));
    };
    assert!(
        anomalies["anomalies"]
            .as_array()
            .unwrap()
            .iter()
            .all(|p| p["service"] == "checkout" && p["score"].as_f64().is_some()),
        "{anomalies}"
    );
    // Argo's provider asked at the gateway, which holds no data: the owner judges, on its
    // counts (50 requests an arm: too few for a verdict, but counted).
    let analysis: Value = serde_json::from_str(
        &get(
            &gateway,
            "/api/v1/analysis?service=checkout&canary=1.1&baseline=1.0",
        )
        .unwrap(),
    )
    .unwrap();
    assert_eq!(analysis["verdict"], "inconclusive", "{analysis}");
    let evidence = analysis["evidence"].as_array().unwrap();
    assert!(
        evidence
            .iter()
            .all(|m| m["baseline_n"] == 50 && m["canary_n"] == 50),
        "{analysis}"
    );
    // A rollout started at the gateway, which runs no policy, starts at the owner: listed
    // there (asked locally) and through the gateway, with its first set_weight.
    let r = gateway
        .client
        .post(format!("{}/api/v1/rollouts", gateway.base))
        .json(&serde_json::json!({"service": "checkout", "baseline": "1.0", "canary": "1.1", "steps": [20, 100]}))
        .send()
        .unwrap();
    assert_eq!(r.status(), 201);
    let started: Value = r.json().unwrap();
    assert_eq!(started["announced"], true, "{started}");
    let at_owner: Value =
        serde_json::from_str(&get_local(&processor, "/api/v1/rollouts").unwrap()).unwrap();
    assert_eq!(at_owner["rollouts"][0]["id"], started["id"], "{at_owner}");
    assert!(
        get_local(&gateway, "/api/v1/rollouts").is_some_and(|doc| doc.contains("\"rollouts\":[]")),
        "the gateway holds no rollout itself"
    );
    let listed: Value =
        serde_json::from_str(&get(&gateway, "/api/v1/rollouts?service=checkout").unwrap()).unwrap();
    assert_eq!(listed["rollouts"][0]["id"], started["id"], "{listed}");
    assert_eq!(listed["rollouts"][0]["weight"], 20.0, "{listed}");

    // The service graph: cart → billing → ledger-db, each service's spans in its own request
    // (billing's first, as its calls end first), through the gateway, which pairs the halves
    // and carries the calls in its partials; the owner holds the edges, the gateway answers.
    let end = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_nanos() as u64;
    let chain = trike::synth::call_chain(
        &["cart", "billing"],
        "ledger-db",
        0..40,
        end,
        |i| i.is_multiple_of(4),
        &mut rng,
    );
    for req in chain.iter().rev() {
        let r = gateway
            .client
            .post(format!(
                "https://{}:{}/v1/traces",
                pki::MEMBER,
                gateway.http
            ))
            .header("content-type", "application/x-protobuf")
            .body(prost::Message::encode_to_vec(req))
            .send()
            .unwrap();
        assert_eq!(r.status(), 200, "{:?}", r.text());
    }
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    let edges = loop {
        let g: Value =
            serde_json::from_str(&get(&gateway, "/api/v1/graph?window=5m").unwrap()).unwrap();
        let edges: Vec<(String, String, u64, u64)> = g["edges"]
            .as_array()
            .unwrap()
            .iter()
            .map(|e| {
                (
                    e["client"].as_str().unwrap().to_string(),
                    e["server"].as_str().unwrap().to_string(),
                    e["requests"].as_u64().unwrap(),
                    e["errors"].as_u64().unwrap(),
                )
            })
            .collect();
        if edges.len() == 2 && edges.iter().all(|e| e.2 == 40) {
            break edges;
        }
        assert!(std::time::Instant::now() < deadline, "{g}");
        std::thread::sleep(Duration::from_millis(200));
    };
    let want_edges: Vec<(String, String, u64, u64)> = vec![
        ("billing".into(), "ledger-db".into(), 40, 10),
        ("cart".into(), "billing".into(), 40, 10),
    ];
    let mut edges = edges;
    edges.sort();
    assert_eq!(edges, want_edges);
    // The gateway paired the halves: its /metrics says so (cart's calls paired with billing's
    // server spans; billing's named ledger-db, which sends no spans).
    let text = get(&gateway, "/metrics").unwrap();
    let calls = |outcome: &str| {
        let line = format!("trike_graph_calls_total{{outcome=\"{outcome}\"}} ");
        text.lines()
            .find_map(|l| l.strip_prefix(&line))
            .and_then(|v| v.trim().parse::<f64>().ok())
            .unwrap_or_else(|| panic!("{line} in:\n{text}"))
    };
    assert_eq!((calls("paired"), calls("by_peer")), (40.0, 40.0));

    // A silence set at the gateway holds at the processor, and at a processor that starts
    // later (the fleet's silences topic); expiring it at the gateway reaches both.
    let r = gateway
        .client
        .post(format!("{}/api/v1/silences", gateway.base))
        .json(&serde_json::json!({"matchers": [{"name": "service", "value": "checkout"}], "endsAt": "2099-01-01T00:00:00Z", "createdBy": "sre", "comment": "fleet-wide"}))
        .send()
        .unwrap();
    assert_eq!(r.status(), 200);
    let id = r.json::<Value>().unwrap()["silenceID"]
        .as_str()
        .unwrap()
        .to_string();
    let state_at = |t: &Trike| -> Option<String> {
        let doc: Value = serde_json::from_str(&get_local(t, "/api/v1/silences")?).ok()?;
        doc["silences"]
            .as_array()?
            .iter()
            .find(|s| s["id"] == id.as_str())
            .and_then(|s| s["status"]["state"].as_str().map(str::to_string))
    };
    let wait_state = |t: &Trike, want: &str| {
        let started = std::time::Instant::now();
        while state_at(t).as_deref() != Some(want) {
            assert!(
                started.elapsed() < Duration::from_secs(20),
                "silence {id} not {want} at {}: {:?}",
                t.base,
                state_at(t)
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    };
    wait_state(&processor, "active");
    let late = spawn_with(&cfg, "processor", free_port(), Some(&pki));
    wait_state(&late, "active");
    let r = gateway
        .client
        .delete(format!("{}/api/v1/silences/{id}", gateway.base))
        .send()
        .unwrap();
    assert_eq!(r.status(), 200);
    wait_state(&processor, "expired");
    wait_state(&late, "expired");
}
