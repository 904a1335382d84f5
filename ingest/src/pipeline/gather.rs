//! Many export requests of one signal decoded into one batch (the Kafka source's runs).

use super::{Ack, Encoding, Pending, Pipeline, decode_one};
use crate::decode::{self, DecodeConfig, DecodeError, Decoded};
use crate::metrics::{IngestMetrics, RequestOutcome, SignalKind, Transport};
use std::sync::Arc;

impl Pipeline {
    /// Starts decoding export requests of `signal` into one batch, to be offered with
    /// [`Pipeline::offer`] once gathered ([`Gather::done`]).
    pub fn gather(&self, transport: Transport, signal: SignalKind, encoding: Encoding) -> Gather {
        Gather {
            transport,
            signal,
            encoding,
            cfg: self.cfg.clone(),
            metrics: self.metrics.clone(),
            decoded: Decoded::default(),
            keys: decode::Keys::default(),
            requests: 0,
            partial: 0,
        }
    }
}

/// Export requests of one signal decoded into one batch ([`Pipeline::gather`]): a run of small
/// requests (the Kafka source's records) costs one submission, one ack and one key table, and
/// a series key seen in an earlier request of the run costs a lookup, not an allocation.
pub struct Gather {
    transport: Transport,
    signal: SignalKind,
    encoding: Encoding,
    cfg: Arc<DecodeConfig>,
    metrics: Arc<IngestMetrics>,
    decoded: Decoded,
    keys: decode::Keys,
    requests: u64,
    partial: u64,
}

impl std::fmt::Debug for Gather {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Gather")
            .field("requests", &self.requests)
            .field("observations", &self.decoded.batch.len())
            .finish_non_exhaustive()
    }
}

impl Gather {
    /// Decodes one more request into the batch; an undecodable one is counted as malformed
    /// and leaves the batch as it was.
    pub fn add(&mut self, body: &[u8]) -> Result<(), DecodeError> {
        let rejected = self.decoded.rejected;
        let read = match (self.signal, self.encoding) {
            (SignalKind::Traces, Encoding::Protobuf) => {
                decode::traces_proto_into(body, &self.cfg, &mut self.decoded, &mut self.keys)
            }
            (s, e) => decode_one(s, e, body, &self.cfg).map(|d| absorb(&mut self.decoded, d)),
        };
        match read {
            Ok(()) => {
                self.requests += 1;
                self.partial += u64::from(self.decoded.rejected > rejected);
                Ok(())
            }
            Err(e) => {
                self.metrics
                    .request(self.transport, self.signal, RequestOutcome::Malformed);
                Err(e)
            }
        }
    }

    /// Trades the operation names scrubbed so far for `names` (a cache that may outlive the
    /// batch).
    pub(crate) fn swap_names(&mut self, names: &mut decode::Names) {
        std::mem::swap(&mut self.keys.names, names);
    }

    /// Requests gathered.
    pub fn requests(&self) -> u64 {
        self.requests
    }

    /// Observations gathered.
    pub fn observations(&self) -> usize {
        self.decoded.batch.len()
    }

    /// The gathered requests, to offer with `ack` (run once all of them are applied).
    pub fn done(self, ack: Option<Ack>) -> Pending {
        Pending {
            transport: self.transport,
            signal: self.signal,
            decoded: Box::new(self.decoded),
            ack,
            requests: self.requests,
            partial: self.partial,
        }
    }
}

/// Adds a request's decoded observations and counts to `into`.
fn absorb(into: &mut Decoded, d: Decoded) {
    into.batch.append_keys_unmerged(d.batch);
    into.received += d.received;
    into.rejected += d.rejected;
    for (a, b) in into.rejected_by.iter_mut().zip(d.rejected_by) {
        *a += b;
    }
    if into.first_rejection.is_none() {
        into.first_rejection = d.first_rejection;
    }
    into.attributes_dropped += d.attributes_dropped;
}

#[cfg(test)]
mod tests {
    use super::super::hold_tests::Stubborn;
    use super::super::*;
    use crate::decode::tests::{kv, request, s, span};
    use prost::Message;
    use std::sync::atomic::{AtomicU64, Ordering};
    use trike_proto::trace::v1::span::SpanKind;

