//! Entry spans → request observations, read straight off the protobuf wire.
//!
//! Field numbers are those of `opentelemetry/proto/trace/v1/trace.proto` and
//! `collector/trace/v1/trace_service.proto`.

use super::attrs::{AttrValue, key_value};
use super::wire::{Reader, Value, utf8};
use super::{DecodeConfig, DecodeError, Decoded};
use std::borrow::Cow;
use std::collections::HashMap;
use std::sync::Arc;
use trike_engine::{RequestObs, SeriesKey};

const STATUS_ERROR: u64 = 2;

/// Resource-level facts shared by all spans of a `ResourceSpans`.
#[derive(Default)]
struct ResourceFacts<'a> {
    service: &'a str,
    version: Option<AttrValue<'a>>,
    dims: Vec<Option<AttrValue<'a>>>,
}

/// Span fields the SLIs need.
#[derive(Default)]
struct SpanFacts<'a> {
    trace_id_len: usize,
    trace_id_zero: bool,
    span_id_len: usize,
    name: &'a str,
    kind: u64,
    start: u64,
    end: u64,
    status_error: bool,
    http_route: Option<&'a str>,
    rpc_method: Option<&'a str>,
    http_status: Option<i64>,
    grpc_status: Option<i64>,
    version: Option<AttrValue<'a>>,
    dims: Vec<Option<AttrValue<'a>>>,
}

type KeyParts<'a> = (&'a str, &'a str, Cow<'a, str>, Vec<Cow<'a, str>>);

/// Builds series keys, sharing one key per distinct (service, operation, version, dims).
struct Keys<'a> {
    index: HashMap<KeyParts<'a>, u32>,
}

/// Decodes an `ExportTraceServiceRequest`.
pub fn traces_proto(buf: &[u8], cfg: &DecodeConfig) -> Result<Decoded, DecodeError> {
    let mut out = Decoded::default();
    let mut keys = Keys {
        index: HashMap::new(),
    };
    let mut r = Reader::new(buf);
    while let Some((f, v)) = r.next()? {
        if let (1, Value::Bytes(rs)) = (f, v) {
            resource_spans(rs, cfg, &mut out, &mut keys)?;
        }
    }
    Ok(out)
}

fn resource_spans<'a>(
    buf: &'a [u8],
    cfg: &DecodeConfig,
    out: &mut Decoded,
    keys: &mut Keys<'a>,
) -> Result<(), DecodeError> {
    // The resource may come after the scope spans on the wire: read it first.
    let mut res = ResourceFacts {
        dims: vec![None; cfg.dimensions.len()],
        ..Default::default()
    };
    let mut r = Reader::new(buf);
    while let Some((f, v)) = r.next()? {
        if let (1, Value::Bytes(resource)) = (f, v) {
            let mut rr = Reader::new(resource);
            while let Some((f, v)) = rr.next()? {
                if let (1, Value::Bytes(kv)) = (f, v) {
                    let (k, val) = key_value(kv)?;
                    if k == "service.name" {
                        if let AttrValue::Str(s) = val {
                            res.service = s;
                        }
                    } else if k == cfg.version_attribute {
                        res.version = Some(val);
                    }
                    if let Some(i) = cfg.dimensions.iter().position(|d| d == k) {
                        res.dims[i] = Some(val);
                    }
                }
            }
        }
    }
    if res.service.is_empty() {
        // What the OTel SDKs report when no service name is configured.
        res.service = "unknown_service";
    }
    let mut r = Reader::new(buf);
    while let Some((f, v)) = r.next()? {
        if let (2, Value::Bytes(scope_spans)) = (f, v) {
            let mut sr = Reader::new(scope_spans);
            while let Some((f, v)) = sr.next()? {
                if let (2, Value::Bytes(span)) = (f, v) {
                    out.received += 1;
                    one_span(span, cfg, &res, out, keys)?;
                }
            }
        }
    }
    Ok(())
}

