//! Entry spans → request observations, read straight off the protobuf wire.
//!
//! Field numbers are those of `opentelemetry/proto/trace/v1/trace.proto` and
//! `collector/trace/v1/trace_service.proto`. Only the values used are UTF-8 validated; keys
//! are compared as bytes; no allocation per span unless it starts a new series key.

use super::attrs::{AttrValue, RawValue, key_value_raw, leading_key};
use super::wire::{Reader, Value, utf8};
use super::{DecodeConfig, DecodeError, Decoded, Reason, clip};
use std::borrow::Cow;
use std::collections::HashMap;
use std::hash::{BuildHasher, BuildHasherDefault, Hasher};
use std::sync::Arc;
use trike_engine::observation::{CallObs, CallSide, Exemplar};
use trike_engine::{RequestObs, SeriesKey};

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
/// before (checked as UTF-8 then).
enum ServiceName<'a> {
    Read(&'a str),
    Kept(Arc<str>),
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
    /// What a client span names its peer (`peer.service`, `server.address`, `db.system`).
    peer: [Option<RawValue<'a>>; 3],
    version: Option<RawValue<'a>>,
    dims: Dims<'a>,
}

/// Span kinds (OTLP numbers) of the two sides of a call.
const CLIENT_KINDS: [u64; 2] = [3, 4];
const SERVER_KINDS: [u64; 2] = [2, 5];

/// Series keys of a batch (`Decoded::batch.keys`), found by a hash of their parts: a key seen
/// before costs a lookup, not an allocation. Kept across requests decoded into one batch.
#[derive(Default)]
pub struct Keys {
    index: KeyIndex,
    /// Operation names scrubbed before.
    pub(crate) names: Names,
    /// Resources read before.
    resources: Resources,
    /// Keys of spans that take everything but their operation from a remembered resource.
    spans: SpanKeys,
}

/// The key of a span whose version and dimensions are its resource's, by (remembered
/// resource, operation): a record of a resource and operation seen before in the batch costs
/// one lookup, instead of checking its version and hashing and comparing every part of its key.
#[derive(Default)]
struct SpanKeys {
    /// (resource id, the operation's address) → the operation (held, so that its address is
    /// not reused while it keys this map) and the key's index in the batch.
    by: HashMap<(u32, usize), (Arc<str>, u32), foldhash::fast::RandomState>,
}

/// Most span keys remembered (then forgotten all at once).
const SPAN_KEYS_CACHED: usize = 65_536;

impl SpanKeys {
    fn get(&self, resource: u32, op: &Arc<str>, out: &Decoded) -> Option<u32> {
        let (held, i) = self
            .by
            .get(&(resource, Arc::as_ptr(op).cast::<u8>() as usize))?;
        // (A key index always names a key of this batch: the map is cleared when a request
        // that failed takes its keys back.)
        (Arc::ptr_eq(held, op) && (*i as usize) < out.batch.keys.len()).then_some(*i)
    }

    fn insert(&mut self, resource: u32, op: &Arc<str>, key: u32) {
        if self.by.len() >= SPAN_KEYS_CACHED {
            self.by.clear();
        }
        let at = Arc::as_ptr(op).cast::<u8>() as usize;
        self.by.insert((resource, at), (op.clone(), key));
    }
}

/// What was found in resources read before, by their bytes: the Kafka source's records each
/// carry their resource whole, and a run of them repeats a few resources over and over. A
/// resource seen before costs a hash and a comparison, and reading the few attributes that
/// matter, instead of reading every attribute.
#[derive(Default)]
struct Resources {
    by_hash: ByHash<Memo>,
    hasher: foldhash::fast::RandomState,
    /// The id the next remembered resource gets (ids are never reused).
    next_id: u32,
}

/// A resource's facts: its service name, and where its version and dimensions are.
struct Memo {
    id: u32,
    bytes: Box<[u8]>,
    service: Option<Arc<str>>,
    version: Option<Place>,
    dims: [Option<Place>; MAX_DIMS],
    /// Attributes over the limits, dropped.
    dropped: u64,
}

/// Where an attribute's value is: a string's bytes in the resource (checked as UTF-8 where it
/// is used, as when read afresh), or a value that is not a string.
#[derive(Clone, Copy)]
enum Place {
    Str(u32, u32),
    Val(AttrValue<'static>),
}

impl Place {
    /// `v`'s place in `resource`, which holds it.
    fn of(resource: &[u8], v: RawValue<'_>) -> Self {
        match v {
            RawValue::Str(b) => {
                let start = b.as_ptr() as usize - resource.as_ptr() as usize;
                Place::Str(start as u32, (start + b.len()) as u32)
            }
            RawValue::Val(v) => Place::Val(match v {
                AttrValue::Int(i) => AttrValue::Int(i),
                AttrValue::Bool(b) => AttrValue::Bool(b),
                AttrValue::Double(d) => AttrValue::Double(d),
                // (A string is never a `Val`.)
                AttrValue::Str(_) | AttrValue::Other => AttrValue::Other,
            }),
        }
    }

    fn read(self, resource: &[u8]) -> RawValue<'_> {
        match self {
            Place::Str(s, e) => RawValue::Str(&resource[s as usize..e as usize]),
            Place::Val(v) => RawValue::Val(v),
        }
    }
}

/// Most resources remembered (then forgotten all at once), and the largest remembered.
const RESOURCES_CACHED: usize = 256;
const RESOURCE_CACHED_BYTES: usize = 4096;

impl std::fmt::Debug for Keys {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Keys").finish_non_exhaustive()
    }
}

