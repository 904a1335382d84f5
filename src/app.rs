//! Wiring: binds the listeners, starts the engine thread, the receivers and the admin API,
//! and stops them all on shutdown (every task is joined).

use crate::admin::{self, AdminState};
use crate::config::Config;
use crate::config::fleet::{AckMode, Role};
use crate::embedded_broker::EmbeddedBroker;
use anyhow::Context;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering::Relaxed};
use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio::task::JoinHandle;
use trike_ingest::kafka::progress::Progress;
use trike_ingest::listen::{ConnStats, ListenOptions, Listener};
use trike_ingest::serve_http;
use trike_ingest::tls::{Alpn, ClientCerts};
use trike_ingest::{IngestMetrics, Pipeline};
use trike_runtime::fleet::changelog::Changelog;
use trike_runtime::fleet::members::{Member, Members};
use trike_runtime::fleet::owner::{ChangelogHook, FleetLog, Owner};
use trike_runtime::hooks::archive::Archiver;
use trike_runtime::hooks::checkpoint::Checkpointer;
use trike_runtime::hooks::decide::Decider;
use trike_runtime::hooks::outbox::{DecisionStore, Outbox};
use trike_runtime::sink_writer::SinkWriter;
use trike_runtime::worker::EngineWorker;
use trike_runtime::{Shard, SystemClock};

/// A running processor.
#[derive(Debug)]
pub struct Running {
    /// Bound OTLP/gRPC address (`0.0.0.0:0` for a processor, which opens no OTLP port).
    pub grpc_addr: SocketAddr,
    /// Bound OTLP/HTTP address (`0.0.0.0:0` for a processor).
    pub http_addr: SocketAddr,
    /// Bound admin address.
    pub admin_addr: SocketAddr,
    /// Shared with the admin handlers.
    pub state: Arc<AdminState>,
    /// The Kafka bootstrap servers in use (the embedded broker's address when
    /// `kafka.brokers: embedded`).
    pub kafka_brokers: Option<String>,
    shutdown: watch::Sender<bool>,
    tasks: Vec<(&'static str, JoinHandle<anyhow::Result<()>>)>,
    /// The engine thread: owned here, so stopping always runs its hooks' finish.
    worker: Option<EngineWorker>,
    sinks: Option<SinkWriter>,
    kafka_source: Option<trike_ingest::kafka::KafkaSource>,
    /// Stopped last, after every Kafka client.
    embedded_broker: Option<EmbeddedBroker>,
    /// Stopped after the engine thread (which feeds it); writes what it buffered.
    archive: Option<trike_sql::archive::ArchiveWriter>,
    /// A gateway's partials publisher: stopped after the receivers, so what they accepted is
    /// published.
    gateway: Option<trike_runtime::fleet::gateway::Gateway>,
    /// The fleet's directory: stopped first (a tombstone), so the others stop routing here.
    members: Option<Arc<Members>>,
    /// The deploy events reader: given a moment at shutdown, not waited for (it may still be
    /// creating its topic on a broker that does not answer).
    deploys: Option<JoinHandle<anyhow::Result<()>>>,
    /// The actuators' outcome reader (the loop's metrics): like the deploy reader.
    outcomes: Option<JoinHandle<anyhow::Result<()>>>,
}

/// How long open HTTP requests may take to finish at shutdown.
const DRAIN: std::time::Duration = std::time::Duration::from_secs(10);

async fn bind(addr: SocketAddr, what: &str, flag: &str) -> anyhow::Result<TcpListener> {
    TcpListener::bind(addr).await.with_context(|| {
        format!(
            "cannot listen on {addr} for {what}: is another process using it? Change it with {flag}"
        )
    })
}

fn signal(rx: &watch::Receiver<bool>) -> impl std::future::Future<Output = ()> + Send + 'static {
    let mut rx = rx.clone();
    async move {
        let _ = rx.wait_for(|stop| *stop).await;
    }
}

fn kafka_sink_config(cfg: &Config) -> Option<trike_sinks::kafka::KafkaSinkConfig> {
    Some(trike_sinks::kafka::KafkaSinkConfig {
        brokers: cfg.kafka_brokers.clone()?,
        topic: cfg.control_topic.clone(),
        partitions: cfg.control_partitions,
        replication: cfg.control_replication,
        client: cfg.kafka_client.clone(),
    })
}

