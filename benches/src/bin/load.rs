//! End-to-end load and freshness harness.
//!
//! Starts `trike run` in this process on ephemeral loopback ports, drives OTLP/HTTP protobuf
//! load at it from `--clients` concurrent senders, and meanwhile measures freshness: every
//! 100 ms a probe sends one span for a fresh service and polls `/api/v1/slis` until it is
//! visible; the time from sending to visible is one freshness sample.
//!
//! Run: `cargo run --release -p trike-benches --bin load -- --duration-s 20`

use clap::Parser;
use prost::Message;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::time::{Duration, Instant};
use trike::config::validate::Overrides;
use trike::config::{Config, RawConfig};

#[derive(Debug, Parser)]
struct Args {
    /// Seconds of load.
    #[arg(long, default_value_t = 20)]
    duration_s: u64,
    /// Concurrent senders.
    #[arg(long, default_value_t = 4)]
    clients: usize,
    /// Spans per export request.
    #[arg(long, default_value_t = 500)]
    spans_per_request: usize,
    /// Distinct routes (series) per client.
    #[arg(long, default_value_t = 50)]
    routes: usize,
    /// Target spans/s across all clients (0: as fast as possible).
    #[arg(long, default_value_t = 0)]
    rate: u64,
}

fn now_ns() -> u64 {
    trike_runtime::clock::now_nanos()
}

fn cpu_seconds() -> f64 {
    // utime + stime of this process, from /proc (Linux).
    let stat = std::fs::read_to_string("/proc/self/stat").unwrap_or_default();
    let fields: Vec<&str> = stat
        .rsplit(')')
        .next()
        .unwrap_or("")
        .split_whitespace()
        .collect();
    let ticks: f64 = fields.get(11).and_then(|v| v.parse().ok()).unwrap_or(0.0)
        + fields.get(12).and_then(|v| v.parse().ok()).unwrap_or(0.0);
    ticks / 100.0
}

fn percentile(sorted: &[f64], q: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    sorted[((q * sorted.len() as f64).ceil() as usize).clamp(1, sorted.len()) - 1]
}

