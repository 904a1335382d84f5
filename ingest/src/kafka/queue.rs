//! The source's messages arrive on a queue of their own, read in batches.
//!
//! rdkafka's safe `poll` hands over one message per call, and pays per message for what
//! librdkafka does per call: an event wrapped and reference counted, a clock read, the queue's
//! poll bookkeeping (`--bin kafka`: a bare consumer's polling thread spends 0.29–0.48 s on
//! 600 000 records that way, 0.18–0.21 s reading the same in batches). So each assigned
//! partition's messages are forwarded here (before the partition is assigned, so none reach
//! the consumer queue first) and read with `rd_kafka_consume_batch_queue`, while rebalances,
//! statistics, errors and commit results stay on the consumer queue, served by `poll`.
//!
//! Order within a partition is librdkafka's: one partition forwards to one queue; messages
//! of a partition that was revoked since are dropped by librdkafka's version barrier, as on
//! the consumer queue.

// The one module of the source that calls librdkafka directly: each `unsafe` block says why
// it is sound, and `tests` exercise every path on the mock cluster.
#![allow(unsafe_code)]

use rdkafka::bindings as rd;
use rdkafka::consumer::{BaseConsumer, ConsumerContext};
use rdkafka::error::KafkaError;
use rdkafka::types::RDKafkaRespErr;
use std::ptr::NonNull;
use std::time::Duration;

/// A librdkafka queue handle.
struct QueuePtr(NonNull<rd::rd_kafka_queue_t>);

// SAFETY: librdkafka's queues are made to be used from any thread (their state is behind the
// queue's own lock); the handle is only a pointer to one.
unsafe impl Send for QueuePtr {}

/// A queue of the consumer's own for its messages. It must be [closed](MessageQueue::close)
/// before the consumer is dropped (librdkafka requires its queues destroyed first); a queue
/// dropped unclosed is leaked instead.
pub struct MessageQueue {
    /// `None` once closed.
    queue: parking_lot::Mutex<Option<QueuePtr>>,
}

impl std::fmt::Debug for MessageQueue {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MessageQueue").finish_non_exhaustive()
    }
}

impl MessageQueue {
    /// A queue not yet open: [`MessageQueue::open`] it once the consumer exists (the
    /// consumer's context holds it, to forward partitions as they are assigned).
    pub fn unopened() -> Self {
        Self {
            queue: parking_lot::Mutex::new(None),
        }
    }

    /// Opens the queue on `consumer`'s client (before it subscribes).
    pub fn open<C: ConsumerContext>(&self, consumer: &BaseConsumer<C>) {
        use rdkafka::consumer::Consumer;
        let mut guard = self.queue.lock();
        if guard.is_none() {
            // SAFETY: the client pointer is live (borrowed from the consumer); the queue
            // made is ours, destroyed once in `close`.
            let q = unsafe { rd::rd_kafka_queue_new(consumer.client().native_ptr()) };
            *guard = NonNull::new(q).map(QueuePtr);
        }
    }

    /// Routes `topic`/`partition`'s messages here (call before the partition is assigned).
    /// False when librdkafka has no such partition queue, or the queue is closed: the
    /// messages then come through the consumer queue, as before.
    pub fn forward<C: ConsumerContext>(
        &self,
        consumer: &BaseConsumer<C>,
        topic: &str,
        partition: i32,
    ) -> bool {
        use rdkafka::consumer::Consumer;
        let guard = self.queue.lock();
        let (Some(q), Ok(name)) = (guard.as_ref(), std::ffi::CString::new(topic)) else {
            return false;
        };
        // SAFETY: the client pointer is live (borrowed from the consumer) and `name` is a C
        // string; the partition's queue handle is destroyed here, once (forwarding keeps its
        // own reference to our queue, which is open: the lock is held).
        unsafe {
            let pq = rd::rd_kafka_queue_get_partition(
                consumer.client().native_ptr(),
                name.as_ptr(),
                partition,
            );
            if pq.is_null() {
                return false;
            }
            rd::rd_kafka_queue_forward(pq, q.0.as_ptr());
            rd::rd_kafka_queue_destroy(pq);
        }
        true
    }

    /// Reads up to `batch`'s capacity of messages into it (which must be empty), waiting at
    /// most `wait` for the first when there are none; how many were read.
    pub fn consume(&self, batch: &mut Batch, wait: Duration) -> usize {
        debug_assert!(batch.messages.is_empty());
        let guard = self.queue.lock();
        let Some(q) = guard.as_ref() else {
            return 0;
        };
        let max = batch.messages.capacity().max(1);
        let wait_ms = wait.as_millis().min(i32::MAX as u128) as i32;
        let mut read = |ms: i32, n: usize| {
            // SAFETY: the queue is open (the lock is held); the array has room for `n` ≤ its
            // capacity pointers, librdkafka writes at most `n` of them, and `set_len` covers
            // only those written. Each message returned is ours, destroyed once by
            // `Batch::clear`.
            unsafe {
                let got = rd::rd_kafka_consume_batch_queue(
                    q.0.as_ptr(),
                    ms,
                    batch.messages.as_mut_ptr(),
                    n,
                );
                batch.messages.set_len(got.max(0) as usize);
            }
            batch.messages.len()
        };
        // Fetched messages first, without waiting; when there were none, wait for one (a
        // batch read with a wait returns only when full, or when the wait is over).
        if read(0, max) == 0 && wait_ms > 0 {
            read(wait_ms, 1);
        }
        batch.messages.len()
    }

