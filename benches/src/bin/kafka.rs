//! Kafka benchmarks.
//!
//! 1. **Source throughput**: `--records` OTLP protobuf records (one export request with one
//!    server span each, as the Collector's Kafka exporter writes them) are produced into a
//!    topic; then Trike (the real processor, in this process) consumes them through its Kafka
//!    source, decoder and engine. Reported: records/s (wall) and records per CPU-second of this
//!    process. Baselines, same run, same topic: a bare rdkafka `BaseConsumer` that only counts
//!    messages, polled one at a time through the safe API; and one that reads them in batches
//!    from a queue of its own, as Trike's source does (`ingest/src/kafka/queue.rs`): the
//!    client's ceiling for that path.
//! 2. **Decision → acknowledged**: `--events` control events sent one at a time through Trike's
//!    Kafka control sink (idempotent, `acks=all`, `linger.ms=1`); each sample is the time from
//!    `send` to the broker's acknowledgement (delivery callback). p50/p99.
//!
//! The broker is librdkafka's mock cluster by default, in a child process of its own (so the
//! CPU measured is the consumer's alone; it serves ~1M msgs/s here, so it measures our code,
//! not a broker); `--brokers HOST:PORT` uses a real one instead.
//!
//! Run: `cargo run --release -p trike-benches --bin kafka -- --records 200000 --events 300`

use clap::Parser;
use prost::Message as _;
use rand::SeedableRng;
use rdkafka::config::ClientConfig;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::mocking::MockCluster;
use rdkafka::producer::{BaseRecord, DefaultProducerContext, Producer, ThreadedProducer};
use std::sync::Arc;
use std::sync::atomic::Ordering::Relaxed;
use std::time::{Duration, Instant};
use trike::config::fleet::Role;
use trike::config::validate::Overrides;
use trike::config::{Config, RawConfig};
use trike_sinks::kafka::{KafkaSink, KafkaSinkConfig, KafkaSinkStats};

#[derive(Debug, Parser)]
struct Args {
    /// Records for the source benchmark.
    #[arg(long, default_value_t = 200_000)]
    records: usize,
    /// Control events for the latency benchmark.
    #[arg(long, default_value_t = 300)]
    events: usize,
    /// A real broker (default: the in-process mock cluster).
    #[arg(long)]
    brokers: Option<String>,
    /// Partitions of the spans topic (the mock keeps only the newest ~5 MiB per partition:
    /// keep records × size / partitions under that).
    #[arg(long, default_value_t = 64)]
    partitions: i32,
    /// Rounds of the source benchmark: each round measures the baseline and each role (the
    /// baseline first in even rounds, last in odd ones), with groups of their own; the summary
    /// takes medians (the baseline alone moves by up to 1.6× from round to round on this VM,
    /// so one pair of figures says little).
    #[arg(long, default_value_t = 3)]
    rounds: usize,
    /// Which Trike roles consume (`all`, `gateway`), each in turn.
    #[arg(long, value_delimiter = ',', default_value = "all,gateway")]
    roles: Vec<String>,
    /// Internal: serve the mock cluster for run `ID` (topics created) in this process, print
    /// its address, and exit when stdin closes.
    #[arg(long, hide = true)]
    serve_mock: Option<u32>,
}

/// The benchmark's topics of run `run`: spans, control, and the gateway's partials.
fn topics(run: u32) -> (String, String, String) {
    (
        format!("bench{run}_otlp_spans"),
        format!("bench{run}.control"),
        format!("bench{run}_otlp_spans.partials"),
    )
}

/// The mock cluster, in a process of its own so that its CPU is not the consumer's: serves
/// until stdin closes.
fn serve_mock(run: u32, partitions: i32) {
    let m = MockCluster::new(1).expect("mock cluster");
    let (spans, control, partials) = topics(run);
    m.create_topic(&spans, partitions, 1).expect("topic");
    m.create_topic(&control, 3, 1).expect("topic");
    // The mock cannot create topics through the admin API: the gateway's ones.
    m.create_topic(&partials, 12, 1).expect("topic");
    for fleet in ["trike.members", "trike.silences", "trike.causes"] {
        m.create_topic(fleet, 1, 1).expect("topic");
    }
    println!("{}", m.bootstrap_servers());
    let mut sink = String::new();
    while std::io::stdin().read_line(&mut sink).is_ok_and(|n| n > 0) {}
}

