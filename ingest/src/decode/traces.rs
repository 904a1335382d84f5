//! Entry spans → request observations, read straight off the protobuf wire.
//!
//! Field numbers are those of `opentelemetry/proto/trace/v1/trace.proto` and
//! `collector/trace/v1/trace_service.proto`. Only the values used are UTF-8 validated; keys
//! are compared as bytes; no allocation per span unless it starts a new series key.

use super::attrs::{AttrValue, RawValue, key_value_raw, leading_key};
use super::keys::{KeyIndex, Keys, Memo, Names, Place, Resources, SpanKeys, text};
use super::wire::{Reader, Value};
use super::{DecodeConfig, DecodeError, Decoded, Reason, clip};
use std::sync::Arc;
use trike_engine::RequestObs;
use trike_engine::observation::{CallObs, CallSide, Exemplar};

const STATUS_ERROR: u64 = 2;
/// Most extra dimensions a series key can have (the config validates this).
pub const MAX_DIMS: usize = 8;

type Dims<'a> = [Option<RawValue<'a>>; MAX_DIMS];

/// Resource-level facts shared by all spans of a `ResourceSpans`.
struct ResourceFacts<'a> {
    service: ServiceName<'a>,
    version: Option<RawValue<'a>>,
    dims: Dims<'a>,
    /// The remembered resource these facts are all of, if they are.
    memo: Option<u32>,
}

/// A resource's service name: read from the request, or kept from the same resource read
/// before (checked as UTF-8 then), borrowed from the table rather than cloned per record.
enum ServiceName<'a> {
    Read(&'a str),
    Kept(&'a Arc<str>),
}

/// The tables a span is keyed with (the resource table is borrowed apart, by the facts of the
/// resource being read).
struct SpanTables<'k> {
    index: &'k mut KeyIndex,
    names: &'k mut Names,
    spans: &'k mut SpanKeys,
}

impl ResourceFacts<'_> {
    fn service(&self) -> &str {
        match &self.service {
            ServiceName::Read(s) => s,
            ServiceName::Kept(s) => s,
        }
    }
}

/// Span fields the SLIs need.
#[derive(Default)]
struct SpanFacts<'a> {
    trace_id: &'a [u8],
    trace_id_len: usize,
    trace_id_zero: bool,
    span_id: &'a [u8],
    parent_span_id: &'a [u8],
    name: &'a [u8],
    kind: u64,
    start: u64,
    end: u64,
    status_error: bool,
    http_route: Option<RawValue<'a>>,
    rpc_method: Option<RawValue<'a>>,
    http_status: Option<RawValue<'a>>,
    grpc_status: Option<RawValue<'a>>,
    /// The attributes (`KeyValue`s, whole) that may name a client span's peer, by precedence:
    /// `peer.service`, then `server.address` or `net.peer.name`, then `db.system`. Read once
    /// the span is read whole (its kind may come after them), and only on a client span.
    peer: [Option<&'a [u8]>; 3],
    version: Option<RawValue<'a>>,
    dims: Dims<'a>,
}

/// Span kinds (OTLP numbers) of the two sides of a call.
const CLIENT_KINDS: [u64; 2] = [3, 4];
const SERVER_KINDS: [u64; 2] = [2, 5];

/// Decodes an `ExportTraceServiceRequest`.
pub fn traces_proto(buf: &[u8], cfg: &DecodeConfig) -> Result<Decoded, DecodeError> {
    let mut out = Decoded::default();
    traces_proto_into(buf, cfg, &mut out, &mut Keys::default())?;
    Ok(out)
}

