//! Decoding a run of requests with the tables it keeps (operation names, resources, span keys)
//! gives what decoding each request afresh gives; strings are checked where they are used.

use super::tests::{cfg, kv, request, s, span};
use super::*;
use prost::Message;
use trike_proto::collector::trace::v1::ExportTraceServiceRequest;
use trike_proto::common::v1::{KeyValue, any_value::Value as Av};
use trike_proto::trace::v1 as trace_v1;
use trike_proto::trace::v1::span::SpanKind as Kind;

const T: u64 = 1_800_000_000_000_000_000;

/// Guarantees: operation names scrubbed once are remembered across batches, and a different
/// scrubbing (ids kept, or rules added) is never answered from what another one produced.
#[test]
fn remembered_operation_names_follow_the_scrubbing() {
    let body = request(
        vec![kv("service.name", s("users"))],
        vec![span("GET /users/123", Kind::Server, T, 5, vec![], false)],
    )
    .encode_to_vec();
    let ops = |cfg: &DecodeConfig, names: &mut Names| {
        let mut keys = Keys::default();
        std::mem::swap(&mut keys.names, names);
        let mut out = Decoded::default();
        traces_proto_into(&body, cfg, &mut out, &mut keys).unwrap();
        std::mem::swap(&mut keys.names, names);
        out.batch.keys[0].operation.to_string()
    };
    let mut names = Names::default();
    let collapse = cfg();
    assert_eq!(ops(&collapse, &mut names), "GET /users/{id}");
    assert_eq!(ops(&collapse, &mut names), "GET /users/{id}", "remembered");
    let mut keep = cfg();
    keep.scrub.collapse_ids = false;
    assert_eq!(ops(&keep, &mut names), "GET /users/123");
    let mut rules = cfg();
    rules.scrub.rules.push(scrub::Rule {
        pattern: regex::Regex::new(r"^GET ").unwrap(),
        replacement: "get ".into(),
    });
    assert_eq!(ops(&rules, &mut names), "get /users/{id}");
    assert_eq!(ops(&collapse, &mut names), "GET /users/{id}");
}

/// Scenario: a run of 400 single-span records over five resources, interleaved, two of them
/// alike but for one attribute, one with a duplicate `service.name` (the last wins), one with
/// more attributes than the cap, one whose version and dimension are not strings.
/// Guarantees: decoded as one run (resources remembered by their bytes) the batch is what
/// decoding each record on its own gives: every key, observation and dropped-attribute count.
#[test]
fn remembered_resources_decode_as_read_afresh() {
    let base = |env: &str| {
        vec![
            kv("service.name", s("checkout")),
            kv("service.version", s("1.5.0")),
            kv("deployment.environment", s(env)),
            kv("host.name", s("checkout-7d9f8b6c5-x2x9p")),
        ]
    };
    let mut dup = base("prod");
    dup.push(kv("service.name", s("cart")));
    let mut many = vec![kv("service.name", s("ads"))];
    many.extend((0..140).map(|i| kv(&format!("a{i}"), s("v"))));
    many.push(kv("service.version", s("9")));
    // A version and a dimension that are not strings.
    let typed = vec![
        kv("service.name", s("pay")),
        kv("service.version", Av::IntValue(7)),
        kv("deployment.environment", Av::BoolValue(true)),
    ];
    let resources = [base("prod"), base("canary"), dup, many, typed];
    let records: Vec<Vec<u8>> = (0..400u64)
        .map(|i| {
            request(
                resources[(i * 7 % 5) as usize].clone(),
                vec![span(
                    "GET",
                    Kind::Server,
                    T + i,
                    1 + i % 9,
                    vec![kv("http.route", s(&format!("/r{}", i % 3)))],
                    i % 5 == 0,
                )],
            )
            .encode_to_vec()
        })
        .collect();
    let mut run = Decoded::default();
    let mut keys = Keys::default();
    for r in &records {
        traces_proto_into(r, &cfg(), &mut run, &mut keys).unwrap();
    }
    let afresh: Vec<Decoded> = records
        .iter()
        .map(|r| traces_proto(r, &cfg()).unwrap())
        .collect();
    let seen = |d: &Decoded, i: usize| {
        let o = &d.batch.requests[i];
        (
            d.batch.keys[o.key as usize].to_string(),
            o.time,
            o.bad,
            o.latency_ms.to_bits(),
        )
    };
    assert_eq!(run.batch.requests.len(), 400);
    for (i, d) in afresh.iter().enumerate() {
        assert_eq!(seen(&run, i), seen(d, 0), "record {i}");
    }
    assert_eq!(
        run.attributes_dropped,
        afresh.iter().map(|d| d.attributes_dropped).sum::<u64>()
    );
    assert!(run.attributes_dropped > 0);
    let services: std::collections::BTreeSet<String> = run
        .batch
        .keys
        .iter()
        .map(|k| k.service.to_string())
        .collect();
    assert_eq!(
        services.into_iter().collect::<Vec<_>>(),
        ["ads", "cart", "checkout", "pay"]
    );
}

