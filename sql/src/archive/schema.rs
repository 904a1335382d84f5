//! The archive's tables as Arrow: `slis` (one row per series and second) and `decisions`
//! (one row per control event), and the conversions between them and the engine's types.

use crate::Result;
use datafusion::arrow::array::{
    Array, ArrayRef, BinaryArray, BinaryBuilder, BooleanArray, BooleanBuilder, Float64Array,
    Float64Builder, RecordBatch, StringArray, StringBuilder, TimestampMillisecondArray,
    TimestampMillisecondBuilder, UInt64Array, UInt64Builder,
};
use datafusion::arrow::datatypes::{DataType, Field, Schema, SchemaRef, TimeUnit};
use std::sync::{Arc, LazyLock};
use trike_engine::sketch::TDigest;
use trike_engine::{SecondObs, SeriesKey};

fn ts() -> DataType {
    DataType::Timestamp(TimeUnit::Millisecond, Some("UTC".into()))
}

/// `slis`: every series' counters and latency digest per second.
pub static SLIS: LazyLock<SchemaRef> = LazyLock::new(|| {
    Arc::new(Schema::new(vec![
        Field::new("time", ts(), false),
        Field::new("service", DataType::Utf8, false),
        Field::new("operation", DataType::Utf8, false),
        Field::new("version", DataType::Utf8, false),
        // Extra series dimensions as a JSON object ("{}" when none).
        Field::new("dimensions", DataType::Utf8, false),
        Field::new("overflow", DataType::Boolean, false),
        Field::new("requests", DataType::UInt64, false),
        Field::new("errors", DataType::UInt64, false),
        // Requests with a known latency (the denominator of latency SLIs).
        Field::new("timed", DataType::UInt64, false),
        Field::new("threshold1_ms", DataType::Float64, true),
        Field::new("within1", DataType::UInt64, true),
        Field::new("threshold2_ms", DataType::Float64, true),
        Field::new("within2", DataType::UInt64, true),
        // `TDigest::to_bytes`; merge with `tdigest_quantile(digest, q)`.
        Field::new("digest", DataType::Binary, true),
    ]))
});

/// `observations`: sampled raw requests.
pub static OBSERVATIONS: LazyLock<SchemaRef> = LazyLock::new(|| {
    Arc::new(Schema::new(vec![
        Field::new(
            "time",
            DataType::Timestamp(TimeUnit::Nanosecond, Some("UTC".into())),
            false,
        ),
        Field::new("service", DataType::Utf8, false),
        Field::new("operation", DataType::Utf8, false),
        Field::new("version", DataType::Utf8, false),
        Field::new("dimensions", DataType::Utf8, false),
        Field::new("latency_ms", DataType::Float64, false),
        Field::new("bad", DataType::Boolean, false),
    ]))
});

/// `observations` rows as one batch (in the given order).
pub fn observations_batch(rows: &[super::RawObservation]) -> Result<RecordBatch> {
    let mut time = datafusion::arrow::array::TimestampNanosecondBuilder::with_capacity(rows.len())
        .with_timezone("UTC");
    let mut strings: Vec<StringBuilder> = (0..4).map(|_| StringBuilder::new()).collect();
    let mut latency = Float64Builder::with_capacity(rows.len());
    let mut bad = BooleanBuilder::with_capacity(rows.len());
    for r in rows {
        time.append_value(r.time as i64);
        let dims = dims_json(&r.key);
        for (b, v) in
            strings
                .iter_mut()
                .zip([&*r.key.service, &*r.key.operation, &*r.key.version, &dims])
        {
            b.append_value(v);
        }
        latency.append_value(r.latency_ms);
        bad.append_value(r.bad);
    }
    let mut cols: Vec<ArrayRef> = vec![Arc::new(time.finish())];
    cols.extend(strings.iter_mut().map(|b| Arc::new(b.finish()) as ArrayRef));
    cols.push(Arc::new(latency.finish()));
    cols.push(Arc::new(bad.finish()));
    Ok(RecordBatch::try_new(OBSERVATIONS.clone(), cols)?)
}

/// `decisions`: every control event, with its evidence.
pub static DECISIONS: LazyLock<SchemaRef> = LazyLock::new(|| {
    Arc::new(Schema::new(vec![
        Field::new("time", ts(), false),
        Field::new("id", DataType::Utf8, false),
        Field::new("type", DataType::Utf8, false),
        Field::new("service", DataType::Utf8, false),
        Field::new("version", DataType::Utf8, false),
        Field::new("action", DataType::Utf8, false),
        Field::new("rule", DataType::Utf8, false),
        Field::new("slo", DataType::Utf8, true),
        Field::new("severity", DataType::Utf8, false),
        Field::new("reason", DataType::Utf8, false),
        Field::new("dry_run", DataType::Boolean, false),
        Field::new("policy_revision", DataType::Utf8, false),
        Field::new("detected_at", ts(), true),
        Field::new("observed_until", ts(), true),
        // JSON.
        Field::new("evidence", DataType::Utf8, false),
        // The whole control event, JSON, as it went to the sinks.
        Field::new("event", DataType::Utf8, false),
    ]))
});