/// Decodes an `ExportTraceServiceRequest` into `out`, whose keys `keys` indexes (a run of
/// requests decoded into one batch, as the Kafka source's are). When it fails, `out` is as it
/// was: nothing of the request is kept.
pub fn traces_proto_into(
    buf: &[u8],
    cfg: &DecodeConfig,
    out: &mut Decoded,
    keys: &mut Keys,
) -> Result<(), DecodeError> {
    if cfg.dimensions.len() > MAX_DIMS {
        return Err(DecodeError::Malformed(format!(
            "more than {MAX_DIMS} dimensions configured"
        )));
    }
    let (calls, exemplars) = (out.batch.calls.len(), out.batch.exemplars.len());
    let before = (
        out.batch.requests.len(),
        out.batch.keys.len(),
        out.received,
        out.rejected,
        out.rejected_by,
        out.first_rejection.is_some(),
        out.attributes_dropped,
    );
    keys.names.follow(&cfg.scrub);
    let mut r = Reader::new(buf);
    let read = (|| {
        while let Some(key) = r.key()? {
            if key == 0x0a {
                resource_spans(r.bytes()?, cfg, out, keys)?;
            } else {
                r.value(key)?;
            }
        }
        Ok(())
    })();
    if read.is_err() {
        // (Keys past the end are ignored by `index_of` and replaced when seen again; span
        // keys may name them, and are forgotten.)
        keys.spans.clear();
        let (requests, n_keys, received, rejected, rejected_by, had_first, dropped) = before;
        out.batch.requests.truncate(requests);
        out.batch.calls.truncate(calls);
        out.batch.exemplars.truncate(exemplars);
        out.batch.keys.truncate(n_keys);
        out.received = received;
        out.rejected = rejected;
        out.rejected_by = rejected_by;
        if !had_first {
            out.first_rejection = None;
        }
        out.attributes_dropped = dropped;
    }
    read
}

/// What a span attribute is to the SLIs, by its key: read once per attribute, to decide
/// whether its value is decoded and then where it goes.
#[derive(Clone, Copy)]
struct KeyUse {
    /// One of OTLP's keys the SLIs read.
    known: Known,
    /// It is the configured version attribute.
    version: bool,
    /// It is the configured dimension of this index.
    dim: Option<usize>,
}

/// The span attributes with fixed keys that are read.
#[derive(Clone, Copy, Debug, PartialEq)]
enum Known {
    Route,
    RpcMethod,
    HttpStatus,
    GrpcStatus,
    /// What a client span names its peer (`peer.service`, then `server.address` or
    /// `net.peer.name`, then `db.system`), by precedence: kept whole, and read only on a
    /// client span whose calls the graph reads.
    Peer(usize),
    None,
}

impl Known {
    #[inline(always)]
    fn of(k: &[u8]) -> Self {
        // By length first: a key of none of these lengths costs a jump, one of them at most
        // two comparisons.
        match k.len() {
            9 if k == b"db.system" => Known::Peer(2),
            10 if k == b"http.route" => Known::Route,
            10 if k == b"rpc.method" => Known::RpcMethod,
            12 if k == b"peer.service" => Known::Peer(0),
            13 if k == b"net.peer.name" => Known::Peer(1),
            14 if k == b"server.address" => Known::Peer(1),
            16 if k == b"http.status_code" => Known::HttpStatus,
            20 if k == b"rpc.grpc.status_code" => Known::GrpcStatus,
            25 if k == b"http.response.status_code" => Known::HttpStatus,
            _ => Known::None,
        }
    }
}

impl KeyUse {
    #[inline(always)]
    fn of(cfg: &DecodeConfig, k: &[u8]) -> Self {
        KeyUse {
            known: Known::of(k),
            version: k == cfg.version_attribute.as_bytes(),
            dim: dim_index(cfg, k),
        }
    }

    /// Whether the value is decoded here (a peer's attribute is kept whole, for later).
    #[inline(always)]
    fn decoded(self) -> bool {
        match self.known {
            Known::None | Known::Peer(_) => self.version || self.dim.is_some(),
            _ => true,
        }
    }
}

fn dim_index(cfg: &DecodeConfig, key: &[u8]) -> Option<usize> {
    cfg.dimensions.iter().position(|d| d.as_bytes() == key)
}

