//! OTLP/gRPC receiver: `TraceService`, `MetricsService` and `LogsService` `Export`.
//!
//! The request message is not decoded by `prost`: a codec hands the raw bytes to the same
//! fast decoder the HTTP receiver uses. gzip request compression is accepted; the decoded
//! (decompressed) message size is bounded.

use crate::auth::{IngestAuth, Surface};
use crate::kinds::{ExportKind, Logs, Metrics, Traces};
use crate::metrics::Transport;
use crate::pipeline::{Encoding, ExportError, Limits, Pipeline, export_async};
use bytes::{Buf, Bytes};
use std::convert::Infallible;
use std::marker::PhantomData;
use std::sync::Arc;
use std::task::{Context, Poll};
use tonic::body::Body;
use tonic::codec::{
    Codec, CompressionEncoding, DecodeBuf, Decoder, EnabledCompressionEncodings, EncodeBuf, Encoder,
};
use tonic::server::{Grpc, NamedService, UnaryService};
use tonic::{Request, Response, Status};
use tonic_types::{ErrorDetails, StatusExt};

/// Encodes typed responses, decodes requests to raw bytes.
#[derive(Debug)]
struct RawCodec<R>(PhantomData<R>);

#[derive(Debug)]
struct RawDecoder;

#[derive(Debug)]
struct MessageEncoder<R>(PhantomData<R>);

impl Decoder for RawDecoder {
    type Item = Bytes;
    type Error = Status;
    fn decode(&mut self, src: &mut DecodeBuf<'_>) -> Result<Option<Bytes>, Status> {
        Ok(Some(src.copy_to_bytes(src.remaining())))
    }
}

impl<R: prost::Message> Encoder for MessageEncoder<R> {
    type Item = R;
    type Error = Status;
    fn encode(&mut self, item: R, dst: &mut EncodeBuf<'_>) -> Result<(), Status> {
        item.encode(dst)
            .map_err(|e| Status::internal(format!("encoding the response: {e}")))
    }
}

impl<R: prost::Message + Send + 'static> Codec for RawCodec<R> {
    type Encode = R;
    type Decode = Bytes;
    type Encoder = MessageEncoder<R>;
    type Decoder = RawDecoder;
    fn encoder(&mut self) -> Self::Encoder {
        MessageEncoder(PhantomData)
    }
    fn decoder(&mut self) -> Self::Decoder {
        RawDecoder
    }
}

/// One OTLP export service over gRPC.
pub struct ExportService<K> {
    pipeline: Arc<Pipeline>,
    limits: Limits,
    auth: IngestAuth,
    kind: PhantomData<K>,
}

impl<K> std::fmt::Debug for ExportService<K> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ExportService").finish_non_exhaustive()
    }
}

impl<K> Clone for ExportService<K> {
    fn clone(&self) -> Self {
        Self {
            pipeline: self.pipeline.clone(),
            limits: self.limits,
            auth: self.auth.clone(),
            kind: PhantomData,
        }
    }
}

impl<K: ExportKind> ExportService<K> {
    fn new(pipeline: Arc<Pipeline>, limits: Limits, auth: IngestAuth) -> Self {
        Self {
            pipeline,
            limits,
            auth,
            kind: PhantomData,
        }
    }
}

impl<K: ExportKind> NamedService for ExportService<K> {
    const NAME: &'static str = K::SERVICE;
}

struct Unary<K>(Arc<Pipeline>, PhantomData<K>);

/// OTLP: RESOURCE_EXHAUSTED is retryable only with RetryInfo, so say when.
fn exhausted(e: ExportError) -> Status {
    let after = match &e {
        ExportError::Overloaded { retry_after, .. } => *retry_after,
        ExportError::Malformed(_) => std::time::Duration::from_secs(1),
    };
    Status::with_error_details(
        tonic::Code::ResourceExhausted,
        e.to_string(),
        ErrorDetails::with_retry_info(Some(after)),
    )
}