fn dims_json(key: &SeriesKey) -> String {
    let m: serde_json::Map<String, serde_json::Value> = key
        .dims
        .iter()
        .map(|(k, v)| (k.to_string(), serde_json::Value::String(v.to_string())))
        .collect();
    serde_json::Value::Object(m).to_string()
}

/// `slis` rows as one batch (in the given order).
pub fn slis_batch(rows: &[SecondObs]) -> Result<RecordBatch> {
    let n = rows.len();
    let mut time = TimestampMillisecondBuilder::with_capacity(n).with_timezone("UTC");
    let (mut service, mut operation, mut version, mut dims) = (
        StringBuilder::new(),
        StringBuilder::new(),
        StringBuilder::new(),
        StringBuilder::new(),
    );
    let mut overflow = BooleanBuilder::with_capacity(n);
    let (mut requests, mut errors, mut timed) = (
        UInt64Builder::with_capacity(n),
        UInt64Builder::with_capacity(n),
        UInt64Builder::with_capacity(n),
    );
    let (mut t1, mut w1, mut t2, mut w2) = (
        Float64Builder::with_capacity(n),
        UInt64Builder::with_capacity(n),
        Float64Builder::with_capacity(n),
        UInt64Builder::with_capacity(n),
    );
    let mut digest = BinaryBuilder::new();
    for r in rows {
        time.append_value(r.second as i64 * 1000);
        service.append_value(&*r.key.service);
        operation.append_value(&*r.key.operation);
        version.append_value(&*r.key.version);
        dims.append_value(dims_json(&r.key));
        overflow.append_value(r.key.is_overflow());
        requests.append_value(r.requests);
        errors.append_value(r.errors);
        timed.append_value(r.timed);
        t1.append_option(r.thresholds_ms.first().copied());
        w1.append_option(
            r.thresholds_ms
                .first()
                .map(|_| r.within.first().copied().unwrap_or(0)),
        );
        t2.append_option(r.thresholds_ms.get(1).copied());
        w2.append_option(
            r.thresholds_ms
                .get(1)
                .map(|_| r.within.get(1).copied().unwrap_or(0)),
        );
        digest.append_option(r.digest.as_ref().map(TDigest::to_bytes));
    }
    let cols: Vec<ArrayRef> = vec![
        Arc::new(time.finish()),
        Arc::new(service.finish()),
        Arc::new(operation.finish()),
        Arc::new(version.finish()),
        Arc::new(dims.finish()),
        Arc::new(overflow.finish()),
        Arc::new(requests.finish()),
        Arc::new(errors.finish()),
        Arc::new(timed.finish()),
        Arc::new(t1.finish()),
        Arc::new(w1.finish()),
        Arc::new(t2.finish()),
        Arc::new(w2.finish()),
        Arc::new(digest.finish()),
    ];
    Ok(RecordBatch::try_new(SLIS.clone(), cols)?)
}