/// CPU time (user + system) of this process so far, from /proc.
fn cpu_seconds() -> f64 {
    let stat = std::fs::read_to_string("/proc/self/stat").unwrap_or_default();
    let after = stat.rsplit(')').next().unwrap_or("");
    let f: Vec<&str> = after.split_whitespace().collect();
    let ticks = |i: usize| f.get(i).and_then(|x| x.parse::<f64>().ok()).unwrap_or(0.0);
    // Fields after the name: state is 0, utime is 11, stime is 12.
    (ticks(11) + ticks(12)) / 100.0
}

/// CPU seconds (user + system) of each live thread of this process, by thread id, with its name.
fn thread_cpu() -> std::collections::HashMap<String, (String, f64)> {
    let mut out = std::collections::HashMap::new();
    for t in std::fs::read_dir("/proc/self/task")
        .into_iter()
        .flatten()
        .flatten()
    {
        let name = std::fs::read_to_string(t.path().join("comm")).unwrap_or_default();
        let stat = std::fs::read_to_string(t.path().join("stat")).unwrap_or_default();
        let tid = t.file_name().to_string_lossy().into_owned();
        out.insert(tid, (name.trim().to_string(), trike_benches::ticks(&stat)));
    }
    out
}

/// CPU seconds per thread name since `before` (a [`thread_cpu`]), the busiest first.
fn threads_since(before: &std::collections::HashMap<String, (String, f64)>) -> String {
    let mut by_name: std::collections::BTreeMap<String, f64> = Default::default();
    for (tid, (name, secs)) in thread_cpu() {
        *by_name.entry(name).or_default() += secs - before.get(&tid).map_or(0.0, |t| t.1);
    }
    let mut by_name: Vec<(String, f64)> = by_name.into_iter().filter(|t| t.1 >= 0.01).collect();
    by_name.sort_by(|a, b| b.1.total_cmp(&a.1));
    by_name
        .into_iter()
        .map(|(name, s)| format!("{name} {s:.2} s"))
        .collect::<Vec<_>>()
        .join(", ")
}

fn produce(brokers: &str, topic: &str, n: usize) -> f64 {
    let producer: ThreadedProducer<DefaultProducerContext> = ClientConfig::new()
        .set("bootstrap.servers", brokers)
        .set("linger.ms", "20")
        .set("queue.buffering.max.messages", "1000000")
        .create()
        .expect("producer");
    let svc = trike_benches::kafka_service();
    let mut rng = rand::rngs::StdRng::seed_from_u64(1);
    let mut bytes = 0usize;
    let now = trike_runtime::clock::now_nanos();
    for i in 0..n {
        let body = svc
            .request(1, now, 60_000_000_000, &mut rng)
            .encode_to_vec();
        bytes += body.len();
        let key = (i % 64).to_string();
        let mut rec = BaseRecord::to(topic).key(&key).payload(&body);
        loop {
            match producer.send(rec) {
                Ok(()) => break,
                Err((_, r)) => {
                    rec = r;
                    std::thread::sleep(Duration::from_millis(5));
                }
            }
        }
    }
    producer.flush(Duration::from_secs(60)).expect("flush");
    bytes as f64 / n as f64
}

fn baseline(brokers: &str, topic: &str, n: usize, round: usize) -> (f64, f64) {
    let consumer: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", brokers)
        .set("group.id", format!("bench-baseline-{round}"))
        .set("auto.offset.reset", "earliest")
        .set("enable.auto.commit", "false")
        .create()
        .expect("consumer");
    consumer.subscribe(&[topic]).expect("subscribe");
    // The group join is not part of the measurement: wait for the first message.
    let mut got = 0usize;
    let mut start = None;
    let mut cpu0 = 0.0;
    let mut threads0 = Default::default();
    while got < n {
        if let Some(Ok(_)) = consumer.poll(Duration::from_millis(100)) {
            if start.is_none() {
                start = Some(Instant::now());
                cpu0 = cpu_seconds();
                threads0 = thread_cpu();
            }
            got += 1;
        }
    }
    let wall = start.unwrap().elapsed().as_secs_f64();
    let cpu = cpu_seconds() - cpu0;
    eprintln!(
        "  (bare consumer: CPU by thread while timed: {})",
        threads_since(&threads0)
    );
    (n as f64 / wall, n as f64 / cpu.max(1e-9))
}

