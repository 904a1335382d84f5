//! A processor's partition owner against the real broker (tansu): partition state goes to the
//! compacted changelog on revocation, and whichever owner is assigned the partition next takes
//! it back exactly, with the offset it covers.

use std::sync::Arc;
use trike_engine::EngineConfig;
use trike_engine::anomaly::{DetectorConfig, SliWatch};
use trike_engine::forecast::{Forecasts, REQUEST_RATE};
use trike_engine::observation::{Batch, RequestObs, SeriesKey};
use trike_engine::policy::{Policy, PolicyEngine};
use trike_engine::sli::{SliQuery, SliRow};
use trike_engine::time::NANOS_PER_SEC;
use trike_ingest::kafka::PartitionOwner;
use trike_ingest::kafka::progress::Progress;
use trike_runtime::fleet::changelog::Changelog;
use trike_runtime::fleet::owner::Owner;
use trike_runtime::fleet::partition::partition_of;
use trike_runtime::{Shard, SimClock};
use trike_sinks::kafka_client::ClientProps;

const T0: u64 = 1_800_000_000 * NANOS_PER_SEC;
const PARTITIONS: i32 = 4;
const SERVICES: [&str; 8] = [
    "checkout", "cart", "payments", "shipping", "search", "users", "ads", "mail",
];

struct Processor {
    shard: Shard,
    owner: Arc<Owner>,
    progress: Arc<Progress>,
    watch: Arc<parking_lot::Mutex<SliWatch>>,
    forecasts: Arc<parking_lot::Mutex<Forecasts>>,
}

fn processor(brokers: &str, topic: &str, changelog: &str) -> Processor {
    processor_on(brokers, topic, changelog, Arc::new(SimClock::at(T0)))
}

fn processor_on(brokers: &str, topic: &str, changelog: &str, clock: Arc<SimClock>) -> Processor {
    let engine = trike_engine::Engine::new(Arc::new(EngineConfig::default()));
    let shard = Shard::new(engine, clock);
    let progress = Arc::new(Progress::new(true));
    let cl = Changelog::open(brokers, &ClientProps::default(), changelog, PARTITIONS, 1).unwrap();
    let policy = Arc::new(parking_lot::Mutex::new(PolicyEngine::new(Policy::new(
        vec![],
    ))));
    let watch = Arc::new(parking_lot::Mutex::new(SliWatch::new(
        DetectorConfig::default(),
        10,
        1000,
    )));
    let forecasts = Arc::new(parking_lot::Mutex::new(Forecasts::new(&[], 100)));
    let owner = Arc::new(
        Owner::new(
            topic,
            PARTITIONS,
            shard.writer(),
            policy,
            watch.clone(),
            progress.clone(),
            Arc::new(cl),
        )
        .with_forecasts(forecasts.clone()),
    );
    Processor {
        forecasts,
        shard,
        owner,
        progress,
        watch,
    }
}

fn rows(p: &Processor, service: &str) -> Vec<SliRow> {
    p.shard
        .handle()
        .lock()
        .slis(&SliQuery {
            service: Some(service.into()),
            window: "5m".parse().unwrap(),
        })
        .unwrap()
}

fn keys(topic: &str, ps: &[i32]) -> Vec<(String, i32)> {
    ps.iter().map(|p| (topic.to_string(), *p)).collect()
}