fn column<'a, T: 'static>(batch: &'a RecordBatch, name: &str) -> Result<&'a T> {
    batch
        .column_by_name(name)
        .and_then(|c| c.as_any().downcast_ref::<T>())
        .ok_or_else(|| {
            datafusion::arrow::error::ArrowError::SchemaError(format!(
                "archive slis: column {name} is missing or of another type"
            ))
            .into()
        })
}

/// Reads `slis` rows back into the engine's form (for backtests).
pub fn slis_rows(batch: &RecordBatch) -> Result<Vec<SecondObs>> {
    let time: &TimestampMillisecondArray = column(batch, "time")?;
    let service: &StringArray = column(batch, "service")?;
    let operation: &StringArray = column(batch, "operation")?;
    let version: &StringArray = column(batch, "version")?;
    let dims: &StringArray = column(batch, "dimensions")?;
    let overflow: &BooleanArray = column(batch, "overflow")?;
    let requests: &UInt64Array = column(batch, "requests")?;
    let errors: &UInt64Array = column(batch, "errors")?;
    let timed: &UInt64Array = column(batch, "timed")?;
    let t1: &Float64Array = column(batch, "threshold1_ms")?;
    let w1: &UInt64Array = column(batch, "within1")?;
    let t2: &Float64Array = column(batch, "threshold2_ms")?;
    let w2: &UInt64Array = column(batch, "within2")?;
    let digest: &BinaryArray = column(batch, "digest")?;
    let mut out = Vec::with_capacity(batch.num_rows());
    for i in 0..batch.num_rows() {
        let key = if overflow.value(i) {
            SeriesKey::overflow(&Arc::from(service.value(i)))
        } else {
            let d: serde_json::Map<String, serde_json::Value> =
                serde_json::from_str(dims.value(i)).unwrap_or_default();
            let mut k = SeriesKey::new(service.value(i), operation.value(i), version.value(i));
            if !d.is_empty() {
                k.dims = d
                    .iter()
                    .map(|(n, v)| (Arc::from(n.as_str()), Arc::from(v.as_str().unwrap_or(""))))
                    .collect();
            }
            k
        };
        let mut thresholds_ms = Vec::new();
        let mut within = Vec::new();
        for (t, w) in [(t1, w1), (t2, w2)] {
            if t.is_valid(i) {
                thresholds_ms.push(t.value(i));
                within.push(if w.is_valid(i) { w.value(i) } else { 0 });
            }
        }
        out.push(SecondObs {
            key,
            second: (time.value(i) / 1000) as u64,
            requests: requests.value(i),
            errors: errors.value(i),
            timed: timed.value(i),
            thresholds_ms,
            within,
            digest: digest
                .is_valid(i)
                .then(|| TDigest::from_bytes(digest.value(i)))
                .flatten(),
        });
    }
    Ok(out)
}

fn parse_ms(v: &serde_json::Value) -> Option<i64> {
    let s = v.as_str()?;
    chrono::DateTime::parse_from_rfc3339(s)
        .ok()
        .map(|t| t.timestamp_millis())
}

/// `decisions` rows from control events (CloudEvents JSON, DESIGN §4).
pub fn decisions_batch(events: &[serde_json::Value]) -> Result<RecordBatch> {
    let n = events.len();
    let mut time = TimestampMillisecondBuilder::with_capacity(n).with_timezone("UTC");
    let mut detected = TimestampMillisecondBuilder::with_capacity(n).with_timezone("UTC");
    let mut observed = TimestampMillisecondBuilder::with_capacity(n).with_timezone("UTC");
    let mut strings: Vec<StringBuilder> = (0..12).map(|_| StringBuilder::new()).collect();
    let mut dry_run = BooleanBuilder::with_capacity(n);
    let s = |v: &serde_json::Value| v.as_str().unwrap_or("").to_string();
    for e in events {
        let d = &e["data"];
        time.append_value(parse_ms(&e["time"]).unwrap_or(0));
        detected.append_option(parse_ms(&d["detected_at"]));
        observed.append_option(parse_ms(&d["observed_until"]));
        let values = [
            Some(s(&e["id"])),
            Some(s(&e["type"])),
            Some(s(&d["target"]["service"])),
            Some(s(&d["target"]["version"])),
            Some(s(&d["action"])),
            Some(s(&d["rule"])),
            d["slo"].as_str().map(str::to_string),
            Some(s(&d["severity"])),
            Some(s(&d["reason"])),
            Some(s(&d["policy_revision"])),
            Some(d["evidence"].to_string()),
            Some(e.to_string()),
        ];
        for (b, v) in strings.iter_mut().zip(values) {
            b.append_option(v);
        }
        dry_run.append_value(d["dry_run"].as_bool().unwrap_or(false));
    }
    let mut st = strings
        .into_iter()
        .map(|mut b| Arc::new(b.finish()) as ArrayRef);
    let mut next = || st.next().expect("12 string columns");
    let cols: Vec<ArrayRef> = vec![
        Arc::new(time.finish()),
        next(), // id
        next(), // type
        next(), // service
        next(), // version
        next(), // action
        next(), // rule
        next(), // slo
        next(), // severity
        next(), // reason
        Arc::new(dry_run.finish()),
        next(), // policy_revision
        Arc::new(detected.finish()),
        Arc::new(observed.finish()),
        next(), // evidence
        next(), // event
    ];
    Ok(RecordBatch::try_new(DECISIONS.clone(), cols)?)
}

/// The control events of a `decisions` batch (its `event` column).
pub fn decision_events(batch: &RecordBatch) -> Result<Vec<serde_json::Value>> {
    let event: &StringArray = column(batch, "event")?;
    Ok((0..batch.num_rows())
        .filter_map(|i| serde_json::from_str(event.value(i)).ok())
        .collect())
}
