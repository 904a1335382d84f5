//! Trace decode: Trike's wire walker vs a full `prost` decode of the same request (the
//! baseline), both producing nothing but what each does; and the full path to observations.

use criterion::{BenchmarkId, Criterion, Throughput, criterion_group, criterion_main};
use prost::Message;
use std::hint::black_box;
use trike_ingest::decode::{DecodeConfig, traces_proto};
use trike_proto::collector::trace::v1::ExportTraceServiceRequest;

fn decode(c: &mut Criterion) {
    let n = 1000;
    let bytes = trike_benches::trace_request(n, 20, 1_800_000_000_000_000_000).encode_to_vec();
    let cfg = DecodeConfig {
        dimensions: vec!["deployment.environment".into()],
        ..Default::default()
    };
    let mut g = c.benchmark_group("decode_1000_spans");
    g.throughput(Throughput::Elements(n as u64));
    println!(
        "request: {} bytes, {} bytes/span",
        bytes.len(),
        bytes.len() / n
    );
    g.bench_function(BenchmarkId::new("prost_full_decode", "baseline"), |b| {
        b.iter(|| black_box(ExportTraceServiceRequest::decode(black_box(&bytes[..])).unwrap()))
    });
    g.bench_function(
        BenchmarkId::new("trike_wire_to_observations", "ours"),
        |b| b.iter(|| black_box(traces_proto(black_box(&bytes), &cfg).unwrap())),
    );
    g.finish();
}

criterion_group!(benches, decode);
criterion_main!(benches);