/// Scenario: processor A owns all four partitions, applies ten messages of each (eight
/// services), and the group rebalances: A is revoked everything, then assigned partitions 0
/// and 2 while a fresh processor B is assigned 1 and 3 (the eager protocol's two steps).
/// Guarantees: the revocation makes every partition's state durable (the offsets A may commit
/// are exactly the applied ones); B restores partitions 1 and 3 from the changelog, resumes at
/// offset 10, and answers every SLI row of their services exactly as A did; A keeps 0 and 2
/// without reading anything and no longer holds the services of 1 and 3; each service's
/// anomaly detectors are with its owner only; a later revocation of B writes a newer
/// generation that a third reader takes.
#[test]
fn revoked_partitions_resume_exactly_at_their_next_owner() {
    let Some(brokers) = trike_tests::real_brokers() else {
        return;
    };
    let run = trike_tests::run_id();
    let (topic, changelog) = (
        format!("owner{run}.partials"),
        format!("owner{run}.changelog"),
    );
    let mut a = processor(&brokers, &topic, &changelog);
    let all = keys(&topic, &[0, 1, 2, 3]);
    assert!(
        a.owner.assigned(&all).is_empty(),
        "nothing on the changelog yet"
    );
    for (p, o) in (0..PARTITIONS).flat_map(|p| (0..10).map(move |o| (p, o))) {
        a.progress.read(&topic, p, o);
    }
    let mut b = Batch::default();
    for (n, service) in SERVICES.iter().enumerate() {
        for route in ["/a", "/b"] {
            let key = b.key_index(SeriesKey::new(service, route, "1.0"));
            for k in 0..(20 + n as u64) {
                b.requests.push(RequestObs {
                    key,
                    time: T0,
                    latency_ms: 5.0 + (k * 37 % 400) as f64,
                    bad: k % 7 == 0,
                });
            }
        }
    }
    a.shard.apply([&b]);
    a.watch.lock().sample(&a.shard.handle().lock());
    // Four days of each service's request rate learned by its capacity forecast.
    for (i, service) in SERVICES.iter().enumerate() {
        for h in 0..96u64 {
            let rate = 10.0 * (i + 1) as f64 + h as f64 / 24.0;
            a.forecasts
                .lock()
                .learn(service, REQUEST_RATE, 480_000 + h, rate);
        }
    }
    for (p, o) in (0..PARTITIONS).flat_map(|p| (0..10).map(move |o| (p, o))) {
        a.progress.done(&topic, p, o);
    }
    let before: Vec<Vec<SliRow>> = SERVICES.iter().map(|s| rows(&a, s)).collect();
    let detectors = a.watch.lock().snapshot_of(|_| true);
    assert!(before.iter().all(|r| r.len() == 2));

    a.owner.revoking(&all);
    let mut committable = a.progress.committable();
    committable.sort();
    assert_eq!(
        committable,
        (0..PARTITIONS)
            .map(|p| (topic.clone(), p, 10))
            .collect::<Vec<_>>(),
        "the revocation made every partition durable at its applied offset"
    );
    let writes = a
        .owner
        .changelog()
        .stats
        .writes
        .load(std::sync::atomic::Ordering::Relaxed);
    assert_eq!(writes, 4);

    let b_proc = processor(&brokers, &topic, &changelog);
    let mut resumed = b_proc.owner.assigned(&keys(&topic, &[1, 3]));
    resumed.sort();
    assert_eq!(
        resumed,
        vec![((topic.clone(), 1), 10), ((topic.clone(), 3), 10)]
    );
    let reads = || {
        a.owner
            .changelog()
            .stats
            .restores
            .load(std::sync::atomic::Ordering::Relaxed)
    };
    let reads_before = reads();
    let mut kept = a.owner.assigned(&keys(&topic, &[0, 2]));
    kept.sort();
    assert_eq!(
        kept,
        vec![((topic.clone(), 0), 10), ((topic.clone(), 2), 10)]
    );
    assert_eq!(
        reads(),
        reads_before,
        "partitions kept across the rebalance are not read again"
    );
    for (i, service) in SERVICES.iter().enumerate() {
        let moved = [1, 3].contains(&partition_of(service, PARTITIONS));
        let (at_a, at_b) = (rows(&a, service), rows(&b_proc, service));
        let of = |w: &parking_lot::Mutex<SliWatch>| w.lock().snapshot_of(|s| s == *service);
        let own = trike_engine::anomaly::WatchSnapshot {
            streams: detectors
                .streams
                .iter()
                .filter(|d| d.0 == *service)
                .cloned()
                .collect(),
        };
        assert_eq!(own.streams.len(), 3);
        let (mover, stayer) = if moved { (&b_proc, &a) } else { (&a, &b_proc) };
        assert_eq!(
            of(&mover.watch),
            own,
            "{service}'s detectors with its partition"
        );
        assert!(
            of(&stayer.watch).streams.is_empty(),
            "{service}'s detectors"
        );
        let forecast = |p: &Processor| p.forecasts.lock().get(service, REQUEST_RATE);
        let learned = forecast(mover).expect("the forecast moved with its partition");
        assert_eq!(learned.hours, 96, "{service}");
        assert_eq!(learned.value, 10.0 * (i + 1) as f64 + 95.0 / 24.0);
        assert!(forecast(stayer).is_none(), "{service}'s forecast");
        if moved {
            assert!(at_a.is_empty(), "{service} left A");
            assert_eq!(at_b, before[i], "{service} moved to B unchanged");
        } else {
            assert_eq!(at_a, before[i], "{service} stayed at A unchanged");
            assert!(at_b.is_empty(), "{service} is not B's");
        }
    }
    assert!(
        SERVICES
            .iter()
            .any(|s| [1, 3].contains(&partition_of(s, PARTITIONS))),
        "some service moved"
    );

    // B applies two more messages of partition 1 and hands it over again: generation 2.
    for o in 10..12 {
        b_proc.progress.read(&topic, 1, o);
        b_proc.progress.done(&topic, 1, o);
    }
    b_proc.owner.revoking(&keys(&topic, &[1]));
    let c = processor(&brokers, &topic, &changelog);
    assert_eq!(
        c.owner.assigned(&keys(&topic, &[1])),
        vec![((topic.clone(), 1), 12)]
    );
    let r = c.owner.changelog().read(1).unwrap().unwrap();
    assert_eq!((r.generation, r.latest().offset), (2, 12));
    assert!(
        r.changes.is_empty(),
        "a first write after an assignment is a full state"
    );
}

