//! `trike demo`: the whole loop in one process, on embedded defaults, with nothing installed.
//!
//! - An embedded Kafka-protocol broker ([`crate::embedded_broker`]) carries the real control
//!   topic `trike.control` and the actuators' topics.
//! - The processor (`trike run`) on its default addresses, signing its control events.
//! - Synthetic `checkout` services send real OTLP/HTTP over loopback: 1.4.0 (baseline, 90 % of
//!   traffic) and 1.5.0 (canary, 10 %), which starts failing and slowing down after
//!   `--degrade-after-s`. Each request calls `payments` (`/pay`) or `inventory` (`/cart`),
//!   named by `peer.service`: the service graph's edges.
//! - An actuator worker (`trike actuate`) consumes the control topic, checks signatures and
//!   carries out a `rollback` by calling a webhook: the demo's stand-in for a rollout
//!   controller, which sets the canary's traffic weight to 0. Traffic recovers.
//!
//! It prints the SLIs every 5 s and narrates each step; Ctrl-C stops everything cleanly.

pub mod sim;
pub mod traffic;

use crate::cli::DemoArgs;
use crate::config::{Config, RawConfig};
use crate::synth::Behaviour;
use anyhow::Context;
use prost::Message;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering::Relaxed};
use std::time::{Duration, Instant};
use tokio::sync::watch;
use tokio::task::JoinHandle;
use traffic::{TICK, Traffic};
use trike_actuate::ActuatorSettings;

/// Well inside the 99.9 % availability SLO (a burn rate of 0.2).
pub(crate) fn healthy() -> Behaviour {
    Behaviour {
        median_ms: 40.0,
        sigma: 0.5,
        error_ratio: 0.0002,
    }
}

/// The built-in stories `trike demo --scenario` can tell.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, clap::ValueEnum)]
pub enum Scenario {
    /// The canary (10 % of traffic) starts failing and slowing down; the canary judge fails
    /// it and the actuator rolls it back.
    #[default]
    Canary,
    /// The canary gets slower but no less reliable: the latency comparison alone fails it.
    Latency,
    /// One version serves everything and starts failing 0.4 % of requests: a 4× burn of the
    /// 99.9 % SLO, too slow to page, so the ticket tier fires and a ticket is raised.
    SlowBurn,
    /// The telemetry pipeline stalls, then delivers [`PIPELINE_LAG`] behind, while the canary
    /// goes bad: the data is stale, so the rollback is held (policies never act on stale data
    /// unless told to) and a page about the stale telemetry goes out instead.
    Stale,
}

impl Scenario {
    /// What happens at the degrade time: (the canary's new behaviour, the baseline's).
    pub(crate) fn degrade(self) -> (Option<Behaviour>, Option<Behaviour>) {
        match self {
            Self::Canary => (
                Some(Behaviour {
                    median_ms: 120.0,
                    sigma: 0.7,
                    error_ratio: 0.08,
                }),
                None,
            ),
            Self::Latency => (
                Some(Behaviour {
                    median_ms: 100.0,
                    ..healthy()
                }),
                None,
            ),
            Self::SlowBurn => (
                None,
                Some(Behaviour {
                    error_ratio: 0.004,
                    ..healthy()
                }),
            ),
            Self::Stale => (Self::Canary.degrade().0, None),
        }
    }

    /// The canary's starting share of traffic, percent.
    pub fn canary_weight(self) -> u64 {
        match self {
            Self::SlowBurn => 0,
            _ => CANARY_WEIGHT,
        }
    }

    fn story(self) -> &'static str {
        match self {
            Self::Canary => "the canary starts failing (8 % errors) and slowing down (×3 latency)",
            Self::Latency => "the canary slows down (median 40 → 100 ms) without failing more",
            Self::SlowBurn => {
                "1.4.0 starts failing 0.4 % of requests (a 4× burn of the 99.9 % SLO)"
            }
            Self::Stale => {
                "the telemetry pipeline stalls, then runs 20 s behind, while the canary starts failing"
            }
        }
    }
}

/// How far behind the stalled pipeline of [`Scenario::Stale`] delivers (beyond `stale.max_lag`).
pub const PIPELINE_LAG: Duration = Duration::from_secs(20);

/// Requests per 100 ms tick, all versions together (200 req/s).
pub(crate) const PER_TICK: usize = 20;
/// The canary's share of traffic before any action, in percent.
const CANARY_WEIGHT: u64 = 10;

