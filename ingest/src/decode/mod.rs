//! Decoding OTLP payloads into engine observations (DESIGN §2).
//!
//! Traces take the fast path: a wire walker reads only the fields the SLIs need (resource
//! `service.*` and configured dimensions; span kind, name, times, status and a few attributes),
//! without building `prost` structs. Metrics are decoded with `prost` (they are few points
//! carrying many requests each). OTLP/JSON is parsed into the `opentelemetry-proto` types and
//! then takes the same paths, so both encodings share one set of rules.

mod attrs;
mod json;
mod keys;
mod logs;
mod metrics;
pub mod partials;
pub mod scrub;
#[cfg(test)]
pub(crate) mod tests;
#[cfg(test)]
mod tests_calls_logs;
#[cfg(test)]
mod tests_keys;
#[cfg(test)]
mod tests_layouts;
#[cfg(test)]
mod tests_usage;
mod traces;
pub mod wire;

pub use json::{json_to_protobuf, logs_json, metrics_json, traces_json};
pub use keys::Keys;
pub(crate) use keys::Names;
pub use logs::logs_proto;
pub use metrics::metrics_proto;
pub use partials::partials;
pub use traces::{traces_proto, traces_proto_into};

use serde::{Deserialize, Serialize};
use trike_engine::Batch;

/// Why a payload could not be decoded at all.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum DecodeError {
    /// The protobuf ended in the middle of a field.
    #[error("protobuf message is truncated")]
    Truncated,
    /// The bytes are not a valid message of the expected type.
    #[error("malformed payload: {0}")]
    Malformed(String),
}

/// Span kinds, numbered as in OTLP.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum SpanKind {
    /// 1.
    Internal,
    /// 2.
    Server,
    /// 3.
    Client,
    /// 4.
    Producer,
    /// 5.
    Consumer,
}

impl SpanKind {
    /// The OTLP enum number.
    pub const fn number(self) -> u64 {
        match self {
            SpanKind::Internal => 1,
            SpanKind::Server => 2,
            SpanKind::Client => 3,
            SpanKind::Producer => 4,
            SpanKind::Consumer => 5,
        }
    }
}

/// What the decoders extract, from the `series` and `decode` sections of the config.
#[derive(Clone, Debug, PartialEq)]
pub struct DecodeConfig {
    /// Extra series dimensions (attribute names), looked up on the span/point, then the resource.
    pub dimensions: Vec<String>,
    /// Attribute holding the version (resource first, then span/point).
    pub version_attribute: String,
    /// Span kinds that are entry spans.
    pub entry_span_kinds: Vec<SpanKind>,
    /// `rpc.grpc.status_code` values that make a request bad.
    pub bad_grpc_codes: Vec<i64>,
    /// Histogram metrics read as request durations.
    pub duration_metrics: Vec<String>,
    /// Monotonic sums read as request counts.
    pub request_counters: Vec<String>,
    /// Metrics read as services' usage (CPU time, memory…): sums and gauges, each point a
    /// [`trike_engine::UsageObs`].
    pub usage_metrics: Vec<String>,
    /// What is scrubbed from operation names and dimension values.
    pub scrub: scrub::Scrub,
    /// How much of each attribute list is read.
    pub attrs: AttrLimits,
    /// Log records count toward their service's SLIs, bad at ERROR or above
    /// (`logs.errors_as: bad_events`); else they are only counted.
    pub logs_as_bad_events: bool,
    /// Client spans and parented server spans give the service graph its call halves
    /// (`graph.enabled`).
    pub calls: bool,
}

/// Caps on the attributes read (DESIGN §7: a hostile request costs bytes, never more):
/// per resource, scope, span and data point at most `max_attributes` are read, in wire order;
/// an attribute whose key and value together are longer than `max_attribute_bytes` is not
/// read. Attributes not read are counted (`trike_receiver_attributes_dropped_total`); a
/// value that is read is still cut to 256 bytes when it becomes part of a series key.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct AttrLimits {
    /// Attributes read per resource, span or data point (`limits.max_attributes`).
    pub max_attributes: usize,
    /// Longest attribute read, key and value together (`limits.max_attribute_bytes`).
    pub max_attribute_bytes: usize,
}

impl AttrLimits {
    /// Whether the next attribute of a list is read: `read` counts those read so far (and is
    /// counted up when it is), `encoded_len` is the size of its encoded `KeyValue` (key, value
    /// and a few bytes of framing, allowed for).
    #[inline]
    pub fn admits(&self, read: &mut usize, encoded_len: usize) -> bool {
        if *read >= self.max_attributes || encoded_len > self.max_attribute_bytes + 16 {
            return false;
        }
        *read += 1;
        true
    }
}