    /// Destroys the queue (before the consumer goes); nothing is read from it after.
    pub fn close(&self) {
        if let Some(q) = self.queue.lock().take() {
            // SAFETY: the handle is ours and taken out: destroyed once, and no one reads it.
            unsafe { rd::rd_kafka_queue_destroy(q.0.as_ptr()) };
        }
    }
}

/// Messages read by [`MessageQueue::consume`], destroyed by [`Batch::clear`] (or when dropped).
/// A batch must be cleared before its consumer is dropped.
#[derive(Debug)]
pub struct Batch {
    messages: Vec<*mut rd::rd_kafka_message_t>,
    /// The last topic name read, as text (checked once, not per message).
    topic: String,
}

/// One message of a [`Batch`].
#[derive(Debug)]
pub enum Message<'a> {
    /// A message of a partition.
    Data {
        /// Its topic.
        topic: &'a str,
        /// Its partition.
        partition: i32,
        /// Its offset.
        offset: i64,
        /// Its value (empty when it has none).
        payload: &'a [u8],
    },
    /// An error of a partition (as the consumer reports it).
    Error(KafkaError),
}

impl Batch {
    /// Room for `n` messages.
    pub fn with_capacity(n: usize) -> Self {
        Self {
            messages: Vec::with_capacity(n),
            topic: String::new(),
        }
    }

    /// Messages read and not yet cleared.
    pub fn len(&self) -> usize {
        self.messages.len()
    }

    /// Whether it holds no message.
    pub fn is_empty(&self) -> bool {
        self.messages.is_empty()
    }

    /// The `i`th message.
    pub fn get(&mut self, i: usize) -> Message<'_> {
        let m = self.messages[i];
        // SAFETY: `m` came from librdkafka and is not yet destroyed (only `clear` destroys,
        // and empties the list); its topic handle and payload live as long as it, and so as
        // long as the borrow of `self` the message is returned under.
        unsafe {
            let m = &*m;
            if m.err != RDKafkaRespErr::RD_KAFKA_RESP_ERR_NO_ERROR {
                return Message::Error(match m.err {
                    RDKafkaRespErr::RD_KAFKA_RESP_ERR__PARTITION_EOF => {
                        KafkaError::PartitionEOF(m.partition)
                    }
                    e => KafkaError::MessageConsumption(e.into()),
                });
            }
            let name = std::ffi::CStr::from_ptr(rd::rd_kafka_topic_name(m.rkt)).to_bytes();
            if name != self.topic.as_bytes() {
                // (Kafka's topic names are ASCII.)
                self.topic = String::from_utf8_lossy(name).into_owned();
            }
            let payload = if m.payload.is_null() {
                &[][..]
            } else {
                std::slice::from_raw_parts(m.payload as *const u8, m.len)
            };
            Message::Data {
                topic: &self.topic,
                partition: m.partition,
                offset: m.offset,
                payload,
            }
        }
    }

    /// Destroys the messages read.
    pub fn clear(&mut self) {
        for m in self.messages.drain(..) {
            // SAFETY: each pointer came from librdkafka and is destroyed once: drained.
            unsafe { rd::rd_kafka_message_destroy(m) };
        }
    }
}