/// The demo SLOs' tiers: the workbook's shape (a fast page, a slow ticket) over windows of
/// the demo's length.
const DEMO_TIERS: &str = "[ { name: page_fast, factor: 14.4, long: 1m, short: 10s, severity: page }, { name: ticket, factor: 2, long: 1m, short: 15s, severity: ticket } ]";

/// The processor's config for the demo; `controller` is the rollout controller's webhook URL.
pub(crate) fn config_yaml(controller: &str, archive: &std::path::Path) -> String {
    let tiers = DEMO_TIERS;
    format!(
        r#"
archive: {{ dir: "{}", flush_every: 5s }}
stale: {{ after: 15s, max_lag: 10s }}
kafka: {{ brokers: embedded }}
sinks: [ {{ type: stdout }}, {{ type: kafka }} ]
signing: {{ key: trike-demo-signing-key }}
instance: demo
# Failing requests on the service page link here (a local Jaeger's UI, if one runs).
trace_url_template: "http://127.0.0.1:16686/trace/{{trace_id}}"
# Burn-rate tiers at the demo's scale: a tier fires only once its long window is covered by
# history (90 %), so the workbook's 1h/6h/3d windows would stay silent for the demo's minutes.
slos:
  - {{ name: checkout-availability, service: checkout, objective: 0.999, sli: availability, tiers: {tiers} }}
  - {{ name: checkout-latency, service: checkout, objective: 0.99, sli: {{ latency: {{ threshold_ms: 300 }} }}, tiers: {tiers} }}
canary:
  - {{ service: checkout, baseline: "1.4.0", canary: "1.5.0", window: 1m, min_requests: 300 }}
policies:
  - {{ name: rollback-bad-canary, when: canary.fail, action: rollback, for: 5s, params: {{ weight: 0 }} }}
  - {{ name: page-fast-burn, when: burn_rate.page, action: page }}
  - {{ name: ticket-slow-burn, when: burn_rate.ticket, action: ticket, for: 10s }}
  - {{ name: page-on-stale-telemetry, when: stale, action: page }}
actuator:
  executors:
    - name: rollout-controller
      type: webhook
      actions: [rollback, set_weight]
      url: "{controller}"
      body: '{{"service":"{{{{service}}}}","version":"{{{{version}}}}","action":"{{{{action}}}}","weight":"{{{{params.weight}}}}","event":"{{{{id}}}}"}}'
      timeout: 5s
      retries: 2
    - {{ name: pager, type: log, actions: [page, ticket, freeze_deploys, throttle, resolved] }}
"#,
        archive.display()
    )
}

/// The demo's stand-in for a rollout controller (Argo Rollouts, Flagger): the actuator's
/// webhook sets the canary's traffic weight here, and the synthetic traffic obeys it.
#[derive(Debug)]
pub struct Controller {
    /// The canary's share of traffic, percent.
    pub canary_weight: AtomicU64,
    /// Webhook calls received.
    pub calls: AtomicU64,
}

async fn controller_hook(
    axum::extract::State(c): axum::extract::State<Arc<Controller>>,
    body: String,
) -> &'static str {
    c.calls.fetch_add(1, Relaxed);
    let v: serde_json::Value = serde_json::from_str(&body).unwrap_or_default();
    let weight = v["weight"]
        .as_str()
        .and_then(|w| w.parse::<f64>().ok())
        .unwrap_or(0.0)
        .clamp(0.0, 100.0) as u64;
    c.canary_weight.store(weight, Relaxed);
    println!(
        ">>> actuator → rollout controller: {} {} {} (control event {}); canary traffic now {weight} %\n",
        v["action"].as_str().unwrap_or("?"),
        v["service"].as_str().unwrap_or("?"),
        v["version"].as_str().unwrap_or("?"),
        v["event"].as_str().unwrap_or("?"),
    );
    "ok\n"
}

/// A running demo.
#[derive(Debug)]
pub struct Demo {
    /// The processor.
    pub running: crate::app::Running,
    /// The embedded broker's bootstrap servers.
    pub brokers: String,
    /// The control topic.
    pub control_topic: String,
    /// The rollout controller the actuator calls.
    pub controller: Arc<Controller>,
    /// The demo's archive directory (kept after it ends).
    pub archive: std::path::PathBuf,
    started: Instant,
    stop_tx: watch::Sender<bool>,
    tasks: Vec<JoinHandle<()>>,
    actuator_stop: Arc<AtomicBool>,
    actuator: Option<std::thread::JoinHandle<anyhow::Result<trike_actuate::ActuatorStats>>>,
    actuator_dir: std::path::PathBuf,
}

