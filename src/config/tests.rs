//! Config loading and validation.

use super::validate::Overrides;
use super::*;

fn load(text: &str) -> Result<Config, Vec<String>> {
    Config::validate(
        RawConfig::from_yaml(text).map_err(|e| vec![e])?,
        &Overrides::default(),
    )
}

/// Guarantees: no config means the DESIGN §5 defaults.
#[test]
fn defaults() {
    let c = load("").unwrap();
    assert_eq!(c.grpc_addr.to_string(), "127.0.0.1:4317");
    assert_eq!(c.http_addr.to_string(), "127.0.0.1:4318");
    assert_eq!(c.admin_addr.to_string(), "127.0.0.1:8480");
    assert_eq!(c.engine.max_series_per_service, 10_000);
    assert_eq!(c.control_topic, "trike.control");
    assert_eq!(
        c.anomaly,
        trike_runtime::hooks::decide::WatchSettings::default()
    );
    assert_eq!(c.anomaly.detector.threshold, 0.6);
}

/// Guarantees: `anomaly:` sets the watch's threshold, cycle, bins, memory and period; `none`
/// turns the cycle off; `capacity:` limits reach the decide hook, and a rule can act on the
/// forecast.
#[test]
fn anomaly_settings() {
    let c =
        load("anomaly: { threshold: 0.8, season: 1w, season_bins: 168, every: 30s, memory: 500 }")
            .unwrap();
    let d = c.anomaly.detector;
    assert_eq!(
        (
            d.threshold,
            d.season_s,
            d.season_bins,
            d.memory,
            c.anomaly.every_s
        ),
        (0.8, 604_800, 168, 500, 30)
    );
    let off = load("anomaly: { season: none, silence: false }")
        .unwrap()
        .anomaly
        .detector;
    assert_eq!((off.season_s, off.silence), (0, false));
    assert!(d.silence, "silences are judged by default");
    assert_eq!(c.decide_spec().watch, c.anomaly);
    let c = load("capacity: [{ service: checkout, metric: request_rate, limit: 500 }]\npolicies: [{ name: scale, when: \"forecast.days_to_limit < 14\", action: ticket }]").unwrap();
    assert_eq!(c.capacity.len(), 1);
    assert_eq!(
        (c.capacity[0].service.as_str(), c.capacity[0].limit),
        ("checkout", 500.0)
    );
    assert_eq!(c.decide_spec().capacity, c.capacity);
    assert_eq!(
        c.policy.rules[0].when.to_string(),
        "forecast.days_to_limit < 14"
    );
}

/// Scenario: limits on a service's request rate and memory, a price per CPU second (default
/// and named CPU metrics), and wrong entries: no price, a negative price, a CPU metric
/// without a CPU price, a usage metric that is also a request counter, a second limit on one
/// metric.
/// Guarantees: the usage metrics the decoder reads are those named (sorted, once each); each
/// wrong entry is refused with a message naming its field.
#[test]
fn usage_metrics_come_from_capacity_and_cost() {
    let c = load(
        "capacity:\n\
         \x20 - { service: worker, limit: 500 }\n\
         \x20 - { service: worker, metric: process.memory.usage, limit: 8e9 }\n\
         cost:\n\
         \x20 - { service: worker, per_cpu_second: 0.00002, budget_per_day: 10 }\n\
         \x20 - { service: batch, per_request: 0.001, per_cpu_second: 0.00002, cpu_metric: container.cpu.time, budget_per_day: 10 }\n\
         \x20 - { service: web, per_request: 0.001, budget_per_day: 10 }\n",
    )
    .unwrap();
    assert_eq!(
        c.decode.usage_metrics,
        [
            "container.cpu.time",
            "process.cpu.time",
            "process.memory.usage"
        ]
    );
    assert_eq!(c.capacity[0].metric, "request_rate");
    assert_eq!(c.capacity[1].metric, "process.memory.usage");
    assert_eq!(c.costs[0].cpu_metric(), Some("process.cpu.time"));
    assert_eq!(c.costs[2].cpu_metric(), None);
    let problems = load(
        "capacity:\n\
         \x20 - { service: worker, metric: http.server.requests, limit: 5 }\n\
         \x20 - { service: worker, metric: process.memory.usage, limit: 5 }\n\
         \x20 - { service: worker, metric: process.memory.usage, limit: 6 }\n\
         cost:\n\
         \x20 - { service: a, budget_per_day: 10 }\n\
         \x20 - { service: b, per_cpu_second: -1, budget_per_day: 10 }\n\
         \x20 - { service: c, per_request: 1, cpu_metric: x, budget_per_day: 10 }\n",
    )
    .unwrap_err()
    .join("\n");
    for want in [
        "\"http.server.requests\" is read as a request metric",
        "capacity[2]: \"worker\" has a limit on process.memory.usage already",
        "cost[0]: give a price",
        "cost[1].per_cpu_second: -1 is not a price",
        "cost[2].cpu_metric: is read only with a per_cpu_second price",
    ] {
        assert!(problems.contains(want), "{want:?} not in:\n{problems}");
    }
}

