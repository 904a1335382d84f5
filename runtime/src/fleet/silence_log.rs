//! The fleet's silences (DESIGN §9) on a compacted topic (`trike.silences`, one record per
//! silence keyed by its id, its newest state as JSON): a silence made at any member is
//! published there first, and every member — those running now and those that start later —
//! reads the whole topic and keeps every silence, so each processor holds back the decisions
//! of its services that a silence matches, whoever took the call and whenever partitions move.

use crate::silences::{Silence, Silences};
use rdkafka::ClientContext;
use rdkafka::Message;
use rdkafka::config::ClientConfig;
use rdkafka::error::KafkaError;
use rdkafka::producer::{BaseProducer, BaseRecord, DeliveryResult, Producer, ProducerContext};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering::Relaxed};
use std::thread::JoinHandle;
use std::time::Duration;
use trike_sinks::kafka_client::ClientProps;

/// Each publication's outcome, by the number it was sent with.
#[derive(Default)]
struct Outcomes(parking_lot::Mutex<std::collections::HashMap<usize, Result<(), String>>>);

impl ClientContext for Outcomes {}

impl ProducerContext for Outcomes {
    type DeliveryOpaque = usize;
    fn delivery(&self, r: &DeliveryResult<'_>, n: usize) {
        let outcome = r.as_ref().map(|_| ()).map_err(|(e, _)| e.to_string());
        self.0.lock().insert(n, outcome);
    }
}

/// The fleet's silence log: publishes silences and applies everyone's.
pub struct SilenceLog {
    topic: String,
    producer: parking_lot::Mutex<(BaseProducer<Outcomes>, usize)>,
    stop: Arc<AtomicBool>,
    thread: parking_lot::Mutex<Option<JoinHandle<()>>>,
}

impl std::fmt::Debug for SilenceLog {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SilenceLog")
            .field("topic", &self.topic)
            .finish_non_exhaustive()
    }
}

impl SilenceLog {
    /// Creates the compacted topic when missing, then reads it from the beginning into
    /// `silences`, on its own thread, until [`SilenceLog::stop`].
    pub fn start(
        brokers: &str,
        client: &ClientProps,
        topic: &str,
        replication: i32,
        silences: Arc<Silences>,
    ) -> Result<Arc<Self>, KafkaError> {
        let consumer = super::members::open_compacted(
            brokers,
            client,
            topic,
            replication,
            super::members::COMPACTED,
            "trike-silences-reader",
        )?;
        let producer: BaseProducer<Outcomes> = client
            .apply(
                ClientConfig::new()
                    .set("bootstrap.servers", brokers)
                    .set("enable.idempotence", "true")
                    .set("linger.ms", "0"),
            )
            .create_with_context(Outcomes::default())?;
        let stop = Arc::new(AtomicBool::new(false));
        let thread = {
            let stop = stop.clone();
            std::thread::Builder::new()
                .name("trike-silences".into())
                .spawn(move || {
                    while !stop.load(Relaxed) {
                        let Some(Ok(msg)) = consumer.poll(Duration::from_millis(200)) else {
                            continue;
                        };
                        match msg.payload().map(serde_json::from_slice::<Silence>) {
                            Some(Ok(s)) => silences.apply(s),
                            Some(Err(e)) => {
                                tracing::warn!(error = %e, offset = msg.offset(), "an unreadable record on the silences topic: skipped");
                            }
                            None => {}
                        }
                    }
                })
                .map_err(|e| KafkaError::Subscription(format!("silences thread: {e}")))?
        };
        Ok(Arc::new(Self {
            topic: topic.into(),
            producer: parking_lot::Mutex::new((producer, 0)),
            stop,
            thread: parking_lot::Mutex::new(Some(thread)),
        }))
    }

    /// Publishes `s` and waits for the broker's acknowledgement (up to 10 s): once this
    /// returns Ok, every member will hold it.
    pub fn publish(&self, s: &Silence) -> Result<(), String> {
        let value = serde_json::to_vec(s).map_err(|e| e.to_string())?;
        let mut guard = self.producer.lock();
        let (producer, sent) = &mut *guard;
        *sent += 1;
        let n = *sent;
        producer
            .send(
                BaseRecord::with_opaque_to(&self.topic, n)
                    .key(&s.id)
                    .payload(&value),
            )
            .map_err(|(e, _)| format!("publishing silence {}: {e}", s.id))?;
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        while std::time::Instant::now() < deadline {
            producer.poll(Duration::from_millis(50));
            if let Some(outcome) = producer.context().0.lock().remove(&n) {
                return outcome.map_err(|e| format!("publishing silence {}: {e}", s.id));
            }
        }
        Err(format!(
            "publishing silence {}: no acknowledgement from the broker within 10 s",
            s.id
        ))
    }

    /// Stops reading.
    pub fn stop(&self) {
        self.stop.store(true, Relaxed);
        if let Some(t) = self.thread.lock().take() {
            let _ = t.join();
        }
    }
}