/// Scenario: a `ResourceSpans` with its resource written twice (protobuf merges the two: one
/// resource holding both attribute lists), decoded in a run after the same first resource was
/// seen alone, and with the merged resources in either order.
/// Guarantees: it decodes as the merged resource, read afresh each time: the remembered first
/// resource does not stand in for it, nor does it become remembered.
#[test]
fn resources_written_twice_are_merged_not_remembered() {
    let resource = |attrs: Vec<KeyValue>| {
        trace_v1::ResourceSpans {
            resource: Some(trike_proto::resource::v1::Resource {
                attributes: attrs,
                ..Default::default()
            }),
            ..Default::default()
        }
        .encode_to_vec()
    };
    let shop = vec![
        kv("service.name", s("shop")),
        kv("deployment.environment", s("prod")),
    ];
    let later = vec![
        kv("service.name", s("cart")),
        kv("service.version", s("2.0")),
    ];
    let spans = |dur: u64| {
        trace_v1::ResourceSpans {
            scope_spans: vec![trace_v1::ScopeSpans {
                spans: vec![span("GET", Kind::Server, T, dur, vec![], false)],
                ..Default::default()
            }],
            ..Default::default()
        }
        .encode_to_vec()
    };
    // An `ExportTraceServiceRequest` of one `ResourceSpans` (field 1) made of `parts`.
    let wrap = |parts: &[&[u8]]| {
        let rs: Vec<u8> = parts.concat();
        let mut b = vec![0x0a];
        prost::encoding::encode_varint(rs.len() as u64, &mut b);
        b.extend(rs);
        b
    };
    let alone = wrap(&[&resource(shop.clone()), &spans(3)]);
    let twice = wrap(&[&resource(shop.clone()), &resource(later.clone()), &spans(4)]);
    let reversed = wrap(&[&resource(later.clone()), &resource(shop.clone()), &spans(5)]);
    let key = |d: &Decoded, i: usize| d.batch.keys[d.batch.requests[i].key as usize].to_string();
    let mut run = Decoded::default();
    let mut keys = Keys::default();
    for body in [&alone, &twice, &reversed, &twice, &alone] {
        traces_proto_into(body, &cfg(), &mut run, &mut keys).unwrap();
    }
    let merged = |attrs: Vec<KeyValue>, dur: u64| {
        traces_proto(
            &request(
                attrs,
                vec![span("GET", Kind::Server, T, dur, vec![], false)],
            )
            .encode_to_vec(),
            &cfg(),
        )
        .unwrap()
    };
    let shop_then_cart = merged([shop.clone(), later.clone()].concat(), 4);
    let cart_then_shop = merged([later.clone(), shop.clone()].concat(), 5);
    let only_shop = merged(shop.clone(), 3);
    assert_eq!(run.batch.requests.len(), 5);
    for (i, want) in [
        &only_shop,
        &shop_then_cart,
        &cart_then_shop,
        &shop_then_cart,
        &only_shop,
    ]
    .into_iter()
    .enumerate()
    {
        assert_eq!(key(&run, i), key(want, 0), "record {i}");
    }
    assert!(key(&shop_then_cart, 0).contains("cart"));
    assert!(key(&cart_then_shop, 0).contains("shop"));
    assert!(key(&only_shop, 0).contains("shop"));
}