impl Demo {
    /// Starts everything; the canary degrades `args.degrade_after_s` from now.
    pub async fn start(args: &DemoArgs) -> anyhow::Result<Self> {
        let scenario = args.scenario;
        let controller = Arc::new(Controller {
            canary_weight: AtomicU64::new(scenario.canary_weight()),
            calls: AtomicU64::new(0),
        });
        let (stop_tx, stop_rx) = watch::channel(false);
        let mut tasks = Vec::new();
        let hook = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .context("binding the demo rollout controller")?;
        let hook_url = format!("http://{}/rollout", hook.local_addr()?);
        // The demo's history: kept after it ends, for `trike query --archive` and `trike backtest`.
        let archive =
            std::env::temp_dir().join(format!("trike-demo-archive-{}", std::process::id()));
        let raw =
            RawConfig::from_yaml(&config_yaml(&hook_url, &archive)).map_err(anyhow::Error::msg)?;
        let cfg = Config::validate(raw, &args.addrs.overrides())
            .map_err(|p| anyhow::anyhow!("configuration: {}", p.join("; ")))?;
        let control_topic = cfg.control_topic.clone();
        let keys = cfg.verify_keys();
        let mut actuator_cfg = cfg.actuator.clone();
        let running = crate::app::start(cfg).await?;
        // The dashboard's charts show the demo from its first second.
        running.state.history.pin("checkout");
        let Some(brokers) = running.kafka_brokers.clone() else {
            running.stop().await?;
            anyhow::bail!("the demo's embedded broker did not start");
        };
        // Only the processor runs before this point, and the errors above stop it.
        {
            let router = axum::Router::new()
                .route("/rollout", axum::routing::post(controller_hook))
                .with_state(controller.clone());
            let mut stop = stop_rx.clone();
            tasks.push(tokio::spawn(async move {
                let _ = axum::serve(hook, router)
                    .with_graceful_shutdown(async move {
                        let _ = stop.wait_for(|s| *s).await;
                    })
                    .await;
            }));
        }

        // The actuator, as `trike actuate` runs it, against the same broker. Its executed-id
        // record is this demo's own (several demos may run in one process, e.g. tests).
        static DEMOS: AtomicU64 = AtomicU64::new(0);
        let actuator_dir = std::env::temp_dir().join(format!(
            "trike-demo-actuator-{}-{}",
            std::process::id(),
            DEMOS.fetch_add(1, Relaxed)
        ));
        let _ = std::fs::remove_dir_all(&actuator_dir);
        actuator_cfg.state_dir = actuator_dir.clone();
        let settings = ActuatorSettings {
            brokers: brokers.clone(),
            control_topic: control_topic.clone(),
            keys,
            instance: "demo-actuator".into(),
            actuator: actuator_cfg,
            client: Default::default(),
        };
        let actuator_stop = Arc::new(AtomicBool::new(false));
        let spawned = {
            let stop = actuator_stop.clone();
            std::thread::Builder::new()
                .name("trike-demo-actuator".into())
                .spawn(move || trike_actuate::run(settings, stop))
        };
        let actuator = match spawned {
            Ok(a) => a,
            Err(e) => {
                let _ = stop_tx.send(true);
                for t in tasks {
                    let _ = t.await;
                }
                running.stop().await?;
                return Err(e).context("starting the actuator");
            }
        };

        let started = Instant::now();
        let degrade_after = Duration::from_secs(args.degrade_after_s);
        let url = format!("http://{}/v1/traces", running.http_addr);
        let client = reqwest::Client::new();
        for (version, canary) in [("1.4.0", false), ("1.5.0", true)] {
            let (client, url, mut stop) = (client.clone(), url.clone(), stop_rx.clone());
            let controller = controller.clone();
            let mut traffic = Traffic::new(scenario, version, canary, degrade_after);
            tasks.push(tokio::spawn(async move {
                let mut tick = tokio::time::interval(TICK);
                loop {
                    tokio::select! {
                        _ = tick.tick() => {}
                        _ = stop.wait_for(|s| *s) => return,
                    }
                    let (request, began) = traffic.tick(
                        started.elapsed(),
                        trike_runtime::clock::now_nanos(),
                        controller.canary_weight.load(Relaxed),
                    );
                    if began && !canary {
                        println!(">>> {}\n", scenario.story());
                    }
                    let Some(request) = request else { continue };
                    let sent = client
                        .post(&url)
                        .header("content-type", "application/x-protobuf")
                        .body(request.encode_to_vec())
                        .send()
                        .await;
                    if let Err(e) = sent {
                        eprintln!("synthetic {version}: export failed: {e}");
                    }
                }
            }));
        }
        Ok(Self {
            running,
            brokers,
            control_topic,
            controller,
            archive,
            started,
            stop_tx,
            tasks,
            actuator_stop,
            actuator: Some(actuator),
            actuator_dir,
        })
    }