/// Guarantees: the example configs under deploy/ load and validate, so they never rot.
#[test]
fn deploy_examples_validate() {
    // The examples take their secrets from `${VAR}`: stand-ins of a valid length.
    let placeholder = |name: &str| Some(format!("{name}-placeholder-0123456789"));
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("deploy/config");
    let mut n = 0;
    for entry in std::fs::read_dir(&dir).unwrap() {
        let path = entry.unwrap().path();
        if path.extension().is_some_and(|e| e == "yaml") {
            let c = Config::load_with(Some(&path), &Overrides::default(), &placeholder);
            assert!(c.is_ok(), "{}: {:?}", path.display(), c.err());
            n += 1;
        }
    }
    assert!(n >= 2, "expected example configs in {}", dir.display());
    let full = Config::load_with(
        Some(&dir.join("trike.yaml")),
        &Overrides::default(),
        &placeholder,
    )
    .unwrap();
    assert!(!full.auth.ingest.is_open() && !full.auth.admin_read.is_open());
    assert_eq!(full.engine.thresholds_for("checkout"), &[300.0]);
    assert_eq!(
        full.decode.dimensions,
        vec!["deployment.environment".to_string()]
    );
    assert_eq!(full.slos.len(), 5, "3 in the file, 2 from deploy/openslo");
    assert!(full.slos.iter().any(|s| s.name == "payments-latency"));
    assert_eq!(full.engine.thresholds_for("payments"), &[250.0]);
    assert_eq!(full.policy.rules.len(), 7);
    let throttle = full.policy.rules.last().unwrap();
    assert_eq!(
        throttle.selector.get("traffic.class").map(String::as_str),
        Some("batch")
    );
    assert_eq!(full.costs.len(), 2);
    assert_eq!(full.decode.usage_metrics, ["process.cpu.time"]);
    assert!(full.decode.logs_as_bad_events);
    assert_eq!(full.engine.graph.wait, trike_engine::Span(10));
    assert_eq!(full.canaries.len(), 1);
    assert_eq!(full.anomaly.detector.threshold, 0.6);
    assert_eq!(full.capacity.len(), 2);
    assert_eq!(full.instance, "trike-0");
    assert_eq!(full.actuator.executors.len(), 4);
}