impl<K: ExportKind> UnaryService<Bytes> for Unary<K> {
    type Response = K::Response;
    type Future = std::pin::Pin<
        Box<dyn std::future::Future<Output = Result<Response<K::Response>, Status>> + Send>,
    >;
    fn call(&mut self, request: Request<Bytes>) -> Self::Future {
        let pipeline = self.0.clone();
        Box::pin(async move {
            let body = request.into_inner();
            if let Some(e) = pipeline.memory_refusal(Transport::Grpc, K::SIGNAL) {
                return Err(exhausted(e));
            }
            // Admission before decoding: the message's bytes against the in-flight budget.
            let Some(_held) = pipeline.inflight().try_reserve(body.len()) else {
                pipeline.metrics().request(
                    Transport::Grpc,
                    K::SIGNAL,
                    crate::RequestOutcome::Overloaded,
                );
                return Err(Status::with_error_details(
                    tonic::Code::ResourceExhausted,
                    "Trike is busy: request bytes in flight are at limits.inflight_bytes, retry later",
                    ErrorDetails::with_retry_info(Some(std::time::Duration::from_secs(1))),
                ));
            };
            match export_async(
                &pipeline,
                Transport::Grpc,
                K::SIGNAL,
                Encoding::Protobuf,
                body,
            )
            .await
            {
                Ok(accepted) => Ok(Response::new(K::response(&accepted))),
                Err(e @ ExportError::Malformed(_)) => Err(Status::invalid_argument(e.to_string())),
                Err(e @ ExportError::Overloaded { .. }) => Err(exhausted(e)),
            }
        })
    }
}

impl<K: ExportKind> tower_service::Service<http::Request<Body>> for ExportService<K> {
    type Response = http::Response<Body>;
    type Error = Infallible;
    type Future = std::pin::Pin<
        Box<dyn std::future::Future<Output = Result<Self::Response, Infallible>> + Send>,
    >;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, req: http::Request<Body>) -> Self::Future {
        let pipeline = self.pipeline.clone();
        let limits = self.limits;
        if req.uri().path() != K::PATH {
            return Box::pin(
                async move { Ok(Status::unimplemented("unknown method").into_http()) },
            );
        }
        // gRPC metadata `authorization: Bearer T`, checked before the message is read.
        let authorization = req
            .headers()
            .get(http::header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok());
        if let Err(why) = crate::auth::check(&self.auth.tokens, authorization) {
            self.auth.stats.refused(Surface::OtlpGrpc, why);
            return Box::pin(async move { Ok(Status::unauthenticated(why.message()).into_http()) });
        }
        Box::pin(async move {
            let mut accept = EnabledCompressionEncodings::default();
            accept.enable(CompressionEncoding::Gzip);
            let mut grpc = Grpc::new(RawCodec::<K::Response>(PhantomData))
                .apply_compression_config(accept, EnabledCompressionEncodings::default())
                .apply_max_message_size_config(Some(limits.max_decompressed_bytes), None);
            let mut resp = grpc.unary(Unary::<K>(pipeline, PhantomData), req).await;
            permanent_errors_are_invalid_argument(&mut resp);
            Ok(resp)
        })
    }
}

/// tonic refuses an oversized message with OUT_OF_RANGE and a corrupt compressed one with
/// INTERNAL; OTLP clients retry both, forever, for a request that can never succeed. They are
/// the client's fault: answer INVALID_ARGUMENT (never retried), keeping tonic's message.
fn permanent_errors_are_invalid_argument(resp: &mut http::Response<Body>) {
    let headers = resp.headers_mut();
    let status = headers
        .get("grpc-status")
        .and_then(|v| v.to_str().ok())
        .unwrap_or("0");
    let message = headers
        .get("grpc-message")
        .and_then(|v| v.to_str().ok())
        .unwrap_or("");
    let client_fault = status == "11" || (status == "13" && message.contains("ecompress"));
    if client_fault {
        headers.insert("grpc-status", http::HeaderValue::from_static("3"));
    }
}

/// The three export services, ready for `tonic::transport::Server::add_service`.
pub fn services(
    pipeline: Arc<Pipeline>,
    limits: Limits,
    auth: IngestAuth,
) -> (
    ExportService<Traces>,
    ExportService<Metrics>,
    ExportService<Logs>,
) {
    (
        ExportService::new(pipeline.clone(), limits, auth.clone()),
        ExportService::new(pipeline.clone(), limits, auth.clone()),
        ExportService::new(pipeline, limits, auth),
    )
}

/// Serves OTLP/gRPC on `listener` until `shutdown` resolves.
pub async fn serve(
    listener: crate::listen::Listener,
    pipeline: Arc<Pipeline>,
    limits: Limits,
    auth: IngestAuth,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> Result<(), tonic::transport::Error> {
    let (t, m, l) = services(pipeline, limits, auth);
    tonic::transport::Server::builder()
        .max_concurrent_streams(limits.max_grpc_streams)
        // The whole call, message included: a client trickling its message is cut off.
        .timeout(limits.body_read_timeout)
        .add_service(t)
        .add_service(m)
        .add_service(l)
        .serve_with_incoming_shutdown(listener, shutdown)
        .await
}
