//! Requests laid out as protobuf allows but SDKs do not write them. The span walk matches
//! whole keys (`0x0a` for field 1's bytes) where a generic walk would read each key's field
//! and wire type; these tests hold it to reading every layout the same.

use super::tests::{kv, s, span};
use super::*;
use proptest::prelude::*;
use prost::Message;
use prost::encoding::{decode_varint, encode_varint};
use trike_proto::collector::trace::v1::ExportTraceServiceRequest;
use trike_proto::common::v1::any_value::Value as Av;
use trike_proto::resource::v1::Resource;
use trike_proto::trace::v1::span::SpanKind as Kind;

/// A message's fields: (key, value as on the wire; a length-delimited one without its length).
fn fields(mut buf: &[u8]) -> Vec<(u64, Vec<u8>)> {
    let mut out = vec![];
    while !buf.is_empty() {
        let key = decode_varint(&mut buf).unwrap();
        let len = match key & 7 {
            0 => {
                let start = buf;
                decode_varint(&mut buf).unwrap();
                out.push((key, start[..start.len() - buf.len()].to_vec()));
                continue;
            }
            1 => 8,
            2 => decode_varint(&mut buf).unwrap() as usize,
            5 => 4,
            wt => panic!("wire type {wt}"),
        };
        out.push((key, buf[..len].to_vec()));
        buf = &buf[len..];
    }
    out
}

/// `v` as a varint `extra` bytes longer than it need be (protobuf allows up to ten bytes).
fn varint_padded(v: u64, extra: usize, out: &mut Vec<u8>) {
    let mut b = vec![];
    encode_varint(v, &mut b);
    let extra = extra.min(10 - b.len());
    if extra > 0 {
        *b.last_mut().unwrap() |= 0x80;
        b.extend(std::iter::repeat_n(0x80, extra - 1));
        b.push(0);
    }
    out.extend(b);
}

/// Rewrites the value of a length-delimited field of the key given, or leaves it (`None`).
type Inner<'a> = dyn Fn(u64, &[u8]) -> Option<Vec<u8>> + 'a;

/// How one message is rewritten: its fields put in another order, each key, length and varint
/// value written `pads[i]` bytes longer, and fields Trike does not read added.
#[derive(Clone, Debug)]
struct Layout {
    order: u64,
    pads: Vec<usize>,
    extra: bool,
}

fn layout() -> impl Strategy<Value = Layout> {
    (
        any::<u64>(),
        prop::collection::vec(0usize..3, 1..6),
        any::<bool>(),
    )
        .prop_map(|(order, pads, extra)| Layout { order, pads, extra })
}

impl Layout {
    /// `buf` rewritten; `inner` rewrites the values of the length-delimited fields it is
    /// given the key of; `more` are the message's own fields Trike does not read, added with
    /// the unknown ones.
    fn rewrite(&self, buf: &[u8], more: &[(u64, Vec<u8>)], inner: &Inner) -> Vec<u8> {
        let mut fs = fields(buf);
        if self.extra {
            // Fields no version of OTLP has: a varint, a fixed32, bytes.
            fs.push((1000 << 3, vec![0x96, 0x01]));
            fs.push((99 << 3 | 5, 7u32.to_le_bytes().to_vec()));
            fs.push((77 << 3 | 2, vec![0x0a, 0x01, b'x']));
            fs.extend_from_slice(more);
        }
        // A shuffle (Fisher-Yates, driven by `order`), then the fields of one key put back in
        // their order among themselves: a repeated field's order is its meaning, its
        // interleaving with other fields is not.
        let original = fs.clone();
        let mut x = self.order | 1;
        for i in (1..fs.len()).rev() {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            fs.swap(i, (x % (i as u64 + 1)) as usize);
        }
        for key in original.iter().map(|f| f.0) {
            let mut same = original.iter().filter(|f| f.0 == key);
            for f in fs.iter_mut().filter(|f| f.0 == key) {
                *f = same.next().unwrap().clone();
            }
        }
        let mut out = vec![];
        for (i, (key, v)) in fs.iter().enumerate() {
            let pad = self.pads[i % self.pads.len()];
            varint_padded(*key, pad, &mut out);
            match key & 7 {
                0 => varint_padded(decode_varint(&mut &v[..]).unwrap(), pad, &mut out),
                2 => {
                    let v = inner(*key, v).unwrap_or_else(|| v.clone());
                    varint_padded(v.len() as u64, pad, &mut out);
                    out.extend(v);
                }
                _ => out.extend(v),
            }
        }
        out
    }
}

fn request_of(
    resource: Vec<trike_proto::common::v1::KeyValue>,
    spans: Vec<trike_proto::trace::v1::Span>,
) -> ExportTraceServiceRequest {
    let mut req = super::tests::request(resource, spans);
    req.resource_spans[0].schema_url = "https://opentelemetry.io/schemas/1.24.0".into();
    req.resource_spans[0].resource = Some(Resource {
        attributes: req.resource_spans[0].resource.take().unwrap().attributes,
        dropped_attributes_count: 1,
        ..Default::default()
    });
    req
}

