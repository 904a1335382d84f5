//! The dead-letter topic: undecodable messages are copied there with headers naming where they
//! came from and why they were refused. The original offset becomes committable once the copy
//! is delivered (or finally failed: then it is counted and logged, never retried forever).

use super::KafkaSourceStats;
use super::progress::Progress;
use rdkafka::ClientContext;
use rdkafka::config::ClientConfig;
use rdkafka::error::KafkaError;
use rdkafka::message::{Header, OwnedHeaders};
use rdkafka::producer::{BaseRecord, DeliveryResult, Producer, ProducerContext, ThreadedProducer};
use std::sync::Arc;
use std::sync::atomic::Ordering::Relaxed;
use std::time::Duration;

struct Context {
    progress: Arc<Progress>,
    stats: Arc<KafkaSourceStats>,
}

impl ClientContext for Context {}

impl ProducerContext for Context {
    type DeliveryOpaque = Box<(String, i32, i64)>;
    fn delivery(&self, result: &DeliveryResult<'_>, origin: Self::DeliveryOpaque) {
        let (topic, partition, offset) = *origin;
        match result {
            Ok(_) => {
                self.stats.dead_lettered.fetch_add(1, Relaxed);
            }
            Err((e, _)) => {
                self.stats.dead_letter_failed.fetch_add(1, Relaxed);
                tracing::error!(%topic, partition, offset, error = %e, "undecodable message not copied to the dead-letter topic");
            }
        }
        self.progress.done(&topic, partition, offset);
    }
}

/// The dead-letter producer.
pub(super) struct DeadLetters {
    producer: ThreadedProducer<Context>,
    topic: String,
}

impl DeadLetters {
    pub(super) fn new(
        brokers: &str,
        client: &trike_sinks::kafka_client::ClientProps,
        topic: &str,
        progress: Arc<Progress>,
        stats: Arc<KafkaSourceStats>,
    ) -> Result<Self, KafkaError> {
        let producer = client
            .apply(
                ClientConfig::new()
                    .set("bootstrap.servers", brokers)
                    .set("enable.idempotence", "true")
                    .set("acks", "all")
                    .set("linger.ms", "20")
                    .set("delivery.timeout.ms", "30000"),
            )
            .create_with_context(Context { progress, stats })?;
        Ok(Self {
            producer,
            topic: topic.to_string(),
        })
    }

    /// Copies one message; its offset is marked done when the copy is delivered or failed.
    pub(super) fn send(&self, topic: &str, partition: i32, offset: i64, payload: &[u8], why: &str) {
        let (p, o) = (partition.to_string(), offset.to_string());
        let headers = OwnedHeaders::new()
            .insert(Header {
                key: "trike.source.topic",
                value: Some(topic),
            })
            .insert(Header {
                key: "trike.source.partition",
                value: Some(&p),
            })
            .insert(Header {
                key: "trike.source.offset",
                value: Some(&o),
            })
            .insert(Header {
                key: "trike.error",
                value: Some(why),
            });
        let record = BaseRecord::with_opaque_to(
            &self.topic,
            Box::new((topic.to_string(), partition, offset)),
        )
        .payload(payload)
        .headers(headers);
        if let Err((e, r)) = self.producer.send::<[u8], [u8]>(record) {
            let (topic, partition, offset) = *r.delivery_opaque;
            tracing::error!(%topic, partition, offset, error = %e, "undecodable message not copied to the dead-letter topic");
            // Not retried: the message is still counted and logged, and must not stall the partition.
            let ctx = self.producer.context();
            ctx.stats.dead_letter_failed.fetch_add(1, Relaxed);
            ctx.progress.done(&topic, partition, offset);
        }
    }

    /// Waits (bounded) for the copies in flight.
    pub(super) fn flush(&self) {
        let _ = self.producer.flush(Duration::from_secs(5));
    }
}