/// Scenario: spans whose strings are not UTF-8: the route, the name, an attribute no SLI
/// reads; and names repeated within one batch, so the second is answered from the names read
/// before.
/// Guarantees: a string is checked where it is used, so a bad route (the operation), or a bad
/// name where the name is the operation, refuses the request with a clear error, every time;
/// a bad name behind a good route, or a bad value of an unused attribute, costs nothing.
#[test]
fn strings_are_checked_where_they_are_used() {
    // Encoded with a marker, then the marker's bytes made invalid UTF-8.
    let bad = |req: ExportTraceServiceRequest| {
        let mut b = req.encode_to_vec();
        let at = b.windows(4).position(|w| w == b"BAD!").expect("marker");
        b[at..at + 4].copy_from_slice(&[0xff, 0xfe, 0xc3, 0x28]);
        b
    };
    let res = || vec![kv("service.name", s("shop"))];
    let route = |r: &str| kv("http.route", s(r));
    let decode_twice = |body: &[u8]| {
        let mut keys = Keys::default();
        let mut out = Decoded::default();
        let first = traces_proto_into(body, &cfg(), &mut out, &mut keys);
        let second = traces_proto_into(body, &cfg(), &mut out, &mut keys);
        (first, second, out)
    };
    let refused = |body: &[u8], what: &str| {
        let (first, second, out) = decode_twice(body);
        for r in [first, second] {
            let e = r.expect_err("refused").to_string();
            assert!(e.contains(&format!("{what} is not valid UTF-8")), "{e}");
        }
        assert!(out.batch.requests.is_empty(), "nothing of it is kept");
    };
    refused(
        &bad(request(
            res(),
            vec![span("GET", Kind::Server, T, 5, vec![route("/BAD!")], false)],
        )),
        "attribute value",
    );
    refused(
        &bad(request(
            res(),
            vec![span("GET /BAD!", Kind::Server, T, 5, vec![], false)],
        )),
        "span name",
    );
    let kept = |body: &[u8], operation: &str| {
        let (first, second, out) = decode_twice(body);
        assert!(first.is_ok() && second.is_ok());
        assert_eq!(out.batch.requests.len(), 2);
        assert_eq!(&*out.batch.keys[0].operation, operation);
    };
    kept(
        &bad(request(
            res(),
            vec![span(
                "GET /BAD!",
                Kind::Server,
                T,
                5,
                vec![route("/r")],
                false,
            )],
        )),
        "/r",
    );
    kept(
        &bad(request(
            res(),
            vec![span(
                "GET",
                Kind::Server,
                T,
                5,
                vec![route("/r"), kv("user_agent.original", s("BAD!"))],
                false,
            )],
        )),
        "/r",
    );
    // A remembered resource whose version is not UTF-8 is refused each time it is used.
    refused(
        &bad(request(
            vec![
                kv("service.name", s("shop")),
                kv("service.version", s("BAD!")),
            ],
            vec![span("GET", Kind::Server, T, 5, vec![route("/r")], false)],
        )),
        "attribute value",
    );
    // A name too long to remember is read afresh each time, to the same key.
    let long = "n".repeat(2000);
    let (first, second, out) = decode_twice(
        &request(res(), vec![span(&long, Kind::Server, T, 5, vec![], false)]).encode_to_vec(),
    );
    assert!(first.is_ok() && second.is_ok());
    assert_eq!(out.batch.keys.len(), 1);
    assert_eq!(out.batch.keys[0].operation.len(), MAX_KEY_PART_BYTES);
    // The same bytes as a route and as a name are one operation; an empty route is no route.
    let (first, _, out) = decode_twice(
        &request(
            res(),
            vec![
                span("/a", Kind::Server, T, 5, vec![route("")], false),
                span("GET", Kind::Server, T, 6, vec![route("/a")], false),
            ],
        )
        .encode_to_vec(),
    );
    assert!(first.is_ok());
    assert_eq!(out.batch.keys.len(), 1);
    assert_eq!(&*out.batch.keys[0].operation, "/a");
}

/// Scenario: in one batch, a request that fails after its first resource's span took a new
/// key; then the same operation from another resource, then from the first again; and spans
/// that carry their own version.
/// Guarantees: keys remembered per (resource, operation) never outlive a request that failed
/// (its keys are taken back, and another key may take their place), and a span's own version
/// is never answered from its resource's key.
#[test]
fn span_keys_follow_failed_requests_and_own_versions() {
    let res = |svc: &str| vec![kv("service.name", s(svc)), kv("service.version", s("1"))];
    let one = |svc: &str, attrs: Vec<KeyValue>| {
        request(
            res(svc),
            vec![span("GET", Kind::Server, T, 5, attrs, false)],
        )
    };
    let route = || kv("http.route", s("/x"));
    let mut failing = one("a", vec![route()]);
    // (A failing span: its exemplar goes with the request.)
    failing.resource_spans[0].scope_spans[0].spans[0] =
        span("GET", Kind::Server, T, 5, vec![route()], true);
    failing
        .resource_spans
        .push(one("z", vec![route()]).resource_spans.remove(0));
    let mut failing = failing.encode_to_vec();
    failing.truncate(failing.len() - 3);
    let mut keys = Keys::default();
    let mut out = Decoded::default();
    let mut decode = |body: Vec<u8>| traces_proto_into(&body, &cfg(), &mut out, &mut keys);
    assert!(decode(failing).is_err());
    decode(one("b", vec![route()]).encode_to_vec()).unwrap();
    decode(one("a", vec![route()]).encode_to_vec()).unwrap();
    decode(one("a", vec![route(), kv("service.version", s("2"))]).encode_to_vec()).unwrap();
    decode(one("a", vec![route()]).encode_to_vec()).unwrap();
    let seen: Vec<String> = out
        .batch
        .requests
        .iter()
        .map(|r| {
            let k = &out.batch.keys[r.key as usize];
            format!("{}/{}@{}", k.service, k.operation, k.version)
        })
        .collect();
    assert_eq!(seen, ["b//x@1", "a//x@1", "a//x@2", "a//x@1"]);
    assert!(
        out.batch.exemplars.is_empty(),
        "nothing of the failed request is kept"
    );
}
