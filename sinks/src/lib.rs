//! Where Trike's output goes: the typed control event (CloudEvents 1.0, DESIGN §4) built from
//! the engine's decisions and its signature, written as JSON lines to stdout or a file, or to
//! the Kafka control topic ([`SinkConfig`]). The Parquet archive lives in `trike-sql`; webhooks
//! are the actuator's (`trike-actuate`).
//!
//! Must not: decide anything (that is the engine's job) or block the engine thread on I/O.

pub mod control_event;
pub mod kafka;
pub mod kafka_client;
mod rfc3339;
pub mod secret;
pub mod signing;

pub use control_event::{ControlData, ControlEvent, EventError, Outcome, Target};
pub use rfc3339::{parse_rfc3339, parse_rfc3339_nanos, rfc3339};
pub use secret::Secret;
/// The action and duration types of control events and their consumers' configs.
pub use trike_engine::{Span, policy::Action, slo::Severity};

use serde::{Deserialize, Serialize};
use std::io::Write;

/// A configured sink.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case", deny_unknown_fields)]
pub enum SinkConfig {
    /// JSON lines on standard output (the default).
    Stdout,
    /// JSON lines appended to a file.
    File {
        /// Path of the file.
        path: std::path::PathBuf,
    },
    /// The Kafka control topic (`kafka.brokers`, `kafka.control_topic`).
    Kafka,
}

/// Errors of the sinks.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The destination refused the write (closed pipe, full disk); retrying may help.
    #[error("writing to the sink: {0}")]
    Io(#[from] std::io::Error),
    /// A record could not be encoded: a bug, not retryable.
    #[error("encoding a record as JSON: {0}")]
    Encode(#[from] serde_json::Error),
}

/// Result with the sinks' error.
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// Writes records as JSON lines.
#[derive(Debug)]
pub struct JsonLines<W: Write> {
    out: W,
    buf: Vec<u8>,
    written: u64,
}

impl<W: Write> JsonLines<W> {
    /// A writer over `out` (e.g. `std::io::stdout().lock()`).
    pub fn new(out: W) -> Self {
        Self {
            out,
            buf: Vec::with_capacity(4096),
            written: 0,
        }
    }

    /// Encodes and writes a batch of records, then flushes: one `write` per batch.
    pub fn write_batch<T: Serialize>(&mut self, records: &[T]) -> Result<()> {
        self.buf.clear();
        for r in records {
            serde_json::to_writer(&mut self.buf, r)?;
            self.buf.push(b'\n');
        }
        self.out.write_all(&self.buf)?;
        self.out.flush()?;
        self.written += records.len() as u64;
        Ok(())
    }

    /// Records written so far.
    pub fn written(&self) -> u64 {
        self.written
    }

    /// The underlying writer.
    pub fn into_inner(self) -> W {
        self.out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Guarantees: one line per record, newlines inside strings escaped, counts kept.
    #[test]
    fn one_line_per_record() {
        let mut s = JsonLines::new(Vec::new());
        s.write_batch(&[
            serde_json::json!({"a": "x\ny"}),
            serde_json::json!({"b": 2}),
        ])
        .unwrap();
        assert_eq!(s.written(), 2);
        let text = String::from_utf8(s.into_inner()).unwrap();
        assert_eq!(text, "{\"a\":\"x\\ny\"}\n{\"b\":2}\n");
    }

    /// Guarantees: a failing destination is an error, not a panic or a silent loss.
    #[test]
    fn io_errors_surface() {
        struct Broken;
        impl Write for Broken {
            fn write(&mut self, _: &[u8]) -> std::io::Result<usize> {
                Err(std::io::Error::new(
                    std::io::ErrorKind::BrokenPipe,
                    "closed",
                ))
            }
            fn flush(&mut self) -> std::io::Result<()> {
                Ok(())
            }
        }
        let mut s = JsonLines::new(Broken);
        assert!(matches!(s.write_batch(&[1]), Err(Error::Io(_))));
        assert_eq!(s.written(), 0);
    }
}