    /// Each request observation as (series key, time, latency, bad): what a sink sees,
    /// whatever the key table's order.
    fn resolved(b: &Batch) -> Vec<(trike_engine::SeriesKey, u64, u64, bool)> {
        b.requests
            .iter()
            .map(|r| {
                (
                    b.keys[r.key as usize].clone(),
                    r.time,
                    r.latency_ms.to_bits(),
                    r.bad,
                )
            })
            .collect()
    }

    /// Guarantees: requests gathered into one batch give the same observations, in order, as
    /// each decoded alone (a series key of an earlier request reused, ids in names collapsed
    /// the same from the name cache); an undecodable request in the middle, even one that
    /// fails after a valid part, leaves nothing behind and is counted as malformed; the batch
    /// is offered once, its ack runs once, and every request is counted. The JSON path
    /// (decoded alone, then appended) gives the same as the protobuf one.
    #[test]
    fn gathered_requests_are_what_they_are_alone() {
        let t = 1_800_000_000_000_000_000;
        let spans = |routes: &[&str], error: bool| -> Vec<_> {
            routes
                .iter()
                .map(|r| {
                    let mut sp = span(r, SpanKind::Server, t, 7, vec![], error);
                    sp.span_id = vec![3; 8];
                    sp
                })
                .collect()
        };
        let a = request(
            vec![kv("service.name", s("checkout"))],
            spans(&["GET /users/1", "GET /users/2", "GET /"], false),
        );
        let b = request(
            vec![kv("service.name", s("payments"))],
            spans(&["POST /pay/9f8e7d6c5b4a3928", "GET /users/3"], true),
        );
        // A valid resource, then one cut off in the middle.
        let mut broken = b.encode_to_vec();
        broken.extend_from_slice(&[0x0a, 0x40, 0x0a, 0x02]);
        for encoding in [Encoding::Protobuf, Encoding::Json] {
            let body =
                |r: &trike_proto::collector::trace::v1::ExportTraceServiceRequest| match encoding {
                    Encoding::Json => serde_json::to_vec(r).unwrap(),
                    _ => r.encode_to_vec(),
                };
            let broken = match encoding {
                Encoding::Json => b"{\"resourceSpans\": [".to_vec(),
                _ => broken.clone(),
            };
            let (sink, metrics, p) = Stubborn::pipeline(0);
            let mut g = p.gather(Transport::Kafka, SignalKind::Traces, encoding);
            g.add(&body(&a)).unwrap();
            g.add(&broken).unwrap_err();
            g.add(&body(&b)).unwrap();
            g.add(&body(&a)).unwrap();
            assert_eq!((g.requests(), g.observations()), (3, 8));
            let acks = Arc::new(AtomicU64::new(0));
            let n = acks.clone();
            p.offer(g.done(Some(Box::new(move || {
                n.fetch_add(1, Ordering::Relaxed);
            }))))
            .unwrap();
            assert_eq!(acks.load(Ordering::Relaxed), 1);
            let kept = sink.kept.lock();
            assert_eq!(kept.len(), 1, "{encoding:?}: one submission");
            let cfg = DecodeConfig::default();
            let alone: Vec<_> = [&a, &b, &a]
                .iter()
                .flat_map(|r| {
                    resolved(
                        &decode_one(
                            SignalKind::Traces,
                            Encoding::Protobuf,
                            &r.encode_to_vec(),
                            &cfg,
                        )
                        .unwrap()
                        .batch,
                    )
                })
                .collect();
            assert_eq!(resolved(&kept[0]), alone, "{encoding:?}");
            let ops: Vec<&str> = alone.iter().map(|(k, ..)| &*k.operation).collect();
            assert_eq!(
                ops,
                [
                    "GET /users/{id}",
                    "GET /users/{id}",
                    "GET /",
                    "POST /pay/{id}",
                    "GET /users/{id}",
                    "GET /users/{id}",
                    "GET /users/{id}",
                    "GET /"
                ]
            );
            if encoding == Encoding::Protobuf {
                // Series keys of the repeated request are not added again.
                assert_eq!(kept[0].keys.len(), 4, "{:?}", kept[0].keys);
            }
            let mut out = String::new();
            metrics.render(&mut out);
            for line in [
                "trike_receiver_items_received_total{signal=\"traces\"} 8",
                "trike_receiver_requests_total{transport=\"kafka\",signal=\"traces\",outcome=\"ok\"} 3",
                "trike_receiver_requests_total{transport=\"kafka\",signal=\"traces\",outcome=\"malformed\"} 1",
            ] {
                assert!(out.contains(line), "{encoding:?}: {line}\n{out}");
            }
        }
    }
}
