//! The source's messages arrive on a queue of their own, served in batches.
//!
//! rdkafka's safe `poll` hands over one message per call, and pays per message for what
//! librdkafka does per call: an event wrapped and reference counted, a clock read, the queue's
//! poll bookkeeping (`--bin kafka`: a bare consumer's polling thread spends 0.29–0.48 s on
//! 600 000 records that way, 0.14–0.23 s reading the same in batches). So each assigned
//! partition's messages are forwarded here (before the partition is assigned, so none reach
//! the consumer queue first) and served with `rd_kafka_consume_callback_queue`: the queued
//! messages move out under one lock, and each is handed to a closure as librdkafka's own
//! consume path hands it over (a revoked or paused partition's stale messages dropped by the
//! version barrier, the application position moved by messages only, never by an error).
//! Rebalances, statistics, errors and commit results stay on the consumer queue, served by
//! `poll`; an event arriving there [wakes](MessageQueue::wake) a read waiting here.
//!
//! Every call that reaches librdkafka borrows the consumer it was opened on, so the client is
//! alive for its length; no message outlives the closure it is handed to.

// The one module of the source that calls librdkafka directly: each `unsafe` block says why
// it is sound, and `tests` run it on the mock cluster.
#![allow(unsafe_code)]

use rdkafka::bindings as rd;
use rdkafka::consumer::{BaseConsumer, Consumer, ConsumerContext};
use rdkafka::error::KafkaError;
use rdkafka::types::RDKafkaRespErr;
use std::ffi::c_void;
use std::panic::{AssertUnwindSafe, catch_unwind};
use std::ptr::NonNull;
use std::time::Duration;

/// A librdkafka queue handle.
struct QueuePtr(NonNull<rd::rd_kafka_queue_t>);

// SAFETY: librdkafka's queues are made to be used from any thread (their state is behind the
// queue's own lock); the handle is only a pointer to one.
unsafe impl Send for QueuePtr {}
// SAFETY: as above; every use through `&QueuePtr` is a librdkafka call that locks the queue.
unsafe impl Sync for QueuePtr {}

/// The handles of an open queue.
struct Open {
    /// Ours, where assigned partitions' messages are forwarded.
    messages: QueuePtr,
    /// The consumer queue (rebalances, statistics, errors), to see whether events wait.
    events: Option<QueuePtr>,
    /// The client both belong to (its address: calls with another consumer are refused).
    client: usize,
}

/// A queue of the consumer's own for its messages. Open it on the consumer before the
/// consumer subscribes, and [close](MessageQueue::close) it before the consumer is dropped:
/// librdkafka requires its queues destroyed first (the consumer's destruction waits for
/// them: a queue never closed is leaked, and the drop of its consumer hangs).
pub struct MessageQueue {
    /// `None` until opened, and once closed.
    open: parking_lot::RwLock<Option<Open>>,
}

impl std::fmt::Debug for MessageQueue {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MessageQueue").finish_non_exhaustive()
    }
}

/// One message handed over by [`MessageQueue::consume`].
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

fn client_of<C: ConsumerContext>(consumer: &BaseConsumer<C>) -> *mut rd::rd_kafka_t {
    consumer.client().native_ptr()
}

impl MessageQueue {
    /// A queue not yet open: [`MessageQueue::open`] it once the consumer exists (the
    /// consumer's context holds it, to forward partitions as they are assigned).
    pub fn unopened() -> Self {
        Self {
            open: parking_lot::RwLock::new(None),
        }
    }

    /// Opens the queue on `consumer`'s client (before it subscribes). Opening again does
    /// nothing.
    pub fn open<C: ConsumerContext>(&self, consumer: &BaseConsumer<C>) {
        let mut open = self.open.write();
        if open.is_some() {
            return;
        }
        let rk = client_of(consumer);
        // SAFETY: the client is alive (the consumer is borrowed). Both handles are ours,
        // destroyed once, in `close`.
        let (messages, events) = unsafe {
            (
                rd::rd_kafka_queue_new(rk),
                rd::rd_kafka_queue_get_consumer(rk),
            )
        };
        let Some(messages) = NonNull::new(messages) else {
            if let Some(e) = NonNull::new(events) {
                // SAFETY: the handle was just made, and is not kept.
                unsafe { rd::rd_kafka_queue_destroy(e.as_ptr()) };
            }
            return;
        };
        *open = Some(Open {
            messages: QueuePtr(messages),
            events: NonNull::new(events).map(QueuePtr),
            client: rk as usize,
        });
    }