/// Operation names read before, by a hash of their bytes as read: the bytes, and the
/// operation they became (UTF-8 checked, clipped, scrubbed). A name seen before is neither
/// checked nor scanned again, and its series keys share one allocation. May outlive one
/// batch (the Kafka source keeps it from run to run).
#[derive(Default)]
pub(crate) struct Names {
    scrubbed: ByHash<(Box<[u8]>, Arc<str>)>,
    hasher: foldhash::fast::RandomState,
    /// The scrubbing they went through.
    scrub: Option<super::scrub::Scrub>,
    /// The operation of the last name too long to remember.
    spare: Arc<str>,
}

/// Most operation names [`Keys`] remembers scrubbed, and the longest (a span's name is
/// bounded only by the request: longer names are checked and scrubbed each time, so the
/// cache, which lives from batch to batch, holds at most 4 MiB of names).
const SCRUBBED_CACHE: usize = 4096;
const NAME_CACHED_BYTES: usize = 1024;

/// A map whose keys are hashes already.
type ByHash<V> = HashMap<u64, V, BuildHasherDefault<Prehashed>>;

/// The map's keys are hashes already.
#[derive(Default)]
pub(crate) struct Prehashed(u64);

impl Hasher for Prehashed {
    fn finish(&self) -> u64 {
        self.0
    }
    fn write(&mut self, bytes: &[u8]) {
        for b in bytes {
            self.0 = (self.0 << 8) ^ u64::from(*b);
        }
    }
    fn write_u64(&mut self, v: u64) {
        self.0 = v;
    }
}

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
        while let Some((f, v)) = r.next()? {
            if let (1, Value::Bytes(rs)) = (f, v) {
                resource_spans(rs, cfg, out, keys)?;
            }
        }
        Ok(())
    })();
    if read.is_err() {
        // (Keys past the end are ignored by `index_of` and replaced when seen again; span
        // keys may name them, and are forgotten.)
        keys.spans.by.clear();
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

/// Whether a span attribute's key is one the SLIs read (and, on a client span whose calls the
/// graph reads, one naming its peer).
#[inline]
fn span_key_used(cfg: &DecodeConfig, k: &[u8], client: bool) -> bool {
    matches!(
        k,
        b"http.route"
            | b"rpc.method"
            | b"http.response.status_code"
            | b"http.status_code"
            | b"rpc.grpc.status_code"
    ) || (client
        && matches!(
            k,
            b"peer.service" | b"server.address" | b"net.peer.name" | b"db.system"
        ))
        || k == cfg.version_attribute.as_bytes()
        || dim_index(cfg, k).is_some()
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
    let mut resources = 0;
    let mut r = Reader::new(buf);
    while let Some((f, v)) = r.next()? {
        if let (1, Value::Bytes(resource)) = (f, v) {
            read_resource(resource, cfg, out, &mut keys.resources, &mut res)?;
            resources += 1;
        }
    }
    if resources > 1 {
        // (Facts merged from several resources are no one resource's.)
        res.memo = None;
    }
    if res.service().is_empty() {
        // What the OTel SDKs report when no service name is configured.
        res.service = ServiceName::Read("unknown_service");
    }
    // The service's name as the service graph keeps it, made once per resource when needed.
    let mut service: Option<Arc<str>> = None;
    let mut r = Reader::new(buf);
    while let Some((f, v)) = r.next()? {
        if let (2, Value::Bytes(scope_spans)) = (f, v) {
            let mut sr = Reader::new(scope_spans);
            while let Some((f, v)) = sr.next()? {
                if let (2, Value::Bytes(span)) = (f, v) {
                    out.received += 1;
                    one_span(span, cfg, &res, out, keys, &mut service)?;
                }
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
    memo: &mut Resources,
    res: &mut ResourceFacts<'a>,
) -> Result<(), DecodeError> {
    let hash = memo.hasher.hash_one(resource);
    if let Some(m) = memo.by_hash.get(&hash).filter(|m| *m.bytes == *resource) {
        if let Some(s) = &m.service {
            res.service = ServiceName::Kept(s.clone());
        }
        if let Some(p) = m.version {
            res.version = Some(p.read(resource));
        }
        for (slot, at) in res.dims.iter_mut().zip(m.dims) {
            if let Some(p) = at {
                *slot = Some(p.read(resource));
            }
        }
        out.attributes_dropped += m.dropped;
        res.memo = Some(m.id);
        return Ok(());
    }
    let mut found = Memo {
        id: 0,
        bytes: Box::default(),
        service: None,
        version: None,
        dims: [None; MAX_DIMS],
        dropped: 0,
    };
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
    if resource.len() <= RESOURCE_CACHED_BYTES {
        if memo.by_hash.len() >= RESOURCES_CACHED {
            memo.by_hash.clear();
        }
        found.bytes = resource.into();
        found.service = service.map(Arc::from);
        found.id = memo.next_id;
        memo.next_id = memo.next_id.wrapping_add(1);
        res.memo = Some(found.id);
        memo.by_hash.insert(hash, found);
    }
    Ok(())
}

fn one_span(
    buf: &[u8],
    cfg: &DecodeConfig,
    res: &ResourceFacts<'_>,
    out: &mut Decoded,
    keys: &mut Keys,
    service: &mut Option<Arc<str>>,
) -> Result<(), DecodeError> {
    let mut s = SpanFacts::default();
    let mut read = 0;
    let mut r = Reader::new(buf);
    while let Some((f, v)) = r.next()? {
        match (f, v) {
            (1, Value::Bytes(b)) => {
                s.trace_id = b;
                s.trace_id_len = b.len();
                s.trace_id_zero = b.iter().all(|&x| x == 0);
            }
            (2, Value::Bytes(b)) => s.span_id = b,
            (4, Value::Bytes(b)) => s.parent_span_id = b,
            (5, Value::Bytes(b)) => s.name = b,
            (6, Value::Varint(k)) => s.kind = k,
            (7, Value::Fixed64(t)) => s.start = t,
            (8, Value::Fixed64(t)) => s.end = t,
            (9, Value::Bytes(kv)) if !cfg.attrs.admits(&mut read, kv.len()) => {
                out.attributes_dropped += 1;
            }
            // An attribute whose key is of no use is not decoded further.
            (9, Value::Bytes(kv))
                if leading_key(kv).is_some_and(|k| {
                    !span_key_used(cfg, k, cfg.calls && CLIENT_KINDS.contains(&s.kind))
                }) => {}
            (9, Value::Bytes(kv)) => {
                let (k, val) = key_value_raw(kv)?;
                match k {
                    b"http.route" => s.http_route = Some(val),
                    b"rpc.method" => s.rpc_method = Some(val),
                    b"http.response.status_code" | b"http.status_code" => s.http_status = Some(val),
                    b"rpc.grpc.status_code" => s.grpc_status = Some(val),
                    b"peer.service" => s.peer[0] = Some(val),
                    b"server.address" | b"net.peer.name" => s.peer[1] = Some(val),
                    b"db.system" => s.peer[2] = Some(val),
                    _ => {}
                }
                if k == cfg.version_attribute.as_bytes() {
                    s.version = Some(val);
                }
                if let Some(i) = dim_index(cfg, k) {
                    s.dims[i] = Some(val);
                }
            }
            (15, Value::Bytes(status)) => {
                let mut sr = Reader::new(status);
                while let Some((f, v)) = sr.next()? {
                    if let (3, Value::Varint(code)) = (f, v) {
                        s.status_error = code == STATUS_ERROR;
                    }
                }
            }
            _ => {}
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
            let key = series_key(&s, res, operation, cfg, &mut keys.index, out)?;
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
    // (A peer attribute that is not UTF-8 names no peer: it costs the graph, never the SLIs.)
    for v in s.peer.iter().flatten() {
        if let Ok(AttrValue::Str(p)) = v.check()
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
            ServiceName::Kept(s) if clip(s).len() == s.len() => s.clone(),
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

fn text(v: Option<AttrValue<'_>>) -> Cow<'_, str> {
    match v.map(AttrValue::into_text).unwrap_or_default() {
        Cow::Borrowed(b) => Cow::Borrowed(clip(b)),
        Cow::Owned(o) => Cow::Owned(clip(&o).to_string()),
    }
}

/// Hashes a part of a key (with a separator, so ("ab","c") and ("a","bc") differ).
fn hash_part(h: &mut impl Hasher, bytes: &[u8]) {
    h.write(bytes);
    h.write_u8(0xff);
}

fn hash_value(h: &mut impl Hasher, v: Option<AttrValue<'_>>) {
    match v {
        None => h.write_u8(0),
        Some(AttrValue::Str(s)) => hash_part(h, s.as_bytes()),
        Some(other) => hash_part(h, other.into_text().as_bytes()),
    }
}

impl Names {
    /// Names are scrubbed by `scrub` from now on: those remembered from another scrubbing
    /// are forgotten. (Called once per request, before [`Names::operation`].)
    fn follow(&mut self, scrub: &super::scrub::Scrub) {
        if self.scrub.as_ref() != Some(scrub) {
            self.scrubbed.clear();
            self.scrub = Some(scrub.clone());
        }
    }

    /// The operation that a name's bytes `raw` become: UTF-8 checked (an error names it as
    /// `what`), clipped and scrubbed, or remembered from the same bytes read before; and
    /// whether it is remembered (then the same bytes give the same `Arc` until the cache is
    /// cleared).
    fn operation(
        &mut self,
        raw: &[u8],
        what: &str,
        cfg: &DecodeConfig,
    ) -> Result<(&Arc<str>, bool), DecodeError> {
        use std::collections::hash_map::Entry;
        debug_assert!(self.scrub.as_ref() == Some(&cfg.scrub), "`follow` first");
        let scrubbed = |raw| -> Result<Arc<str>, DecodeError> {
            Ok(match cfg.scrub.operation(clip(utf8(raw, what)?)) {
                Cow::Borrowed(same) => same.into(),
                Cow::Owned(changed) => changed.into(),
            })
        };
        if raw.len() > NAME_CACHED_BYTES {
            self.spare = scrubbed(raw)?;
            return Ok((&self.spare, false));
        }
        let hash = self.hasher.hash_one(raw);
        if self.scrubbed.len() >= SCRUBBED_CACHE && !self.scrubbed.contains_key(&hash) {
            self.scrubbed.clear();
        }
        let slot = match self.scrubbed.entry(hash) {
            Entry::Occupied(e) if *e.get().0 == *raw => e.into_mut(),
            entry => {
                let op = scrubbed(raw)?;
                // (On a collision the newer name takes the slot.)
                match entry {
                    Entry::Occupied(mut e) => {
                        e.insert((raw.into(), op));
                        e.into_mut()
                    }
                    Entry::Vacant(e) => e.insert((raw.into(), op)),
                }
            }
        };
        Ok((&slot.1, true))
    }
}

/// Series keys of a batch by a hash of their parts.
#[derive(Default)]
struct KeyIndex {
    by_hash: ByHash<u32>,
    /// Seeded per table (a hash that must not be stable: a crafted collision costs a lookup).
    hasher: foldhash::fast::RandomState,
}

impl KeyIndex {
    fn index_of(
        &mut self,
        service: &str,
        operation: &Arc<str>,
        version: Option<AttrValue<'_>>,
        dims: &[Option<AttrValue<'_>>],
        cfg: &DecodeConfig,
        out: &mut Decoded,
    ) -> u32 {
        let mut h = self.hasher.build_hasher();
        hash_part(&mut h, service.as_bytes());
        hash_part(&mut h, operation.as_bytes());
        hash_value(&mut h, version);
        for d in dims {
            hash_value(&mut h, *d);
        }
        let hash = h.finish();
        if let Some(&i) = self.by_hash.get(&hash)
            && let Some(k) = out.batch.keys.get(i as usize)
        {
            // Verify: FNV is not collision-proof against crafted input.
            let same = &*k.service == service
                && k.operation == *operation
                && *k.version == *text(version)
                && k.dims.iter().zip(dims).all(|((_, v), d)| **v == *text(*d));
            if same {
                return i;
            }
        }
        let key = SeriesKey {
            service: service.into(),
            operation: operation.clone(),
            version: Arc::from(&*text(version)),
            dims: cfg
                .dimensions
                .iter()
                .zip(dims)
                .map(|(k, v)| (Arc::from(k.as_str()), Arc::from(&*text(*v))))
                .collect(),
        };
        out.batch.keys.push(key);
        let i = (out.batch.keys.len() - 1) as u32;
        // On a (crafted) collision the newer key wins the slot; both stay correct.
        self.by_hash.insert(hash, i);
        i
    }
}