fn resource_spans(
    buf: &[u8],
    cfg: &DecodeConfig,
    out: &mut Decoded,
    keys: &mut Keys,
) -> Result<(), DecodeError> {
    // The resource may come after the scope spans on the wire: read it first.
    let mut res = ResourceFacts {
        service: ServiceName::Read(""),
        version: None,
        dims: [None; MAX_DIMS],
        memo: None,
    };
    let (mut only, mut resources) = (None, 0);
    let mut r = Reader::new(buf);
    while let Some(key) = r.key()? {
        if key == 0x0a {
            only = Some(r.bytes()?);
            resources += 1;
        } else {
            r.value(key)?;
        }
    }
    let Keys {
        index,
        names,
        resources: memo,
        spans,
    } = keys;
    match only {
        Some(resource) if resources == 1 => read_resource(resource, cfg, out, memo, &mut res)?,
        _ => {
            // None, or several (protobuf merges them: facts merged are no one resource's, and
            // are not remembered).
            let mut r = Reader::new(buf);
            while let Some((f, v)) = r.next()? {
                if let (1, Value::Bytes(resource)) = (f, v) {
                    read_attributes(resource, cfg, out, &mut res)?;
                }
            }
        }
    }
    if res.service().is_empty() {
        // What the OTel SDKs report when no service name is configured.
        res.service = ServiceName::Read("unknown_service");
    }
    let mut tables = SpanTables {
        index,
        names,
        spans,
    };
    // The service's name as the service graph keeps it, made once per resource when needed.
    let mut service: Option<Arc<str>> = None;
    let mut r = Reader::new(buf);
    while let Some(key) = r.key()? {
        if key != 0x12 {
            r.value(key)?;
            continue;
        }
        let mut sr = Reader::new(r.bytes()?);
        while let Some(key) = sr.key()? {
            if key == 0x12 {
                let span = sr.bytes()?;
                out.received += 1;
                one_span(span, cfg, &res, out, &mut tables, &mut service)?;
            } else {
                sr.value(key)?;
            }
        }
    }
    Ok(())
}

/// Reads a `Resource`'s facts into `res`, from `memo` when the same bytes were read before.
fn read_resource<'a>(
    resource: &'a [u8],
    cfg: &DecodeConfig,
    out: &mut Decoded,
    memo: &'a mut Resources,
    res: &mut ResourceFacts<'a>,
) -> Result<(), DecodeError> {
    let hash = memo.hash(resource);
    if memo.get(hash, resource).is_none() {
        let found = read_attributes(resource, cfg, out, res)?;
        res.memo = memo.remember(hash, resource, found);
        return Ok(());
    }
    // (Found again by its hash alone: a reference kept from the first lookup would hold the
    // table borrowed for `remember` too.)
    let m = memo.known(hash);
    if let Some(s) = &m.service {
        res.service = ServiceName::Kept(s);
    }
    if let Some(p) = m.version {
        res.version = Some(p.read(resource));
    }
    for (slot, at) in res.dims.iter_mut().zip(&m.dims).take(cfg.dimensions.len()) {
        if let Some(p) = at {
            *slot = Some(p.read(resource));
        }
    }
    out.attributes_dropped += m.dropped;
    res.memo = Some(m.id);
    Ok(())
}

/// Reads a `Resource`'s attributes into `res`; what was found, to remember.
fn read_attributes<'a>(
    resource: &'a [u8],
    cfg: &DecodeConfig,
    out: &mut Decoded,
    res: &mut ResourceFacts<'a>,
) -> Result<Memo, DecodeError> {
    let mut found = Memo::default();
    let mut service = None;
    let mut rr = Reader::new(resource);
    let mut read = 0;
    while let Some((f, v)) = rr.next()? {
        if let (1, Value::Bytes(kv)) = (f, v) {
            if !cfg.attrs.admits(&mut read, kv.len()) {
                out.attributes_dropped += 1;
                found.dropped += 1;
                continue;
            }
            let (k, val) = key_value_raw(kv)?;
            if k == b"service.name" {
                if let AttrValue::Str(s) = val.check()? {
                    res.service = ServiceName::Read(s);
                    service = Some(s);
                }
            } else if k == cfg.version_attribute.as_bytes() {
                res.version = Some(val);
                found.version = Some(Place::of(resource, val));
            }
            if let Some(i) = dim_index(cfg, k) {
                res.dims[i] = Some(val);
                found.dims[i] = Some(Place::of(resource, val));
            }
        }
    }
    found.service = service.map(Arc::from);
    Ok(found)
}