/// A bare consumer reading through a queue of its own in batches, with Trike's own queue
/// (`trike_ingest::kafka::queue`): the client's ceiling without the per-message poll of the
/// safe API.
fn baseline_batch(brokers: &str, topic: &str, n: usize, round: usize) -> (f64, f64) {
    use rdkafka::consumer::{ConsumerContext, Rebalance};
    use trike_ingest::kafka::queue::{Message, MessageQueue};
    struct Ctx(Arc<MessageQueue>);
    impl rdkafka::ClientContext for Ctx {}
    impl ConsumerContext for Ctx {
        fn pre_rebalance(&self, c: &BaseConsumer<Self>, r: &Rebalance<'_>) {
            if let Rebalance::Assign(tpl) = r {
                for e in tpl.elements() {
                    self.0.forward(c, e.topic(), e.partition());
                }
            }
        }
    }
    let queue = Arc::new(MessageQueue::unopened());
    let consumer: BaseConsumer<Ctx> = ClientConfig::new()
        .set("bootstrap.servers", brokers)
        .set("group.id", format!("bench-baseline-batch-{round}"))
        .set("auto.offset.reset", "earliest")
        .set("enable.auto.commit", "false")
        .create_with_context(Ctx(queue.clone()))
        .expect("consumer");
    queue.open(&consumer);
    consumer.subscribe(&[topic]).expect("subscribe");
    let mut got = 0usize;
    let mut start = None;
    let mut cpu0 = 0.0;
    let mut threads0 = Default::default();
    let began = Instant::now();
    while got < n {
        assert!(
            began.elapsed() < Duration::from_secs(300),
            "the batch reader read {got} of {n} records in 5 minutes"
        );
        if let Some(Ok(_)) = consumer.poll(Duration::ZERO) {
            got += 1;
        }
        // The group join is not part of the measurement: timed from the first message.
        queue.consume(&consumer, Duration::from_millis(100), 512, |m| {
            if start.is_none() {
                start = Some(Instant::now());
                cpu0 = cpu_seconds();
                threads0 = thread_cpu();
            }
            if let Message::Data { .. } = m {
                got += 1;
            }
        });
    }
    let wall = start.unwrap().elapsed().as_secs_f64();
    let cpu = cpu_seconds() - cpu0;
    eprintln!(
        "  (bare batch consumer: CPU by thread while timed: {})",
        threads_since(&threads0)
    );
    queue.close(&consumer);
    (n as f64 / wall, n as f64 / cpu.max(1e-9))
}

