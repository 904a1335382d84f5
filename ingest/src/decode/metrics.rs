//! Request-duration histograms, request counters and usage metrics → observations.
//!
//! Field semantics follow `opentelemetry/proto/metrics/v1/metrics.proto`; durations are converted
//! to milliseconds from the metric's unit (`s`, `ms`, `us`, `ns`).

use super::attrs::AttrValue;
use super::{AttrLimits, DecodeConfig, DecodeError, Decoded, Fnv, Reason, clip};
use prost::Message;
use std::borrow::Cow;
use std::collections::HashMap;
use std::sync::Arc;
use trike_engine::{CounterObs, HistogramObs, SeriesKey, Temporality};
use trike_proto::collector::metrics::v1::ExportMetricsServiceRequest;
use trike_proto::common::v1::{AnyValue, KeyValue, any_value};
use trike_proto::metrics::v1::{
    AggregationTemporality, ExponentialHistogramDataPoint, HistogramDataPoint, Metric,
    NumberDataPoint, metric::Data, number_data_point,
};

/// Most buckets a histogram point may have.
pub const MAX_BUCKETS: usize = 4096;
/// Most requests one data point may carry (2^32, far above any real interval).
pub const MAX_POINT_COUNT: u64 = 1 << 32;

/// OTLP data point flag: no value was recorded.
const FLAG_NO_RECORDED_VALUE: u32 = 1;

#[path = "usage.rs"]
mod usage;

/// Decodes an `ExportMetricsServiceRequest` in protobuf.
pub fn metrics_proto(buf: &[u8], cfg: &DecodeConfig) -> Result<Decoded, DecodeError> {
    let req = ExportMetricsServiceRequest::decode(buf).map_err(|e| {
        if e.to_string().contains("buffer underflow") {
            DecodeError::Truncated
        } else {
            DecodeError::Malformed(e.to_string())
        }
    })?;
    Ok(metrics_request(&req, cfg))
}

pub(super) fn attr(v: &Option<AnyValue>) -> AttrValue<'_> {
    match v.as_ref().and_then(|a| a.value.as_ref()) {
        Some(any_value::Value::StringValue(s)) => AttrValue::Str(s),
        Some(any_value::Value::IntValue(i)) => AttrValue::Int(*i),
        Some(any_value::Value::BoolValue(b)) => AttrValue::Bool(*b),
        Some(any_value::Value::DoubleValue(d)) => AttrValue::Double(*d),
        _ => AttrValue::Other,
    }
}

/// The attributes read of `attrs` (`lim`), counting those not read in `dropped`. Borrowed
/// unless something is dropped.
pub(super) fn capped<'a>(
    attrs: &'a [KeyValue],
    lim: &AttrLimits,
    dropped: &mut u64,
) -> Cow<'a, [KeyValue]> {
    let mut read = 0;
    let fits = |kv: &KeyValue, read: &mut usize| lim.admits(read, kv.encoded_len());
    if attrs.iter().all(|kv| fits(kv, &mut read)) {
        return Cow::Borrowed(attrs);
    }
    let mut read = 0;
    let kept: Vec<KeyValue> = attrs
        .iter()
        .filter(|kv| fits(kv, &mut read))
        .cloned()
        .collect();
    *dropped += (attrs.len() - kept.len()) as u64;
    Cow::Owned(kept)
}

pub(super) fn find<'a>(attrs: &'a [KeyValue], key: &str) -> Option<AttrValue<'a>> {
    attrs
        .iter()
        .find(|kv| kv.key == key)
        .map(|kv| attr(&kv.value))
}

