//! The three OTLP export services and their responses, shared by the gRPC and HTTP receivers.

use crate::metrics::SignalKind;
use crate::pipeline::Accepted;
use trike_proto::collector::logs::v1::{ExportLogsPartialSuccess, ExportLogsServiceResponse};
use trike_proto::collector::metrics::v1::{
    ExportMetricsPartialSuccess, ExportMetricsServiceResponse,
};
use trike_proto::collector::trace::v1::{ExportTracePartialSuccess, ExportTraceServiceResponse};

/// One OTLP export service.
pub trait ExportKind: Send + Sync + 'static {
    /// Which signal.
    const SIGNAL: SignalKind;
    /// gRPC service name.
    const SERVICE: &'static str;
    /// gRPC method path.
    const PATH: &'static str;
    /// Response message.
    type Response: prost::Message + serde::Serialize + Default + Send + 'static;
    /// The response for an accepted request (with `partial_success` when items were rejected).
    fn response(a: &Accepted) -> Self::Response;
}

/// `TraceService`.
#[derive(Clone, Copy, Debug)]
pub struct Traces;
/// `MetricsService`.
#[derive(Clone, Copy, Debug)]
pub struct Metrics;
/// `LogsService`.
#[derive(Clone, Copy, Debug)]
pub struct Logs;

fn clamp(n: u64) -> i64 {
    i64::try_from(n).unwrap_or(i64::MAX)
}

impl ExportKind for Traces {
    const SIGNAL: SignalKind = SignalKind::Traces;
    const SERVICE: &'static str = "opentelemetry.proto.collector.trace.v1.TraceService";
    const PATH: &'static str = "/opentelemetry.proto.collector.trace.v1.TraceService/Export";
    type Response = ExportTraceServiceResponse;
    fn response(a: &Accepted) -> Self::Response {
        ExportTraceServiceResponse {
            partial_success: (a.rejected > 0).then(|| ExportTracePartialSuccess {
                rejected_spans: clamp(a.rejected),
                error_message: a.message.clone(),
            }),
        }
    }
}

impl ExportKind for Metrics {
    const SIGNAL: SignalKind = SignalKind::Metrics;
    const SERVICE: &'static str = "opentelemetry.proto.collector.metrics.v1.MetricsService";
    const PATH: &'static str = "/opentelemetry.proto.collector.metrics.v1.MetricsService/Export";
    type Response = ExportMetricsServiceResponse;
    fn response(a: &Accepted) -> Self::Response {
        ExportMetricsServiceResponse {
            partial_success: (a.rejected > 0).then(|| ExportMetricsPartialSuccess {
                rejected_data_points: clamp(a.rejected),
                error_message: a.message.clone(),
            }),
        }
    }
}

impl ExportKind for Logs {
    const SIGNAL: SignalKind = SignalKind::Logs;
    const SERVICE: &'static str = "opentelemetry.proto.collector.logs.v1.LogsService";
    const PATH: &'static str = "/opentelemetry.proto.collector.logs.v1.LogsService/Export";
    type Response = ExportLogsServiceResponse;
    fn response(a: &Accepted) -> Self::Response {
        ExportLogsServiceResponse {
            partial_success: (a.rejected > 0).then(|| ExportLogsPartialSuccess {
                rejected_log_records: clamp(a.rejected),
                error_message: a.message.clone(),
            }),
        }
    }
}

/// `google.rpc.Status`, the body of OTLP/HTTP error responses.
#[derive(Clone, PartialEq, prost::Message, serde::Serialize)]
pub struct RpcStatus {
    /// gRPC status code.
    #[prost(int32, tag = "1")]
    pub code: i32,
    /// What went wrong.
    #[prost(string, tag = "2")]
    pub message: String,
}