/// Guarantees: every problem is reported at once, each naming its field and what is wrong.
#[test]
fn all_problems_at_once() {
    let text = r#"
receivers: { otlp_grpc: "nowhere", max_request_bytes: 10 }
series: { max_series_per_service: 0, dimensions: [service.name] }
scrub: { rules: [ { pattern: "(unclosed", replacement: x } ] }
query: { memory_limit: 1KiB, max_concurrent: 0 }
auth: { ingest_tokens: [short] }
limits: { max_connections: 0, max_grpc_streams: 0 }
tls: { cert_file: /nonexistent/tls.crt, key_file: /nonexistent/tls.key }
anomaly: { threshold: 1.5, season: fortnightly }
capacity: [{ service: a, metric: " ", limit: -1 }, { service: a, limit: 5 }, { service: a, metric: request_rate, limit: 6 }]
forward: [{ endpoint: "collector:4317", headers: { trace-bin: x } }, { endpoint: "http://collector", protocol: http }, { endpoint: "c:4317", tls: { ca_file: /nonexistent/ca.crt } }, { endpoint: "c:4317", tls: { cert_file: /x.crt } }, { endpoint: "c:4317", timeout: 10m }]
slos:
  - { name: a, service: s, objective: 1.5, sli: availability }
  - { name: a, service: s, objective: 0.99, period: 90d, sli: { latency: { threshold_ms: -3 } } }
"#;
    let problems = load(text).unwrap_err();
    let joined = problems.join("\n");
    for want in [
        "receivers.otlp_grpc: \"nowhere\" is not a listen address",
        "receivers.max_request_bytes: 10 is below the minimum",
        "series.max_series_per_service: must be at least 1",
        "scrub.rules[0].pattern: regex parse error",
        "query.memory_limit: 1KiB is below the minimum of 1MiB",
        "query.max_concurrent: 0 is not in 1..=64",
        "auth.ingest_tokens[0]: shorter than 16 characters",
        "limits.max_connections: must be at least 1",
        "limits.max_grpc_streams: must be at least 1",
        "tls.cert_file /nonexistent/tls.crt: cannot read it",
        "series.dimensions[0]: \"service.name\" is already part",
        "slos[0].objective: 1.5 is not in (0, 1)",
        "slos[1].name: \"a\" is used by another SLO",
        "slos[1].period: 90d is not between 1h and 30d",
        "slos[1].sli.latency.threshold_ms: -3 is not a positive number",
        "anomaly.threshold: 1.5 is not in (0, 1]",
        "anomaly.season: \"fortnightly\" is not a duration",
        "capacity[0].metric: write request_rate or a usage metric's name",
        "capacity[0].limit: -1 is not a positive number",
        "capacity[2]: \"a\" has a limit on request_rate already",
        "forward[0].headers: \"trace-bin\" is not valid gRPC metadata",
        "forward[1].endpoint: \"http://collector\" is not host:port",
        "forward[2].tls: forward.tls.ca_file /nonexistent/ca.crt:",
        "forward[3].tls: forward.tls.cert_file /x.crt: cert_file and key_file go together: give key_file too",
        "forward[4].timeout: 600s is longer than 300s",
    ] {
        assert!(joined.contains(want), "missing {want:?} in:\n{joined}");
    }
}

/// Guarantees: unknown keys are errors that name the key (typos don't silently do nothing).
#[test]
fn unknown_keys_are_named() {
    let err = load("receivers: { otlp_grcp: \"127.0.0.1:1\" }")
        .unwrap_err()
        .join("");
    assert!(err.contains("otlp_grcp"), "{err}");
    let err = load("engine: { allowed_lateness: soon }")
        .unwrap_err()
        .join("");
    assert!(err.contains("\"soon\" is not a duration"), "{err}");
    let err = load("engine: { allowed_lateness: 10m }")
        .unwrap_err()
        .join("");
    assert!(
        err.contains("longer than 5m, the history of the 10-second counters"),
        "{err}"
    );
}

/// Guarantees: flags and TRIKE_* values override the file.
#[test]
fn overrides_win() {
    let raw = RawConfig::from_yaml("admin: \"127.0.0.1:9000\"\nkafka: { brokers: a:1 }").unwrap();
    let o = Overrides {
        admin_addr: Some("127.0.0.1:9100".into()),
        kafka_brokers: Some("b:2".into()),
        ..Default::default()
    };
    let c = Config::validate(raw, &o).unwrap();
    assert_eq!(c.admin_addr.to_string(), "127.0.0.1:9100");
    assert_eq!(c.kafka_brokers.as_deref(), Some("b:2"));
}