/// Trike consuming `n` records in role `role` (`all`: source → decode → engine; `gateway`:
/// source → decode → partials published to the broker, acknowledged before commit).
async fn trike_source(
    brokers: &str,
    topic: &str,
    n: usize,
    role: Role,
    round: usize,
) -> (f64, f64) {
    let yaml = format!(
        "kafka: {{ brokers: \"{brokers}\", ingest: {{ topics: [\"{topic}\"], group_id: bench-trike-{}-{round} }} }}\nfleet: {{ partials_topic: \"{topic}.partials\" }}\nsinks: []\n",
        role.name()
    );
    let raw = RawConfig::from_yaml(&yaml).expect("config");
    let o = Overrides {
        otlp_grpc_addr: Some("127.0.0.1:0".into()),
        otlp_http_addr: Some("127.0.0.1:0".into()),
        admin_addr: Some("127.0.0.1:0".into()),
        role: Some(role),
        ..Default::default()
    };
    let cfg = Config::validate(raw, &o).expect("valid");
    let running = trike::app::start(cfg).await.expect("trike starts");
    let (stats, _) = running
        .state
        .kafka_source
        .lock()
        .clone()
        .expect("kafka source");
    // Timed from the first run handed on (its first ~160 records are read by then) to the
    // last record acknowledged. (Timing from the first acknowledgement instead, as this bench
    // did until 2026-12-06, left out the CPU of everything read before it: for a gateway, up
    // to a whole flush interval of records, a third of a run here.)
    let mut start = None;
    let mut cpu0 = 0.0;
    let mut threads0 = Default::default();
    loop {
        if start.is_none() && stats.submissions.load(Relaxed) > 0 {
            start = Some(Instant::now());
            cpu0 = cpu_seconds();
            threads0 = thread_cpu();
        }
        let m = stats.messages.load(Relaxed) as usize;
        if m >= n {
            break;
        }
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
    let wall = start.unwrap().elapsed().as_secs_f64();
    let cpu = cpu_seconds() - cpu0;
    let threads = threads_since(&threads0);
    eprintln!(
        "  (trike {}: {} partition pauses for a full engine queue; {:.1} messages per submission; CPU by thread while timed: {})",
        role.name(),
        stats.pauses.load(Relaxed),
        stats.messages.load(Relaxed) as f64 / stats.submissions.load(Relaxed).max(1) as f64,
        threads
    );
    running.stop().await.expect("stops");
    (n as f64 / wall, n as f64 / cpu.max(1e-9))
}

fn latency(brokers: &str, topic: &str, n: usize) -> Vec<f64> {
    let cfg = KafkaSinkConfig {
        brokers: brokers.into(),
        topic: topic.into(),
        partitions: 3,
        replication: 1,
        client: Default::default(),
    };
    let stats = Arc::new(KafkaSinkStats::default());
    let sink = KafkaSink::new(&cfg, stats.clone()).expect("sink");
    let event = serde_json::json!({"specversion": "1.0", "type": "io.trike.control.rollback", "data": {"reason": "x".repeat(1500)}}).to_string();
    let mut samples = Vec::with_capacity(n);
    for i in 0..n + 10 {
        let before = stats.delivered.load(Relaxed);
        let t = Instant::now();
        sink.send("checkout", event.as_bytes()).expect("send");
        while stats.delivered.load(Relaxed) == before {
            std::hint::spin_loop();
            if t.elapsed() > Duration::from_secs(30) {
                panic!("no acknowledgement in 30 s");
            }
        }
        if i >= 10 {
            samples.push(t.elapsed().as_secs_f64() * 1e3);
        }
    }
    samples.sort_by(f64::total_cmp);
    samples
}

fn pct(v: &[f64], q: f64) -> f64 {
    v[((v.len() as f64 - 1.0) * q).round() as usize]
}

/// The allocator `trike` runs with (librdkafka's too), so the consumers measured here allocate
/// as they do there.
#[global_allocator]
static ALLOC: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

#[tokio::main]
async fn main() {
    let args = Args::parse();
    if let Some(run) = args.serve_mock {
        serve_mock(run, args.partitions);
        return;
    }
    let run = std::process::id();
    let mock = if args.brokers.is_none() {
        use std::io::BufRead;
        let mut child = std::process::Command::new(std::env::current_exe().expect("exe"))
            .args([
                "--serve-mock",
                &run.to_string(),
                "--partitions",
                &args.partitions.to_string(),
            ])
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped())
            .spawn()
            .expect("mock cluster process");
        let mut line = String::new();
        std::io::BufReader::new(child.stdout.take().expect("stdout"))
            .read_line(&mut line)
            .expect("mock address");
        Some((child, line.trim().to_string()))
    } else {
        None
    };
    let brokers = args
        .brokers
        .clone()
        .unwrap_or_else(|| mock.as_ref().unwrap().1.clone());
    let (topic, control, _) = topics(run);
    match &mock {
        Some(_) => {}
        None => {
            for (t, p) in [(&topic, args.partitions), (&control, 3)] {
                trike_sinks::kafka::ensure_topic(&KafkaSinkConfig {
                    brokers: brokers.clone(),
                    topic: t.clone(),
                    partitions: p,
                    replication: 1,
                    client: Default::default(),
                })
                .expect("topic");
            }
        }
    }
    let size = produce(&brokers, &topic, args.records);
    println!(
        "source: {} records of {size:.0} B (one span each), {} partitions, broker {}",
        args.records,
        args.partitions,
        if mock.is_some() {
            "librdkafka mock cluster (its own process)"
        } else {
            brokers.as_str()
        }
    );
    let roles: Vec<(Role, &str)> = [
        (Role::All, "source → engine (role all)"),
        (Role::Gateway, "source → partials (gateway)"),
    ]
    .into_iter()
    .filter(|(role, _)| args.roles.iter().any(|r| r == role.name()))
    .collect();
    // Per round: the baseline's (wall, CPU) rates, the batch reader's CPU rate, each role's.
    type Rates = (f64, f64);
    let mut rounds: Vec<(Rates, f64, Vec<Rates>)> = Vec::new();
    for round in 0..args.rounds.max(1) {
        // Even rounds measure the baseline first, odd ones last (so that neither side always
        // runs on a machine the other just warmed or left busy).
        let first = round % 2 == 0;
        println!(
            "round {} (baseline {}):",
            round + 1,
            if first { "first" } else { "last" }
        );
        // The baselines: the safe API's polling loop (the bare consumer the issue names), and
        // the batch reading Trike's source does (the client's own ceiling for that path).
        let bare = || {
            let (b_wall, b_cpu) =
                tokio::task::block_in_place(|| baseline(&brokers, &topic, args.records, round));
            println!(
                "  bare rdkafka consumer (baseline):      {b_wall:>10.0} records/s  {b_cpu:>10.0} records/CPU-s"
            );
            let (c_wall, c_cpu) = tokio::task::block_in_place(|| {
                baseline_batch(&brokers, &topic, args.records, round)
            });
            println!(
                "  bare consumer reading in batches:      {c_wall:>10.0} records/s  {c_cpu:>10.0} records/CPU-s"
            );
            ((b_wall, b_cpu), (c_wall, c_cpu))
        };
        let mut b = if first { Some(bare()) } else { None };
        let mut ours = Vec::new();
        for (role, what) in &roles {
            let (t_wall, t_cpu) = trike_source(&brokers, &topic, args.records, *role, round).await;
            println!("  trike {what:<32} {t_wall:>10.0} records/s  {t_cpu:>10.0} records/CPU-s");
            ours.push((t_wall, t_cpu));
        }
        let ((b_wall, b_cpu), (_, c_cpu)) = *b.get_or_insert_with(bare);
        for ((_, what), (t_wall, t_cpu)) in roles.iter().zip(&ours) {
            println!(
                "  ratio {what:<32} {:.2} (wall) {:.2} (CPU); {:.2} (CPU) of the batch reader",
                t_wall / b_wall,
                t_cpu / b_cpu,
                t_cpu / c_cpu
            );
        }
        rounds.push(((b_wall, b_cpu), c_cpu, ours));
    }
    let median = |mut v: Vec<f64>| {
        v.sort_by(f64::total_cmp);
        let n = v.len();
        if n % 2 == 1 {
            v[n / 2]
        } else {
            (v[n / 2 - 1] + v[n / 2]) / 2.0
        }
    };
    println!(
        "medians of {} rounds: bare consumer {:.0} records/CPU-s, reading in batches {:.0}",
        rounds.len(),
        median(rounds.iter().map(|(b, _, _)| b.1).collect()),
        median(rounds.iter().map(|(_, c, _)| *c).collect())
    );
    for (i, (_, what)) in roles.iter().enumerate() {
        let ratios: Vec<f64> = rounds.iter().map(|(b, _, o)| o[i].1 / b.1).collect();
        println!(
            "  trike {what:<32} {:>10.0} records/CPU-s  ratio {:.2} (CPU, median of the rounds' ratios; range {:.2}–{:.2}); {:.2} of the batch reader",
            median(rounds.iter().map(|(_, _, o)| o[i].1).collect()),
            median(ratios.clone()),
            ratios.iter().copied().fold(f64::MAX, f64::min),
            ratios.iter().copied().fold(0.0, f64::max),
            median(rounds.iter().map(|(_, c, o)| o[i].1 / c).collect()),
        );
    }
    let lat = tokio::task::block_in_place(|| latency(&brokers, &control, args.events));
    println!(
        "decision → acknowledged by the broker ({} events, one at a time): p50 {:.2} ms  p99 {:.2} ms  max {:.2} ms",
        lat.len(),
        pct(&lat, 0.5),
        pct(&lat, 0.99),
        lat[lat.len() - 1]
    );
    if let Some((mut child, _)) = mock {
        drop(child.stdin.take());
        let _ = child.wait();
    }
}