/// Scenario: processor A owns all four partitions with its changelog hook writing every 10 s
/// (engine time) while traffic flows for 6 rounds (the first with 5 minutes of history), some
/// of it 30 s late; then it stops cleanly (the final write), and processor B is assigned
/// everything.
/// Guarantees: A wrote full states and change sets between them (each change set smaller than
/// the partition's state); B restores each partition's newest full state and the change sets
/// on it, resumes at A's applied offsets, and answers every SLI row of every service, over
/// 1 m, 5 m and 1 h, and every version's quantiles, exactly as A did; its anomaly
/// detectors are A's.
#[test]
fn change_sets_between_full_states_restore_exactly() {
    let Some(brokers) = trike_tests::real_brokers() else {
        return;
    };
    let run = trike_tests::run_id();
    let (topic, changelog) = (format!("cs{run}.partials"), format!("cs{run}.changelog"));
    let clock = Arc::new(SimClock::at(T0));
    let Processor {
        shard,
        owner,
        progress,
        watch,
        ..
    } = processor_on(&brokers, &topic, &changelog, clock.clone());
    let hook = trike_runtime::fleet::owner::ChangelogHook::start(
        owner.clone(),
        std::time::Duration::from_secs(10),
    )
    .unwrap();
    let mut shard = shard.with_hook(hook);
    let engine = shard.handle();
    let all = keys(&topic, &[0, 1, 2, 3]);
    assert!(owner.assigned(&all).is_empty());
    let mut offset = 0;
    for round in 0..6u64 {
        clock.set(T0 + round * 10 * NANOS_PER_SEC);
        let now = T0 + round * 10 * NANOS_PER_SEC;
        for p in 0..PARTITIONS {
            progress.read(&topic, p, offset);
        }
        let mut b = Batch::default();
        for (n, service) in SERVICES.iter().enumerate() {
            for route in ["/a", "/b"] {
                let key = b.key_index(SeriesKey::new(service, route, "1.0"));
                if round == 0 {
                    for ago in 1..290u64 {
                        b.requests.push(RequestObs {
                            key,
                            time: now - ago * NANOS_PER_SEC,
                            latency_ms: 5.0 + (ago * 13 % 300) as f64,
                            bad: ago % 11 == 0,
                        });
                    }
                }
                for k in 0..(10 + n as u64 + round) {
                    let late = if round % 2 == 1 && k % 3 == 0 { 30 } else { 0 };
                    b.requests.push(RequestObs {
                        key,
                        time: now.saturating_sub(late * NANOS_PER_SEC),
                        latency_ms: 5.0 + ((k + round) * 37 % 400) as f64,
                        bad: k % 7 == 0,
                    });
                }
            }
        }
        shard.apply([&b]);
        watch.lock().sample(&engine.lock());
        for p in 0..PARTITIONS {
            progress.done(&topic, p, offset);
        }
        offset += 1;
        // Let the writer thread finish the round it was handed.
        std::thread::sleep(std::time::Duration::from_millis(300));
    }
    shard.finish();
    let cl = owner.changelog();
    let writes = cl.stats.writes.load(std::sync::atomic::Ordering::Relaxed);
    assert!(writes >= 2 * PARTITIONS as u64, "{writes} writes");
    let windows = ["1m", "5m", "1h"];
    let answers = |e: &trike_engine::Engine| {
        let mut out = Vec::new();
        for w in windows {
            let q = SliQuery {
                service: None,
                window: w.parse().unwrap(),
            };
            out.push(format!("{:?}", e.slis(&q).unwrap()));
            out.push(format!(
                "{:?}",
                e.version_slis(None, w.parse().unwrap()).unwrap()
            ));
        }
        out
    };
    let expected = answers(&engine.lock());
    let mut change_sets = 0;
    for p in 0..PARTITIONS {
        let r = cl.read(p).unwrap().unwrap();
        eprintln!(
            "partition {p}: generation {}, {} change sets on it",
            r.generation,
            r.changes.len()
        );
        assert_eq!(r.latest().offset, offset, "partition {p}");
        let full = serde_json::to_vec(
            &engine
                .lock()
                .snapshot_of(|s| partition_of(s, PARTITIONS) == p),
        )
        .unwrap()
        .len();
        for c in &r.changes {
            let size = serde_json::to_vec(&c.engine).unwrap().len();
            assert!(
                size < full,
                "partition {p}: a change set of {size} bytes, full {full}"
            );
        }
        change_sets += r.changes.len();
    }
    assert!(change_sets >= 1, "the restore applies change sets");
    let written = cl
        .stats
        .change_sets
        .load(std::sync::atomic::Ordering::Relaxed);
    assert!(
        written >= 2 * PARTITIONS as u64,
        "{written} change sets written"
    );

    let b_proc = processor(&brokers, &topic, &changelog);
    let mut resumed = b_proc.owner.assigned(&all);
    resumed.sort();
    assert_eq!(
        resumed,
        all.iter().map(|k| (k.clone(), offset)).collect::<Vec<_>>()
    );
    assert_eq!(answers(&b_proc.shard.handle().lock()), expected);
    let detectors = watch.lock().snapshot_of(|_| true);
    assert_eq!(detectors.streams.len(), 3 * SERVICES.len());
    assert_eq!(
        b_proc.watch.lock().snapshot_of(|_| true),
        detectors,
        "every service's anomaly detectors moved with its partition"
    );
}