/// Reads a span attribute (a `KeyValue`'s bytes) into `s` when it is one the SLIs use: an
/// attribute over the limits is dropped, one whose key is of no use is not decoded further.
#[inline(always)]
fn span_attribute<'a>(
    kv: &'a [u8],
    cfg: &DecodeConfig,
    s: &mut SpanFacts<'a>,
    read: &mut usize,
    out: &mut Decoded,
) -> Result<(), DecodeError> {
    if !cfg.attrs.admits(read, kv.len()) {
        out.attributes_dropped += 1;
        return Ok(());
    }
    // The key is read first (as SDKs write it), and the value decoded only when it is used.
    let lead = leading_key(kv).map(|k| (k, KeyUse::of(cfg, k)));
    if let Some((_, u)) = lead
        && !u.decoded()
    {
        if let Known::Peer(i) = u.known {
            s.peer[i] = Some(kv);
        }
        return Ok(());
    }
    let (k, val) = key_value_raw(kv)?;
    let u = match lead {
        // (The same key, unless a second key field came after the first: the last wins.)
        Some((l, u)) if std::ptr::eq(l, k) => u,
        _ => KeyUse::of(cfg, k),
    };
    match u.known {
        Known::Route => s.http_route = Some(val),
        Known::RpcMethod => s.rpc_method = Some(val),
        Known::HttpStatus => s.http_status = Some(val),
        Known::GrpcStatus => s.grpc_status = Some(val),
        Known::Peer(i) => s.peer[i] = Some(kv),
        Known::None => {}
    }
    if u.version {
        s.version = Some(val);
    }
    if let Some(i) = u.dim {
        s.dims[i] = Some(val);
    }
    Ok(())
}

fn one_span(
    buf: &[u8],
    cfg: &DecodeConfig,
    res: &ResourceFacts<'_>,
    out: &mut Decoded,
    keys: &mut SpanTables<'_>,
    service: &mut Option<Arc<str>>,
) -> Result<(), DecodeError> {
    let mut s = SpanFacts::default();
    let mut read = 0;
    let mut r = Reader::new(buf);
    // Keys matched whole (field number << 3 | wire type): OTLP's fields, each read as its
    // type; any other key (another field, or a known one of another type) is read and
    // checked, and skipped.
    while let Some(key) = r.key()? {
        match key {
            0x0a => {
                let b = r.bytes()?;
                s.trace_id = b;
                s.trace_id_len = b.len();
                s.trace_id_zero = b.iter().all(|&x| x == 0);
            }
            0x12 => s.span_id = r.bytes()?,
            0x22 => s.parent_span_id = r.bytes()?,
            0x2a => s.name = r.bytes()?,
            0x30 => s.kind = r.varint()?,
            0x39 => s.start = r.fixed64()?,
            0x41 => s.end = r.fixed64()?,
            0x4a => span_attribute(r.bytes()?, cfg, &mut s, &mut read, out)?,
            0x7a => {
                let mut sr = Reader::new(r.bytes()?);
                while let Some((f, v)) = sr.next()? {
                    if let (3, Value::Varint(code)) = (f, v) {
                        s.status_error = code == STATUS_ERROR;
                    }
                }
            }
            other => {
                r.value(other)?;
            }
        }
    }
    let int = |v: Option<RawValue<'_>>| v.and_then(|v| v.check().ok()).and_then(|v| v.as_int());
    let bad = s.status_error
        || int(s.http_status).is_some_and(|c| c >= 500)
        || int(s.grpc_status).is_some_and(|c| cfg.bad_grpc_codes.contains(&c));
    if cfg.calls && CLIENT_KINDS.contains(&s.kind) {
        client_call(&s, bad, res, out, service)?;
    }
    if !cfg.entry_span_kinds.iter().any(|k| k.number() == s.kind) {
        return Ok(());
    }
    // The name is read as text only where it is used: as the operation, or in a message.
    let name = || String::from_utf8_lossy(s.name);
    if s.trace_id_len != 16 || s.trace_id_zero {
        out.reject(Reason::InvalidId, || {
            format!(
                "span {:?}: trace_id must be 16 bytes and not all zero",
                name()
            )
        });
        return Ok(());
    }
    if s.span_id.len() != 8 {
        out.reject(Reason::InvalidId, || {
            format!("span {:?}: span_id must be 8 bytes", name())
        });
        return Ok(());
    }
    if s.start == 0 || s.end < s.start {
        out.reject(Reason::InvalidTime, || {
            format!(
                "span {:?}: end_time_unix_nano ({}) must be set and not before start_time_unix_nano ({})",
                name(),
                s.end,
                s.start
            )
        });
        return Ok(());
    }
    // The route, else the RPC method, else the span's name: the first that is a non-empty
    // string.
    let (operation, what) = match (raw_nonempty(s.http_route), raw_nonempty(s.rpc_method)) {
        (Some(r), _) | (None, Some(r)) => (r, "attribute value"),
        (None, None) => (s.name, "span name"),
    };
    let (operation, remembered) = keys.names.operation(operation, what, cfg)?;
    // A span that takes its version and dimensions from a remembered resource: its key is
    // that of the resource and the (remembered) operation.
    let shared = res.memo.filter(|_| {
        remembered
            && s.version.is_none()
            && s.dims[..cfg.dimensions.len()].iter().all(Option::is_none)
    });
    let key = match shared.and_then(|id| keys.spans.get(id, operation, out)) {
        Some(key) => key,
        None => {
            let key = series_key(&s, res, operation, cfg, keys.index, out)?;
            if let Some(id) = shared {
                keys.spans.insert(id, operation, key);
            }
            key
        }
    };
    let latency_ms = (s.end - s.start) as f64 / 1e6;
    out.batch.requests.push(RequestObs {
        key,
        time: s.end,
        latency_ms,
        bad,
    });
    if cfg.calls
        && SERVER_KINDS.contains(&s.kind)
        && let Some(parent) = call_id(s.parent_span_id)
    {
        out.batch.calls.push(CallObs {
            service: service_arc(service, res),
            side: CallSide::Server,
            trace_id: s.trace_id.try_into().expect("checked: 16 bytes"),
            span_id: parent,
            time: s.end,
            latency_ms,
            bad,
        });
    }
    if bad && out.batch.exemplars.len() < EXEMPLARS_PER_BATCH {
        let mut trace_id = [0; 16];
        trace_id.copy_from_slice(s.trace_id);
        out.batch.exemplars.push(Exemplar {
            key,
            trace_id,
            time: s.end,
            latency_ms,
        });
    }
    Ok(())
}

