//! Usage metrics (`DecodeConfig::usage_metrics`: CPU time, memory…) → [`UsageObs`]: a
//! monotonic sum is a rate (its growth per second counts), a gauge or a non-monotonic sum a
//! level (its value counts). Points are kept per stream (resource, scope, name, point
//! attributes), so the engine converts cumulative sums and sums each instance's level.

use super::{Ctx, FLAG_NO_RECORDED_VALUE, capped, reject_all, temporality};
use crate::decode::{Decoded, Reason};
use trike_engine::{Temporality, UsageKind, UsageObs};
use trike_proto::metrics::v1::{Metric, NumberDataPoint, metric::Data, number_data_point};

/// Reads every point of usage metric `m` (scope `scope`) into `out`.
pub(super) fn usage_metric(m: &Metric, scope: &str, ctx: &mut Ctx<'_>, out: &mut Decoded) {
    let (points, kind, t) = match &m.data {
        Some(Data::Sum(s)) if s.is_monotonic => {
            let Some(t) = temporality(s.aggregation_temporality) else {
                let why = "aggregation_temporality must be DELTA or CUMULATIVE";
                return reject_all(out, m, s.data_points.len(), why);
            };
            (&s.data_points, UsageKind::Rate, t)
        }
        // A non-monotonic cumulative sum's value is the level itself; as deltas it would be
        // the level's changes, which add up to a level only from its very first point.
        Some(Data::Sum(s)) => {
            if temporality(s.aggregation_temporality) != Some(Temporality::Cumulative) {
                let why = "a non-monotonic sum must be CUMULATIVE (its value is the level)";
                return reject_all(out, m, s.data_points.len(), why);
            }
            (&s.data_points, UsageKind::Level, Temporality::Cumulative)
        }
        Some(Data::Gauge(g)) => (&g.data_points, UsageKind::Level, Temporality::Cumulative),
        Some(other) => {
            let n = super::count_points(m) as usize;
            let why = match other {
                Data::Histogram(_) | Data::ExponentialHistogram(_) => "a histogram",
                _ => "a summary",
            };
            let why = format!("a usage metric must be a sum or a gauge, not {why}");
            return reject_all(out, m, n, &why);
        }
        None => return,
    };
    let service = ctx.service_arc();
    let metric: std::sync::Arc<str> = m.name.as_str().into();
    for p in points {
        if let Some(value) = point_value(p, m, kind, out) {
            let attrs = capped(&p.attributes, &ctx.cfg.attrs, &mut out.attributes_dropped);
            out.batch.usage.push(UsageObs {
                service: service.clone(),
                metric: metric.clone(),
                stream: ctx.stream(scope, &m.name, &attrs),
                time: p.time_unix_nano,
                start_time: p.start_time_unix_nano,
                temporality: t,
                kind,
                value,
            });
        }
    }
}

/// The point's value; None (rejected with its reason, or skipped when it records nothing)
/// when it has no usable one.
fn point_value(p: &NumberDataPoint, m: &Metric, kind: UsageKind, out: &mut Decoded) -> Option<f64> {
    if p.flags & FLAG_NO_RECORDED_VALUE != 0 {
        return None;
    }
    let value = match p.value {
        Some(number_data_point::Value::AsInt(i)) => i as f64,
        Some(number_data_point::Value::AsDouble(d)) => d,
        None => f64::NAN,
    };
    let rate = kind == UsageKind::Rate;
    if p.time_unix_nano == 0 || !value.is_finite() || (rate && value < 0.0) {
        out.reject(Reason::InvalidPoint, || {
            let need = if rate {
                "a value ≥ 0"
            } else {
                "a finite value"
            };
            format!("usage metric {:?}: a point needs a time and {need}", m.name)
        });
        return None;
    }
    Some(value)
}