fn hash_attrs(h: &mut Fnv, attrs: &[KeyValue]) {
    let mut pairs: Vec<(&str, Cow<'_, str>)> = attrs
        .iter()
        .map(|kv| (kv.key.as_str(), attr(&kv.value).into_text()))
        .collect();
    pairs.sort();
    for (k, v) in pairs {
        h.write(k.as_bytes());
        h.write(v.as_bytes());
    }
}

/// Milliseconds per unit of the metric's values.
fn ms_per_unit(metric: &Metric) -> Option<f64> {
    match metric.unit.as_str() {
        "s" => Some(1000.0),
        "ms" => Some(1.0),
        "us" | "µs" => Some(1e-3),
        "ns" => Some(1e-6),
        // Semantic conventions: the stable HTTP metric is in seconds, the older ones in ms.
        "" if metric.name == "http.server.request.duration" => Some(1000.0),
        "" => Some(1.0),
        _ => None,
    }
}

/// The bucket layout of one histogram point, in milliseconds.
struct Buckets {
    bounds_ms: Arc<[f64]>,
    counts: Vec<u64>,
    min_ms: Option<f64>,
    max_ms: Option<f64>,
    exp: Option<(i32, i32)>,
}

struct Ctx<'a> {
    cfg: &'a DecodeConfig,
    service: &'a str,
    resource_hash: Fnv,
    /// The resource's version and dimension values, looked up once per `ResourceMetrics`
    /// (not once per point: a hostile request with many points and attributes stays linear).
    res_version: Option<AttrValue<'a>>,
    res_dims: Vec<Option<AttrValue<'a>>>,
    keys: HashMap<SeriesKey, u32>,
}

impl Ctx<'_> {
    /// The series key, whether the point is bad, and its stream identity, from the point's
    /// attributes as far as they are read (`cfg.attrs`).
    fn key_stream(
        &mut self,
        scope: &str,
        metric: &str,
        point_attrs: &[KeyValue],
        out: &mut Decoded,
    ) -> (u32, bool, u64) {
        let attrs = capped(point_attrs, &self.cfg.attrs, &mut out.attributes_dropped);
        let (key, bad) = self.key_and_status(&attrs, out);
        (key, bad, self.stream(scope, metric, &attrs))
    }

    fn key_and_status(&mut self, point_attrs: &[KeyValue], out: &mut Decoded) -> (u32, bool) {
        let cfg = self.cfg;
        let operation = find(point_attrs, "http.route")
            .or_else(|| find(point_attrs, "rpc.method"))
            .map(AttrValue::into_text)
            .unwrap_or_default();
        let operation = cfg.scrub.operation(clip(&operation)).into_owned();
        let version = self
            .res_version
            .or_else(|| find(point_attrs, &cfg.version_attribute))
            .map(AttrValue::into_text)
            .unwrap_or_default();
        let dims = cfg
            .dimensions
            .iter()
            .zip(&self.res_dims)
            .map(|(d, res)| {
                let v = find(point_attrs, d)
                    .or(*res)
                    .map(AttrValue::into_text)
                    .unwrap_or_default();
                (
                    Arc::from(d.as_str()),
                    Arc::from(&*cfg.scrub.value(clip(&v))),
                )
            })
            .collect();
        let key = SeriesKey {
            service: clip(self.service).into(),
            operation: Arc::from(operation.as_str()),
            version: Arc::from(clip(&version)),
            dims,
        };
        let status = find(point_attrs, "http.response.status_code")
            .or_else(|| find(point_attrs, "http.status_code"))
            .and_then(|v| v.as_int());
        let grpc = find(point_attrs, "rpc.grpc.status_code").and_then(|v| v.as_int());
        let error_type = find(point_attrs, "error.type").is_some_and(|v| !v.into_text().is_empty());
        let bad = status.is_some_and(|c| c >= 500)
            || grpc.is_some_and(|c| cfg.bad_grpc_codes.contains(&c))
            || error_type;
        let idx = match self.keys.get(&key) {
            Some(&i) => i,
            None => {
                out.batch.keys.push(key.clone());
                let i = (out.batch.keys.len() - 1) as u32;
                self.keys.insert(key, i);
                i
            }
        };
        (idx, bad)
    }

    /// Appends one histogram point (explicit or converted exponential) for `m`.
    #[allow(clippy::too_many_arguments)]
    fn push_histogram(
        &mut self,
        out: &mut Decoded,
        m: &Metric,
        scope: &str,
        attrs: &[KeyValue],
        (time, start_time): (u64, u64),
        temporality: Temporality,
        b: Buckets,
    ) {
        let (key, bad, stream) = self.key_stream(scope, &m.name, attrs, out);
        out.batch.histograms.push(HistogramObs {
            key,
            stream,
            time,
            start_time,
            temporality,
            bounds_ms: b.bounds_ms,
            counts: b.counts,
            min_ms: b.min_ms,
            max_ms: b.max_ms,
            bad,
            exp: b.exp,
        });
    }

    /// The resource's service name, as a series key would hold it.
    fn service_arc(&self) -> Arc<str> {
        clip(self.service).into()
    }

    fn stream(&self, scope: &str, metric: &str, point_attrs: &[KeyValue]) -> u64 {
        let mut h = self.resource_hash;
        h.write(scope.as_bytes());
        h.write(metric.as_bytes());
        hash_attrs(&mut h, point_attrs);
        h.finish()
    }
}