/// The batch's key for a span of operation `operation`: its version and dimensions (the span's
/// own, else its resource's) checked as text and scrubbed by the rules.
fn series_key(
    s: &SpanFacts<'_>,
    res: &ResourceFacts<'_>,
    operation: &Arc<str>,
    cfg: &DecodeConfig,
    index: &mut KeyIndex,
    out: &mut Decoded,
) -> Result<u32, DecodeError> {
    let version = s.version.or(res.version).map(RawValue::check).transpose()?;
    let mut dims: [Option<AttrValue<'_>>; MAX_DIMS] = [None; MAX_DIMS];
    for (i, d) in dims.iter_mut().enumerate().take(cfg.dimensions.len()) {
        *d = s.dims[i].or(res.dims[i]).map(RawValue::check).transpose()?;
    }
    // Rules on dimension values (rare): their scrubbed texts stand in for the values.
    let scrubbed: [Option<String>; MAX_DIMS] = if cfg.scrub.has_rules() {
        std::array::from_fn(|i| dims[i].map(|v| cfg.scrub.value(&text(Some(v))).into_owned()))
    } else {
        std::array::from_fn(|_| None)
    };
    if cfg.scrub.has_rules() {
        for (d, t) in dims.iter_mut().zip(&scrubbed) {
            if let Some(t) = t {
                *d = Some(AttrValue::Str(t));
            }
        }
    }
    Ok(index.index_of(
        clip(res.service()),
        operation,
        version,
        &dims[..cfg.dimensions.len()],
        cfg,
        out,
    ))
}

/// A client span's half of a call, for the service graph. A client span whose ids or times
/// are unusable is left out of the graph (it is no observation, so nothing is rejected).
fn client_call(
    s: &SpanFacts<'_>,
    bad: bool,
    res: &ResourceFacts<'_>,
    out: &mut Decoded,
    service: &mut Option<Arc<str>>,
) -> Result<(), DecodeError> {
    let (Ok(trace_id), Some(span_id)) = (<[u8; 16]>::try_from(s.trace_id), call_id(s.span_id))
    else {
        return Ok(());
    };
    if s.trace_id_zero || s.start == 0 || s.end < s.start {
        return Ok(());
    }
    let mut peer = None;
    // (A peer attribute that is malformed or not UTF-8 names no peer: it costs the graph, never
    // the SLIs. One whose last key field is another key is not the peer's.)
    for (i, kv) in s.peer.iter().enumerate() {
        let Some(Ok((k, v))) = kv.map(key_value_raw) else {
            continue;
        };
        if Known::of(k) == Known::Peer(i)
            && let Ok(AttrValue::Str(p)) = v.check()
            && !p.is_empty()
        {
            peer = Some(Arc::from(clip(p)));
            break;
        }
    }
    out.batch.calls.push(CallObs {
        service: service_arc(service, res),
        side: CallSide::Client { peer },
        trace_id,
        span_id,
        time: s.end,
        latency_ms: (s.end - s.start) as f64 / 1e6,
        bad,
    });
    Ok(())
}

/// A span id that can key a call: 8 bytes, not all zero.
fn call_id(b: &[u8]) -> Option<[u8; 8]> {
    <[u8; 8]>::try_from(b).ok().filter(|id| *id != [0; 8])
}

fn service_arc(cache: &mut Option<Arc<str>>, res: &ResourceFacts<'_>) -> Arc<str> {
    cache
        .get_or_insert_with(|| match &res.service {
            ServiceName::Kept(s) if clip(s).len() == s.len() => Arc::clone(s),
            _ => Arc::from(clip(res.service())),
        })
        .clone()
}

/// Failing requests' traces kept as examples, at most, per batch (the engine keeps the
/// newest few per service).
const EXEMPLARS_PER_BATCH: usize = 32;

/// A string value's bytes when it is a non-empty string (checked as text once used).
fn raw_nonempty(v: Option<RawValue<'_>>) -> Option<&[u8]> {
    match v {
        Some(RawValue::Str(b)) if !b.is_empty() => Some(b),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::Known;

    /// The keys as they were matched before the match went by length.
    fn matched(k: &[u8]) -> Known {
        match k {
            b"http.route" => Known::Route,
            b"rpc.method" => Known::RpcMethod,
            b"http.response.status_code" | b"http.status_code" => Known::HttpStatus,
            b"rpc.grpc.status_code" => Known::GrpcStatus,
            b"peer.service" => Known::Peer(0),
            b"server.address" | b"net.peer.name" => Known::Peer(1),
            b"db.system" => Known::Peer(2),
            _ => Known::None,
        }
    }

    /// Guarantees: the keys the SLIs read are found by length as by a plain match: each of
    /// them, every key one byte from one of them (cut, lengthened, or a letter's case
    /// changed), and keys of their lengths made of another's bytes.
    #[test]
    fn known_keys_by_length_are_the_keys_matched() {
        let keys: [&[u8]; 9] = [
            b"http.route",
            b"rpc.method",
            b"http.response.status_code",
            b"http.status_code",
            b"rpc.grpc.status_code",
            b"peer.service",
            b"server.address",
            b"net.peer.name",
            b"db.system",
        ];
        let mut tried = 0;
        for k in keys {
            assert_ne!(Known::of(k), Known::None);
            let mut near = vec![k[..k.len() - 1].to_vec(), [k, b"x"].concat(), vec![]];
            for i in 0..k.len() {
                let mut changed = k.to_vec();
                changed[i] ^= 0x20;
                near.push(changed);
            }
            for other in keys {
                near.push(other.iter().cycle().take(k.len()).copied().collect());
            }
            for n in near.iter().map(Vec::as_slice).chain([k]) {
                assert_eq!(Known::of(n), matched(n), "{:?}", String::from_utf8_lossy(n));
                tried += 1;
            }
        }
        assert!(tried > 200);
    }
}