/// The services of `partition`, with `per` requests each at `T0 + second` s.
fn traffic(partition: i32, second: u64, per: u64) -> Batch {
    let mut b = Batch::default();
    for service in SERVICES
        .iter()
        .filter(|s| partition_of(s, PARTITIONS) == partition)
    {
        let key = b.key_index(SeriesKey::new(service, "/a", "1.0"));
        for k in 0..per {
            b.requests.push(RequestObs {
                key,
                time: T0 + second * NANOS_PER_SEC,
                latency_ms: 5.0 + (k * 37 % 400) as f64,
                bad: k % 7 == 0,
            });
        }
    }
    b
}

/// Applies `offsets` of `partition` on `p` with `per` requests per service each.
fn apply(p: &mut Processor, topic: &str, partition: i32, offsets: std::ops::Range<i64>, per: u64) {
    for o in offsets {
        p.progress.read(topic, partition, o);
        p.shard.apply([&traffic(partition, o as u64, per)]);
        p.progress.done(topic, partition, o);
    }
}

/// Scenario: processor A owns partition 1 and has written its state at offset 10, then
/// stalls past its session without noticing: the group gives partition 1 to B, which claims it
/// and restores offset 10. A wakes up and writes on, twice (offsets 15 and 20, full state and
/// change set); B applies offsets 10–11 and writes once.
/// Guarantees: a reader between B's claim and B's first write restores A's state of before
/// the claim (offset 10), not what A wrote after it; a processor C assigned the partition
/// after both resumes at B's offset 12 and answers every row exactly as B does, and counts
/// A's later records as fenced on `/metrics`.
#[test]
fn a_processor_fenced_out_of_its_partition_is_never_restored() {
    let Some(brokers) = trike_tests::real_brokers() else {
        return;
    };
    let run = trike_tests::run_id();
    let (topic, changelog) = (
        format!("fence{run}.partials"),
        format!("fence{run}.changelog"),
    );
    let one = keys(&topic, &[1]);
    let mut a = processor(&brokers, &topic, &changelog);
    assert!(a.owner.assigned(&one).is_empty());
    apply(&mut a, &topic, 1, 0..10, 20);
    // A writes its state (as its hook would): at offset 10.
    a.owner.revoking(&one);
    assert_eq!(a.owner.assigned(&one), vec![((topic.clone(), 1), 10)]);

    // A stalls; the group moves partition 1 to B.
    let mut b = processor(&brokers, &topic, &changelog);
    assert_eq!(b.owner.assigned(&one), vec![((topic.clone(), 1), 10)]);
    // A wakes up, still believing it owns partition 1, and writes on.
    apply(&mut a, &topic, 1, 10..15, 50);
    a.owner.revoking(&one);
    a.owner.assigned(&one);
    let reader =
        Changelog::open(&brokers, &ClientProps::default(), &changelog, PARTITIONS, 1).unwrap();
    let r = reader.read(1).unwrap().unwrap();
    assert_eq!(r.latest().offset, 10, "A's state of before B's claim");
    assert!(r.fenced > 0, "A's later records are fenced");

    apply(&mut b, &topic, 1, 10..12, 3);
    b.owner.revoking(&one);
    apply(&mut a, &topic, 1, 15..20, 50);
    a.owner.revoking(&one);

    let c = processor(&brokers, &topic, &changelog);
    assert_eq!(c.owner.assigned(&one), vec![((topic.clone(), 1), 12)]);
    let moved: Vec<&str> = SERVICES
        .iter()
        .copied()
        .filter(|s| partition_of(s, PARTITIONS) == 1)
        .collect();
    assert!(!moved.is_empty());
    for s in moved {
        let (at_b, at_c) = (rows(&b, s), rows(&c, s));
        assert_eq!(at_c, at_b, "{s}: C holds B's state");
        assert_ne!(rows(&a, s), at_b, "{s}: A counted more");
    }
    let mut text = String::new();
    c.owner.changelog().stats.render(&mut text);
    let fenced = text
        .lines()
        .find_map(|l| l.strip_prefix("trike_changelog_fenced_records_total "))
        .and_then(|v| v.parse::<f64>().ok())
        .unwrap_or(0.0);
    assert!(fenced >= 2.0, "{text}");
}