fn temporality(t: i32) -> Option<Temporality> {
    match AggregationTemporality::try_from(t) {
        Ok(AggregationTemporality::Delta) => Some(Temporality::Delta),
        Ok(AggregationTemporality::Cumulative) => Some(Temporality::Cumulative),
        _ => None,
    }
}

/// Decodes an already-parsed request (the protobuf and JSON paths share this).
pub(super) fn metrics_request(req: &ExportMetricsServiceRequest, cfg: &DecodeConfig) -> Decoded {
    let mut out = Decoded::default();
    for rm in &req.resource_metrics {
        let resource = capped(
            rm.resource.as_ref().map_or(&[], |r| &r.attributes),
            &cfg.attrs,
            &mut out.attributes_dropped,
        );
        let resource: &[KeyValue] = &resource;
        let service = match find(resource, "service.name") {
            Some(AttrValue::Str(s)) if !s.is_empty() => s,
            _ => "unknown_service",
        };
        let mut resource_hash = Fnv::new();
        hash_attrs(&mut resource_hash, resource);
        let mut ctx = Ctx {
            cfg,
            service,
            resource_hash,
            res_version: find(resource, &cfg.version_attribute),
            res_dims: cfg.dimensions.iter().map(|d| find(resource, d)).collect(),
            keys: HashMap::new(),
        };
        for sm in &rm.scope_metrics {
            let scope = sm.scope.as_ref().map_or("", |s| s.name.as_str());
            for m in &sm.metrics {
                one_metric(m, scope, &mut ctx, &mut out);
            }
        }
    }
    out
}

fn count_points(m: &Metric) -> u64 {
    (match &m.data {
        Some(Data::Gauge(g)) => g.data_points.len(),
        Some(Data::Sum(s)) => s.data_points.len(),
        Some(Data::Histogram(h)) => h.data_points.len(),
        Some(Data::ExponentialHistogram(h)) => h.data_points.len(),
        Some(Data::Summary(s)) => s.data_points.len(),
        None => 0,
    }) as u64
}

fn one_metric(m: &Metric, scope: &str, ctx: &mut Ctx<'_>, out: &mut Decoded) {
    out.received += count_points(m);
    let cfg = ctx.cfg;
    if cfg.usage_metrics.contains(&m.name) {
        return usage::usage_metric(m, scope, ctx, out);
    }
    if cfg.duration_metrics.contains(&m.name) {
        let Some(scale) = ms_per_unit(m) else {
            for _ in 0..count_points(m) {
                out.reject(Reason::UnsupportedMetric, || {
                    format!("metric {:?}: unit {:?} is not a time unit", m.name, m.unit)
                });
            }
            return;
        };
        match &m.data {
            Some(Data::Histogram(h)) => {
                let Some(t) = temporality(h.aggregation_temporality) else {
                    reject_all(
                        out,
                        m,
                        h.data_points.len(),
                        "aggregation_temporality must be DELTA or CUMULATIVE",
                    );
                    return;
                };
                for p in &h.data_points {
                    explicit_point(p, m, scope, t, scale, ctx, out);
                }
            }
            Some(Data::ExponentialHistogram(h)) => {
                let Some(t) = temporality(h.aggregation_temporality) else {
                    reject_all(
                        out,
                        m,
                        h.data_points.len(),
                        "aggregation_temporality must be DELTA or CUMULATIVE",
                    );
                    return;
                };
                for p in &h.data_points {
                    exponential_point(p, m, scope, t, scale, ctx, out);
                }
            }
            _ => {}
        }
    } else if cfg.request_counters.contains(&m.name)
        && let Some(Data::Sum(s)) = &m.data
    {
        let Some(t) = temporality(s.aggregation_temporality) else {
            reject_all(
                out,
                m,
                s.data_points.len(),
                "aggregation_temporality must be DELTA or CUMULATIVE",
            );
            return;
        };
        if !s.is_monotonic {
            reject_all(
                out,
                m,
                s.data_points.len(),
                "a request counter must be a monotonic sum",
            );
            return;
        }
        for p in &s.data_points {
            counter_point(p, m, scope, t, ctx, out);
        }
    }
}