    /// The open handles, when `consumer` is the one they were opened on.
    fn of<'q, C: ConsumerContext>(
        open: &'q Option<Open>,
        consumer: &BaseConsumer<C>,
    ) -> Option<&'q Open> {
        open.as_ref()
            .filter(|o| o.client == client_of(consumer) as usize)
    }

    /// Routes `topic`/`partition`'s messages here (call before the partition is assigned:
    /// a partition's messages then never reach the consumer queue). False when the queue is
    /// not open on `consumer`, or librdkafka has no such partition.
    pub fn forward<C: ConsumerContext>(
        &self,
        consumer: &BaseConsumer<C>,
        topic: &str,
        partition: i32,
    ) -> bool {
        let open = self.open.read();
        let (Some(o), Ok(name)) = (Self::of(&open, consumer), std::ffi::CString::new(topic)) else {
            return false;
        };
        // SAFETY: the client is alive (the consumer is borrowed) and `name` is a C string.
        // The partition's handle is destroyed here, once; forwarding keeps a reference of its
        // own to our queue, which is open (the lock is held).
        unsafe {
            let pq =
                rd::rd_kafka_queue_get_partition(client_of(consumer), name.as_ptr(), partition);
            if pq.is_null() {
                return false;
            }
            rd::rd_kafka_queue_forward(pq, o.messages.0.as_ptr());
            rd::rd_kafka_queue_destroy(pq);
        }
        true
    }

    /// Whether events (rebalances, statistics, errors, commit results) wait on the consumer
    /// queue, to be served by `poll`.
    pub fn events_waiting<C: ConsumerContext>(&self, consumer: &BaseConsumer<C>) -> bool {
        let open = self.open.read();
        match Self::of(&open, consumer).and_then(|o| o.events.as_ref()) {
            // SAFETY: the handle is open (the lock is held) and the client alive (borrowed).
            Some(e) => unsafe { rd::rd_kafka_queue_length(e.0.as_ptr()) > 0 },
            None => false,
        }
    }

    /// Ends a wait in [`MessageQueue::consume`] now (or the next wait, when none is under
    /// way): for the consumer queue's non-empty callback, from any thread.
    pub fn wake(&self) {
        // (Recursive: librdkafka may call back on the thread that holds the lock to consume.)
        if let Some(o) = self.open.read_recursive().as_ref() {
            // SAFETY: the handle is open (the lock is held: `close` cannot destroy it), and
            // yielding a queue touches only the queue, which our handle keeps alive.
            unsafe { rd::rd_kafka_queue_yield(o.messages.0.as_ptr()) };
        }
    }

    /// Hands `f` the messages queued, up to `max`, waiting at most `wait` for the first when
    /// there is none (a [wake](MessageQueue::wake) ends the wait); how many it was handed.
    /// A panic in `f` ends the batch (the messages not yet handed over stay queued) and is
    /// resumed once librdkafka is out of the way.
    pub fn consume<C: ConsumerContext>(
        &self,
        consumer: &BaseConsumer<C>,
        wait: Duration,
        max: usize,
        mut f: impl FnMut(Message<'_>),
    ) -> usize {
        let open = self.open.read();
        let Some(o) = Self::of(&open, consumer) else {
            return 0;
        };
        let mut serving = Serving {
            f: &mut f,
            rk: client_of(consumer),
            topic: String::new(),
            handed: 0,
            max: max.max(1),
            panic: None,
        };
        let wait_ms = wait.as_millis().min(i32::MAX as u128) as i32;
        // SAFETY: the queue is open (the lock is held) and the client alive (borrowed).
        // `serve_one` gets `serving` as its opaque pointer, which outlives the call, and is
        // called only within it, on this thread.
        unsafe {
            rd::rd_kafka_consume_callback_queue(
                o.messages.0.as_ptr(),
                wait_ms,
                Some(serve_one),
                (&mut serving as *mut Serving<'_>).cast::<c_void>(),
            );
        }
        drop(open);
        if let Some(p) = serving.panic {
            std::panic::resume_unwind(p);
        }
        serving.handed
    }

    /// Destroys the queue (before the consumer goes); nothing is read from it after, and
    /// partitions still forwarded to it lose what they fetch (librdkafka drops what reaches a
    /// destroyed queue).
    pub fn close<C: ConsumerContext>(&self, consumer: &BaseConsumer<C>) {
        let mut open = self.open.write();
        if Self::of(&open, consumer).is_none() {
            return;
        }
        let Some(o) = open.take() else { return };
        // SAFETY: the handles are ours, taken out under the lock: destroyed once, and no one
        // uses them after; the client is alive (borrowed).
        unsafe {
            rd::rd_kafka_queue_destroy(o.messages.0.as_ptr());
            if let Some(e) = o.events {
                rd::rd_kafka_queue_destroy(e.0.as_ptr());
            }
        }
    }
}

/// What [`serve_one`] works with, for one [`MessageQueue::consume`].
struct Serving<'f> {
    f: &'f mut dyn FnMut(Message<'_>),
    rk: *mut rd::rd_kafka_t,
    /// The last topic name read, as text (checked once, not per message).
    topic: String,
    handed: usize,
    max: usize,
    panic: Option<Box<dyn std::any::Any + Send>>,
}

