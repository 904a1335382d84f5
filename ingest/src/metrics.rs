//! Counters about ingestion, with a fixed label set (transport × signal × outcome), counted
//! once per request, rendered as Prometheus text by [`IngestMetrics::render`].

use crate::decode::Reason;
use std::fmt::Write;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};

/// Which OTLP signal.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SignalKind {
    /// Spans.
    Traces = 0,
    /// Metric data points.
    Metrics = 1,
    /// Log records.
    Logs = 2,
}

impl SignalKind {
    const ALL: [SignalKind; 3] = [SignalKind::Traces, SignalKind::Metrics, SignalKind::Logs];
    /// Label value.
    pub const fn name(self) -> &'static str {
        match self {
            SignalKind::Traces => "traces",
            SignalKind::Metrics => "metrics",
            SignalKind::Logs => "logs",
        }
    }
}

/// Which receiver.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Transport {
    /// OTLP/gRPC.
    Grpc = 0,
    /// OTLP/HTTP.
    Http = 1,
    /// OTLP records from Kafka.
    Kafka = 2,
}

impl Transport {
    const ALL: [Transport; 3] = [Transport::Grpc, Transport::Http, Transport::Kafka];
    const fn name(self) -> &'static str {
        match self {
            Transport::Grpc => "grpc",
            Transport::Http => "http",
            Transport::Kafka => "kafka",
        }
    }
}

/// How a request ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RequestOutcome {
    /// Everything accepted.
    Ok = 0,
    /// Accepted with some items rejected (OTLP partial success).
    Partial = 1,
    /// Undecodable: 400 / INVALID_ARGUMENT.
    Malformed = 2,
    /// Queue full: 429 / RESOURCE_EXHAUSTED.
    Overloaded = 3,
    /// Body or decompressed body over the limit.
    TooLarge = 4,
    /// Unsupported content type or encoding.
    Unsupported = 5,
    /// The body was not received within `limits.body_read_timeout`: 408.
    TimedOut = 6,
}

impl RequestOutcome {
    const ALL: [RequestOutcome; 7] = [
        RequestOutcome::Ok,
        RequestOutcome::Partial,
        RequestOutcome::Malformed,
        RequestOutcome::Overloaded,
        RequestOutcome::TooLarge,
        RequestOutcome::Unsupported,
        RequestOutcome::TimedOut,
    ];
    const fn name(self) -> &'static str {
        match self {
            RequestOutcome::Ok => "ok",
            RequestOutcome::Partial => "partial",
            RequestOutcome::Malformed => "malformed",
            RequestOutcome::Overloaded => "overloaded",
            RequestOutcome::TooLarge => "too_large",
            RequestOutcome::Unsupported => "unsupported",
            RequestOutcome::TimedOut => "timed_out",
        }
    }
}

/// Ingestion counters.
#[derive(Debug, Default)]
pub struct IngestMetrics {
    requests: [[[AtomicU64; 7]; 3]; 3],
    received: [AtomicU64; 3],
    rejected: [[AtomicU64; 4]; 3],
    attributes_dropped: [AtomicU64; 3],
    observations: AtomicU64,
}

impl IngestMetrics {
    /// Counts one request.
    pub fn request(&self, t: Transport, s: SignalKind, o: RequestOutcome) {
        self.count_requests(t, s, o, 1);
    }

    /// Counts `n` requests of one outcome.
    pub fn count_requests(&self, t: Transport, s: SignalKind, o: RequestOutcome, n: u64) {
        if n > 0 {
            self.requests[t as usize][s as usize][o as usize].fetch_add(n, Relaxed);
        }
    }

    /// Counts attributes not read (limits.max_attributes, max_attribute_bytes).
    pub fn attributes_dropped(&self, s: SignalKind, n: u64) {
        if n > 0 {
            self.attributes_dropped[s as usize].fetch_add(n, Relaxed);
        }
    }

    /// Counts items received and rejected (by reason) in one accepted request.
    pub fn items(&self, s: SignalKind, received: u64, rejected_by: [u64; 4], observations: u64) {
        self.received[s as usize].fetch_add(received, Relaxed);
        for (slot, n) in self.rejected[s as usize].iter().zip(rejected_by) {
            if n > 0 {
                slot.fetch_add(n, Relaxed);
            }
        }
        self.observations.fetch_add(observations, Relaxed);
    }

    /// Requests so far with this label set.
    pub fn requests(&self, t: Transport, s: SignalKind, o: RequestOutcome) -> u64 {
        self.requests[t as usize][s as usize][o as usize].load(Relaxed)
    }

    /// Items received so far of one signal.
    pub fn received(&self, s: SignalKind) -> u64 {
        self.received[s as usize].load(Relaxed)
    }

    /// Items rejected so far of one signal, all reasons.
    pub fn rejected(&self, s: SignalKind) -> u64 {
        self.rejected[s as usize]
            .iter()
            .map(|a| a.load(Relaxed))
            .sum()
    }

    /// Appends the Prometheus text exposition of these counters.
    pub fn render(&self, out: &mut String) {
        out.push_str("# HELP trike_receiver_requests_total OTLP export requests by transport, signal and outcome.\n");
        out.push_str("# TYPE trike_receiver_requests_total counter\n");
        for t in Transport::ALL {
            for s in SignalKind::ALL {
                for o in RequestOutcome::ALL {
                    let v = self.requests(t, s, o);
                    let _ = writeln!(
                        out,
                        "trike_receiver_requests_total{{transport=\"{}\",signal=\"{}\",outcome=\"{}\"}} {v}",
                        t.name(),
                        s.name(),
                        o.name()
                    );
                }
            }
        }
        let name = "trike_receiver_items_received_total";
        let _ = writeln!(
            out,
            "# HELP {name} Spans, metric data points and log records received in accepted requests.\n# TYPE {name} counter"
        );
        for s in SignalKind::ALL {
            let _ = writeln!(
                out,
                "{name}{{signal=\"{}\"}} {}",
                s.name(),
                self.received[s as usize].load(Relaxed)
            );
        }
        let name = "trike_receiver_items_rejected_total";
        let _ = writeln!(
            out,
            "# HELP {name} Items rejected as invalid, reported to the client as partial success.\n# TYPE {name} counter"
        );
        for s in SignalKind::ALL {
            for r in Reason::ALL {
                let v = self.rejected[s as usize][r as usize].load(Relaxed);
                let _ = writeln!(
                    out,
                    "{name}{{signal=\"{}\",reason=\"{}\"}} {v}",
                    s.name(),
                    r.label()
                );
            }
        }
        let name = "trike_receiver_attributes_dropped_total";
        let _ = writeln!(
            out,
            "# HELP {name} Attributes not read: over limits.max_attributes in their list, or longer than limits.max_attribute_bytes.\n# TYPE {name} counter"
        );
        for s in SignalKind::ALL {
            let v = self.attributes_dropped[s as usize].load(Relaxed);
            let _ = writeln!(out, "{name}{{signal=\"{}\"}} {v}", s.name());
        }
        let _ = writeln!(
            out,
            "# HELP trike_receiver_observations_total Observations handed to the engine.\n# TYPE trike_receiver_observations_total counter\ntrike_receiver_observations_total {}",
            self.observations.load(Relaxed)
        );
    }
}
