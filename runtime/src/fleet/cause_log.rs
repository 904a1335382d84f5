//! The fleet's root-cause explanations (see [`trike_engine::causes`]) on a compacted topic
//! (`fleet.causes_topic`, default `trike.causes`, one record per service keyed by its name,
//! its newest explanation as JSON): each processor publishes the explanations its decide
//! hook makes, and reads the whole topic — every processor's, its own included — so a walk
//! that stops at a service owned elsewhere goes on along that service's explanation. A
//! processor that starts reads the topic from the beginning, so it learns the explanations
//! (and their `since`) that hold before it makes its own.
//!
//! Explanations are published without waiting for the broker: one the producer refuses is
//! sent with the next, one lost on the way is made again within
//! [`trike_engine::causes::REPUBLISH`] while it holds. An explanation that ended is a
//! tombstone. The topic is compacted and its records older than an hour are deleted, so a
//! processor that starts reads little more than one record per explained service; it
//! explains nothing until it has read the topic to where it stood at start (for at most 30 s).

use parking_lot::Mutex;
use rdkafka::Message;
use rdkafka::config::ClientConfig;
use rdkafka::consumer::Consumer;
use rdkafka::error::KafkaError;
use rdkafka::message::BorrowedMessage;
use rdkafka::producer::{BaseProducer, BaseRecord, Producer};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering::Relaxed};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};
use trike_engine::causes::{Causes, Explanation};
use trike_sinks::kafka_client::ClientProps;

/// What the cause log did (cumulative).
#[derive(Debug, Default)]
pub struct CauseLogStats {
    /// Explanations handed to the producer.
    pub published: AtomicU64,
    /// Explanations the producer refused (its queue full): sent again with the next.
    pub failed: AtomicU64,
    /// Unreadable records skipped.
    pub unreadable: AtomicU64,
}

/// The fleet's cause log: publishes this processor's explanations and reads everyone's.
pub struct CauseLog {
    causes: Arc<Mutex<Causes>>,
    stop: Arc<AtomicBool>,
    thread: Mutex<Option<JoinHandle<()>>>,
    /// Counts.
    pub stats: Arc<CauseLogStats>,
}

impl std::fmt::Debug for CauseLog {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CauseLog").finish_non_exhaustive()
    }
}

/// The topic's settings: compacted, and records older than an hour deleted (an explanation
/// is used for 30 s, and forgotten after 10 minutes).
const SETTINGS: &[(&str, &str)] = &[
    ("cleanup.policy", "compact,delete"),
    ("retention.ms", "3600000"),
    ("segment.ms", "600000"),
];

/// How long a starting processor reads the log before it explains regardless.
const CATCH_UP: Duration = Duration::from_secs(30);

/// Applies one record: an explanation, or a tombstone (its service's explanation ended).
fn read(msg: &BorrowedMessage<'_>, causes: &Mutex<Causes>, stats: &CauseLogStats) {
    let Some(payload) = msg.payload().filter(|p| !p.is_empty()) else {
        if let Some(Ok(service)) = msg.key().map(std::str::from_utf8) {
            causes.lock().apply(Explanation {
                service: service.to_string(),
                path: Vec::new(),
                share: 0.0,
                since: 0,
                at: 0,
                depends_on: Vec::new(),
            });
        }
        return;
    };
    match serde_json::from_slice::<Explanation>(payload) {
        Ok(e) => causes.lock().apply(e),
        Err(e) => {
            stats.unreadable.fetch_add(1, Relaxed);
            tracing::warn!(error = %e, offset = msg.offset(), "an unreadable record on the causes topic: skipped");
        }
    }
}

/// Hands `e` to the producer: keyed by its service; an ended explanation is a tombstone.
/// False when the producer refused it (its queue full).
fn publish(producer: &BaseProducer, topic: &str, e: &Explanation, stats: &CauseLogStats) -> bool {
    let value = if e.path.is_empty() {
        None
    } else {
        match serde_json::to_vec(e) {
            Ok(v) => Some(v),
            Err(_) => return true,
        }
    };
    let mut record = BaseRecord::<String, Vec<u8>>::to(topic).key(&e.service);
    if let Some(v) = &value {
        record = record.payload(v);
    }
    match producer.send(record) {
        Ok(()) => {
            stats.published.fetch_add(1, Relaxed);
            true
        }
        Err((err, _)) => {
            tracing::warn!(error = %err, service = %e.service, "an explanation not published yet (sent again)");
            stats.failed.fetch_add(1, Relaxed);
            false
        }
    }
}

impl CauseLog {
    /// Creates the compacted topic when missing, then, on its own thread until
    /// [`CauseLog::stop`], reads it from the beginning into `causes` and publishes what
    /// `causes` makes.
    pub fn start(
        brokers: &str,
        client: &ClientProps,
        topic: &str,
        replication: i32,
        causes: Arc<Mutex<Causes>>,
    ) -> Result<Self, KafkaError> {
        let consumer = super::members::open_compacted(
            brokers,
            client,
            topic,
            replication,
            SETTINGS,
            "trike-causes-reader",
        )?;
        let producer: BaseProducer = client
            .apply(
                ClientConfig::new()
                    .set("bootstrap.servers", brokers)
                    .set("linger.ms", "5"),
            )
            .create()?;
        // Where the log stands now: this processor explains nothing before it has read that
        // far (else it would publish a new `since` over the one that holds).
        let (low, high) = consumer
            .fetch_watermarks(topic, 0, Duration::from_secs(10))
            .unwrap_or_else(|e| {
                tracing::warn!(error = %e, topic, "the causes topic's end is unknown: reading it for 30 s before explaining");
                (0, i64::MAX)
            });
        let read_from = Instant::now();
        if high > low {
            causes.lock().wait_for_log();
        }
        let stop = Arc::new(AtomicBool::new(false));
        let stats = Arc::new(CauseLogStats::default());
        let thread = {
            let (stop, stats, topic) = (stop.clone(), stats.clone(), topic.to_string());
            let causes = causes.clone();
            let mut caught_up = high <= low;
            std::thread::Builder::new()
                .name("trike-causes".into())
                .spawn(move || {
                    while !stop.load(Relaxed) {
                        if let Some(Ok(msg)) = consumer.poll(Duration::from_millis(100)) {
                            read(&msg, &causes, &stats);
                            caught_up |= msg.offset() + 1 >= high;
                        }
                        if !caught_up && read_from.elapsed() > CATCH_UP {
                            tracing::warn!(topic = %topic, "the causes topic was not read to its end within 30 s: explaining anyway");
                            caught_up = true;
                        }
                        if caught_up {
                            causes.lock().log_read();
                        }
                        let made = causes.lock().take();
                        for e in made {
                            if !publish(&producer, &topic, &e, &stats) {
                                // Sent with the next (an ended explanation too).
                                causes.lock().requeue(e);
                            }
                        }
                        producer.poll(Duration::ZERO);
                    }
                    let _ = producer.flush(Duration::from_secs(1));
                })
                .map_err(|e| KafkaError::Subscription(format!("causes thread: {e}")))?
        };
        Ok(Self {
            causes,
            stop,
            thread: Mutex::new(Some(thread)),
            stats,
        })
    }

    /// What the explanations did (made, received, walks extended, burns held).
    pub fn causes(&self) -> trike_engine::causes::CauseStats {
        self.causes.lock().stats()
    }

    /// Stops reading and publishing (what is queued is flushed for up to a second).
    pub fn stop(&self) {
        self.stop.store(true, Relaxed);
        if let Some(t) = self.thread.lock().take() {
            let _ = t.join();
        }
    }
}