#[tokio::main(flavor = "multi_thread")]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let o = Overrides {
        otlp_grpc_addr: Some("127.0.0.1:0".into()),
        otlp_http_addr: Some("127.0.0.1:0".into()),
        admin_addr: Some("127.0.0.1:0".into()),
        ..Default::default()
    };
    let cfg =
        Config::validate(RawConfig::default(), &o).map_err(|p| anyhow::anyhow!(p.join("; ")))?;
    let running = trike::app::start(cfg).await?;
    let url = format!("http://{}/v1/traces", running.http_addr);
    let admin = running.admin_addr;
    let client = reqwest::Client::builder()
        .pool_max_idle_per_host(64)
        .build()?;
    let sent = Arc::new(AtomicU64::new(0));
    let refused = Arc::new(AtomicU64::new(0));
    let deadline = Instant::now() + Duration::from_secs(args.duration_s);
    let cpu0 = cpu_seconds();
    let t0 = Instant::now();

    let mut senders = Vec::new();
    for c in 0..args.clients {
        let (client, url, sent, refused) =
            (client.clone(), url.clone(), sent.clone(), refused.clone());
        let (n, routes) = (args.spans_per_request, args.routes);
        let per_client_rate = args.rate as f64 / args.clients as f64;
        senders.push(tokio::spawn(async move {
            let mut body = Vec::new();
            let mut built_at = Instant::now() - Duration::from_secs(10);
            let mut next = Instant::now();
            while Instant::now() < deadline {
                // Fresh event times every 200 ms; encoding is then off the hot path.
                if built_at.elapsed() > Duration::from_millis(200) {
                    let mut req = trike_benches::trace_request(n, routes, now_ns());
                    for rs in &mut req.resource_spans {
                        if let Some(r) = rs.resource.as_mut() {
                            r.attributes[0].value = Some(trike_proto::common::v1::AnyValue {
                                value: Some(
                                    trike_proto::common::v1::any_value::Value::StringValue(
                                        format!("load-{c}"),
                                    ),
                                ),
                            });
                        }
                    }
                    body = req.encode_to_vec();
                    built_at = Instant::now();
                }
                if per_client_rate > 0.0 {
                    tokio::time::sleep_until(next.into()).await;
                    next += Duration::from_secs_f64(n as f64 / per_client_rate);
                }
                match client
                    .post(&url)
                    .header("content-type", "application/x-protobuf")
                    .body(body.clone())
                    .send()
                    .await
                {
                    Ok(r) if r.status().is_success() => {
                        sent.fetch_add(n as u64, Relaxed);
                    }
                    Ok(r) if r.status().as_u16() == 429 => {
                        refused.fetch_add(n as u64, Relaxed);
                        tokio::time::sleep(Duration::from_millis(5)).await;
                    }
                    Ok(r) => anyhow::bail!("unexpected status {}", r.status()),
                    Err(e) => anyhow::bail!("send failed: {e}"),
                }
            }
            Ok(())
        }));
    }

    // Freshness probe.
    let mut fresh_ms = Vec::new();
    let mut probe = 0u64;
    tokio::time::sleep(Duration::from_millis(500)).await;
    while Instant::now() + Duration::from_millis(500) < deadline {
        probe += 1;
        let service = format!("probe-{probe}");
        let mut req = trike_benches::trace_request(1, 1, now_ns());
        req.resource_spans[0].resource.as_mut().unwrap().attributes[0].value =
            Some(trike_proto::common::v1::AnyValue {
                value: Some(trike_proto::common::v1::any_value::Value::StringValue(
                    service.clone(),
                )),
            });
        let body = req.encode_to_vec();
        let start = Instant::now();
        let r = client
            .post(&url)
            .header("content-type", "application/x-protobuf")
            .body(body)
            .send()
            .await?;
        if !r.status().is_success() {
            continue; // refused under overload: not a freshness sample
        }
        let probe_url = format!("http://{admin}/api/v1/slis?service={service}&window=1m");
        loop {
            let doc: serde_json::Value = client.get(&probe_url).send().await?.json().await?;
            if doc["series"].as_array().is_some_and(|s| !s.is_empty()) {
                fresh_ms.push(start.elapsed().as_secs_f64() * 1000.0);
                break;
            }
            if start.elapsed() > Duration::from_secs(5) {
                fresh_ms.push(5000.0);
                break;
            }
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    for s in senders {
        s.await??;
    }
    let wall = t0.elapsed().as_secs_f64();
    let cpu = cpu_seconds() - cpu0;
    // Let the queue drain, then check every accepted span was applied.
    tokio::time::sleep(Duration::from_millis(500)).await;
    let applied = running
        .state
        .worker
        .engine()
        .lock()
        .stats()
        .requests_applied;
    fresh_ms.sort_by(f64::total_cmp);
    let accepted = sent.load(Relaxed);
    println!(
        "load: {} clients × {} spans/request, {} routes each, {:.1} s",
        args.clients, args.spans_per_request, args.routes, wall
    );
    println!(
        "accepted spans:       {accepted} ({:.0} spans/s)",
        accepted as f64 / wall
    );
    println!("refused (429) spans:  {}", refused.load(Relaxed));
    println!(
        "applied by engine:    {applied} (accepted + {} probes)",
        fresh_ms.len()
    );
    println!(
        "process CPU:          {cpu:.1} s over {wall:.1} s wall ({:.0} spans per CPU-second, generator included)",
        accepted as f64 / cpu
    );
    println!(
        "freshness (send → visible in API), {} samples: p50 {:.1} ms, p99 {:.1} ms, max {:.1} ms",
        fresh_ms.len(),
        percentile(&fresh_ms, 0.5),
        percentile(&fresh_ms, 0.99),
        fresh_ms.last().copied().unwrap_or(f64::NAN)
    );
    running.stop().await?;
    Ok(())
}