    /// Prints the addresses and what to try.
    pub fn print_banner(&self, args: &DemoArgs) {
        let r = &self.running;
        let admin = r.admin_addr;
        println!("Trike demo — open the dashboard: http://{admin}/");
        println!(
            "  OTLP/gRPC  {}   OTLP/HTTP  http://{}   admin  http://{admin}",
            r.grpc_addr, r.http_addr
        );
        println!(
            "  Kafka      {} (embedded broker; control events on {}, outcomes on trike.actions)",
            self.brokers, self.control_topic
        );
        println!("  SLIs:      curl 'http://{admin}/api/v1/slis?service=checkout&window=1m'");
        println!("  SLOs:      curl http://{admin}/api/v1/slos");
        println!(
            "  decisions: curl http://{admin}/api/v1/decisions   (control events also print below as JSON lines)"
        );
        println!("  metrics:   curl http://{admin}/metrics");
        println!(
            "  SQL:       cargo run --release -- query --admin-addr {admin} \"SELECT service, version, time_window, requests, error_ratio, p99_ms FROM slis WHERE time_window = '1m'\""
        );
        let weight = args.scenario.canary_weight();
        println!(
            "Scenario {:?}: checkout 1.4.0 ({} req/s) and 1.5.0 (canary, {} req/s); after {} s, {}.",
            args.scenario,
            PER_TICK as u64 * (100 - weight) / 10,
            PER_TICK as u64 * weight / 10,
            args.degrade_after_s,
            args.scenario.story()
        );
        println!("  dashboard: http://{admin}/");
        println!(
            "An actuator consumes {} and rolls the canary back through a webhook when Trike decides to.\n",
            self.control_topic
        );
    }

    /// Prints the SLIs every 5 s until stopped.
    pub fn spawn_printer(&mut self) {
        let admin = self.running.admin_addr;
        let started = self.started;
        let mut stop = self.stop_tx.subscribe();
        self.tasks.push(tokio::spawn(async move {
            let client = reqwest::Client::new();
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
        }));
    }

    /// Stops the actuator (while the controller it calls still answers), then the traffic,
    /// the controller and the printer, then the processor and the broker.
    pub async fn stop(mut self) -> anyhow::Result<()> {
        self.actuator_stop.store(true, Relaxed);
        if let Some(a) = self.actuator.take() {
            match tokio::task::spawn_blocking(move || a.join()).await {
                Ok(Ok(Ok(stats))) => tracing::info!(?stats, "demo actuator stopped"),
                Ok(Ok(Err(e))) => eprintln!("demo actuator: {e:#}"),
                _ => eprintln!("demo actuator: panicked"),
            }
        }
        let _ = self.stop_tx.send(true);
        for t in self.tasks.drain(..) {
            let _ = t.await;
        }
        let _ = std::fs::remove_dir_all(&self.actuator_dir);
        self.running.stop().await
    }
}

/// Runs the demo until Ctrl-C or `--duration-s`.
pub async fn run(args: DemoArgs) -> anyhow::Result<()> {
    let mut demo = Demo::start(&args).await?;
    demo.print_banner(&args);
    demo.spawn_printer();
    let limit = args.duration_s.map(Duration::from_secs);
    tokio::select! {
        _ = crate::app::shutdown_signal() => println!("\nstopping (press Ctrl-C again to exit at once)"),
        name = demo.running.any_task_ended() => eprintln!("a component stopped ({name}): stopping"),
        _ = async { match limit { Some(d) => tokio::time::sleep(d).await, None => std::future::pending().await } } => {}
    }
    // A second Ctrl-C while stopping exits at once.
    let force = tokio::spawn(async {
        if tokio::signal::ctrl_c().await.is_ok() {
            eprintln!("second Ctrl-C: exiting");
            std::process::exit(130);
        }
    });
    let archive = demo.archive.clone();
    let result = demo.stop().await;
    force.abort();
    if result.is_ok() {
        println!(
            "This run's history is in {0}; for example:\n  cargo run --release -- query --archive {0} \"SELECT time, action, reason FROM archive_decisions\"",
            archive.display()
        );
    }
    result
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
        // The largest of the routes' quantiles: an upper bound (the API has exact per-series values).
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