/// Resolves on Ctrl-C or, on Unix, SIGTERM.
pub async fn shutdown_signal() {
    #[cfg(unix)]
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending().await,
        }
    };
    #[cfg(not(unix))]
    let term = std::future::pending::<()>();
    tokio::select! {
        _ = tokio::signal::ctrl_c() => tracing::info!("Ctrl-C: shutting down"),
        _ = term => tracing::info!("SIGTERM: shutting down"),
    }
}

/// How often the config file is checked for a change.
const RELOAD_POLL: std::time::Duration = std::time::Duration::from_secs(2);

/// Reloads the rule set on `SIGHUP` and when the config file's content changes (a
/// Kubernetes ConfigMap update swaps the file), until the shutdown signal.
async fn watch_for_reloads(
    r: Arc<crate::reload::Reloader>,
    mut stop: watch::Receiver<bool>,
) -> anyhow::Result<()> {
    #[cfg(unix)]
    let mut hup = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup())
        .context("listening for SIGHUP")?;
    let mut tick = tokio::time::interval(RELOAD_POLL);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        #[cfg(unix)]
        let hup_recv = hup.recv();
        #[cfg(not(unix))]
        let hup_recv = std::future::pending::<Option<()>>();
        let trigger = tokio::select! {
            _ = stop.wait_for(|s| *s) => None,
            _ = hup_recv => Some("SIGHUP"),
            _ = tick.tick() => Some(""),
        };
        let trigger = match trigger {
            None => return Ok(()),
            Some("") => {
                let r = r.clone();
                if !tokio::task::spawn_blocking(move || r.file_changed())
                    .await
                    .unwrap_or(false)
                {
                    continue;
                }
                "the config file changed"
            }
            Some(t) => t,
        };
        let r = r.clone();
        // (The outcome is logged and counted by the reloader.)
        let _ = tokio::task::spawn_blocking(move || r.reload(trigger)).await;
    }
}

