//! Cost and region signals end to end (pattern 6, L10): `trike run` with `cloud.region` and
//! `traffic.class` as series dimensions, `cost:` for a service, and rules on region health and
//! spend burn; spans over OTLP/HTTP.

use prost::Message;
use rand::SeedableRng;
use serde_json::Value;
use std::time::{Duration, Instant};
use trike::synth::{Behaviour, Service};
use trike_proto::common::v1::{AnyValue, KeyValue, any_value::Value as Av};
use trike_tests::{get_json as get, start_trike};

/// `n` spans of `service` from `region`, with `class` traffic, failing `error_ratio` of them.
async fn send(
    running: &trike::app::Running,
    service: &str,
    region: &str,
    class: &str,
    n: usize,
    error_ratio: f64,
    seed: u64,
) {
    let svc = Service {
        name: service.into(),
        version: "1.0".into(),
        routes: vec!["/q".into()],
        behaviour: Behaviour {
            median_ms: 20.0,
            sigma: 0.2,
            error_ratio,
        },
    };
    let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
    let mut req = svc.request(n, trike_runtime::clock::now_nanos(), 500_000_000, &mut rng);
    let res = req.resource_spans[0].resource.as_mut().unwrap();
    for (k, v) in [("cloud.region", region), ("traffic.class", class)] {
        res.attributes.push(KeyValue {
            key: k.into(),
            value: Some(AnyValue {
                value: Some(Av::StringValue(v.into())),
            }),
            ..Default::default()
        });
    }
    let r = reqwest::Client::new()
        .post(format!("http://{}/v1/traces", running.http_addr))
        .header("content-type", "application/x-protobuf")
        .body(req.encode_to_vec())
        .send()
        .await
        .unwrap();
    assert!(r.status().is_success());
}

/// Scenario: shop serves 300 requests from each of eu-west (30 % failing) and us-east (none);
/// search, priced at 0.001 a request with a budget of 1 a day, serves 400 batch requests in
/// its first seconds. Rules: drain a region whose health is under 0.9; throttle search's batch
/// traffic when its spend burns over 2×.
/// Guarantees: `/api/v1/regions?service=shop` scores eu-west 0.7 (worst first) and us-east 1;
/// one `set_weight` names `target.region: eu-west` in its control event; `/api/v1/cost` shows
/// search's spend burn over 2 on both windows; one `throttle` carries `target.selector:
/// {traffic.class: batch}`; `/metrics` has `trike_cost_spend_burn` for both windows (read with
/// the Prometheus parser).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unhealthy_regions_and_fast_spend_are_acted_on() {
    let running = start_trike(
        "series: { dimensions: [cloud.region, traffic.class] }\n\
         cost: [{ service: search, per_request: 0.001, budget_per_day: 1.0 }]\n\
         policies:\n\
         \x20 - { name: drain-region, when: \"region.health < 0.9\", action: set_weight, params: { weight: 0 } }\n\
         \x20 - { name: throttle-batch, when: \"cost.spend_burn > 2\", action: throttle, services: [search], selector: { traffic.class: batch }, params: { rate_limit: 0.5 } }\n",
    )
    .await;
    send(&running, "shop", "eu-west", "web", 300, 0.3, 1).await;
    send(&running, "shop", "us-east", "web", 300, 0.0, 2).await;
    send(&running, "search", "us-east", "batch", 400, 0.0, 3).await;
    for (service, n) in [("shop", 600), ("search", 400)] {
        let got =
            trike_tests::wait_for_requests(&running, service, n, Duration::from_secs(10)).await;
        assert_eq!(got, n, "{service}");
    }

    let regions = get(&running, "/api/v1/regions?service=shop").await;
    assert_eq!(regions["dimension"], "cloud.region");
    let list = regions["regions"].as_array().unwrap();
    let names: Vec<&str> = list.iter().map(|r| r["region"].as_str().unwrap()).collect();
    assert_eq!(names, ["eu-west", "us-east"], "{regions}");
    let eu = &list[0];
    assert_eq!(eu["requests"], 300.0);
    assert!(
        (eu["health"].as_f64().unwrap() - (1.0 - eu["error_ratio"].as_f64().unwrap())).abs()
            < 1e-12
    );
    assert!(
        (0.55..0.85).contains(&eu["health"].as_f64().unwrap()),
        "{eu}"
    );
    assert_eq!(list[1]["health"], 1.0);

    let costs = get(&running, "/api/v1/cost?service=search").await;
    let c = &costs["costs"][0];
    assert_eq!(c["service"], "search");
    assert_eq!(c["cost_per_request"], 0.001);
    assert!(
        c["burn_1h"].as_f64().unwrap() > 2.0 && c["burn_5m"].as_f64().unwrap() > 2.0,
        "{costs}"
    );

    let waited = Instant::now();
    let decisions = loop {
        let doc = get(&running, "/api/v1/decisions").await;
        let list: Vec<Value> = doc["decisions"].as_array().unwrap().clone();
        let found = |a: &str| list.iter().any(|d| d["data"]["action"] == a);
        if found("set_weight") && found("throttle") {
            break list;
        }
        assert!(waited.elapsed() < Duration::from_secs(15), "{doc}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    let by = |a: &str| -> Vec<&Value> {
        decisions
            .iter()
            .filter(|d| d["data"]["action"] == a)
            .collect()
    };
    let drain = by("set_weight");
    assert_eq!(drain.len(), 1, "{decisions:#?}");
    assert_eq!(drain[0]["data"]["target"]["service"], "shop");
    assert_eq!(drain[0]["data"]["target"]["region"], "eu-west");
    assert_eq!(drain[0]["data"]["evidence"]["kind"], "region");
    let throttle = by("throttle");
    assert_eq!(throttle.len(), 1, "{decisions:#?}");
    assert_eq!(throttle[0]["data"]["target"]["service"], "search");
    assert_eq!(
        throttle[0]["data"]["target"]["selector"],
        serde_json::json!({"traffic.class": "batch"})
    );
    assert_eq!(throttle[0]["data"]["params"]["rate_limit"], 0.5);
    assert!(
        throttle[0]["data"]["reason"]
            .as_str()
            .unwrap()
            .contains("acting on traffic.class=batch traffic"),
        "{}",
        throttle[0]
    );

    let text = trike_tests::metrics_text(&running).await;
    if let Some(samples) = trike_tests::parse_exposition(&text) {
        for window in ["1h", "5m"] {
            let s = samples
                .iter()
                .find(|s| {
                    s.name == "trike_cost_spend_burn"
                        && s.labels.get("service").map(String::as_str) == Some("search")
                        && s.labels.get("window").map(String::as_str) == Some(window)
                })
                .unwrap_or_else(|| panic!("trike_cost_spend_burn {window}"));
            assert_eq!(s.kind, "gauge");
            assert!(s.value.unwrap() > 2.0);
        }
    }
    running.stop().await.unwrap();
}
