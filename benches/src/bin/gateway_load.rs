//! A gateway alone under OTLP gRPC load, its CPU measured apart from the load generator's.
//!
//! The `trike` binary runs as a child process (`--role gateway`, `fleet.ack: durable`, partials
//! published to a Kafka-protocol broker in this process: librdkafka's mock cluster, whose CPU
//! is this process's); `--clients` gRPC clients in this process send requests of
//! `--spans-per-request` spans, encoded once every 200 ms (fresh event times) and sent as
//! bytes by tonic with a pass-through codec, so the generator spends its CPU on HTTP/2 and not
//! on encoding (it shares the machine's 2 cores with the gateway). The
//! child's CPU time comes from `/proc/<pid>/stat`, so "spans per gateway-CPU-second" counts the
//! gateway's work only: receive, decode, partials, produce, wait for the broker. The same load
//! then goes to `--role all` (receive, decode, engine: today's single process) as the
//! baseline of the same run.
//!
//! Run: `cargo build --release --bin trike && cargo run --release -p trike-benches --bin
//! gateway_load -- [--duration-s 20] [--clients 8] [--spans-per-request 512]`

use clap::Parser;
use prost::Message;
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::time::{Duration, Instant};
use tonic::codec::{Codec, DecodeBuf, Decoder, EncodeBuf, Encoder};
use trike_proto::collector::trace::v1::ExportTraceServiceResponse;

/// Sends bytes already encoded as an `ExportTraceServiceRequest`; decodes the response.
#[derive(Clone, Copy, Default)]
struct Raw;

impl Codec for Raw {
    type Encode = bytes::Bytes;
    type Decode = ExportTraceServiceResponse;
    type Encoder = Raw;
    type Decoder = Raw;
    fn encoder(&mut self) -> Raw {
        Raw
    }
    fn decoder(&mut self) -> Raw {
        Raw
    }
}

impl Encoder for Raw {
    type Item = bytes::Bytes;
    type Error = tonic::Status;
    fn encode(&mut self, item: bytes::Bytes, dst: &mut EncodeBuf<'_>) -> Result<(), Self::Error> {
        bytes::BufMut::put(dst, item);
        Ok(())
    }
}

impl Decoder for Raw {
    type Item = ExportTraceServiceResponse;
    type Error = tonic::Status;
    fn decode(&mut self, src: &mut DecodeBuf<'_>) -> Result<Option<Self::Item>, Self::Error> {
        ExportTraceServiceResponse::decode(src)
            .map(Some)
            .map_err(|e| tonic::Status::internal(e.to_string()))
    }
}

const EXPORT: &str = "/opentelemetry.proto.collector.trace.v1.TraceService/Export";

#[derive(Debug, Parser)]
struct Args {
    /// Seconds of load per role.
    #[arg(long, default_value_t = 20)]
    duration_s: u64,
    /// Concurrent gRPC clients.
    #[arg(long, default_value_t = 8)]
    clients: usize,
    /// Spans per export request.
    #[arg(long, default_value_t = 512)]
    spans_per_request: usize,
    /// Distinct routes (series) per client.
    #[arg(long, default_value_t = 50)]
    routes: usize,
    /// The `trike` binary (default: beside this one, as `cargo build --release` leaves it).
    #[arg(long)]
    trike: Option<std::path::PathBuf>,
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("a free port")
}

struct Trike {
    child: Child,
    admin: u16,
    grpc: u16,
}