/// librdkafka's consume callback: one message to the closure.
unsafe extern "C" fn serve_one(m: *mut rd::rd_kafka_message_t, opaque: *mut c_void) {
    // SAFETY: `opaque` is the `Serving` that `consume` passed, alive and not otherwise
    // borrowed during the call; `m` is a message librdkafka owns for the length of this call
    // (it destroys it after), and so are its topic and payload.
    unsafe {
        let s = &mut *opaque.cast::<Serving<'_>>();
        if s.panic.is_some() || s.handed >= s.max {
            // (Served after a yield asked to stop: cannot happen, as librdkafka stops at once.)
            return;
        }
        let m = &*m;
        let message = if m.err != RDKafkaRespErr::RD_KAFKA_RESP_ERR_NO_ERROR {
            Message::Error(match m.err {
                RDKafkaRespErr::RD_KAFKA_RESP_ERR__PARTITION_EOF => {
                    KafkaError::PartitionEOF(m.partition)
                }
                e => KafkaError::MessageConsumption(e.into()),
            })
        } else {
            let name = std::ffi::CStr::from_ptr(rd::rd_kafka_topic_name(m.rkt)).to_bytes();
            if name != s.topic.as_bytes() {
                // (Kafka's topic names are ASCII.)
                s.topic = String::from_utf8_lossy(name).into_owned();
            }
            let payload = if m.payload.is_null() {
                &[][..]
            } else {
                std::slice::from_raw_parts(m.payload as *const u8, m.len)
            };
            Message::Data {
                topic: &s.topic,
                partition: m.partition,
                offset: m.offset,
                payload,
            }
        };
        s.handed += 1;
        let f = &mut s.f;
        if let Err(p) = catch_unwind(AssertUnwindSafe(|| f(message))) {
            s.panic = Some(p);
        }
        if s.panic.is_some() || s.handed >= s.max {
            // Stop: librdkafka puts the messages not yet served back at the queue's head.
            rd::rd_kafka_yield(s.rk);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rdkafka::config::ClientConfig;
    use rdkafka::consumer::Rebalance;
    use rdkafka::mocking::MockCluster;
    use rdkafka::producer::{BaseProducer, BaseRecord, Producer};
    use rdkafka::{ClientContext, Offset, TopicPartitionList};
    use std::sync::Arc;
    use std::time::Instant;

    /// Closes the queue when dropped (declared after the consumer, so before it goes): a
    /// failing test then fails instead of hanging in the consumer's drop.
    struct Closing<'a, C: ConsumerContext>(&'a MessageQueue, &'a BaseConsumer<C>);
    impl<C: ConsumerContext> Drop for Closing<'_, C> {
        fn drop(&mut self) {
            self.0.close(self.1);
        }
    }

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

    /// `n` messages `m{i}` to `topic`, message `i` to partition `i % partitions` (so it is
    /// at offset `i / partitions`); message 7 has no value.
    fn produce(brokers: &str, topic: &str, n: u32, partitions: u32) {
        let producer: BaseProducer = ClientConfig::new()
            .set("bootstrap.servers", brokers)
            .create()
            .unwrap();
        for i in 0..n {
            let body = format!("m{i}");
            let mut rec = BaseRecord::<(), [u8]>::to(topic).partition((i % partitions) as i32);
            if i != 7 {
                rec = rec.payload(body.as_bytes());
            }
            producer.send(rec).map_err(|(e, _)| e).unwrap();
        }
        producer.flush(Duration::from_secs(10)).unwrap();
    }

    /// Reads until `want` messages were handed over (or 30 s), serving the consumer's events
    /// between batches; `each` sees every message, with the consumer.
    fn read_all<C: ConsumerContext>(
        c: &BaseConsumer<C>,
        queue: &MessageQueue,
        want: usize,
        max: usize,
        mut each: impl FnMut(&BaseConsumer<C>, i32, i64, &[u8]),
    ) -> usize {
        let (mut got, mut largest) = (0, 0);
        let started = Instant::now();
        while got < want && started.elapsed() < Duration::from_secs(30) {
            assert!(
                c.poll(Duration::ZERO).is_none_or(|r| r.is_err()),
                "no message comes through poll"
            );
            let n = queue.consume(c, Duration::from_millis(50), max, |m| match m {
                Message::Data {
                    topic,
                    partition,
                    offset,
                    payload,
                } => {
                    assert_eq!(topic, "q_spans");
                    each(c, partition, offset, payload);
                }
                Message::Error(e) => panic!("{e}"),
            });
            got += n;
            largest = largest.max(n);
        }
        largest
    }

    /// Scenario: 300 messages over three partitions (one without a value), read by a
    /// subscribed consumer whose partitions are forwarded as they are assigned, at most 64
    /// at a time.
    /// Guarantees: every message is handed over once, through the queue (none through
    /// `poll`), with its topic, partition, offset and value, in offset order within its
    /// partition, in batches of at most 64; a closed queue, or another consumer, reads and
    /// forwards nothing.
    #[test]
    fn assigned_partitions_are_read_in_batches() {
        let mock = MockCluster::new(1).unwrap();
        mock.create_topic("q_spans", 3, 1).unwrap();
        produce(&mock.bootstrap_servers(), "q_spans", 300, 3);
        let queue = Arc::new(MessageQueue::unopened());
        let c = consumer(&mock.bootstrap_servers(), "earliest", &queue);
        let _closing = Closing(&queue, &c);
        c.subscribe(&["q_spans"]).unwrap();
        let mut next = [0i64; 3];
        let largest = read_all(&c, &queue, 300, 64, |_, p, offset, body| {
            assert_eq!(
                offset, next[p as usize],
                "partition {p} in order, once each"
            );
            next[p as usize] += 1;
            let i = 3 * offset + p as i64;
            let want = if i == 7 {
                String::new()
            } else {
                format!("m{i}")
            };
            assert_eq!(body, want.as_bytes());
        });
        assert_eq!(next, [100, 100, 100]);
        assert!(largest > 1 && largest <= 64, "batches of {largest}");
        let other = Arc::new(MessageQueue::unopened());
        let c2 = consumer(&mock.bootstrap_servers(), "earliest", &other);
        let _closing2 = Closing(&other, &c2);
        assert!(
            !queue.forward(&c2, "q_spans", 0),
            "not opened on that consumer"
        );
        assert_eq!(queue.consume(&c2, Duration::ZERO, 8, |_| ()), 0);
        queue.close(&c);
        assert_eq!(queue.consume(&c, Duration::from_millis(10), 8, |_| ()), 0);
        assert!(!queue.forward(&c, "q_spans", 0));
        queue.wake();
    }

    /// Scenario: one partition of 100 messages; the reader pauses it after its 10th message
    /// (as the source does when the engine is full) and resumes it once that batch is over.
    /// Guarantees: nothing of the partition is handed over while it is paused (what was
    /// fetched before is dropped, not handed over), and after the resume it goes on from the
    /// 11th message: every message once, in order, no gap.
    #[test]
    fn a_paused_partition_hands_over_nothing_and_resumes_where_it_stopped() {
        let mock = MockCluster::new(1).unwrap();
        mock.create_topic("q_spans", 1, 1).unwrap();
        produce(&mock.bootstrap_servers(), "q_spans", 100, 1);
        let queue = Arc::new(MessageQueue::unopened());
        let c = consumer(&mock.bootstrap_servers(), "earliest", &queue);
        let _closing = Closing(&queue, &c);
        c.subscribe(&["q_spans"]).unwrap();
        let mut offsets = Vec::new();
        let mut paused = false;
        let started = Instant::now();
        while offsets.len() < 100 && started.elapsed() < Duration::from_secs(30) {
            let _ = c.poll(Duration::ZERO);
            queue.consume(&c, Duration::from_millis(50), 512, |m| {
                let Message::Data { offset, .. } = m else {
                    panic!("{m:?}")
                };
                assert!(!paused, "offset {offset} handed over while paused");
                offsets.push(offset);
                if offset == 9 {
                    c.pause(&c.assignment().unwrap()).unwrap();
                    paused = true;
                }
            });
            if paused {
                c.resume(&c.assignment().unwrap()).unwrap();
                paused = false;
            }
        }
        assert_eq!(offsets, (0..100).collect::<Vec<i64>>());
    }

    /// Scenario: the closure panics at the 4th of ten messages.
    /// Guarantees: the panic reaches the caller of `consume`; the messages after it stay
    /// queued, and the next read hands them over from the 5th, in order.
    #[test]
    fn a_panic_ends_the_batch_and_leaves_the_rest_queued() {
        let mock = MockCluster::new(1).unwrap();
        mock.create_topic("q_spans", 1, 1).unwrap();
        produce(&mock.bootstrap_servers(), "q_spans", 10, 1);
        let queue = Arc::new(MessageQueue::unopened());
        let c = consumer(&mock.bootstrap_servers(), "earliest", &queue);
        let _closing = Closing(&queue, &c);
        c.subscribe(&["q_spans"]).unwrap();
        let mut offsets = Vec::new();
        let started = Instant::now();
        let mut panicked = false;
        while !panicked && started.elapsed() < Duration::from_secs(30) {
            let _ = c.poll(Duration::ZERO);
            panicked = std::panic::catch_unwind(AssertUnwindSafe(|| {
                queue.consume(&c, Duration::from_millis(50), 512, |m| {
                    let Message::Data { offset, .. } = m else {
                        panic!("{m:?}")
                    };
                    offsets.push(offset);
                    assert!(offset != 3, "the closure's own panic");
                })
            }))
            .is_err();
        }
        assert!(panicked);
        assert_eq!(offsets, [0, 1, 2, 3]);
        while offsets.len() < 10 && started.elapsed() < Duration::from_secs(30) {
            let _ = c.poll(Duration::ZERO);
            queue.consume(&c, Duration::from_millis(50), 512, |m| {
                if let Message::Data { offset, .. } = m {
                    offsets.push(offset);
                }
            });
        }
        assert_eq!(offsets, (0..10).collect::<Vec<i64>>());
    }

    /// Scenario: a partition assigned at an offset past its end, with no reset allowed; then
    /// a read waiting 30 s, woken from another thread.
    /// Guarantees: the partition's error comes through the queue as an error, and does not
    /// move the partition's position (librdkafka's batch read would: the next fetch after a
    /// pause would skip a message); a wake ends a wait at once.
    #[test]
    fn an_error_is_handed_over_and_moves_no_position_and_a_wake_ends_a_wait() {
        let mock = MockCluster::new(1).unwrap();
        mock.create_topic("q_err_spans", 1, 1).unwrap();
        let queue = Arc::new(MessageQueue::unopened());
        let c = consumer(&mock.bootstrap_servers(), "error", &queue);
        let _closing = Closing(&queue, &c);
        assert!(queue.forward(&c, "q_err_spans", 0));
        let mut tpl = TopicPartitionList::new();
        tpl.add_partition_offset("q_err_spans", 0, Offset::Offset(1000))
            .unwrap();
        c.assign(&tpl).unwrap();
        let position = || {
            c.position()
                .unwrap()
                .find_partition("q_err_spans", 0)
                .map(|e| e.offset())
        };
        let before = position();
        let mut error = None;
        let started = Instant::now();
        while error.is_none() && started.elapsed() < Duration::from_secs(30) {
            let _ = c.poll(Duration::ZERO);
            queue.consume(&c, Duration::from_millis(50), 8, |m| match m {
                Message::Error(e) => error = Some(e.to_string()),
                Message::Data { offset, .. } => panic!("a message at {offset}"),
            });
        }
        let e = error.expect("an error through the queue");
        assert!(e.contains("offset") || e.contains("Offset"), "{e}");
        assert_eq!(position(), before, "an error moves no position");
        let waker = {
            let q = queue.clone();
            std::thread::spawn(move || {
                std::thread::sleep(Duration::from_millis(200));
                q.wake();
            })
        };
        let started = Instant::now();
        assert_eq!(queue.consume(&c, Duration::from_secs(30), 8, |_| ()), 0);
        assert!(
            started.elapsed() < Duration::from_secs(20),
            "woken, not timed out"
        );
        waker.join().unwrap();
    }
}
