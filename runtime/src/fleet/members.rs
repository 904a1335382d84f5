//! Fleet membership (DESIGN §6): every gateway and processor advertises itself — its admin
//! URL, role, the partials partitions it owns and its lag — on a compacted topic
//! (`trike.members`, one record per member keyed by its admin URL, a tombstone when it stops
//! cleanly), and reads everyone's. Any node can then send a request about a service to the
//! processor that owns it, and merge lists across all processors. No coordinator: the topic is
//! the directory, and a member that stopped advertising for [`EXPIRY`] is gone.

use crate::clock::SharedClock;
use parking_lot::RwLock;
use rdkafka::config::ClientConfig;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::error::KafkaError;
use rdkafka::producer::{BaseProducer, BaseRecord, Producer};
use rdkafka::{Message, Offset, TopicPartitionList};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering::Relaxed};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};
use trike_sinks::kafka_client::ClientProps;

/// How often a member advertises itself.
pub const EVERY: Duration = Duration::from_secs(2);
/// A member not heard from for this long is taken for gone.
pub const EXPIRY: Duration = Duration::from_secs(10);

/// One member as it advertises itself.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Member {
    /// Base URL of its admin API (`http://10.0.0.7:8480`): the member's identity.
    pub url: String,
    /// Its `instance` name.
    pub instance: String,
    /// `gateway` or `processor`.
    pub role: String,
    /// Partitions of the partials topic it owns (processors).
    pub partitions: Vec<i32>,
    /// Partitions of the partials topic (0: unknown to this member).
    pub partitions_total: i32,
    /// Partials not yet applied, over its partitions.
    pub lag: i64,
    /// When it advertised this, Unix milliseconds.
    pub at_ms: u64,
}

/// The settings of the fleet's compacted directories.
pub(crate) const COMPACTED: &[(&str, &str)] = &[("cleanup.policy", "compact")];

/// Creates `topic` (one partition, with `settings`) when missing, and returns a reader of it
/// from its beginning ([`whole_topic_reader`]): the fleet's directories (members, silences,
/// causes).
pub(crate) fn open_compacted(
    brokers: &str,
    client: &ClientProps,
    topic: &str,
    replication: i32,
    settings: &[(&str, &str)],
    reader: &str,
) -> Result<BaseConsumer, KafkaError> {
    trike_sinks::kafka::ensure_topic_with(
        &trike_sinks::kafka::KafkaSinkConfig {
            brokers: brokers.into(),
            topic: topic.into(),
            partitions: 1,
            replication,
            client: client.clone(),
        },
        settings,
    )?;
    whole_topic_reader(brokers, client, topic, reader)
}

/// A consumer assigned every partition of `topic` from its beginning (no group membership:
/// `group` only names it), for the fleet's compacted directories (members, silences).
pub(crate) fn whole_topic_reader(
    brokers: &str,
    client: &ClientProps,
    topic: &str,
    group: &str,
) -> Result<BaseConsumer, KafkaError> {
    let consumer: BaseConsumer = client
        .apply(
            ClientConfig::new()
                .set("bootstrap.servers", brokers)
                .set("group.id", group)
                .set("enable.auto.commit", "false")
                .set("enable.partition.eof", "false"),
        )
        .create()?;
    // A topic just created may show no partitions yet: ask again for up to 10 s (a reader
    // assigned nothing would be deaf for good).
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    let md = loop {
        let md = consumer.fetch_metadata(Some(topic), Duration::from_secs(10))?;
        let ready = md.topics().iter().any(|t| !t.partitions().is_empty());
        if ready || std::time::Instant::now() >= deadline {
            break md;
        }
        std::thread::sleep(Duration::from_millis(200));
    };
    let mut tpl = TopicPartitionList::new();
    for p in md.topics().iter().flat_map(|t| t.partitions()) {
        tpl.add_partition_offset(topic, p.id(), Offset::Beginning)?;
    }
    if tpl.count() == 0 {
        return Err(KafkaError::MetadataFetch(
            rdkafka::types::RDKafkaErrorCode::UnknownTopicOrPartition,
        ));
    }
    consumer.assign(&tpl)?;
    Ok(consumer)
}

/// What one member knows of the fleet.
pub struct Members {
    me: String,
    known: Arc<RwLock<BTreeMap<String, Member>>>,
    clock: SharedClock,
    stop: Arc<AtomicBool>,
    thread: parking_lot::Mutex<Option<JoinHandle<()>>>,
}