fn one_span<'a>(
    buf: &'a [u8],
    cfg: &DecodeConfig,
    res: &ResourceFacts<'a>,
    out: &mut Decoded,
    keys: &mut Keys<'a>,
) -> Result<(), DecodeError> {
    let mut s = SpanFacts {
        dims: vec![None; cfg.dimensions.len()],
        ..Default::default()
    };
    let mut r = Reader::new(buf);
    while let Some((f, v)) = r.next()? {
        match (f, v) {
            (1, Value::Bytes(b)) => {
                s.trace_id_len = b.len();
                s.trace_id_zero = b.iter().all(|&x| x == 0);
            }
            (2, Value::Bytes(b)) => s.span_id_len = b.len(),
            (5, Value::Bytes(b)) => s.name = utf8(b, "span name")?,
            (6, Value::Varint(k)) => s.kind = k,
            (7, Value::Fixed64(t)) => s.start = t,
            (8, Value::Fixed64(t)) => s.end = t,
            (9, Value::Bytes(kv)) => {
                let (k, val) = key_value(kv)?;
                match k {
                    "http.route" => s.http_route = as_str(val),
                    "rpc.method" => s.rpc_method = as_str(val),
                    "http.response.status_code" | "http.status_code" => {
                        s.http_status = val.as_int()
                    }
                    "rpc.grpc.status_code" => s.grpc_status = val.as_int(),
                    _ => {}
                }
                if k == cfg.version_attribute {
                    s.version = Some(val);
                }
                if let Some(i) = cfg.dimensions.iter().position(|d| d == k) {
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
    if !cfg.entry_span_kinds.iter().any(|k| k.number() == s.kind) {
        return Ok(());
    }
    if s.trace_id_len != 16 || s.trace_id_zero {
        out.reject(|| {
            format!(
                "span {:?}: trace_id must be 16 bytes and not all zero",
                s.name
            )
        });
        return Ok(());
    }
    if s.span_id_len != 8 {
        out.reject(|| format!("span {:?}: span_id must be 8 bytes", s.name));
        return Ok(());
    }
    if s.start == 0 || s.end < s.start {
        out.reject(|| {
            format!(
                "span {:?}: end_time_unix_nano ({}) must be set and not before start_time_unix_nano ({})",
                s.name, s.end, s.start
            )
        });
        return Ok(());
    }
    let operation = s.http_route.or(s.rpc_method).unwrap_or(s.name);
    let version = s
        .version
        .or(res.version)
        .map(AttrValue::into_text)
        .unwrap_or_default();
    let dims: Vec<Cow<'a, str>> = s
        .dims
        .iter()
        .zip(&res.dims)
        .map(|(sv, rv)| sv.or(*rv).map(AttrValue::into_text).unwrap_or_default())
        .collect();
    let bad = s.status_error
        || s.http_status.is_some_and(|c| c >= 500)
        || s.grpc_status
            .is_some_and(|c| cfg.bad_grpc_codes.contains(&c));
    let key = keys.index_of(res.service, operation, version, dims, cfg, out);
    out.batch.requests.push(RequestObs {
        key,
        time: s.end,
        latency_ms: (s.end - s.start) as f64 / 1e6,
        bad,
    });
    Ok(())
}

fn as_str(v: AttrValue<'_>) -> Option<&str> {
    match v {
        AttrValue::Str(s) if !s.is_empty() => Some(s),
        _ => None,
    }
}

impl<'a> Keys<'a> {
    fn index_of(
        &mut self,
        service: &'a str,
        operation: &'a str,
        version: Cow<'a, str>,
        dims: Vec<Cow<'a, str>>,
        cfg: &DecodeConfig,
        out: &mut Decoded,
    ) -> u32 {
        let parts = (service, operation, version, dims);
        if let Some(&i) = self.index.get(&parts) {
            return i;
        }
        let (service, operation, version, dims) = parts.clone();
        let key = SeriesKey {
            service: service.into(),
            operation: operation.into(),
            version: Arc::from(&*version),
            dims: cfg
                .dimensions
                .iter()
                .zip(dims)
                .map(|(k, v)| (Arc::from(k.as_str()), Arc::from(&*v)))
                .collect(),
        };
        out.batch.keys.push(key);
        let i = (out.batch.keys.len() - 1) as u32;
        self.index.insert(parts, i);
        i
    }
}
