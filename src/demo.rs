//! `trike demo`: the processor on its default addresses, fed by synthetic services over real
//! OTLP/HTTP on loopback: `checkout` 1.4.0 (baseline, ~90 % of traffic) and 1.5.0 (canary,
//! ~10 %) which starts failing and slowing down after `--degrade-after-s`. Every 5 s it prints
//! the SLIs it reads back from the admin API; the canary judge fails the canary, and the
//! `rollback-bad-canary` policy writes a rollback control event (CloudEvents JSON) to stdout.

use crate::cli::DemoArgs;
use crate::config::{Config, RawConfig};
use crate::synth::{Behaviour, Service};
use anyhow::Context;
use prost::Message;
use rand::SeedableRng;
use std::time::{Duration, Instant};
use tokio::sync::watch;

fn healthy() -> Behaviour {
    Behaviour {
        median_ms: 40.0,
        sigma: 0.5,
        error_ratio: 0.001,
    }
}

fn degraded() -> Behaviour {
    Behaviour {
        median_ms: 120.0,
        sigma: 0.7,
        error_ratio: 0.08,
    }
}

/// Runs the demo until Ctrl-C or `--duration-s`.
pub async fn run(args: DemoArgs) -> anyhow::Result<()> {
    let yaml = r#"
slos:
  - { name: checkout-availability, service: checkout, objective: 0.999, sli: availability }
  - { name: checkout-latency, service: checkout, objective: 0.99, sli: { latency: { threshold_ms: 300 } } }
canary:
  - { service: checkout, baseline: "1.4.0", canary: "1.5.0", window: 1m, min_requests: 300 }
policies:
  - { name: rollback-bad-canary, when: canary.fail, action: rollback, for: 5s, params: { weight: 0 } }
  - { name: page-fast-burn, when: burn_rate.page, action: page }
instance: demo
"#;
    let raw = RawConfig::from_yaml(yaml).map_err(anyhow::Error::msg)?;
    let cfg = Config::validate(raw, &args.addrs.overrides())
        .map_err(|p| anyhow::anyhow!("configuration: {}", p.join("; ")))?;
    let running = crate::app::start(cfg).await?;
    let http = running.http_addr;
    let admin = running.admin_addr;
    println!("Trike demo");
    println!(
        "  OTLP/gRPC  {}   OTLP/HTTP  http://{http}   admin  http://{admin}",
        running.grpc_addr
    );
    println!("  SLIs:      curl 'http://{admin}/api/v1/slis?service=checkout&window=1m'");
    println!("  SLOs:      curl http://{admin}/api/v1/slos");
    println!(
        "  decisions: curl http://{admin}/api/v1/decisions   (control events also print below as JSON lines)"
    );
    println!("  metrics:   curl http://{admin}/metrics");
    println!(
        "Synthetic traffic: checkout 1.4.0 (baseline, ~180 req/s) and 1.5.0 (canary, ~20 req/s); the canary degrades after {} s.\n",
        args.degrade_after_s
    );

    let (stop_tx, stop_rx) = watch::channel(false);
    let client = reqwest::Client::new();
    let url = format!("http://{http}/v1/traces");
    let started = Instant::now();
    let degrade_after = Duration::from_secs(args.degrade_after_s);
    let mut senders = Vec::new();
    for (version, per_tick, canary) in [("1.4.0", 18usize, false), ("1.5.0", 2usize, true)] {
        let (client, url, mut stop) = (client.clone(), url.clone(), stop_rx.clone());
        senders.push(tokio::spawn(async move {
            let mut svc = Service {
                name: "checkout".into(),
                version: version.into(),
                routes: vec!["/cart".into(), "/pay".into()],
                behaviour: healthy(),
            };
            let mut rng = rand::rngs::StdRng::seed_from_u64(u64::from(canary));
            let mut tick = tokio::time::interval(Duration::from_millis(100));
            let mut announced = false;
            loop {
                tokio::select! {
                    _ = tick.tick() => {}
                    _ = stop.wait_for(|s| *s) => return,
                }
                if canary && started.elapsed() >= degrade_after && !announced {
                    svc.behaviour = degraded();
                    announced = true;
                    println!(">>> canary 1.5.0 starts failing (8 % errors) and slowing down (×3 latency)\n");
                }
                let body = svc.request(per_tick, crate::worker::now_nanos(), 100_000_000, &mut rng).encode_to_vec();
                let sent = client
                    .post(&url)
                    .header("content-type", "application/x-protobuf")
                    .body(body)
                    .send()
                    .await;
                if let Err(e) = sent {
                    eprintln!("synthetic {version}: export failed: {e}");
                }
            }
        }));
    }
    let printer = {
        let (client, mut stop) = (client.clone(), stop_rx.clone());
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(Duration::from_secs(5));
            tick.tick().await;
            loop {
                tokio::select! {
                    _ = tick.tick() => {}
                    _ = stop.wait_for(|s| *s) => return,
                }
                if let Err(e) = print_slis(&client, admin, started.elapsed()).await {
                    eprintln!("reading SLIs: {e:#}");
                }
            }
        })
    };

    let limit = args.duration_s.map(Duration::from_secs);
    tokio::select! {
        _ = tokio::signal::ctrl_c() => println!("\nCtrl-C: stopping"),
        _ = async { match limit { Some(d) => tokio::time::sleep(d).await, None => std::future::pending().await } } => {}
    }
    let _ = stop_tx.send(true);
    for s in senders {
        let _ = s.await;
    }
    let _ = printer.await;
    running.stop().await
}

async fn print_slis(
    client: &reqwest::Client,
    admin: std::net::SocketAddr,
    t: Duration,
) -> anyhow::Result<()> {
    let doc: serde_json::Value = client
        .get(format!(
            "http://{admin}/api/v1/slis?service=checkout&window=1m"
        ))
        .send()
        .await?
        .json()
        .await
        .context("SLI document")?;
    println!(
        "t={:>4}s  window 1m        requests  err%    p50ms   p99ms  ≤300ms",
        t.as_secs()
    );
    let mut by_version: std::collections::BTreeMap<String, (u64, u64, f64, f64, u64)> =
        Default::default();
    for s in doc["series"].as_array().into_iter().flatten() {
        let v = by_version
            .entry(s["version"].as_str().unwrap_or("").to_string())
            .or_default();
        let req = s["requests"].as_u64().unwrap_or(0);
        v.0 += req;
        v.1 += s["errors"].as_u64().unwrap_or(0);
        // Request-weighted quantiles across routes are only indicative; the API has exact per-series values.
        v.2 = v.2.max(s["latency_ms"]["p50"].as_f64().unwrap_or(0.0));
        v.3 = v.3.max(s["latency_ms"]["p99"].as_f64().unwrap_or(0.0));
        v.4 += s["latency_good"][0]["good"].as_u64().unwrap_or(0);
    }
    for (version, (req, err, p50, p99, good)) in by_version {
        let role = if version == "1.5.0" {
            "canary"
        } else {
            "baseline"
        };
        println!(
            "         {version:<6} {role:<8} {req:>9} {:>5.2} {p50:>8.1} {p99:>7.1} {:>6.1}%",
            100.0 * err as f64 / req.max(1) as f64,
            100.0 * good as f64 / req.max(1) as f64
        );
    }
    println!();
    Ok(())
}
