//! The sink writer thread: drains control events from the outbox's queue into every configured
//! sink (JSON lines on stdout or a file, the Kafka control topic), and flushes at shutdown.

use crate::hooks::outbox::{DecisionStore, SINK_QUEUE};
use std::io::Write;
use std::sync::Arc;
use std::sync::atomic::Ordering::Relaxed;
use std::sync::mpsc::{Receiver, RecvTimeoutError, SyncSender, sync_channel};
use std::thread::JoinHandle;
use std::time::Duration;
use trike_sinks::kafka::{KafkaSink, KafkaSinkConfig, ensure_topic};
use trike_sinks::{ControlEvent, JsonLines, SinkConfig};

/// The sink writer thread: drains control events into every configured sink.
#[derive(Debug)]
pub struct SinkWriter {
    thread: Option<JoinHandle<()>>,
}

enum Out {
    Lines(JsonLines<Box<dyn Write + Send>>),
    Kafka(KafkaSink),
}

impl SinkWriter {
    /// Opens the sinks (creating the Kafka control topic if missing) and starts the writer;
    /// returns it and the queue's sending side.
    pub fn start(
        sinks: &[SinkConfig],
        kafka: Option<KafkaSinkConfig>,
        store: Arc<DecisionStore>,
    ) -> std::io::Result<(Self, SyncSender<ControlEvent>)> {
        let mut outs: Vec<Out> = Vec::new();
        for s in sinks {
            match s {
                SinkConfig::Stdout => {
                    outs.push(Out::Lines(JsonLines::new(Box::new(std::io::stdout()))))
                }
                SinkConfig::File { path } => {
                    let f = std::fs::OpenOptions::new()
                        .create(true)
                        .append(true)
                        .open(path)?;
                    outs.push(Out::Lines(JsonLines::new(Box::new(f))));
                }
                SinkConfig::Kafka => {
                    let cfg = kafka
                        .clone()
                        .ok_or_else(|| std::io::Error::other("kafka sink without kafka.brokers"))?;
                    if let Err(e) = ensure_topic(&cfg) {
                        // Brokers without topic creation rights (or test brokers) still work
                        // when the topic exists.
                        tracing::warn!(topic = %cfg.topic, error = %e, "could not create the control topic; producing anyway");
                    }
                    let sink = KafkaSink::new(&cfg, store.kafka.clone())
                        .map_err(|e| std::io::Error::other(format!("kafka producer: {e}")))?;
                    outs.push(Out::Kafka(sink));
                }
            }
        }
        let (tx, rx) = sync_channel(SINK_QUEUE);
        let thread = std::thread::Builder::new()
            .name("trike-sinks".into())
            .spawn(move || write_all(rx, outs, &store))?;
        Ok((
            Self {
                thread: Some(thread),
            },
            tx,
        ))
    }

    /// Waits for the queue to drain (every sender must be dropped first).
    pub fn join(mut self) {
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// How often events whose Kafka delivery failed are sent again.
const RESEND_EVERY: Duration = Duration::from_secs(1);

fn write_all(rx: Receiver<ControlEvent>, mut outs: Vec<Out>, store: &DecisionStore) {
    let mut last_resend = std::time::Instant::now();
    loop {
        if last_resend.elapsed() >= RESEND_EVERY {
            last_resend = std::time::Instant::now();
            for o in &outs {
                if let Out::Kafka(k) = o {
                    let n = k.resend_failed();
                    if n > 0 {
                        tracing::warn!(events = n, "sending undelivered control events again");
                    }
                }
            }
        }
        let first = match rx.recv_timeout(RESEND_EVERY) {
            Ok(e) => e,
            Err(RecvTimeoutError::Timeout) => continue,
            Err(RecvTimeoutError::Disconnected) => break,
        };
        let mut batch = vec![first];
        batch.extend(rx.try_iter().take(255));
        let mut failed = false;
        for o in &mut outs {
            let result = match o {
                // The wire form everywhere: keys sorted, as signed.
                Out::Lines(l) => l
                    .write_batch(&batch.iter().map(ControlEvent::to_value).collect::<Vec<_>>())
                    .map_err(|e| e.to_string()),
                Out::Kafka(k) => batch
                    .iter()
                    .try_for_each(|e| k.send(&e.subject, e.to_json().as_bytes()))
                    .map_err(|e| e.to_string()),
            };
            if let Err(e) = result {
                failed = true;
                store.sink_errors.fetch_add(batch.len() as u64, Relaxed);
                tracing::error!(error = %e, "writing control events");
            }
        }
        store.sinks_failing.store(failed, Relaxed);
    }
    for o in &outs {
        if let Out::Kafka(k) = o
            && let Err(e) = k.flush(Duration::from_secs(10))
        {
            tracing::error!(error = %e, "flushing control events to Kafka at shutdown");
        }
    }
}
