//! The source's messages arrive on a queue of their own, read in batches.
//!
//! rdkafka's safe `poll` hands over one message per call, and pays per message for what
//! librdkafka does per call: an event wrapped and reference counted, a clock read, the queue's
//! poll bookkeeping (`--bin kafka`: a bare consumer's polling thread spends 0.29–0.48 s on
//! 600 000 records that way, 0.14–0.23 s reading the same in batches). So each assigned
//! partition's messages are forwarded here (before the partition is assigned, so none reach
//! the consumer queue first) and read with `rd_kafka_consume_batch_queue`, which also moves
//! each partition's position once per batch rather than once per message. (Serving them
//! through librdkafka's consume callback instead, which moves the position per message, cost
//! the source thread and the fetch thread each about half as much again: measured, and
//! dropped.) Rebalances, statistics, errors and commit results stay on the consumer queue,
//! served by `poll`; an event arriving there [wakes](MessageQueue::wake) a read waiting here.
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

/// A queue of the consumer's own for its messages. Open it on the consumer before the first
/// poll (which may assign partitions), and [close](MessageQueue::close) it before the consumer is dropped:
/// librdkafka requires its queues destroyed first (the consumer's destruction waits for
/// them: a queue never closed is leaked, and the drop of its consumer hangs).
pub struct MessageQueue {
    /// `None` until opened, and once closed.
    open: parking_lot::RwLock<Option<Open>>,
    /// The offset each partition was last sought back to, for an error there.
    sought: parking_lot::Mutex<std::collections::HashMap<(String, i32), i64>>,
    /// Partitions whose position is past an error at an offset not read yet (the error
    /// repeated there, and was not sought back again): a pause seeks them back to it.
    past_error: parking_lot::Mutex<std::collections::HashMap<(String, i32), i64>>,
    /// How many partitions `past_error` holds (read without its lock, per message).
    past_errors: std::sync::atomic::AtomicUsize,
    /// A wake not yet seen by a read.
    woken: std::sync::atomic::AtomicBool,
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
            sought: Default::default(),
            past_error: Default::default(),
            past_errors: Default::default(),
            woken: Default::default(),
        }
    }

    /// Opens the queue on `consumer`'s client (before it subscribes). Opening again does
    /// nothing.
    pub fn open<C: ConsumerContext>(&self, consumer: &BaseConsumer<C>) {
        if self.open.read().is_some() {
            return;
        }
        let rk = client_of(consumer);
        // (Made before the lock is taken: getting the consumer queue takes that queue's lock,
        // under which librdkafka calls the non-empty callback, which takes ours.)
        // SAFETY: the client is alive (the consumer is borrowed). Both handles are ours,
        // destroyed once: in `close`, or here when not kept.
        let (messages, events) = unsafe {
            (
                rd::rd_kafka_queue_new(rk),
                rd::rd_kafka_queue_get_consumer(rk),
            )
        };
        let made = NonNull::new(messages).map(|m| Open {
            messages: QueuePtr(m),
            events: NonNull::new(events).map(QueuePtr),
            client: rk as usize,
        });
        let mut open = self.open.write();
        if open.is_none() && made.is_some() {
            *open = made;
            return;
        }
        drop(open);
        // SAFETY: made here and not kept (opened already, or the queue could not be made).
        unsafe {
            if let Some(o) = made {
                destroy(o);
            } else if !events.is_null() {
                rd::rd_kafka_queue_destroy(events);
            }
        }
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
        // Noted first: a wake that lands before a read has begun to wait (the queue's own
        // flag is used up by a read that does not wait) still ends that wait.
        self.woken.store(true, std::sync::atomic::Ordering::SeqCst);
        // (Recursive: librdkafka may call back on the thread that holds the lock to consume.)
        if let Some(o) = self.open.read_recursive().as_ref() {
            // SAFETY: the handle is open (the lock is held: `close` cannot destroy it), and
            // yielding a queue touches only the queue, which our handle keeps alive.
            unsafe { rd::rd_kafka_queue_yield(o.messages.0.as_ptr()) };
        }
    }

    /// Hands `f` the messages queued, up to `max`, waiting at most `wait` for the first when
    /// there is none (a [wake](MessageQueue::wake) ends the wait); how many it was handed.
    ///
    /// They are read in one batch (`rd_kafka_consume_batch_queue`), which moves each
    /// partition's position past its newest message of the batch, an error included. So a
    /// partition whose newest was an error at an offset not read yet is sought back to it (once
    /// per offset: an error that repeats there is not chased, but remembered until the
    /// partition's data comes, and [`MessageQueue::paused`] seeks it back after a pause), or a
    /// later pause, which resumes from the position, would skip that message. A partition paused by `f` during the batch
    /// is still handed the rest of the batch (read before the pause; the position is past
    /// them). A panic in `f` destroys the messages not handed over and reaches the caller.
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
        let mut batch = Batch {
            messages: Vec::with_capacity(max.max(1)),
            next: 0,
        };
        let wait_ms = wait.as_millis().min(i32::MAX as u128) as i32;
        let mut read = |ms: i32, n: usize| {
            // SAFETY: the queue is open (the lock is held) and the client alive (borrowed);
            // the array has room for `n` ≤ its capacity pointers, librdkafka writes at most
            // `n` of them, and `set_len` covers only those written. Each message returned is
            // ours, destroyed once by `Batch`.
            unsafe {
                let got = rd::rd_kafka_consume_batch_queue(
                    o.messages.0.as_ptr(),
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
        if read(0, max.max(1)) == 0
            && wait_ms > 0
            && !self.woken.swap(false, std::sync::atomic::Ordering::SeqCst)
        {
            read(wait_ms, 1);
        }
        let n = batch.messages.len();
        let mut topic = String::new();
        // Partitions whose newest message so far is an error at an offset not read yet.
        let mut errors: Vec<(String, i32, i64)> = Vec::new();
        while batch.next < n {
            let m = batch.messages[batch.next];
            batch.next += 1;
            // SAFETY: `m` came from librdkafka and is not yet destroyed (`Batch` destroys it
            // when dropped, after this use); its topic and payload live as long as it.
            let message = unsafe { message(&*m, &mut topic, &mut errors) };
            if let Message::Data {
                topic, partition, ..
            } = &message
                && self.past_errors.load(std::sync::atomic::Ordering::Relaxed) > 0
            {
                self.forget_error(topic, *partition);
            }
            f(message);
        }
        drop(batch);
        for (t, p, offset) in errors {
            {
                let mut past = self.past_error.lock();
                past.insert((t.clone(), p), offset);
                self.past_errors
                    .store(past.len(), std::sync::atomic::Ordering::Relaxed);
            }
            let mut sought = self.sought.lock();
            if sought.get(&(t.clone(), p)) == Some(&offset) {
                continue;
            }
            if let Err(e) = consumer.seek(&t, p, rdkafka::Offset::Offset(offset), SEEK_WAIT) {
                tracing::warn!(topic = %t, partition = p, offset, error = %e, "seeking back to a partition's error");
            }
            sought.insert((t, p), offset);
        }
        n
    }

    /// For a partition just paused: when its position is past an error at an offset not read
    /// yet, seeks it back there (without waiting), so that the resume reads that message.
    pub fn paused<C: ConsumerContext>(
        &self,
        consumer: &BaseConsumer<C>,
        topic: &str,
        partition: i32,
    ) {
        if self.past_errors.load(std::sync::atomic::Ordering::Relaxed) == 0 {
            return;
        }
        let at = self
            .past_error
            .lock()
            .get(&(topic.to_string(), partition))
            .copied();
        if let Some(offset) = at
            && let Err(e) = consumer.seek(
                topic,
                partition,
                rdkafka::Offset::Offset(offset),
                Duration::ZERO,
            )
        {
            tracing::warn!(%topic, partition, offset, error = %e, "seeking a paused partition back to its error");
        }
    }

    /// Forgets what is remembered of partitions that were revoked.
    pub fn forget(&self, parts: &[(String, i32)]) {
        let mut sought = self.sought.lock();
        for (t, p) in parts {
            sought.remove(&(t.clone(), *p));
            self.forget_error(t, *p);
        }
    }

    fn forget_error(&self, topic: &str, partition: i32) {
        let mut past = self.past_error.lock();
        if past.remove(&(topic.to_string(), partition)).is_some() {
            self.past_errors
                .store(past.len(), std::sync::atomic::Ordering::Relaxed);
        }
    }

    /// Destroys the queue (before the consumer goes); nothing is read from it after, and
    /// partitions still forwarded to it lose what they fetch (librdkafka drops what reaches a
    /// destroyed queue).
    pub fn close<C: ConsumerContext>(&self, consumer: &BaseConsumer<C>) {
        // Taken out under the lock, destroyed after it: destroying the consumer queue's handle
        // takes that queue's lock, under which librdkafka calls the non-empty callback, which
        // takes ours (a wake would wait on us while we waited on it).
        let taken = {
            let mut open = self.open.write();
            if Self::of(&open, consumer).is_none() {
                return;
            }
            open.take()
        };
        if let Some(o) = taken {
            // SAFETY: the handles are ours and taken out under the lock: no one can reach them
            // after, and they are destroyed once; the client is alive (borrowed).
            unsafe { destroy(o) };
        }
    }
}

/// Destroys an open queue's handles.
///
/// # Safety
/// The handles must be live, and not used after.
unsafe fn destroy(o: Open) {
    // SAFETY: the caller's.
    unsafe {
        rd::rd_kafka_queue_destroy(o.messages.0.as_ptr());
        if let Some(e) = o.events {
            rd::rd_kafka_queue_destroy(e.0.as_ptr());
        }
    }
}

/// How long seeking a partition back to its error may take.
const SEEK_WAIT: Duration = Duration::from_secs(1);

/// Messages read in one batch, destroyed when dropped (those not yet handed over too, as
/// when the closure panics).
struct Batch {
    messages: Vec<*mut rd::rd_kafka_message_t>,
    /// The first not yet handed over.
    next: usize,
}

impl Drop for Batch {
    fn drop(&mut self) {
        for m in self.messages.drain(..) {
            // SAFETY: each pointer came from librdkafka and is destroyed once: drained.
            unsafe { rd::rd_kafka_message_destroy(m) };
        }
    }
}

/// `m` as a [`Message`] (its topic's name kept in `topic`, checked once, not per message),
/// noting in `errors` the partitions whose newest message is an error.
///
/// # Safety
/// `m` must be a live message from librdkafka; the result borrows it and `topic`.
unsafe fn message<'a>(
    m: &'a rd::rd_kafka_message_t,
    topic: &'a mut String,
    errors: &mut Vec<(String, i32, i64)>,
) -> Message<'a> {
    // SAFETY: the caller's: `m` is live, and so are its topic handle and payload.
    unsafe {
        let name = if m.rkt.is_null() {
            &[][..]
        } else {
            std::ffi::CStr::from_ptr(rd::rd_kafka_topic_name(m.rkt)).to_bytes()
        };
        if !errors.is_empty() {
            // A message after an error of its partition: the position is past it.
            errors.retain(|(t, p, _)| !(*p == m.partition && t.as_bytes() == name));
        }
        if m.err != RDKafkaRespErr::RD_KAFKA_RESP_ERR_NO_ERROR {
            if !name.is_empty() && m.offset >= 0 {
                errors.push((
                    String::from_utf8_lossy(name).into_owned(),
                    m.partition,
                    m.offset,
                ));
            }
            return Message::Error(match m.err {
                RDKafkaRespErr::RD_KAFKA_RESP_ERR__PARTITION_EOF => {
                    KafkaError::PartitionEOF(m.partition)
                }
                e => KafkaError::MessageConsumption(e.into()),
            });
        }
        if name != topic.as_bytes() {
            // (Kafka's topic names are ASCII.)
            *topic = String::from_utf8_lossy(name).into_owned();
        }
        let payload = if m.payload.is_null() {
            &[][..]
        } else {
            std::slice::from_raw_parts(m.payload as *const u8, m.len)
        };
        Message::Data {
            topic: topic.as_str(),
            partition: m.partition,
            offset: m.offset,
            payload,
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
    use std::panic::AssertUnwindSafe;
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
    /// (as the source does when the engine is full) and resumes it once that batch (of at
    /// most 30) is over; and so on.
    /// Guarantees: what the batch read before the pause is still handed over (the source
    /// parks it), and after the resume the partition goes on after it: every message once, in
    /// order, no gap.
    #[test]
    fn a_paused_partition_resumes_after_what_was_handed_over() {
        let mock = MockCluster::new(1).unwrap();
        mock.create_topic("q_spans", 1, 1).unwrap();
        produce(&mock.bootstrap_servers(), "q_spans", 100, 1);
        let queue = Arc::new(MessageQueue::unopened());
        let c = consumer(&mock.bootstrap_servers(), "earliest", &queue);
        let _closing = Closing(&queue, &c);
        c.subscribe(&["q_spans"]).unwrap();
        let mut offsets = Vec::new();
        let (mut paused, mut pauses) = (false, 0);
        let started = Instant::now();
        while offsets.len() < 100 && started.elapsed() < Duration::from_secs(30) {
            let _ = c.poll(Duration::ZERO);
            queue.consume(&c, Duration::from_millis(50), 30, |m| {
                let Message::Data { offset, .. } = m else {
                    panic!("{m:?}")
                };
                offsets.push(offset);
                if offset % 10 == 9 && !paused {
                    c.pause(&c.assignment().unwrap()).unwrap();
                    paused = true;
                    pauses += 1;
                }
            });
            if paused {
                c.resume(&c.assignment().unwrap()).unwrap();
                paused = false;
            }
        }
        assert_eq!(offsets, (0..100).collect::<Vec<i64>>());
        assert!(pauses >= 2, "{pauses} pauses");
    }

    /// Scenario: the closure panics at the 4th of ten messages.
    /// Guarantees: the panic reaches the caller of `consume`; the messages not handed over
    /// are destroyed, not leaked (a leaked message would hang the consumer's drop, and so
    /// this test); reading goes on after the batch, never handing a message twice.
    #[test]
    fn a_panic_reaches_the_caller_and_leaks_nothing() {
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
        let until = Instant::now() + Duration::from_secs(1);
        while Instant::now() < until {
            let _ = c.poll(Duration::ZERO);
            queue.consume(&c, Duration::from_millis(50), 512, |m| {
                if let Message::Data { offset, .. } = m {
                    offsets.push(offset);
                }
            });
        }
        assert!(offsets.windows(2).all(|w| w[0] < w[1]), "{offsets:?}");
    }

    /// Scenario: a partition assigned at an offset past its end, with no reset allowed; then
    /// a read waiting 30 s, woken from another thread.
    /// Guarantees: the partition's error comes through the queue as an error; a wake ends a
    /// wait at once, and so does a wake that came before the read.
    #[test]
    fn an_error_is_handed_over_and_a_wake_ends_a_wait() {
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
        // A wake before the read (as when an event arrives while a batch is handled) ends the
        // read's wait too: the queue's own flag is used up by the read that does not wait.
        queue.wake();
        let started = Instant::now();
        assert_eq!(queue.consume(&c, Duration::from_secs(30), 8, |_| ()), 0);
        assert!(
            started.elapsed() < Duration::from_secs(20),
            "a wake is not lost"
        );
    }

    /// Scenario: 20 messages read; then the broker fails the next three fetches of the
    /// partition while 10 more are produced; after the second error the reader pauses the
    /// partition (telling the queue, as the source's pause does) and resumes it.
    /// Guarantees: the errors come through the queue, and the resumed partition goes on from
    /// the message not read yet (sought back after the first error, and after the pause for
    /// the repeated one): all 30 once, in order.
    #[test]
    fn an_error_leaves_the_position_at_the_message_not_read() {
        use rdkafka::types::RDKafkaApiKey;
        let mock = MockCluster::new(1).unwrap();
        mock.create_topic("q_spans", 1, 1).unwrap();
        produce(&mock.bootstrap_servers(), "q_spans", 20, 1);
        let queue = Arc::new(MessageQueue::unopened());
        let c = consumer(&mock.bootstrap_servers(), "earliest", &queue);
        let _closing = Closing(&queue, &c);
        c.subscribe(&["q_spans"]).unwrap();
        let mut offsets = Vec::new();
        let mut errors = 0;
        let started = Instant::now();
        let read = |offsets: &mut Vec<i64>, errors: &mut usize| {
            let _ = c.poll(Duration::ZERO);
            queue.consume(&c, Duration::from_millis(50), 512, |m| match m {
                Message::Data { offset, .. } => offsets.push(offset),
                Message::Error(_) => *errors += 1,
            });
        };
        while offsets.len() < 20 && started.elapsed() < Duration::from_secs(30) {
            read(&mut offsets, &mut errors);
        }
        mock.request_errors(
            RDKafkaApiKey::Fetch,
            &[RDKafkaRespErr::RD_KAFKA_RESP_ERR_UNKNOWN; 3],
        );
        produce(&mock.bootstrap_servers(), "q_spans", 10, 1);
        // Twice: the second error at the same offset is not sought back at once.
        while errors < 2 && started.elapsed() < Duration::from_secs(30) {
            read(&mut offsets, &mut errors);
        }
        assert!(errors >= 2, "the fetch errors came through the queue");
        let assignment = c.assignment().unwrap();
        c.pause(&assignment).unwrap();
        queue.paused(&c, "q_spans", 0);
        c.resume(&assignment).unwrap();
        while offsets.len() < 30 && started.elapsed() < Duration::from_secs(30) {
            read(&mut offsets, &mut errors);
        }
        assert_eq!(offsets, (0..30).collect::<Vec<i64>>());
    }
}