/// Guarantees: SLO tiers default to the workbook's, can be replaced, and are validated.
#[test]
fn slo_tiers() {
    let c =
        load("slos:\n  - { name: a, service: s, objective: 0.999, period: 7d, sli: availability }")
            .unwrap();
    let factors: Vec<f64> = c.slos[0].tiers.iter().map(|t| t.factor).collect();
    assert!((factors[0] - 3.36).abs() < 1e-9, "{factors:?}");
    let c = load(
        "slos:\n  - name: a\n    service: s\n    objective: 0.99\n    sli: availability\n    tiers:\n      - { name: fast, factor: 10, long: 1h, short: 5m, severity: page, min_events: 5 }\n      - { name: slow, budget_share: 0.1, long: 3d, short: 6h, severity: ticket }\n      - { name: off, factor: 2, long: 6h, short: 30m, severity: page, disabled: true }",
    )
    .unwrap();
    let t = &c.slos[0].tiers;
    assert_eq!(t.len(), 2);
    assert_eq!((t[0].factor, t[0].min_events), (10.0, 5));
    assert!((t[1].factor - 1.0).abs() < 1e-9);
    let err = load(
        "slos:\n  - name: a\n    service: s\n    objective: 0.99\n    sli: availability\n    tiers:\n      - { name: bad, long: 5m, short: 1h, severity: page }",
    )
    .unwrap_err()
    .join("\n");
    assert!(
        err.contains("slos[0].tiers[0].short: 1h must be shorter than long (5m)"),
        "{err}"
    );
    assert!(
        err.contains("slos[0].tiers[0]: give exactly one of factor or budget_share"),
        "{err}"
    );
}