fn reject_all(out: &mut Decoded, m: &Metric, n: usize, why: &str) {
    for _ in 0..n {
        out.reject(Reason::UnsupportedMetric, || {
            format!("metric {:?}: {why}", m.name)
        });
    }
}

fn explicit_point(
    p: &HistogramDataPoint,
    m: &Metric,
    scope: &str,
    temporality: Temporality,
    scale: f64,
    ctx: &mut Ctx<'_>,
    out: &mut Decoded,
) {
    if p.flags & FLAG_NO_RECORDED_VALUE != 0 {
        return;
    }
    if p.time_unix_nano == 0 {
        return out.reject(Reason::InvalidTime, || {
            format!("metric {:?}: data point without time_unix_nano", m.name)
        });
    }
    if p.bucket_counts.is_empty() && p.explicit_bounds.is_empty() {
        // A histogram without buckets still counts requests.
        return counts_only(p, m, scope, temporality, ctx, out);
    }
    if p.bucket_counts.len() > MAX_BUCKETS {
        return out.reject(Reason::InvalidPoint, || {
            format!("metric {:?}: more than {MAX_BUCKETS} buckets", m.name)
        });
    }
    let total = p
        .bucket_counts
        .iter()
        .try_fold(0u64, |a, &c| a.checked_add(c));
    if total != Some(p.count) || p.count > MAX_POINT_COUNT {
        return out.reject(Reason::InvalidPoint, || {
            format!(
                "metric {:?}: count {} must equal the sum of bucket_counts ({total:?}) and be at most {MAX_POINT_COUNT}",
                m.name, p.count
            )
        });
    }
    if p.bucket_counts.len() != p.explicit_bounds.len() + 1 {
        return out.reject(Reason::InvalidPoint, || {
            format!(
                "metric {:?}: {} bucket_counts for {} explicit_bounds (want bounds + 1)",
                m.name,
                p.bucket_counts.len(),
                p.explicit_bounds.len()
            )
        });
    }
    if p.explicit_bounds
        .windows(2)
        .any(|w| w[0].partial_cmp(&w[1]) != Some(std::cmp::Ordering::Less))
    {
        return out.reject(Reason::InvalidPoint, || {
            format!("metric {:?}: explicit_bounds must increase", m.name)
        });
    }
    let buckets = Buckets {
        bounds_ms: p.explicit_bounds.iter().map(|b| b * scale).collect(),
        counts: p.bucket_counts.clone(),
        min_ms: p.min.map(|v| v * scale),
        max_ms: p.max.map(|v| v * scale),
        exp: None,
    };
    let times = (p.time_unix_nano, p.start_time_unix_nano);
    ctx.push_histogram(out, m, scope, &p.attributes, times, temporality, buckets);
}

/// A histogram point without buckets: its `count` is a request count without latencies.
fn counts_only(
    p: &HistogramDataPoint,
    m: &Metric,
    scope: &str,
    temporality: Temporality,
    ctx: &mut Ctx<'_>,
    out: &mut Decoded,
) {
    if p.count > MAX_POINT_COUNT {
        return out.reject(Reason::InvalidPoint, || {
            format!(
                "metric {:?}: count {} is over {MAX_POINT_COUNT}",
                m.name, p.count
            )
        });
    }
    let (key, bad, stream) = ctx.key_stream(scope, &m.name, &p.attributes, out);
    out.batch.counters.push(CounterObs {
        key,
        stream,
        time: p.time_unix_nano,
        start_time: p.start_time_unix_nano,
        temporality,
        value: p.count as f64,
        bad,
    });
}

