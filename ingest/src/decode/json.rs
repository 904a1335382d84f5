//! OTLP/JSON: parsed into the `opentelemetry-proto` types (hex trace/span ids, camelCase
//! fields, 64-bit integers as strings or numbers, enums as integers), then decoded by the
//! same rules as protobuf.

use super::{DecodeConfig, DecodeError, Decoded, metrics, traces_proto};
use prost::Message;
use trike_proto::collector::logs::v1::ExportLogsServiceRequest;
use trike_proto::collector::metrics::v1::ExportMetricsServiceRequest;
use trike_proto::collector::trace::v1::ExportTraceServiceRequest;

fn parse<T: serde::de::DeserializeOwned>(buf: &[u8], what: &str) -> Result<T, DecodeError> {
    serde_json::from_slice(buf)
        .map_err(|e| DecodeError::Malformed(format!("invalid OTLP/JSON {what}: {e}")))
}

/// An OTLP/JSON request of `signal` as protobuf, the only encoding of OTLP/gRPC (for a gRPC
/// next hop). What OTLP/JSON does not carry, protobuf does not either; unknown fields are
/// dropped.
pub fn json_to_protobuf(
    signal: crate::metrics::SignalKind,
    buf: &[u8],
) -> Result<Vec<u8>, DecodeError> {
    use crate::metrics::SignalKind;
    Ok(match signal {
        SignalKind::Traces => {
            parse::<ExportTraceServiceRequest>(buf, "ExportTraceServiceRequest")?.encode_to_vec()
        }
        SignalKind::Metrics => {
            parse::<ExportMetricsServiceRequest>(buf, "ExportMetricsServiceRequest")?
                .encode_to_vec()
        }
        SignalKind::Logs => {
            parse::<ExportLogsServiceRequest>(buf, "ExportLogsServiceRequest")?.encode_to_vec()
        }
    })
}

/// Decodes an `ExportTraceServiceRequest` in OTLP/JSON.
pub fn traces_json(buf: &[u8], cfg: &DecodeConfig) -> Result<Decoded, DecodeError> {
    let req: ExportTraceServiceRequest = parse(buf, "ExportTraceServiceRequest")?;
    // One set of span rules: re-encode and take the protobuf path. JSON is the slow
    // encoding anyway; this costs about as much as the JSON parse itself.
    traces_proto(&req.encode_to_vec(), cfg)
}

/// Decodes an `ExportMetricsServiceRequest` in OTLP/JSON.
pub fn metrics_json(buf: &[u8], cfg: &DecodeConfig) -> Result<Decoded, DecodeError> {
    let req: ExportMetricsServiceRequest = parse(buf, "ExportMetricsServiceRequest")?;
    Ok(metrics::metrics_request(&req, cfg))
}

/// Decodes an `ExportLogsServiceRequest` in OTLP/JSON: events when `cfg.logs_as_bad_events`,
/// else only counts its records.
pub fn logs_json(buf: &[u8], cfg: &DecodeConfig) -> Result<Decoded, DecodeError> {
    let req: ExportLogsServiceRequest = parse(buf, "ExportLogsServiceRequest")?;
    if cfg.logs_as_bad_events {
        return Ok(super::logs::logs_request(&req, cfg));
    }
    let received = req
        .resource_logs
        .iter()
        .flat_map(|r| &r.scope_logs)
        .map(|s| s.log_records.len() as u64)
        .sum();
    Ok(Decoded {
        received,
        ..Default::default()
    })
}