/// Guarantees: the policy revision covers the whole rule set in a canonical form: the same
/// rules written in another key order share it; a change to an SLO, a canary, the stale rule
/// or a policy rule changes it; the canonical text is what it is the hash of.
#[test]
fn revision_covers_the_whole_rule_set() {
    let base = r#"
slos: [ { name: a, service: s, objective: 0.999, sli: availability } ]
canary: [ { service: s, baseline: "1", canary: "2" } ]
policies: [ { name: r, when: canary.fail, action: rollback } ]
"#;
    let rev = |text: &str| load(text).unwrap().policy.revision;
    let c = load(base).unwrap();
    assert!(revision::is_revision(&c.policy.revision));
    assert_eq!(revision::revision_of(&c.rule_set), c.policy.revision);
    assert!(
        c.rule_set.contains(r#""objective":0.999"#),
        "{}",
        c.rule_set
    );
    let reordered = r#"
policies: [ { action: rollback, when: canary.fail, name: r } ]
canary: [ { canary: "2", baseline: "1", service: s } ]
slos: [ { sli: availability, objective: 0.999, service: s, name: a } ]
"#;
    assert_eq!(
        rev(reordered),
        c.policy.revision,
        "key order does not matter"
    );
    let changed = [
        base.replace("0.999", "0.99"),
        base.replace(r#"canary: "2""#, r#"canary: "3""#),
        format!("{base}stale: {{ after: 2m }}\n"),
        base.replace("action: rollback", "action: rollback, for: 30s"),
    ];
    for (i, text) in changed.iter().enumerate() {
        assert_ne!(
            rev(text),
            c.policy.revision,
            "change {i} must change the revision"
        );
    }
}

/// Guarantees: rules must mean something: a tier name no SLO has, `set_weight` without a
/// weight in 0–100, `throttle` without a rate limit, a budget share outside (0, 1] and an
/// unknown canary metric are each an error naming the field.
#[test]
fn rules_and_canaries_must_mean_something() {
    let text = r#"
slos: [ { name: a, service: s, objective: 0.999, sli: availability } ]
canary: [ { service: s, baseline: "1", canary: "2", metrics: [error_ratio, cpu] } ]
policies:
  - { name: r0, when: burn_rate.page_fastt, action: page }
  - { name: r1, when: canary.fail, action: set_weight }
  - { name: r2, when: canary.fail, action: set_weight, params: { weight: 150 } }
  - { name: r3, when: canary.fail, action: throttle }
  - { name: r4, when: "budget < 20", action: freeze_deploys }
  - { name: r5, when: burn_rate.page_fast, action: set_weight, params: { weight: 0 } }
"#;
    let problems = load(text).unwrap_err();
    for want in [
        "policies[0].when: burn_rate.page_fastt: no SLO has a tier named \"page_fastt\" (tiers: page_fast, page_slow, ticket)",
        "policies[1].params.weight: set_weight needs a weight",
        "policies[2].params.weight: 150 is not a percentage (0 to 100)",
        "policies[3].params.rate_limit: throttle needs a rate limit",
        "policies[4].when: budget < 20: the threshold is a share of the budget, in (0, 1]",
        "canary[0].metrics[1]: \"cpu\" is not a canary metric: write error_ratio or latency",
    ] {
        assert!(
            problems.iter().any(|p| p.starts_with(want)),
            "{want} in {problems:#?}"
        );
    }
    assert_eq!(problems.len(), 6, "r5 is fine: {problems:#?}");
    let ok = load(r#"canary: [ { service: s, baseline: "1", canary: "2", metrics: [latency] } ]"#)
        .unwrap();
    assert_eq!(
        ok.canaries[0].metrics,
        vec![trike_engine::canary::CanaryMetric::Latency]
    );
    // Canary detection: a template without versions; versions with it, or neither, are refused.
    let problems = load(
        r#"canary: [ { service: s, detect: true, canary: "2" }, { service: s, baseline: "1" }, { service: t } ]"#,
    )
    .unwrap_err();
    assert_eq!(
        problems,
        [
            "canary[0]: detect: true finds the versions itself; remove baseline and canary (or detect)",
            "canary[1]: give baseline and canary versions (missing: canary), or detect: true",
            "canary[2]: give baseline and canary versions (missing: baseline, canary), or detect: true",
        ]
    );
    let ok =
        load("canary: [ { service: s, detect: true, window: 5m, min_requests: 200 } ]").unwrap();
    let c = &ok.canaries[0];
    assert!(c.detect && c.baseline.is_empty() && c.canary.is_empty());
    assert_eq!((c.window.secs(), c.min_requests), (300, 200));
}

/// Guarantees: `check-config` (which prints the validated config) shows secrets as `***`:
/// the signing key, literal webhook header values and a next hop's header values.
#[test]
fn secrets_print_as_stars() {
    let c = load(
        r#"
signing: { key: s3cret-signing-key }
forward: [{ endpoint: "backend:4317", headers: { authorization: "Bearer f0rward-t0ken" } }]
actuator:
  executors:
    - { name: w, type: webhook, actions: [page], url: "https://pager.example/x", headers: { Authorization: "Bearer t0ken-value" } }
"#,
    )
    .unwrap();
    let printed = format!("{c:#?}");
    assert!(!printed.contains("s3cret-signing-key"), "{printed}");
    assert!(!printed.contains("t0ken-value"), "{printed}");
    assert!(!printed.contains("f0rward-t0ken"), "{printed}");
    assert_eq!(
        c.forward[0].headers["authorization"].expose(),
        "Bearer f0rward-t0ken"
    );
    assert!(printed.contains("***"));
    assert_eq!(c.resolve_signing_key().unwrap(), b"s3cret-signing-key");
}

/// Guarantees: `kafka.client` reaches every client config (the source's too), secrets from
/// `${VAR}` never show in `check-config`'s output, and properties Trike manages are refused
/// naming the key and what to use instead.
#[test]
fn kafka_client_properties() {
    let yaml = r#"
kafka:
  brokers: "b1:9093"
  client: { security.protocol: SASL_SSL, sasl.mechanism: SCRAM-SHA-512, sasl.username: trike, sasl.password: "${KAFKA_PASSWORD}", linger.ms: 5 }
  ingest: { topics: [otlp_spans] }
"#;
    let env = |name: &str| (name == "KAFKA_PASSWORD").then(|| "pa55-w0rd-secret".to_string());
    let c = Config::validate(
        RawConfig::from_yaml_with(yaml, &env).unwrap(),
        &Overrides::default(),
    )
    .unwrap();
    assert_eq!(
        c.kafka_client.get("sasl.password"),
        Some("pa55-w0rd-secret")
    );
    assert_eq!(c.kafka_client.get("linger.ms"), Some("5"));
    let source = c.kafka_ingest.as_ref().unwrap();
    assert_eq!(source.client.get("security.protocol"), Some("SASL_SSL"));
    let printed = format!("{c:?}");
    assert!(!printed.contains("pa55-w0rd"), "the password is printed");
    assert!(printed.contains("SCRAM-SHA-512"));
    let err = load("kafka: { brokers: b, client: { group.id: mine, bootstrap.servers: x } }")
        .unwrap_err()
        .join("\n");
    assert!(
        err.contains("kafka.client.group.id: Trike sets this property itself"),
        "{err}"
    );
    assert!(err.contains("kafka.client.bootstrap.servers: Trike sets this property itself (its delivery and offset guarantees depend on it); use kafka.brokers"), "{err}");
}

/// Guarantees: maintenance windows that cannot work are refused, naming the field; a good one
/// becomes the silence `maintenance:<name>`.
#[test]
fn maintenance_windows_are_checked() {
    let problems = load(
        r#"maintenance:
  - { name: a, matchers: [{ name: service, value: db }], start: "tomorrow", end: "2026-12-06T04:00:00Z" }
  - { name: b, matchers: [], start: "2026-12-06T02:00:00Z", end: "2026-12-06T04:00:00Z" }
  - { name: b, matchers: [{ name: region, value: eu }], start: "2026-12-06T02:00:00Z", end: "2026-12-06T04:00:00Z" }
"#,
    )
    .unwrap_err();
    for want in [
        "maintenance[0].start: \"tomorrow\" is not an RFC 3339 time",
        "maintenance[1]: a silence needs at least one matcher",
        "maintenance[2].name: \"b\" is used twice",
        "maintenance[2]: matcher name \"region\"",
    ] {
        assert!(
            problems.iter().any(|p| p.starts_with(want)),
            "{want} in {problems:#?}"
        );
    }
    let ok = load(
        r#"maintenance: [{ name: db, matchers: [{ name: service, value: db }], start: "2026-12-06T02:00:00Z", end: "2026-12-06T04:00:00Z", comment: upgrade }]"#,
    )
    .unwrap();
    assert_eq!(ok.maintenance[0].id, "maintenance:db");
    assert_eq!(
        ok.maintenance[0].ends_at - ok.maintenance[0].starts_at,
        7200 * 1_000_000_000
    );
}

/// Guarantees: an SLO selector names operation, version or a configured dimension; anything
/// else is refused with the dimensions that exist.
#[test]
fn slo_selectors_name_series_dimensions() {
    let problems = load(
        r#"series: { dimensions: [deployment.environment] }
slos: [ { name: a, service: s, objective: 0.99, sli: availability, selector: { region: eu, operation: "" } } ]"#,
    )
    .unwrap_err();
    assert_eq!(
        problems,
        [
            "slos[0].selector.operation: give a value",
            "slos[0].selector.region: not a series dimension: write operation, version or one of series.dimensions (deployment.environment)",
        ]
    );
    let ok = load(
        r#"series: { dimensions: [deployment.environment] }
slos: [ { name: a, service: s, objective: 0.99, sli: availability, selector: { deployment.environment: prod, operation: /pay } } ]"#,
    )
    .unwrap();
    assert_eq!(ok.slos[0].selector.len(), 2);
}

/// Guarantees: a trace link template must say where the trace id goes.
#[test]
fn trace_url_template_names_the_trace_id() {
    let problems = load(r#"trace_url_template: "http://jaeger:16686/trace/""#).unwrap_err();
    assert!(
        problems[0].starts_with("trace_url_template: "),
        "{problems:?}"
    );
    let ok = load(r#"trace_url_template: "http://jaeger:16686/trace/{trace_id}""#).unwrap();
    assert!(ok.trace_url_template.unwrap().ends_with("{trace_id}"));
}

/// Guarantees: a next hop's requests are gzipped unless its `compression` is `none`, as the
/// Collector's exporters; another value is refused, naming it.
#[test]
fn forward_compression() {
    use crate::forward::Compression;
    let c = load(
        r#"forward: [{ endpoint: "a:4317" }, { endpoint: "b:4318", protocol: http, compression: none }, { endpoint: "c:4317", compression: gzip }]"#,
    )
    .unwrap();
    let got: Vec<Compression> = c.forward.iter().map(|t| t.compression).collect();
    assert_eq!(
        got,
        [Compression::Gzip, Compression::None, Compression::Gzip]
    );
    let refused = load(r#"forward: [{ endpoint: "a:4317", compression: zstd }]"#)
        .unwrap_err()
        .join("\n");
    assert!(refused.contains("zstd"), "{refused}");
}