impl Default for AttrLimits {
    /// The OpenTelemetry SDKs' default attribute count limit, and 4 KiB.
    fn default() -> Self {
        Self {
            max_attributes: 128,
            max_attribute_bytes: 4096,
        }
    }
}

impl Default for DecodeConfig {
    fn default() -> Self {
        Self {
            dimensions: Vec::new(),
            version_attribute: "service.version".into(),
            entry_span_kinds: vec![SpanKind::Server, SpanKind::Consumer],
            // UNKNOWN, DEADLINE_EXCEEDED, UNIMPLEMENTED, INTERNAL, UNAVAILABLE, DATA_LOSS: the
            // server-side failures (OTel semantic conventions for gRPC server spans).
            bad_grpc_codes: vec![2, 4, 12, 13, 14, 15],
            duration_metrics: vec![
                "http.server.request.duration".into(),
                "rpc.server.duration".into(),
                "http.server.duration".into(),
            ],
            request_counters: vec![
                "http.server.request.count".into(),
                "http.server.requests".into(),
                "http_server_requests_total".into(),
            ],
            usage_metrics: Vec::new(),
            scrub: scrub::Scrub::default(),
            attrs: AttrLimits::default(),
            logs_as_bad_events: false,
            calls: true,
        }
    }
}

/// Why an item was rejected (a fixed set: it is a metric label).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Reason {
    /// Trace or span id of the wrong length or all zero.
    InvalidId = 0,
    /// Missing time, or end before start.
    InvalidTime = 1,
    /// A histogram or counter point that contradicts itself (bucket counts vs bounds vs
    /// count, bounds not increasing, too many buckets, negative or huge values).
    InvalidPoint = 2,
    /// A metric Trike reads, in a form it cannot use (unit, temporality, non-monotonic sum).
    UnsupportedMetric = 3,
}

impl Reason {
    /// Every reason, in label order.
    pub const ALL: [Reason; 4] = [
        Reason::InvalidId,
        Reason::InvalidTime,
        Reason::InvalidPoint,
        Reason::UnsupportedMetric,
    ];
    /// The label value.
    pub const fn label(self) -> &'static str {
        match self {
            Reason::InvalidId => "invalid_id",
            Reason::InvalidTime => "invalid_time",
            Reason::InvalidPoint => "invalid_point",
            Reason::UnsupportedMetric => "unsupported_metric",
        }
    }
}

/// Longest series-key part (service, operation, version, dimension value) kept, in bytes;
/// longer values are cut at a character boundary.
pub const MAX_KEY_PART_BYTES: usize = 256;

/// Cuts `s` to at most [`MAX_KEY_PART_BYTES`], at a character boundary.
pub fn clip(s: &str) -> &str {
    if s.len() <= MAX_KEY_PART_BYTES {
        return s;
    }
    let mut end = MAX_KEY_PART_BYTES;
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    &s[..end]
}

/// The result of decoding one export request.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Decoded {
    /// Observations for the engine.
    pub batch: Batch,
    /// Items (spans, data points, log records) in the request.
    pub received: u64,
    /// Items rejected as invalid (reported as OTLP partial success).
    pub rejected: u64,
    /// Rejected items by reason (indexed by `Reason as usize`).
    pub rejected_by: [u64; 4],
    /// Why the first rejected item was rejected.
    pub first_rejection: Option<String>,
    /// Attributes not read (over `max_attributes`, or longer than `max_attribute_bytes`).
    pub attributes_dropped: u64,
}

impl Decoded {
    fn reject(&mut self, reason: Reason, why: impl FnOnce() -> String) {
        self.rejected += 1;
        self.rejected_by[reason as usize] += 1;
        if self.first_rejection.is_none() {
            self.first_rejection = Some(why());
        }
    }
}

/// FNV-1a, 64 bit: a stable hash for metric stream identities (stable across restarts, so a
/// restored snapshot's cumulative baselines still match).
#[derive(Clone, Copy, Debug)]
pub(crate) struct Fnv(u64);

impl Fnv {
    pub(crate) const fn new() -> Self {
        Self(0xcbf2_9ce4_8422_2325)
    }
    pub(crate) fn write(&mut self, bytes: &[u8]) {
        for b in bytes {
            self.0 ^= u64::from(*b);
            self.0 = self.0.wrapping_mul(0x0100_0000_01b3);
        }
        // Separator, so ("ab","c") and ("a","bc") differ.
        self.0 ^= 0xff;
        self.0 = self.0.wrapping_mul(0x0100_0000_01b3);
    }
    pub(crate) const fn finish(self) -> u64 {
        self.0
    }
}