impl Drop for Trike {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn get(admin: u16, path: &str) -> Option<String> {
    let r = reqwest::blocking::get(format!("http://127.0.0.1:{admin}{path}")).ok()?;
    (r.status() == 200).then(|| r.text().ok()).flatten()
}

fn metric(admin: u16, name: &str) -> f64 {
    get(admin, "/metrics")
        .unwrap_or_default()
        .lines()
        .filter(|l| l.starts_with(name) && !l.starts_with('#'))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

fn spawn(bin: &std::path::Path, config: &std::path::Path, role: &str) -> anyhow::Result<Trike> {
    let (grpc, http, admin) = (free_port(), free_port(), free_port());
    let child = Command::new(bin)
        .args(["run", "--role", role, "--config"])
        .arg(config)
        .args(["--otlp-grpc-addr", &format!("127.0.0.1:{grpc}")])
        .args(["--otlp-http-addr", &format!("127.0.0.1:{http}")])
        .args(["--admin-addr", &format!("127.0.0.1:{admin}")])
        .env("TRIKE_LOG", "warn")
        .stdout(Stdio::null())
        .stderr(Stdio::inherit())
        .spawn()?;
    let t = Trike { child, admin, grpc };
    let start = Instant::now();
    while get(admin, "/readyz").is_none() {
        anyhow::ensure!(
            start.elapsed() < Duration::from_secs(30),
            "trike --role {role} did not become ready"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    Ok(t)
}

/// One role under the load: (spans acknowledged, wall seconds, the child's CPU seconds, this
/// process's CPU seconds).
fn run(
    args: &Args,
    t: &Trike,
    rt: &tokio::runtime::Runtime,
) -> anyhow::Result<(u64, f64, f64, f64)> {
    let pid = t.child.id().to_string();
    let acked = Arc::new(AtomicU64::new(0));
    let failed = Arc::new(AtomicU64::new(0));
    let (cpu0, me0) = (
        trike_benches::cpu_seconds_of(&pid),
        trike_benches::cpu_seconds_of("self"),
    );
    let started = Instant::now();
    let deadline = started + Duration::from_secs(args.duration_s);
    rt.block_on(async {
        let mut tasks = Vec::new();
        for c in 0..args.clients {
            let (acked, failed) = (acked.clone(), failed.clone());
            let url = format!("http://127.0.0.1:{}", t.grpc);
            let (n, routes) = (args.spans_per_request, args.routes);
            tasks.push(tokio::spawn(async move {
                let channel = tonic::transport::Endpoint::from_shared(url)?
                    .connect()
                    .await?;
                let mut client = tonic::client::Grpc::new(channel);
                let mut body = bytes::Bytes::new();
                let mut built = Instant::now() - Duration::from_secs(1);
                while Instant::now() < deadline {
                    // Fresh event times every 200 ms (the gateway drops late data too).
                    if built.elapsed() > Duration::from_millis(200) {
                        let req = trike_benches::trace_request_of(
                            &format!("load-{c}"),
                            n,
                            routes,
                            trike_runtime::clock::now_nanos(),
                        );
                        body = req.encode_to_vec().into();
                        built = Instant::now();
                    }
                    client.ready().await?;
                    let sent = client
                        .unary(
                            tonic::Request::new(body.clone()),
                            http::uri::PathAndQuery::from_static(EXPORT),
                            Raw,
                        )
                        .await;
                    match sent {
                        Ok(r)
                            if r.get_ref()
                                .partial_success
                                .as_ref()
                                .is_none_or(|p| p.rejected_spans == 0) =>
                        {
                            acked.fetch_add(n as u64, Relaxed);
                        }
                        Ok(_) | Err(_) => {
                            failed.fetch_add(1, Relaxed);
                            tokio::time::sleep(Duration::from_millis(5)).await;
                        }
                    }
                }
                anyhow::Ok(())
            }));
        }
        for t in tasks {
            t.await??;
        }
        anyhow::Ok(())
    })?;
    let wall = started.elapsed().as_secs_f64();
    let (cpu, me) = (
        trike_benches::cpu_seconds_of(&pid) - cpu0,
        trike_benches::cpu_seconds_of("self") - me0,
    );
    let failed = failed.load(Relaxed);
    if failed > 0 {
        eprintln!("{failed} requests failed or were refused");
    }
    Ok((acked.load(Relaxed), wall, cpu, me))
}

fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let bin = match &args.trike {
        Some(b) => b.clone(),
        None => std::env::current_exe()?
            .parent()
            .map(|d| d.join("trike"))
            .ok_or_else(|| anyhow::anyhow!("no directory of this binary"))?,
    };
    anyhow::ensure!(
        bin.exists(),
        "{} is missing: cargo build --release --bin trike",
        bin.display()
    );
    let broker = trike::embedded_broker::EmbeddedBroker::start(&[
        ("trike.partials".into(), 4),
        ("trike.members".into(), 1),
    ])?;
    let dir = std::env::temp_dir().join(format!("trike-gateway-load-{}", std::process::id()));
    std::fs::create_dir_all(&dir)?;
    let gateway_cfg = dir.join("gateway.yaml");
    std::fs::write(
        &gateway_cfg,
        format!(
            "kafka: {{ brokers: \"{}\" }}\nfleet: {{ partitions: 4, ack: durable }}\n",
            broker.bootstrap_servers()
        ),
    )?;
    let all_cfg = dir.join("all.yaml");
    std::fs::write(&all_cfg, "{}\n")?;
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?;

    println!(
        "| role | spans acknowledged/s | CPU of the trike process | spans per CPU-second of the trike process | generator + broker CPU |"
    );
    println!("|---|---:|---:|---:|---:|");
    for (role, cfg) in [("gateway", &gateway_cfg), ("all", &all_cfg)] {
        let t = spawn(&bin, cfg, role)?;
        let (acked, wall, cpu, me) = run(&args, &t, &rt)?;
        let threads = trike_benches::thread_cpu_of(&t.child.id().to_string());
        eprintln!(
            "{role}: CPU by thread (whole life): {}",
            threads
                .iter()
                .map(|(n, s)| format!("{n} {s:.1}"))
                .collect::<Vec<_>>()
                .join(", ")
        );
        if role == "gateway" {
            // Everything acknowledged is on the broker (fleet.ack: durable).
            let published = metric(t.admin, "trike_gateway_observations_total");
            anyhow::ensure!(
                published as u64 >= acked,
                "the gateway acknowledged {acked} spans but published {published}"
            );
            let records = metric(t.admin, "trike_gateway_records_total");
            let bytes = metric(t.admin, "trike_gateway_record_bytes_total");
            eprintln!(
                "gateway: {records:.0} partials records, {bytes:.0} bytes ({:.0} bytes per record, {:.1} spans per record, {:.1} bytes per span)",
                bytes / records.max(1.0),
                published / records.max(1.0),
                bytes / published.max(1.0)
            );
        }
        println!(
            "| {role} | {:.0} | {cpu:.1} s in {wall:.1} s | {:.0} | {me:.1} s |",
            acked as f64 / wall,
            acked as f64 / cpu.max(0.001)
        );
    }
    let _ = std::fs::remove_dir_all(&dir);
    Ok(())
}