/// Starts everything `cfg` describes.
pub async fn start(mut cfg: Config) -> anyhow::Result<Running> {
    let embedded_broker = EmbeddedBroker::for_config(&mut cfg)?;
    let role = cfg.fleet.role;
    if role == Role::Gateway && (cfg.state_dir.is_some() || cfg.archive.is_some()) {
        // A gateway keeps no state: its partials are on the broker, SLIs are the processors'.
        tracing::info!("gateway: state.dir and archive are the processors' (ignored here)");
        cfg.state_dir = None;
        cfg.archive = None;
    }
    if role == Role::Processor && cfg.state_dir.is_some() {
        // A processor's state is per partition, on the changelog topic, so that whichever
        // processor owns a partition next resumes it.
        tracing::info!(topic = %cfg.fleet.changelog_topic, "processor: state lives on the changelog topic (state.dir ignored)");
        cfg.state_dir = None;
    }
    // A processor reads partials from Kafka: it opens no OTLP port (DESIGN §6).
    let receives = role != Role::Processor;
    let (grpc, http) = if receives {
        (
            Some(bind(cfg.grpc_addr, "OTLP/gRPC", "--otlp-grpc-addr").await?),
            Some(bind(cfg.http_addr, "OTLP/HTTP", "--otlp-http-addr").await?),
        )
    } else {
        (None, None)
    };
    let admin_l = bind(cfg.admin_addr, "the admin API", "--admin-addr").await?;
    let unbound = SocketAddr::from(([0, 0, 0, 0], 0));
    let (grpc_addr, http_addr, admin_addr) = (
        grpc.as_ref().map_or(Ok(unbound), TcpListener::local_addr)?,
        http.as_ref().map_or(Ok(unbound), TcpListener::local_addr)?,
        admin_l.local_addr()?,
    );

    // TLS and the connection limits, per listener (DESIGN §7, §8).
    let listener_stats: Vec<(&'static str, Arc<ConnStats>)> = ["otlp_grpc", "otlp_http", "admin"]
        .into_iter()
        .map(|n| (n, Arc::new(ConnStats::default())))
        .collect();
    let listen = |tcp: TcpListener, i: usize, certs: ClientCerts, alpn: Alpn| {
        let opts = ListenOptions {
            tls: None,
            max_connections: cfg.limits.max_connections,
            handshake_timeout: cfg.limits.header_read_timeout,
        }
        .with_tls(cfg.tls.as_ref(), certs, alpn)
        .map_err(anyhow::Error::from)?;
        Listener::new(tcp, opts, listener_stats[i].1.clone()).map_err(anyhow::Error::from)
    };
    let grpc = grpc
        .map(|l| listen(l, 0, ClientCerts::Required, Alpn::H2))
        .transpose()?;
    let http = http
        .map(|l| listen(l, 1, ClientCerts::Required, Alpn::Http))
        .transpose()?;
    let admin_l = listen(admin_l, 2, ClientCerts::Optional, Alpn::Http)?;
    if let Some(t) = &cfg.tls {
        tracing::info!(
            mtls = t.client_ca_file.is_some(),
            "OTLP/gRPC, OTLP/HTTP and the admin API are served over TLS"
        );
    }

    let store = Arc::new(DecisionStore::default());
    let (sinks, events) = SinkWriter::start(&cfg.sinks, kafka_sink_config(&cfg), store.clone())
        .context("opening the sinks")?;
    let key = cfg.signing_key();
    if key.is_some() {
        tracing::info!("control events are signed (trikesignature, HMAC-SHA256)");
    }
    let archive = match &cfg.archive {
        Some(a) => {
            let w = trike_sql::archive::ArchiveWriter::start(a.clone())
                .with_context(|| format!("archive.dir {}", a.dir.display()))?;
            // The rule set beside the decisions it makes, so an audit can read it.
            admin::revisions::archive(&a.dir, &cfg.policy.revision, &cfg.rule_set).with_context(
                || format!("writing the rule set to archive.dir {}", a.dir.display()),
            )?;
            Some(w)
        }
        None => None,
    };
    tracing::info!(revision = %cfg.policy.revision, "rule set (GET /api/v1/revisions/{{revision}})");
    let mut decider = Decider::new(cfg.decide_spec(), store.clone());
    let mut outbox = Outbox::new(
        &cfg.instance,
        key,
        store.clone(),
        events,
        cfg.state_dir.clone(),
    );
    if let Some(a) = &archive {
        outbox = outbox.with_archive(a.handle());
    }
    let silences = Arc::new(
        trike_runtime::silences::Silences::open(cfg.state_dir.as_deref())
            .context("reading the silences in state.dir")?,
    );
    silences.set_maintenance(cfg.maintenance.clone());
    outbox = outbox.with_silences(silences.clone());
    let engine_cfg = Arc::new(cfg.engine.clone());
    let mut engine = trike_engine::Engine::new(engine_cfg.clone());
    // A processor's commits wait for its changelog like a single process's for its checkpoint.
    let mut progress = Progress::new(cfg.state_dir.is_some() || role == Role::Processor);
    if let Some(dir) = &cfg.state_dir {
        if let Some(c) = trike_runtime::checkpoint::load_engine(dir)? {
            engine = trike_engine::Engine::restore(engine_cfg, c.engine)
                .with_context(|| format!("restoring the engine checkpoint in {}", dir.display()))?;
            tracing::info!(dir = %dir.display(), series = engine.series_count(), partitions = c.offsets.len(), forecasts = c.forecasts.models.len(), "engine state restored from its checkpoint");
            progress = Progress::restored(&c.offsets);
            decider.watch().lock().merge(c.watch);
            decider.forecasts().lock().merge(c.forecasts);
        }
        if let Some(c) = trike_runtime::checkpoint::load_policy(dir)? {
            decider.restore(c.policy);
            outbox.restore(c.outbox);
        }
    }
    let progress = Arc::new(progress);
    let memory = Arc::new(trike_ingest::memory::MemoryLimiter::new(cfg.memory_limit));
    memory
        .start_sampling()
        .context("starting the memory limiter")?;
    let mut shard = Shard::new(engine, Arc::new(SystemClock)).with_memory_limiter(memory.clone());
    // A processor explains its services' root causes to the others, and reads theirs.
    let cause_log = match (role, cfg.kafka_brokers.as_deref()) {
        (Role::Processor, Some(brokers)) => {
            let causes = Arc::new(parking_lot::Mutex::new(Default::default()));
            decider = decider.with_causes(causes.clone());
            let f = &cfg.fleet;
            let log = trike_runtime::fleet::cause_log::CauseLog::start(
                brokers,
                &cfg.kafka_client,
                &f.causes_topic,
                f.replication,
                causes,
            );
            Some(Arc::new(log.with_context(|| {
                format!("reading the causes topic {}", f.causes_topic)
            })?))
        }
        _ => None,
    };
    let owner = match role {
        Role::Processor => {
            let o = start_owner(&cfg, &shard, &decider, &progress)?;
            outbox = outbox.with_log(Box::new(FleetLog(o.clone())));
            Some(o)
        }
        Role::All | Role::Gateway => None,
    };
    let policy = (role != Role::Gateway).then(|| decider.policy());
    let anomaly_watch = (role != Role::Gateway).then(|| decider.watch());
    let forecasts = (role != Role::Gateway).then(|| decider.forecasts());
    let (decide_rules, reload_policy) = (decider.rules(), decider.policy());
    let learned = (decider.watch(), decider.forecasts());
    shard = shard.with_hook(decider).with_hook(outbox);
    if let Some(o) = &owner {
        let every = std::time::Duration::from_secs(cfg.checkpoint_every.secs());
        shard = shard.with_hook(
            ChangelogHook::start(o.clone(), every).context("starting the changelog writer")?,
        );
    }
    let mut checkpoint_stats = None;
    if let Some(dir) = &cfg.state_dir {
        let every = std::time::Duration::from_secs(cfg.checkpoint_every.secs());
        let c = Checkpointer::start(dir.clone(), every, Some(progress.clone()))
            .with_context(|| format!("state.dir {}", dir.display()))?
            .with_models(learned.0.clone(), learned.1.clone());
        checkpoint_stats = Some(c.stats.clone());
        shard = shard.with_hook(c);
    }
    if let Some(a) = &archive {
        shard = shard.with_hook(Archiver::new(a.handle(), cfg.archive_sample_observations));
    }
    let worker =
        EngineWorker::start(shard, cfg.queue_observations).context("starting the engine thread")?;
    let ingest = Arc::new(IngestMetrics::default());
    let auth_stats = Arc::new(trike_ingest::auth::AuthStats::default());
    let ingest_auth = trike_ingest::auth::IngestAuth {
        tokens: Arc::new(cfg.auth.ingest.clone()),
        stats: auth_stats.clone(),
    };
    // A gateway's receivers feed the partials publisher; every other role feeds the engine.
    let gateway = match role {
        Role::Gateway => Some(start_gateway(&cfg)?),
        Role::All | Role::Processor => None,
    };
    let sink: Arc<dyn trike_ingest::BatchSink> = match &gateway {
        Some(g) => g.sink(),
        None => worker.sink(),
    };
    let forwarder = if cfg.forward.is_empty() {
        None
    } else {
        Some(
            crate::forward::Forwarder::start(&cfg.forward)
                .context("forward: starting the next hops' senders")?,
        )
    };
    let base_pipeline = Pipeline::new(Arc::new(cfg.decode.clone()), sink, ingest.clone())
        .with_inflight_budget(cfg.limits.inflight_bytes)
        .with_memory_limiter(memory.clone())
        .with_durable_ack(gateway.is_some() && cfg.fleet.ack == AckMode::Durable);
    let pipeline = Arc::new(match &forwarder {
        Some(f) => base_pipeline.with_forward(f.clone()),
        None => base_pipeline,
    });
    let pipeline_for_kafka = pipeline.clone();
    let members = match role {
        Role::All => None,
        Role::Gateway | Role::Processor => Some(start_members(
            &cfg,
            admin_addr,
            owner.clone(),
            progress.clone(),
        )?),
    };
    let rules = Arc::new(parking_lot::RwLock::new(Arc::new(admin::RuleSet {
        slos: cfg.slos.clone(),
        canaries: cfg.canaries.clone(),
        revision: cfg.policy.revision.clone(),
        rule_set: cfg.rule_set.clone(),
    })));
    let reloader = crate::reload::Reloader::new(
        &cfg,
        crate::reload::Targets {
            engine: worker.handle().engine().clone(),
            decide: decide_rules,
            policy: reload_policy,
            rules: rules.clone(),
            silences: silences.clone(),
        },
    )
    .map(Arc::new);
    // A fleet's silences live on a compacted topic every member reads.
    let silence_log = match (&members, cfg.kafka_brokers.as_deref()) {
        (Some(_), Some(brokers)) => Some(
            trike_runtime::fleet::silence_log::SilenceLog::start(
                brokers,
                &cfg.kafka_client,
                &cfg.fleet.silences_topic,
                cfg.fleet.replication,
                silences.clone(),
            )
            .with_context(|| format!("reading the silences topic {}", cfg.fleet.silences_topic))?,
        ),
        _ => None,
    };
    let state = Arc::new(AdminState {
        worker: worker.handle(),
        ingest,
        ready: AtomicBool::new(false),
        metrics_windows: cfg.metrics_windows.clone(),
        metrics_max_services: cfg.metrics_max_services,
        rules: rules.clone(),
        history: Default::default(),
        archive: archive
            .as_ref()
            .zip(cfg.archive.as_ref())
            .map(|(w, c)| (c.dir.clone(), w.handle().stats)),
        decisions: store,
        kafka_source: Default::default(),
        checkpoints: checkpoint_stats,
        reloader: reloader.clone(),
        query: admin::query::QueryService::new(cfg.query).context("starting the query threads")?,
        inflight: pipeline.inflight().clone(),
        auth: admin::auth::AdminAuth::new(&cfg.auth.admin_read, &cfg.auth.admin_write, auth_stats)
            .with_client_certs(cfg.tls.as_ref().is_some_and(|t| t.client_ca_file.is_some())),
        listeners: listener_stats.clone(),
        memory: Some(memory),
        gateway: gateway.as_ref().map(|g| g.stats()),
        changelog: owner.as_ref().map(|o| o.changelog().stats.clone()),
        fleet: match members.clone() {
            Some(m) => {
                let client = admin::fleet::member_client(cfg.tls.as_ref(), &cfg.fleet)
                    .context("fleet: the client that asks other members")?;
                Some(Arc::new(admin::fleet::FleetView::new(m, client)))
            }
            None => None,
        },
        role,
        policy,
        deploys: Default::default(),
        silences: silences.clone(),
        trace_url_template: cfg.trace_url_template.clone(),
        silence_log,
        cause_log,
        watch: anomaly_watch,
        forecasts,
        forward: forwarder.clone(),
        costs: cfg.costs.clone(),
    });
    let (tx, rx) = watch::channel(false);
    let mut tasks: Vec<(&'static str, JoinHandle<anyhow::Result<()>>)> = Vec::new();
    if let Some(grpc) = grpc {
        let (p, stop) = (pipeline.clone(), signal(&rx));
        let (limits, auth) = (cfg.limits, ingest_auth.clone());
        tasks.push((
            "otlp-grpc",
            tokio::spawn(async move {
                trike_ingest::grpc::serve(grpc, p, limits, auth, stop)
                    .await
                    .context("OTLP/gRPC receiver")
            }),
        ));
    }
    if let Some(http) = http {
        let router = trike_ingest::http::router(pipeline, cfg.limits, ingest_auth);
        let stop = signal(&rx);
        let header_timeout = cfg.limits.header_read_timeout;
        tasks.push((
            "otlp-http",
            tokio::spawn(async move {
                serve_http::serve(http, router, header_timeout, DRAIN, stop).await;
                Ok(())
            }),
        ));
    }
    {
        let router = admin::router(state.clone());
        let stop = signal(&rx);
        let header_timeout = cfg.limits.header_read_timeout;
        tasks.push((
            "admin",
            tokio::spawn(async move {
                serve_http::serve(admin_l, router, header_timeout, DRAIN, stop).await;
                Ok(())
            }),
        ));
    }
    {
        // The dashboard's history: a sample of every service version's SLIs every 2 s.
        let (state, mut stop) = (state.clone(), rx.clone());
        tasks.push((
            "history",
            tokio::spawn(async move {
                let mut tick = tokio::time::interval(crate::admin::history::STEP);
                // A slow sample delays the next one instead of bunching them up.
                tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
                loop {
                    tokio::select! {
                        _ = tick.tick() => {}
                        _ = stop.wait_for(|s| *s) => return Ok(()),
                    }
                    let state = state.clone();
                    tokio::task::spawn_blocking(move || {
                        state.history.sample(&state.worker.engine().lock());
                    })
                    .await
                    .context("history sampler")?;
                }
            }),
        ));
    }
    if let Some(r) = reloader.clone() {
        tasks.push(("reload", tokio::spawn(watch_for_reloads(r, rx.clone()))));
    }
    let deploys = match (cfg.kafka_brokers.clone(), role) {
        (Some(brokers), Role::All | Role::Processor) => {
            Some(start_deploys(&cfg, &brokers, &state, &rx)?)
        }
        _ => None,
    };
    let outcomes = match (cfg.kafka_brokers.clone(), role) {
        (Some(brokers), Role::All | Role::Processor) => {
            Some(start_outcomes(&cfg, &brokers, &state, &rx)?)
        }
        _ => None,
    };
    let kafka_source = match cfg.kafka_ingest.clone() {
        None => None,
        Some(kc) => {
            let topics = kc.topics.join(", ");
            let src = trike_ingest::kafka::KafkaSource::start_owned(
                kc,
                pipeline_for_kafka.clone(),
                progress.clone(),
                owner
                    .clone()
                    .map(|o| o as Arc<dyn trike_ingest::kafka::PartitionOwner>),
            )
            .context("starting the Kafka source")?;
            tracing::info!(%topics, "consuming OTLP from Kafka");
            *state.kafka_source.lock() = Some((src.stats.clone(), src.progress.clone()));
            Some(src)
        }
    };
    state.ready.store(true, Relaxed);
    if receives {
        tracing::info!(role = role.name(), %grpc_addr, %http_addr, %admin_addr, "Trike is listening");
    } else {
        tracing::info!(role = role.name(), %admin_addr, "Trike is listening (a processor opens no OTLP port)");
    }
    Ok(Running {
        grpc_addr,
        http_addr,
        admin_addr,
        state,
        kafka_brokers: cfg.kafka_brokers.clone(),
        shutdown: tx,
        tasks,
        worker: Some(worker),
        sinks: Some(sinks),
        kafka_source,
        embedded_broker,
        archive,
        gateway,
        members,
        deploys,
        outcomes,
    })
}

/// Reads deploy events (on a blocking thread, which first creates the topic when it is
/// missing) until the shutdown signal.
fn start_deploys(
    cfg: &Config,
    brokers: &str,
    state: &Arc<AdminState>,
    stop: &watch::Receiver<bool>,
) -> anyhow::Result<JoinHandle<anyhow::Result<()>>> {
    use rdkafka::consumer::Consumer;
    let topic = cfg.deploys_topic.clone();
    let t = trike_sinks::kafka::KafkaSinkConfig {
        brokers: brokers.to_string(),
        topic: topic.clone(),
        partitions: 1,
        replication: cfg.control_replication,
        client: cfg.kafka_client.clone(),
    };
    let consumer: rdkafka::consumer::BaseConsumer = cfg
        .kafka_client
        .apply(
            rdkafka::ClientConfig::new()
                .set("bootstrap.servers", brokers)
                .set("group.id", &cfg.deploys_group)
                .set("enable.auto.commit", "false")
                .set("auto.offset.reset", "earliest"),
        )
        .create()
        .context("the deploy events consumer")?;
    let deploys = crate::deploys::Deploys {
        consumer,
        max_age: cfg.deploys_max_age,
        state: state.clone(),
        token: cfg.auth.member_token.clone(),
        stats: state.deploys.clone(),
    };
    let group = cfg.deploys_group.clone();
    let (rt, stop) = (tokio::runtime::Handle::current(), stop.clone());
    let flag = stop_flag(stop);
    Ok(tokio::task::spawn_blocking(move || {
        if let Err(e) = trike_sinks::kafka::ensure_topic(&t) {
            tracing::warn!(%topic, error = %e, "the deploys topic could not be created; reading it once it exists");
        }
        deploys
            .consumer
            .subscribe(&[&topic])
            .with_context(|| format!("subscribing to {topic}"))?;
        tracing::info!(%topic, %group, "reading deploy events");
        deploys.run(rt, &flag);
        Ok(())
    }))
}

/// A flag set once the shutdown signal comes, for a blocking loop to poll.
fn stop_flag(stop: watch::Receiver<bool>) -> Arc<AtomicBool> {
    let flag = Arc::new(AtomicBool::new(false));
    let set = flag.clone();
    tokio::spawn(async move {
        let mut stop = stop;
        let _ = stop.wait_for(|s| *s).await;
        set.store(true, Relaxed);
    });
    flag
}

/// Reads the actuators' outcome events for the loop's metrics (on a blocking thread) until
/// the shutdown signal.
fn start_outcomes(
    cfg: &Config,
    brokers: &str,
    state: &Arc<AdminState>,
    stop: &watch::Receiver<bool>,
) -> anyhow::Result<JoinHandle<anyhow::Result<()>>> {
    use rdkafka::consumer::Consumer;
    let topic = cfg.actuator.actions_topic.clone();
    let group = format!("trike-loop-{}", cfg.instance);
    let consumer: rdkafka::consumer::BaseConsumer = cfg
        .kafka_client
        .apply(
            rdkafka::ClientConfig::new()
                .set("bootstrap.servers", brokers)
                .set("group.id", &group)
                .set("enable.auto.commit", "true")
                // From the start at the group's first read: outcomes of decisions not made by
                // this process are ignored anyway, and none written before the group's
                // partitions are assigned is missed.
                .set("auto.offset.reset", "earliest")
                .set("topic.metadata.refresh.interval.ms", "2000"),
        )
        .create()
        .context("the outcome events consumer")?;
    let (state, stop) = (state.clone(), stop.clone());
    let flag = stop_flag(stop);
    Ok(tokio::task::spawn_blocking(move || {
        consumer
            .subscribe(&[&topic])
            .with_context(|| format!("subscribing to {topic}"))?;
        tracing::info!(%topic, %group, "reading outcome events for the loop's metrics");
        crate::outcomes::run(consumer, state, &flag);
        Ok(())
    }))
}

/// Advertises this member on the fleet's directory topic and reads the others'.
fn start_members(
    cfg: &Config,
    admin_addr: SocketAddr,
    owner: Option<Arc<Owner>>,
    progress: Arc<Progress>,
) -> anyhow::Result<Arc<Members>> {
    let brokers = cfg
        .kafka_brokers
        .clone()
        .context("a fleet member needs kafka.brokers")?;
    let url = cfg.fleet.advertise_url.clone().unwrap_or_else(|| {
        let scheme = if cfg.tls.is_some() { "https" } else { "http" };
        if admin_addr.ip().is_unspecified() {
            format!("{scheme}://{}:{}", cfg.instance, admin_addr.port())
        } else {
            format!("{scheme}://{admin_addr}")
        }
    });
    let (instance, role) = (cfg.instance.clone(), cfg.fleet.role.name().to_string());
    tracing::info!(%url, topic = %cfg.fleet.members_topic, "advertising this member to the fleet");
    Members::start(
        &brokers,
        &cfg.kafka_client,
        &cfg.fleet.members_topic,
        cfg.fleet.replication,
        Arc::new(SystemClock),
        move || {
            let (partitions, total, lag) = match &owner {
                Some(o) => (
                    o.owned(),
                    o.partitions(),
                    progress
                        .lag()
                        .iter()
                        .filter(|(t, _, _)| t == o.topic())
                        .map(|(_, _, l)| l)
                        .sum(),
                ),
                None => (Vec::new(), 0, 0),
            };
            Member {
                url: url.clone(),
                instance: instance.clone(),
                role: role.clone(),
                partitions,
                partitions_total: total,
                lag,
                at_ms: 0,
            }
        },
    )
    .with_context(|| format!("joining the fleet's directory {}", cfg.fleet.members_topic))
}

/// A processor's partition owner: the partials topic (created like the gateways create it, so
/// either may start first) and the compacted changelog (DESIGN §6).
fn start_owner(
    cfg: &Config,
    shard: &Shard,
    decider: &Decider,
    progress: &Arc<Progress>,
) -> anyhow::Result<Arc<Owner>> {
    let brokers = cfg
        .kafka_brokers
        .clone()
        .context("a processor needs kafka.brokers")?;
    let f = &cfg.fleet;
    trike_sinks::kafka::ensure_topic(&trike_sinks::kafka::KafkaSinkConfig {
        brokers: brokers.clone(),
        topic: f.partials_topic.clone(),
        partitions: f.partitions,
        replication: f.replication,
        client: cfg.kafka_client.clone(),
    })
    .with_context(|| format!("creating {}", f.partials_topic))?;
    let changelog = Changelog::open(
        &brokers,
        &cfg.kafka_client,
        &f.changelog_topic,
        f.partitions,
        f.replication,
    )
    .with_context(|| format!("opening the changelog {}", f.changelog_topic))?;
    let partitions = changelog
        .partitions_of(&f.partials_topic)
        .map_err(anyhow::Error::msg)?;
    tracing::info!(topic = %f.partials_topic, partitions, changelog = %f.changelog_topic, "processor: services map to the partials topic's partitions");
    Ok(Arc::new(
        Owner::new(
            &f.partials_topic,
            partitions,
            shard.writer(),
            decider.policy(),
            decider.watch(),
            progress.clone(),
            Arc::new(changelog),
        )
        .with_forecasts(decider.forecasts()),
    ))
}

/// A gateway's publisher of partials (DESIGN §6).
fn start_gateway(cfg: &Config) -> anyhow::Result<trike_runtime::fleet::gateway::Gateway> {
    let brokers = cfg
        .kafka_brokers
        .clone()
        .context("a gateway needs kafka.brokers")?;
    let g = trike_runtime::fleet::gateway::Gateway::start(
        trike_runtime::fleet::gateway::GatewayConfig {
            brokers,
            topic: cfg.fleet.partials_topic.clone(),
            partitions: cfg.fleet.partitions,
            replication: cfg.fleet.replication,
            client: cfg.kafka_client.clone(),
            flush_interval: cfg.fleet.flush_interval,
            instance: cfg.instance.clone(),
            max_unacked: cfg.queue_observations,
            engine: Arc::new(cfg.engine.clone()),
        },
        Arc::new(SystemClock),
    )
    .with_context(|| {
        format!(
            "starting the gateway's producer for {}",
            cfg.fleet.partials_topic
        )
    })?;
    Ok(g)
}

impl Running {
    /// Stops receiving, joins every task, then stops the engine thread.
    pub async fn stop(mut self) -> anyhow::Result<()> {
        self.state.ready.store(false, Relaxed);
        if let Some(m) = self.members.take() {
            tokio::task::spawn_blocking(move || m.stop()).await.ok();
        }
        if let Some(l) = self.state.silence_log.clone() {
            tokio::task::spawn_blocking(move || l.stop()).await.ok();
        }
        if let Some(l) = self.state.cause_log.clone() {
            tokio::task::spawn_blocking(move || l.stop()).await.ok();
        }
        let _ = self.shutdown.send(true);
        for d in [self.deploys.take(), self.outcomes.take()]
            .into_iter()
            .flatten()
        {
            let _ = tokio::time::timeout(std::time::Duration::from_secs(2), d).await;
        }
        // A gateway's source is stopped after the gateway (below), so what it read and the
        // gateway published is committed; otherwise the source stops first.
        if self.gateway.is_none()
            && let Some(src) = self.kafka_source.take()
        {
            // Stops consuming and commits what the engine applied.
            tokio::task::spawn_blocking(move || src.stop()).await.ok();
        }
        let mut first_err = None;
        for (name, t) in self.tasks {
            match t.await {
                Ok(Ok(())) => {}
                Ok(Err(e)) => {
                    tracing::error!(task = name, error = %e, "task failed");
                    first_err.get_or_insert(e);
                }
                Err(e) => {
                    first_err.get_or_insert(anyhow::anyhow!("{name} panicked: {e}"));
                }
            }
        }
        if let Some(g) = self.gateway.take() {
            // Publishes what the receivers accepted and waits for the broker's acknowledgement.
            tokio::task::spawn_blocking(move || g.stop()).await.ok();
        }
        if let Some(src) = self.kafka_source.take() {
            tokio::task::spawn_blocking(move || src.stop()).await.ok();
        }
        if let Some(w) = self.worker.take() {
            // Applies what is queued, then the hooks' finish: the final checkpoint and the
            // policy's state. The outbox (the queue's last sender) goes with the thread.
            tokio::task::spawn_blocking(move || w.stop()).await.ok();
        }
        // The writer drains what is queued and ends.
        if let Some(s) = self.sinks.take() {
            tokio::task::spawn_blocking(move || s.join()).await.ok();
        }
        if let Some(a) = self.archive.take() {
            tokio::task::spawn_blocking(move || a.stop()).await.ok();
        }
        if let Some(b) = self.embedded_broker.take() {
            tokio::task::spawn_blocking(move || drop(b)).await.ok();
        }
        first_err.map_or(Ok(()), Err)
    }

    /// Resolves when a task ends on its own (a failure: they run until shutdown).
    pub async fn any_task_ended(&mut self) -> String {
        loop {
            for (name, t) in &self.tasks {
                if t.is_finished() {
                    return (*name).to_string();
                }
            }
            tokio::time::sleep(std::time::Duration::from_millis(200)).await;
        }
    }
}
