//! Trace decode: Trike's wire walker vs a full `prost` decode of the same request (the
//! baseline), both producing nothing but what each does; and the full path to observations,
//! for a request of 1000 spans and for a run of 1000 single-span records (the Kafka source's).

use criterion::{BenchmarkId, Criterion, Throughput, criterion_group, criterion_main};
use prost::Message;
use std::hint::black_box;
use trike_ingest::decode::{DecodeConfig, Decoded, Keys, traces_proto, traces_proto_into};
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

/// The Kafka source's records: what the Collector's Kafka exporter writes per message, here one
/// span per request (the same spans as above, each with the whole resource), 1000 of them
/// decoded as one run into one batch with one key table (as the source's runs are).
fn single_span_records(c: &mut Criterion) {
    let n = 1000;
    let mut whole = trike_benches::trace_request(n, 20, 1_800_000_000_000_000_000);
    let spans = std::mem::take(&mut whole.resource_spans[0].scope_spans[0].spans);
    let records: Vec<Vec<u8>> = spans
        .into_iter()
        .map(|span| {
            let mut r = whole.clone();
            r.resource_spans[0].scope_spans[0].spans = vec![span];
            r.encode_to_vec()
        })
        .collect();
    let cfg = DecodeConfig {
        dimensions: vec!["deployment.environment".into()],
        ..Default::default()
    };
    println!(
        "records: {} bytes each on average",
        records.iter().map(Vec::len).sum::<usize>() / n
    );
    let mut g = c.benchmark_group("decode_1000_single_span_records");
    g.throughput(Throughput::Elements(n as u64));
    g.bench_function(BenchmarkId::new("prost_full_decode", "baseline"), |b| {
        b.iter(|| {
            for r in &records {
                black_box(ExportTraceServiceRequest::decode(black_box(&r[..])).unwrap());
            }
        })
    });
    g.bench_function(BenchmarkId::new("trike_run_to_one_batch", "ours"), |b| {
        b.iter(|| {
            let mut out = Decoded::default();
            let mut keys = Keys::default();
            for r in &records {
                traces_proto_into(black_box(r), &cfg, &mut out, &mut keys).unwrap();
            }
            black_box(out)
        })
    });
    g.finish();
}

/// The service graph's cost on the decode path: the same 1000 spans (every server span has a
/// parent, as a service's spans behind another's do) with every other span turned into a
/// CLIENT span naming its peer, decoded with the graph on (call halves read) and off
/// (`graph.enabled: false`, the baseline).
fn graph_calls(c: &mut Criterion) {
    use trike_proto::common::v1::{AnyValue, KeyValue, any_value::Value};
    let n = 1000;
    let mut req = trike_benches::trace_request(n, 20, 1_800_000_000_000_000_000);
    for (i, span) in req.resource_spans[0].scope_spans[0]
        .spans
        .iter_mut()
        .enumerate()
    {
        if i % 2 == 1 {
            span.kind = trike_proto::trace::v1::span::SpanKind::Client as i32;
            span.attributes.push(KeyValue {
                key: "peer.service".into(),
                value: Some(AnyValue {
                    value: Some(Value::StringValue("payments".into())),
                }),
                ..Default::default()
            });
        }
    }
    let bytes = req.encode_to_vec();
    let on = DecodeConfig {
        dimensions: vec!["deployment.environment".into()],
        ..Default::default()
    };
    let off = DecodeConfig {
        calls: false,
        ..on.clone()
    };
    let mut g = c.benchmark_group("decode_1000_spans_half_client");
    g.throughput(Throughput::Elements(n as u64));
    g.bench_function(BenchmarkId::new("graph_off", "baseline"), |b| {
        b.iter(|| black_box(traces_proto(black_box(&bytes), &off).unwrap()))
    });
    g.bench_function(BenchmarkId::new("graph_on", "ours"), |b| {
        b.iter(|| black_box(traces_proto(black_box(&bytes), &on).unwrap()))
    });
    g.finish();
}

/// The Kafka bench's records (`trike_benches::kafka_service`, one span each), here from memory
/// rather than a broker: what the gateway's source thread does per record apart from reading
/// it off librdkafka's queue. Decoded in runs of 512 (a batch read), each run into one batch
/// with its own key table, the operation names carried from run to run (as the source carries
/// them); and the same followed by the gateway's partials (as `PartialsSink` adds each run,
/// and takes them once at the end, as a flush does).
fn kafka_bench_records(c: &mut Criterion) {
    use rand::SeedableRng;
    let n = 10_000;
    let end = 1_800_000_000_000_000_000;
    let svc = trike_benches::kafka_service();
    let mut rng = rand::rngs::StdRng::seed_from_u64(1);
    let records: Vec<Vec<u8>> = (0..n)
        .map(|_| {
            svc.request(1, end, 60_000_000_000, &mut rng)
                .encode_to_vec()
        })
        .collect();
    println!(
        "kafka bench records: {} bytes each on average",
        records.iter().map(Vec::len).sum::<usize>() / n
    );
    let cfg = DecodeConfig::default();
    let decode_runs = || {
        // (Operation names are carried from run to run, as the source does.)
        let mut carried = Keys::default();
        records
            .chunks(512)
            .map(|run| {
                let mut out = Decoded::default();
                let mut keys = carried.for_next_batch();
                for r in run {
                    traces_proto_into(black_box(r), &cfg, &mut out, &mut keys).unwrap();
                }
                carried = keys;
                out
            })
            .collect::<Vec<_>>()
    };
    let mut g = c.benchmark_group("kafka_bench_records_10000");
    g.throughput(Throughput::Elements(n as u64));
    g.bench_function("decode", |b| b.iter(|| black_box(decode_runs())));
    let engine = std::sync::Arc::new(trike_engine::EngineConfig::default());
    g.bench_function("decode_and_partials", |b| {
        b.iter(|| {
            let mut builder = trike_engine::partials::PartialBuilder::new(engine.clone());
            for out in decode_runs() {
                builder.add(&out.batch, end);
            }
            black_box(builder.take())
        })
    });
    g.finish();
}

criterion_group!(
    benches,
    decode,
    single_span_records,
    graph_calls,
    kafka_bench_records
);
criterion_main!(benches);
