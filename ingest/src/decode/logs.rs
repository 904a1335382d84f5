//! Log records → events of their service's SLIs, when configured (`logs.errors_as:
//! bad_events`): each record is one event, bad at severity ERROR or above
//! (`severity_number` ≥ 17, else a `severity_text` of ERROR, FATAL or CRITICAL). Its series key
//! is the service's (resource `service.name`), the operation its `http.route` attribute (else
//! `logs`), the version and dimensions as for spans. Logs are a service's third signal (the
//! engine counts them only while it sends neither spans nor request metrics). Otherwise log
//! records are only counted (and their framing checked).

use super::metrics::{capped, find};
use super::wire::{Reader, Value};
use super::{DecodeConfig, DecodeError, Decoded, Reason, clip};
use prost::Message;
use std::collections::HashMap;
use std::sync::Arc;
use trike_engine::{LogObs, SeriesKey};
use trike_proto::collector::logs::v1::ExportLogsServiceRequest;
use trike_proto::logs::v1::LogRecord;

/// `severity_number` of ERROR (17 to 20) and FATAL (21 to 24).
const SEVERITY_ERROR: i32 = 17;

/// Decodes an `ExportLogsServiceRequest` in protobuf: events when `cfg.logs_as_bad_events`,
/// else only counts the records, validating the framing.
pub fn logs_proto(buf: &[u8], cfg: &DecodeConfig) -> Result<Decoded, DecodeError> {
    if cfg.logs_as_bad_events {
        let req = ExportLogsServiceRequest::decode(buf).map_err(|e| {
            if e.to_string().contains("buffer underflow") {
                DecodeError::Truncated
            } else {
                DecodeError::Malformed(e.to_string())
            }
        })?;
        return Ok(logs_request(&req, cfg));
    }
    let mut out = Decoded::default();
    let mut r = Reader::new(buf);
    while let Some((f, v)) = r.next()? {
        let (1, Value::Bytes(resource_logs)) = (f, v) else {
            continue;
        };
        let mut rr = Reader::new(resource_logs);
        while let Some((f, v)) = rr.next()? {
            let (2, Value::Bytes(scope_logs)) = (f, v) else {
                continue;
            };
            let mut sr = Reader::new(scope_logs);
            while let Some((f, v)) = sr.next()? {
                if let (2, Value::Bytes(record)) = (f, v) {
                    // Walk the record too, so a corrupt record is reported, not counted.
                    let mut lr = Reader::new(record);
                    while lr.next()?.is_some() {}
                    out.received += 1;
                }
            }
        }
    }
    Ok(out)
}

/// Whether a record is an error: its severity number, else its severity text.
fn is_error(r: &LogRecord) -> bool {
    if r.severity_number > 0 {
        return r.severity_number >= SEVERITY_ERROR;
    }
    let t = r.severity_text.trim();
    [
        "ERROR",
        "FATAL",
        "CRITICAL",
        "ALERT",
        "EMERGENCY",
        "EMERG",
        "CRIT",
    ]
    .iter()
    .any(|e| t.eq_ignore_ascii_case(e))
}

/// Decodes an already-parsed request into one event per record (the protobuf and JSON paths
/// share this). A record without a time (nor an observed time) is rejected.
pub(super) fn logs_request(req: &ExportLogsServiceRequest, cfg: &DecodeConfig) -> Decoded {
    let mut out = Decoded::default();
    let mut keys: HashMap<SeriesKey, u32> = HashMap::new();
    for rl in &req.resource_logs {
        let resource = capped(
            rl.resource.as_ref().map_or(&[], |r| &r.attributes),
            &cfg.attrs,
            &mut out.attributes_dropped,
        );
        let resource: &[_] = &resource;
        let service = match find(resource, "service.name") {
            Some(super::attrs::AttrValue::Str(s)) if !s.is_empty() => s,
            _ => "unknown_service",
        };
        let res_version = find(resource, &cfg.version_attribute);
        for record in rl.scope_logs.iter().flat_map(|s| &s.log_records) {
            out.received += 1;
            let time = if record.time_unix_nano > 0 {
                record.time_unix_nano
            } else {
                record.observed_time_unix_nano
            };
            if time == 0 {
                out.reject(Reason::InvalidTime, || {
                    "log record: time_unix_nano or observed_time_unix_nano must be set".into()
                });
                continue;
            }
            let attrs = capped(&record.attributes, &cfg.attrs, &mut out.attributes_dropped);
            let operation = find(&attrs, "http.route")
                .map(|v| cfg.scrub.operation(clip(&v.into_text())).into_owned())
                .filter(|o| !o.is_empty())
                .unwrap_or_else(|| "logs".into());
            let version = res_version
                .or_else(|| find(&attrs, &cfg.version_attribute))
                .map(|v| v.into_text().into_owned())
                .unwrap_or_default();
            let dims = cfg
                .dimensions
                .iter()
                .map(|d| {
                    let v = find(&attrs, d)
                        .or_else(|| find(resource, d))
                        .map(|v| v.into_text().into_owned())
                        .unwrap_or_default();
                    (
                        Arc::from(d.as_str()),
                        Arc::from(&*cfg.scrub.value(clip(&v))),
                    )
                })
                .collect();
            let key = SeriesKey {
                service: clip(service).into(),
                operation: Arc::from(operation.as_str()),
                version: Arc::from(clip(&version)),
                dims,
            };
            let idx = *keys.entry(key).or_insert_with_key(|k| {
                out.batch.keys.push(k.clone());
                (out.batch.keys.len() - 1) as u32
            });
            out.batch.logs.push(LogObs {
                key: idx,
                time,
                bad: is_error(record),
            });
        }
    }
    out
}