/// Converts an exponential histogram to explicit form: the zero bucket, then one bucket per
/// positive index `i` covering `(base^i, base^(i+1)]` with `base = 2^(2^-scale)`.
fn exponential_point(
    p: &ExponentialHistogramDataPoint,
    m: &Metric,
    scope: &str,
    temporality: Temporality,
    scale: f64,
    ctx: &mut Ctx<'_>,
    out: &mut Decoded,
) {
    if p.flags & FLAG_NO_RECORDED_VALUE != 0 {
        return;
    }
    if p.time_unix_nano == 0 {
        return out.reject(Reason::InvalidTime, || {
            format!("metric {:?}: data point without time_unix_nano", m.name)
        });
    }
    if !(-10..=20).contains(&p.scale) {
        return out.reject(Reason::InvalidPoint, || {
            format!(
                "metric {:?}: exponential scale {} is not in [-10, 20]",
                m.name, p.scale
            )
        });
    }
    let (offset, pos): (i32, &[u64]) = p
        .positive
        .as_ref()
        .map_or((0, &[][..]), |b| (b.offset, &b.bucket_counts[..]));
    if pos.len() > MAX_BUCKETS {
        return out.reject(Reason::InvalidPoint, || {
            format!(
                "metric {:?}: more than {MAX_BUCKETS} exponential buckets",
                m.name
            )
        });
    }
    if p.count > MAX_POINT_COUNT {
        return out.reject(Reason::InvalidPoint, || {
            format!(
                "metric {:?}: count {} is over {MAX_POINT_COUNT}",
                m.name, p.count
            )
        });
    }
    // Bucket index i covers (base^i, base^(i+1)], base = 2^(2^-scale): computed as
    // 2^(i · 2^-scale) in f64 so no integer arithmetic can overflow.
    let step = 2f64.powi(-p.scale);
    let bound = |i: i64| (i as f64 * step).exp2() * scale;
    let mut bounds = Vec::with_capacity(pos.len() + 1);
    let mut counts = Vec::with_capacity(pos.len() + 2);
    // Bucket 0 holds the zero bucket and everything up to base^offset (which is empty).
    bounds.push(bound(i64::from(offset)));
    counts.push(p.zero_count);
    for (i, &c) in pos.iter().enumerate() {
        bounds.push(bound(i64::from(offset) + i as i64 + 1));
        counts.push(c);
    }
    counts.push(0);
    let increasing = bounds.windows(2).all(|w| w[0] < w[1]);
    if !increasing || bounds.iter().any(|b| !b.is_finite()) {
        return out.reject(Reason::InvalidPoint, || {
            format!(
                "metric {:?}: exponential buckets (scale {}, offset {offset}) do not map to finite latencies",
                m.name, p.scale
            )
        });
    }
    let buckets = Buckets {
        bounds_ms: Arc::from(bounds),
        counts,
        min_ms: p.min.map(|v| v * scale).or(Some(0.0)),
        max_ms: p.max.map(|v| v * scale),
        exp: Some((p.scale, offset)),
    };
    let times = (p.time_unix_nano, p.start_time_unix_nano);
    ctx.push_histogram(out, m, scope, &p.attributes, times, temporality, buckets);
}

fn counter_point(
    p: &NumberDataPoint,
    m: &Metric,
    scope: &str,
    temporality: Temporality,
    ctx: &mut Ctx<'_>,
    out: &mut Decoded,
) {
    if p.flags & FLAG_NO_RECORDED_VALUE != 0 {
        return;
    }
    let value = match p.value {
        Some(number_data_point::Value::AsInt(i)) => i as f64,
        Some(number_data_point::Value::AsDouble(d)) => d,
        None => {
            return out.reject(Reason::InvalidPoint, || {
                format!("metric {:?}: data point without a value", m.name)
            });
        }
    };
    if p.time_unix_nano == 0 || !value.is_finite() || value < 0.0 {
        return out.reject(Reason::InvalidPoint, || {
            format!(
                "metric {:?}: counter point needs a time and a value ≥ 0",
                m.name
            )
        });
    }
    let (key, bad, stream) = ctx.key_stream(scope, &m.name, &p.attributes, out);
    out.batch.counters.push(CounterObs {
        key,
        stream,
        time: p.time_unix_nano,
        start_time: p.start_time_unix_nano,
        temporality,
        value,
        bad,
    });
}