impl std::fmt::Debug for Members {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Members")
            .field("me", &self.me)
            .finish_non_exhaustive()
    }
}

fn now_ms(clock: &SharedClock) -> u64 {
    clock.now() / 1_000_000
}

impl Members {
    /// Creates the compacted topic when missing, then advertises `me()` every [`EVERY`] and
    /// reads everyone's records, on one thread.
    pub fn start(
        brokers: &str,
        client: &ClientProps,
        topic: &str,
        replication: i32,
        clock: SharedClock,
        me: impl Fn() -> Member + Send + 'static,
    ) -> Result<Arc<Self>, KafkaError> {
        let consumer = open_compacted(
            brokers,
            client,
            topic,
            replication,
            COMPACTED,
            "trike-members-reader",
        )?;
        let producer: BaseProducer = client
            .apply(
                ClientConfig::new()
                    .set("bootstrap.servers", brokers)
                    .set("linger.ms", "0"),
            )
            .create()?;
        let first = me();
        let members = Arc::new(Self {
            me: first.url.clone(),
            known: Arc::default(),
            clock: clock.clone(),
            stop: Arc::new(AtomicBool::new(false)),
            thread: parking_lot::Mutex::new(None),
        });
        let thread = {
            let (known, stop, topic) = (
                members.known.clone(),
                members.stop.clone(),
                topic.to_string(),
            );
            std::thread::Builder::new()
                .name("trike-members".into())
                .spawn(move || {
                    let mut last: Option<Instant> = None;
                    while !stop.load(Relaxed) {
                        if last.is_none_or(|l| l.elapsed() >= EVERY) {
                            let mut m = me();
                            m.at_ms = now_ms(&clock);
                            let value = serde_json::to_vec(&m).unwrap_or_default();
                            known.write().insert(m.url.clone(), m.clone());
                            if let Err((e, _)) =
                                producer.send(BaseRecord::to(&topic).key(&m.url).payload(&value))
                            {
                                tracing::warn!(error = %e, "advertising this member");
                            }
                            last = Some(Instant::now());
                        }
                        producer.poll(Duration::ZERO);
                        if let Some(Ok(msg)) = consumer.poll(Duration::from_millis(200)) {
                            let key =
                                String::from_utf8_lossy(msg.key().unwrap_or_default()).into_owned();
                            match msg.payload() {
                                None => {
                                    known.write().remove(&key);
                                }
                                Some(v) => match serde_json::from_slice::<Member>(v) {
                                    Ok(m) => {
                                        known.write().insert(m.url.clone(), m);
                                    }
                                    Err(e) => tracing::debug!(error = %e, "a members record"),
                                },
                            }
                        }
                    }
                    // A clean stop: a tombstone, so the others forget this member at once.
                    let url = me().url;
                    let _ = producer.send(BaseRecord::<String, [u8]>::to(&topic).key(&url));
                    let _ = producer.flush(Duration::from_secs(5));
                })
                .map_err(|e| KafkaError::Subscription(format!("members thread: {e}")))?
        };
        *members.thread.lock() = Some(thread);
        Ok(members)
    }

    /// This member's URL.
    pub fn me(&self) -> &str {
        &self.me
    }

    /// Members heard from within [`EXPIRY`], by URL.
    pub fn live(&self) -> Vec<Member> {
        let oldest = now_ms(&self.clock).saturating_sub(EXPIRY.as_millis() as u64);
        self.known
            .read()
            .values()
            .filter(|m| m.at_ms >= oldest)
            .cloned()
            .collect()
    }

    /// The live processor that owns `service`'s partition, when one is known.
    pub fn owner_of(&self, service: &str) -> Option<Member> {
        let live = self.live();
        let total = live.iter().map(|m| m.partitions_total).max()?;
        if total < 1 {
            return None;
        }
        let p = crate::fleet::partition::partition_of(service, total);
        live.into_iter()
            .filter(|m| m.role == "processor" && m.partitions.contains(&p))
            .max_by_key(|m| m.at_ms)
    }

    /// Stops advertising (publishing a tombstone) and reading.
    pub fn stop(&self) {
        self.stop.store(true, Relaxed);
        if let Some(t) = self.thread.lock().take() {
            let _ = t.join();
        }
    }
}
