//! Calls through checkout → payments → db traced with the real OpenTelemetry SDK (W3C trace
//! context propagated from checkout's client span to payments' server span; db sends
//! nothing), for the service-graph tests (`service_graph_e2e`, and the fleet's `fleet_causes`,
//! which includes this file).

use opentelemetry::propagation::TextMapPropagator;
use opentelemetry::trace::{
    Span as _, SpanKind, Status, TraceContextExt, Tracer as _, TracerProvider as _,
};
use opentelemetry::{Context, KeyValue};
use opentelemetry_otlp::SpanExporter;
use opentelemetry_sdk::Resource;
use opentelemetry_sdk::propagation::TraceContextPropagator;
use opentelemetry_sdk::trace::SdkTracerProvider;
use std::collections::HashMap;
use std::time::{Duration, SystemTime};

/// A tracer provider of `service` (version 1.0) exporting through `exporter` in batches.
pub fn provider(exporter: SpanExporter, service: &str) -> SdkTracerProvider {
    SdkTracerProvider::builder()
        .with_batch_exporter(exporter)
        .with_resource(
            Resource::builder()
                .with_service_name(service.to_string())
                .with_attribute(KeyValue::new("service.version", "1.0"))
                .build(),
        )
        .build()
}

/// Requests `range` through the three services: request `i` fails when `fails(i)` (db
/// fails the call, and the failure travels up). Latencies (ms): checkout 40, its call 30,
/// payments 28, its db call 5 + i % 10.
pub fn traffic(
    checkout: &SdkTracerProvider,
    payments: &SdkTracerProvider,
    range: std::ops::Range<u64>,
    fails: impl Fn(u64) -> bool,
) {
    let ct = checkout.tracer("e2e");
    let pt = payments.tracer("e2e");
    let propagator = TraceContextPropagator::new();
    let ms = |t: SystemTime, n: u64| t + Duration::from_millis(n);
    for i in range {
        let bad = fails(i);
        let t0 = SystemTime::now() - Duration::from_millis(100);
        let server = ct
            .span_builder("POST /checkout")
            .with_kind(SpanKind::Server)
            .with_start_time(t0)
            .with_attributes([KeyValue::new("http.route", "/checkout")])
            .start(&ct);
        let cx = Context::current_with_span(server);
        let call = ct
            .span_builder("POST")
            .with_kind(SpanKind::Client)
            .with_start_time(ms(t0, 5))
            // The address the call went to, not the service's name: pairing names the edge.
            .with_attributes([KeyValue::new("server.address", "payments.internal")])
            .start_with_context(&ct, &cx);
        let call_cx = cx.with_span(call);
        let mut headers: HashMap<String, String> = HashMap::new();
        propagator.inject_context(&call_cx, &mut headers);

        let parent = propagator.extract(&headers);
        let pserver = pt
            .span_builder("POST /charge")
            .with_kind(SpanKind::Server)
            .with_start_time(ms(t0, 6))
            .with_attributes([KeyValue::new("http.route", "/charge")])
            .start_with_context(&pt, &parent);
        let pcx = parent.with_span(pserver);
        let mut db = pt
            .span_builder("SELECT ledger")
            .with_kind(SpanKind::Client)
            .with_start_time(ms(t0, 7))
            .with_attributes([
                KeyValue::new("db.system", "postgresql"),
                KeyValue::new("peer.service", "db"),
            ])
            .start_with_context(&pt, &pcx);
        if bad {
            db.set_status(Status::error("connection reset"));
        }
        db.end_with_timestamp(ms(t0, 12 + i % 10));
        let pserver = pcx.span();
        if bad {
            pserver.set_attribute(KeyValue::new("http.response.status_code", 500));
            pserver.set_status(Status::error("ledger unavailable"));
        }
        pserver.end_with_timestamp(ms(t0, 34));
        let call = call_cx.span();
        if bad {
            call.set_status(Status::error("502 from payments"));
        }
        call.end_with_timestamp(ms(t0, 35));
        let server = cx.span();
        if bad {
            server.set_status(Status::error("payment failed"));
        }
        server.end_with_timestamp(ms(t0, 40));
    }
}