/// Rewrites a request's resource spans, their scope spans, spans and span attributes (each
/// message with a layout of its own).
fn rewrite(req: &[u8], ls: &[Layout]) -> Vec<u8> {
    let l = |i: usize| &ls[i % ls.len()];
    let none = |_: u64, _: &[u8]| None;
    let attribute = |key: u64, kv: &[u8]| (key == 0x4a).then(|| l(3).rewrite(kv, &[], &none));
    // A span's trace_state (3) and flags (16, a two-byte key) are OTLP's, not read.
    let span_more = [
        (3 << 3 | 2, b"vendor=1".to_vec()),
        (16 << 3 | 5, 1u32.to_le_bytes().to_vec()),
    ];
    let span = |key: u64, b: &[u8]| (key == 0x12).then(|| l(2).rewrite(b, &span_more, &attribute));
    let scope = |key: u64, b: &[u8]| (key == 0x12).then(|| l(1).rewrite(b, &[], &span));
    let rs = |key: u64, b: &[u8]| (key == 0x0a).then(|| l(0).rewrite(b, &[], &scope));
    Layout {
        order: 0,
        pads: vec![0],
        extra: false,
    }
    .rewrite(req, &[], &rs)
}

fn kind() -> impl Strategy<Value = Kind> {
    prop::sample::select(vec![
        Kind::Server,
        Kind::Client,
        Kind::Internal,
        Kind::Consumer,
        Kind::Producer,
    ])
}

/// Attributes of a span: each of the keys the SLIs read, or not; and one they do not.
fn attributes() -> impl Strategy<Value = Vec<trike_proto::common::v1::KeyValue>> {
    let opt = |k: &'static str, v: Av| prop::option::of(Just(kv(k, v)));
    (
        opt("http.route", s("/cart/{id}")),
        opt("rpc.method", s("Checkout")),
        prop::option::of(prop::sample::select(vec![200i64, 503]))
            .prop_map(|c| c.map(|c| kv("http.response.status_code", Av::IntValue(c)))),
        opt("rpc.grpc.status_code", Av::IntValue(14)),
        opt("http.status_code", Av::IntValue(502)),
        opt("peer.service", s("payments")),
        opt("server.address", s("payments.internal")),
        opt("net.peer.name", s("10.0.0.7")),
        opt("db.system", s("postgresql")),
        opt("service.version", s("2.0")),
        opt("deployment.environment", s("canary")),
        opt("user_agent.original", s("curl/8")),
    )
        .prop_map(|(a, b, c, d, e, f, g, h, i, j, k, l)| {
            [a, b, c, d, e, f, g, h, i, j, k, l]
                .into_iter()
                .flatten()
                .collect()
        })
}

proptest! {
    /// Guarantees: a request reads the same (observations, calls, keys, counts) however it is
    /// laid out: fields in any order, keys, lengths and varints longer than they need be,
    /// and fields Trike does not read (OTLP's and unknown ones, of every wire type) among them.
    #[test]
    fn every_layout_reads_as_the_canonical_one(
        spans in prop::collection::vec((kind(), attributes(), any::<bool>()), 1..4),
        layouts in prop::collection::vec(layout(), 1..5),
    ) {
        let resource = vec![
            kv("service.name", s("checkout")),
            kv("service.version", s("1.5.0")),
            kv("deployment.environment", s("prod")),
        ];
        let n = spans.len();
        let spans = spans
            .into_iter()
            .enumerate()
            .map(|(i, (kind, attrs, error))| {
                let mut sp = span("GET /cart", kind, 1_800_000_000_000_000_000, 5 + i as u64, attrs, error);
                sp.parent_span_id = vec![3; 8];
                sp
            })
            .collect();
        let canonical = request_of(resource, spans).encode_to_vec();
        let cfg = DecodeConfig {
            dimensions: vec!["deployment.environment".into()],
            calls: true,
            ..Default::default()
        };
        let want = traces_proto(&canonical, &cfg).unwrap();
        prop_assert_eq!(want.received, n as u64);
        let laid_out = rewrite(&canonical, &layouts);
        prop_assert_eq!(traces_proto(&laid_out, &cfg).unwrap(), want);
        // The same request to prost, but for the span fields added (OTLP's, not read).
        let mut read = ExportTraceServiceRequest::decode(&laid_out[..]).unwrap();
        for sp in &mut read.resource_spans[0].scope_spans[0].spans {
            sp.trace_state.clear();
            sp.flags = 0;
        }
        prop_assert_eq!(read, ExportTraceServiceRequest::decode(&canonical[..]).unwrap());
    }
}

/// Guarantees: the rewriting the property uses changes the bytes and keeps what prost reads
/// (so the property compares two layouts of one request, not two requests).
#[test]
fn the_rewriting_keeps_the_request() {
    let req = request_of(
        vec![kv("service.name", s("checkout"))],
        vec![span(
            "GET /",
            Kind::Server,
            1_800_000_000_000_000_000,
            5,
            vec![kv("http.route", s("/"))],
            true,
        )],
    );
    let canonical = req.encode_to_vec();
    let l = Layout {
        order: 12345,
        pads: vec![1, 2, 0],
        extra: true,
    };
    let laid_out = rewrite(&canonical, &[l.clone(), l.clone(), l.clone(), l]);
    assert_ne!(laid_out, canonical);
    assert!(laid_out.len() > canonical.len() + 20);
    let again = ExportTraceServiceRequest::decode(&laid_out[..]).unwrap();
    let (rs, was) = (&again.resource_spans[0], &req.resource_spans[0]);
    assert_eq!(rs.resource, was.resource);
    // (prost keeps no unknown field; of those added, a span's trace_state and flags are
    // OTLP's.)
    let mut sp = rs.scope_spans[0].spans[0].clone();
    assert_eq!((sp.trace_state.as_str(), sp.flags), ("vendor=1", 1));
    sp.trace_state.clear();
    sp.flags = 0;
    assert_eq!(sp, was.scope_spans[0].spans[0]);
}