impl Drop for Batch {
    fn drop(&mut self) {
        self.clear();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rdkafka::config::ClientConfig;
    use rdkafka::consumer::{Consumer, Rebalance};
    use rdkafka::mocking::MockCluster;
    use rdkafka::producer::{BaseProducer, BaseRecord, Producer};
    use rdkafka::{ClientContext, Offset, TopicPartitionList};
    use std::sync::Arc;

    /// Forwards partitions as they are assigned, as the source's context does.
    struct Forwarding(Arc<MessageQueue>);
    impl ClientContext for Forwarding {}
    impl ConsumerContext for Forwarding {
        fn pre_rebalance(&self, c: &BaseConsumer<Self>, r: &Rebalance<'_>) {
            if let Rebalance::Assign(tpl) = r {
                for e in tpl.elements() {
                    assert!(self.0.forward(c, e.topic(), e.partition()));
                }
            }
        }
    }

    fn consumer(brokers: &str, reset: &str, queue: &Arc<MessageQueue>) -> BaseConsumer<Forwarding> {
        let c: BaseConsumer<Forwarding> = ClientConfig::new()
            .set("bootstrap.servers", brokers)
            .set("group.id", "queue-test")
            .set("auto.offset.reset", reset)
            .set("enable.auto.commit", "false")
            .create_with_context(Forwarding(queue.clone()))
            .unwrap();
        queue.open(&c);
        c
    }

    /// Scenario: 300 messages over three partitions (one with no payload), read by a
    /// subscribed consumer whose partitions are forwarded to the queue as they are assigned,
    /// in batches of at most 64.
    /// Guarantees: every message is read once, through the queue (none through `poll`), with
    /// its topic, partition, offset and payload, in offset order within its partition; a
    /// closed queue reads nothing and forwards nothing.
    #[test]
    fn assigned_partitions_are_read_in_batches() {
        let mock = MockCluster::new(1).unwrap();
        mock.create_topic("q_spans", 3, 1).unwrap();
        let producer: BaseProducer = ClientConfig::new()
            .set("bootstrap.servers", mock.bootstrap_servers())
            .create()
            .unwrap();
        for i in 0..300u32 {
            let body = format!("m{i}");
            let mut rec = BaseRecord::<(), [u8]>::to("q_spans").partition((i % 3) as i32);
            if i != 7 {
                rec = rec.payload(body.as_bytes());
            }
            producer.send(rec).map_err(|(e, _)| e).unwrap();
        }
        producer.flush(Duration::from_secs(10)).unwrap();
        let queue = Arc::new(MessageQueue::unopened());
        let c = consumer(&mock.bootstrap_servers(), "earliest", &queue);
        c.subscribe(&["q_spans"]).unwrap();
        let mut batch = Batch::with_capacity(64);
        let mut seen: Vec<(i32, i64, String)> = Vec::new();
        let mut largest = 0;
        let started = std::time::Instant::now();
        while seen.len() < 300 && started.elapsed() < Duration::from_secs(30) {
            assert!(
                c.poll(Duration::ZERO).is_none_or(|r| r.is_err()),
                "no message comes through poll"
            );
            largest = largest.max(queue.consume(&mut batch, Duration::from_millis(50)));
            for i in 0..batch.len() {
                match batch.get(i) {
                    Message::Data {
                        topic,
                        partition,
                        offset,
                        payload,
                    } => {
                        assert_eq!(topic, "q_spans");
                        seen.push((
                            partition,
                            offset,
                            String::from_utf8(payload.to_vec()).unwrap(),
                        ));
                    }
                    Message::Error(e) => panic!("{e}"),
                }
            }
            batch.clear();
        }
        assert_eq!(seen.len(), 300);
        assert!(largest > 1 && largest <= 64, "batches of {largest}");
        for p in 0..3 {
            let offsets: Vec<i64> = seen.iter().filter(|m| m.0 == p).map(|m| m.1).collect();
            assert_eq!(offsets, (0..100).collect::<Vec<i64>>(), "partition {p}");
        }
        let mut bodies: Vec<String> = seen.into_iter().map(|m| m.2).collect();
        bodies.sort();
        let mut want: Vec<String> = (0..300)
            .filter(|&i| i != 7)
            .map(|i| format!("m{i}"))
            .collect();
        want.push(String::new());
        want.sort();
        assert_eq!(bodies, want);
        queue.close();
        assert_eq!(queue.consume(&mut batch, Duration::from_millis(10)), 0);
        assert!(!queue.forward(&c, "q_spans", 0));
    }

    /// Scenario: a partition assigned at an offset past its end, with no reset allowed.
    /// Guarantees: the partition's error comes through the queue as an error, not a message;
    /// an empty queue waits about as long as asked, and no longer.
    #[test]
    fn a_partition_error_is_read_as_an_error() {
        let mock = MockCluster::new(1).unwrap();
        mock.create_topic("q_err_spans", 1, 1).unwrap();
        let queue = Arc::new(MessageQueue::unopened());
        let c = consumer(&mock.bootstrap_servers(), "error", &queue);
        let started = std::time::Instant::now();
        let mut batch = Batch::with_capacity(8);
        assert_eq!(queue.consume(&mut batch, Duration::from_millis(200)), 0);
        let waited = started.elapsed();
        assert!(waited >= Duration::from_millis(150), "{waited:?}");
        assert!(queue.forward(&c, "q_err_spans", 0));
        let mut tpl = TopicPartitionList::new();
        tpl.add_partition_offset("q_err_spans", 0, Offset::Offset(1000))
            .unwrap();
        c.assign(&tpl).unwrap();
        let mut error = None;
        while error.is_none() && started.elapsed() < Duration::from_secs(30) {
            let _ = c.poll(Duration::ZERO);
            queue.consume(&mut batch, Duration::from_millis(50));
            for i in 0..batch.len() {
                match batch.get(i) {
                    Message::Error(e) => error = Some(e.to_string()),
                    Message::Data { offset, .. } => panic!("a message at {offset}"),
                }
            }
            batch.clear();
        }
        let e = error.expect("an error through the queue");
        assert!(e.contains("offset") || e.contains("Offset"), "{e}");
        queue.close();
    }
}
