//! Validation: pure, reports all problems at once, each as `path: value: what is wrong`.

pub use super::boundaries::{AuthConfig, MIN_TOKEN_LEN};
use super::boundaries::{
    validate_auth, validate_limits, validate_memory_limit, validate_query, validate_tls,
};
use super::{DEFAULT_ADMIN, DEFAULT_GRPC, DEFAULT_HTTP, NamedSli, RawConfig, RawLatency, RawSli};
use std::collections::{BTreeMap, BTreeSet};
use std::net::SocketAddr;
use trike_engine::canary::CanarySpec;
use trike_engine::facts::StaleRule;
use trike_engine::policy::Policy;
use trike_engine::slo::{BurnTier, DEFAULT_MIN_COVERAGE, DEFAULT_MIN_EVENTS, Slo, SloSli};
use trike_engine::{EngineConfig, Span};
use trike_ingest::decode::DecodeConfig;
use trike_ingest::kafka::KafkaSourceConfig;
use trike_ingest::{Encoding, Limits};
use trike_sinks::SinkConfig;

/// Largest number of extra series dimensions.
pub const MAX_DIMENSIONS: usize = 8;

/// A validated configuration: everything needed to build the process.
#[derive(Clone, Debug)]
pub struct Config {
    /// OTLP/gRPC address.
    pub grpc_addr: SocketAddr,
    /// OTLP/HTTP address.
    pub http_addr: SocketAddr,
    /// Admin API address.
    pub admin_addr: SocketAddr,
    /// Receiver body limits.
    pub limits: Limits,
    /// Engine queue bound, in observations.
    pub queue_observations: usize,
    /// Decoding rules.
    pub decode: DecodeConfig,
    /// Engine settings.
    pub engine: EngineConfig,
    /// SLOs.
    pub slos: Vec<Slo>,
    /// Windows exported as SLI gauges.
    pub metrics_windows: Vec<Span>,
    /// Services exported as SLI gauges, at most.
    pub metrics_max_services: usize,
    /// Kafka bootstrap servers, when configured.
    pub kafka_brokers: Option<String>,
    /// `kafka.client`: librdkafka properties for every Kafka client (secrets print as `***`).
    pub kafka_client: trike_sinks::kafka_client::ClientProps,
    /// Control topic.
    pub control_topic: String,
    /// Topic of deploy events that start rollouts.
    pub deploys_topic: String,
    /// Deploy events older than this are skipped.
    pub deploys_max_age: Span,
    /// Their consumer group.
    pub deploys_group: String,
    /// Sections read and kept for later stages (named in a start-up notice).
    pub deferred_sections: Vec<&'static str>,
    /// Canary comparisons.
    pub canaries: Vec<CanarySpec>,
    /// Policy rules, and the revision of the whole rule set (see [`super::revision`]).
    pub policy: Policy,
    /// The canonical text of the rule set (SLOs, canaries, stale rule, policy rules) whose
    /// revision `policy.revision` is.
    pub rule_set: String,
    /// When telemetry counts as stale.
    pub stale: StaleRule,
    /// The anomaly watch's settings.
    pub anomaly: trike_runtime::hooks::decide::WatchSettings,
    /// Services' capacity limits.
    pub capacity: Vec<trike_engine::forecast::CapacityLimit>,
    /// Services' prices and daily budgets.
    pub costs: Vec<trike_engine::cost::CostSpec>,
    /// Next hops every accepted OTLP request is also sent to.
    pub forward: Vec<crate::forward::Target>,
    /// Where control events go.
    pub sinks: Vec<SinkConfig>,
    /// Instance name for control events' source.
    pub instance: String,
    /// The Kafka source, when configured.
    pub kafka_ingest: Option<KafkaSourceConfig>,
    /// Partitions of the control topic when created.
    pub control_partitions: i32,
    /// Replication factor of the control topic when created.
    pub control_replication: i32,
    /// Environment variable holding the signing key.
    pub signing_key_env: String,
    /// A signing key given in the file.
    pub signing_key: Option<trike_sinks::Secret>,
    /// The signing key's id (`trikekeyid`).
    pub signing_key_id: Option<String>,
    /// Further keys actuators accept, by id.
    pub verify_keys: Vec<(String, trike_sinks::Secret)>,
    /// The actuator's settings.
    pub actuator: trike_actuate::config::Validated,
    /// Checkpoint directory (none: state in memory only).
    pub state_dir: Option<std::path::PathBuf>,
    /// Checkpoint interval.
    pub checkpoint_every: Span,
    /// The archive, when configured.
    pub archive: Option<trike_sql::archive::ArchiveConfig>,
    /// Share of raw requests archived (0: none).
    pub archive_sample_observations: f64,
    /// Limits of SQL queries.
    pub query: trike_sql::query::QueryConfig,
    /// Bearer tokens.
    pub auth: AuthConfig,
    /// `limits.memory_limit` in bytes.
    pub memory_limit: u64,
    /// TLS for the receivers and the admin API (checked: the files load).
    pub tls: Option<trike_ingest::tls::TlsFiles>,
    /// `--role` and `fleet:`.
    pub fleet: super::fleet::FleetConfig,
    /// The file the config was loaded from and the overrides applied, for a reload (None
    /// when it came from no file).
    pub source: Option<(std::path::PathBuf, Overrides)>,
    /// Maintenance windows.
    pub maintenance: Vec<trike_runtime::silences::Silence>,
    /// Where a trace id links to (`{trace_id}` replaced).
    pub trace_url_template: Option<String>,
}

/// Values from flags and `TRIKE_*` variables, which win over the file.
#[derive(Clone, Debug, Default)]
pub struct Overrides {
    /// `--otlp-grpc-addr`.
    pub otlp_grpc_addr: Option<String>,
    /// `--otlp-http-addr`.
    pub otlp_http_addr: Option<String>,
    /// `--admin-addr`.
    pub admin_addr: Option<String>,
    /// `--kafka-brokers`.
    pub kafka_brokers: Option<String>,
    /// `--control-topic`.
    pub control_topic: Option<String>,
    /// `--role` (default `all`).
    pub role: Option<super::fleet::Role>,
}

fn addr(problems: &mut Vec<String>, field: &str, value: &str) -> SocketAddr {
    value.parse().unwrap_or_else(|_| {
        problems.push(format!(
            "{field}: {value:?} is not a listen address: write host:port, like 127.0.0.1:4317"
        ));
        SocketAddr::from(([127, 0, 0, 1], 0))
    })
}

/// Tiers as written: each needs a name, a long and a short window, a severity, and a factor
/// or a budget share (`factor = budget_share × period ÷ long`); `disabled: true` drops it.
fn tiers(p: &mut Vec<String>, f: &str, list: Vec<super::RawTier>, period: Span) -> Vec<BurnTier> {
    let mut out = Vec::new();
    for (i, t) in list.into_iter().enumerate() {
        let f = format!("{f}.tiers[{i}]");
        if t.disabled {
            continue;
        }
        if t.short >= t.long {
            p.push(format!(
                "{f}.short: {} must be shorter than long ({})",
                t.short, t.long
            ));
        }
        if t.long.secs() > 30 * 86_400 {
            p.push(format!("{f}.long: {} is longer than 30d", t.long));
        }
        let factor = match (t.factor, t.budget_share) {
            (Some(x), None) => x,
            (None, Some(share)) => share * period.secs() as f64 / t.long.secs() as f64,
            _ => {
                p.push(format!("{f}: give exactly one of factor or budget_share"));
                1.0
            }
        };
        if !(factor.is_finite() && factor > 0.0) {
            p.push(format!("{f}.factor: {factor} is not a positive number"));
        }
        let min_coverage = t.min_coverage.unwrap_or(DEFAULT_MIN_COVERAGE);
        if !(0.0..=1.0).contains(&min_coverage) {
            p.push(format!(
                "{f}.min_coverage: {min_coverage} is not in [0, 1]; write 0.9 to wait for 90 % of the long window"
            ));
        }
        out.push(BurnTier {
            name: t.name,
            factor,
            long: t.long,
            short: t.short,
            severity: t.severity,
            min_events: t.min_events.unwrap_or(DEFAULT_MIN_EVENTS),
            min_coverage,
        });
    }
    if out.is_empty() {
        p.push(format!(
            "{f}.tiers: every tier is disabled; remove the SLO or keep one tier"
        ));
    }
    out
}

impl Config {
    /// What the decide hook reads: SLOs, canaries, the stale rule and the policy.
    pub fn decide_spec(&self) -> trike_runtime::hooks::decide::DecideSpec {
        trike_runtime::hooks::decide::DecideSpec {
            slos: self.slos.clone(),
            canaries: self.canaries.clone(),
            stale: self.stale,
            policy: self.policy.clone(),
            watch: self.anomaly,
            capacity: self.capacity.clone(),
            costs: self.costs.clone(),
        }
    }

    /// The control-event signing key: from the file (tests, demos) or the environment variable
    /// `signing_key_env` (production). Reads the environment, so it is not part of validation.
    pub fn resolve_signing_key(&self) -> Option<Vec<u8>> {
        self.signing_key
            .as_ref()
            .map(|k| k.expose().to_string())
            .or_else(|| {
                std::env::var(&self.signing_key_env)
                    .ok()
                    .filter(|k| !k.is_empty())
            })
            .map(String::into_bytes)
    }

    /// The key processors sign with, and its id.
    pub fn signing_key(&self) -> Option<trike_sinks::signing::SigningKey> {
        self.resolve_signing_key()
            .map(|k| trike_sinks::signing::SigningKey::new(self.signing_key_id.clone(), k))
    }

    /// The keys actuators accept: the signing key and `signing.verify_keys`.
    pub fn verify_keys(&self) -> trike_sinks::signing::VerifyKeys {
        let mut keys = trike_sinks::signing::VerifyKeys::default();
        if let Some(k) = self.resolve_signing_key() {
            keys = keys.with(self.signing_key_id.as_deref(), k);
        }
        for (id, k) in &self.verify_keys {
            keys = keys.with(Some(id), k.expose().as_bytes().to_vec());
        }
        keys
    }
}

fn default_instance() -> String {
    std::fs::read_to_string("/etc/hostname")
        .ok()
        .map(|h| h.trim().to_string())
        .filter(|h| !h.is_empty())
        .unwrap_or_else(|| "trike".into())
}

impl Config {
    /// Validates a parsed file plus overrides.
    pub fn validate(raw: RawConfig, o: &Overrides) -> Result<Config, Vec<String>> {
        let mut p = Vec::new();
        let grpc = o
            .otlp_grpc_addr
            .clone()
            .or(raw.receivers.otlp_grpc)
            .unwrap_or_else(|| DEFAULT_GRPC.into());
        let http = o
            .otlp_http_addr
            .clone()
            .or(raw.receivers.otlp_http)
            .unwrap_or_else(|| DEFAULT_HTTP.into());
        let admin = o
            .admin_addr
            .clone()
            .or(raw.admin)
            .unwrap_or_else(|| DEFAULT_ADMIN.into());
        let grpc_addr = addr(&mut p, "receivers.otlp_grpc", &grpc);
        let http_addr = addr(&mut p, "receivers.otlp_http", &http);
        let admin_addr = addr(&mut p, "admin", &admin);
        let distinct: BTreeSet<_> = [grpc_addr, http_addr, admin_addr]
            .into_iter()
            .filter(|a| a.port() != 0)
            .collect();
        let nonzero = [grpc_addr, http_addr, admin_addr]
            .iter()
            .filter(|a| a.port() != 0)
            .count();
        if distinct.len() != nonzero {
            p.push(format!("receivers.otlp_grpc, receivers.otlp_http, admin: {grpc}, {http}, {admin} must be different addresses"));
        }
        let mut limits = Limits::default();
        if let Some(n) = raw.receivers.max_request_bytes {
            limits.max_request_bytes = n;
        }
        if let Some(n) = raw.receivers.max_decompressed_bytes {
            limits.max_decompressed_bytes = n;
        }
        if limits.max_request_bytes < 1024 {
            p.push(format!(
                "receivers.max_request_bytes: {} is below the minimum of 1024",
                limits.max_request_bytes
            ));
        }
        if limits.max_decompressed_bytes < limits.max_request_bytes {
            p.push(format!(
                "receivers.max_decompressed_bytes: {} is smaller than max_request_bytes ({})",
                limits.max_decompressed_bytes, limits.max_request_bytes
            ));
        }
        if let Some(b) = raw.limits.inflight_bytes {
            limits.inflight_bytes = b.as_usize();
        }
        if limits.inflight_bytes < limits.max_request_bytes {
            p.push(format!(
                "limits.inflight_bytes: {} is smaller than receivers.max_request_bytes ({}): one request could never be admitted alongside another",
                super::bytes::ByteSize(limits.inflight_bytes as u64),
                limits.max_request_bytes
            ));
        }
        validate_limits(&raw.limits, &mut limits, &mut p);
        let queue_observations = raw.receivers.queue_observations.unwrap_or(1_000_000);
        if queue_observations == 0 {
            p.push("receivers.queue_observations: must be at least 1".into());
        }

        let mut decode = DecodeConfig::default();
        if let Some(n) = raw.limits.max_attributes {
            if n == 0 {
                p.push("limits.max_attributes: must be at least 1 (service.name is one)".into());
            }
            decode.attrs.max_attributes = n;
        }
        if let Some(b) = raw.limits.max_attribute_bytes {
            if b.0 < 64 {
                p.push(format!(
                    "limits.max_attribute_bytes: {b} is below the minimum of 64B"
                ));
            }
            decode.attrs.max_attribute_bytes = b.as_usize();
        }
        if raw.series.dimensions.len() > MAX_DIMENSIONS {
            p.push(format!(
                "series.dimensions: {} given, at most {MAX_DIMENSIONS} are supported",
                raw.series.dimensions.len()
            ));
        }
        for (i, d) in raw.series.dimensions.iter().enumerate() {
            if d.trim().is_empty() {
                p.push(format!(
                    "series.dimensions[{i}]: an attribute name must not be empty"
                ));
            }
            if ["service.name", "http.route", "rpc.method"].contains(&d.as_str()) {
                p.push(format!(
                    "series.dimensions[{i}]: {d:?} is already part of every series key"
                ));
            }
        }
        decode.dimensions = raw.series.dimensions;
        if let Some(v) = raw.series.version_attribute {
            decode.version_attribute = v;
        }
        decode.logs_as_bad_events = raw.logs.errors_as == super::LogErrors::BadEvents;
        if let Some(k) = raw.decode.entry_span_kinds {
            if k.is_empty() {
                p.push("decode.entry_span_kinds: at least one span kind is needed".into());
            }
            decode.entry_span_kinds = k;
        }
        if let Some(c) = raw.decode.bad_grpc_codes {
            for (i, code) in c.iter().enumerate() {
                if !(0..=16).contains(code) {
                    p.push(format!(
                        "decode.bad_grpc_codes[{i}]: {code} is not a gRPC status code (0-16)"
                    ));
                }
            }
            decode.bad_grpc_codes = c;
        }
        if let Some(m) = raw.decode.duration_metrics {
            decode.duration_metrics = m;
        }
        if let Some(m) = raw.decode.request_counters {
            decode.request_counters = m;
        }
        decode.scrub.collapse_ids = raw.scrub.collapse_ids;
        for (i, r) in raw.scrub.rules.iter().enumerate() {
            match regex::Regex::new(&r.pattern) {
                Ok(pattern) => decode.scrub.rules.push(trike_ingest::decode::scrub::Rule {
                    pattern,
                    replacement: r.replacement.clone(),
                }),
                Err(e) => p.push(format!("scrub.rules[{i}].pattern: {e}")),
            }
        }

        let mut slos = Vec::new();
        let mut names = BTreeSet::new();
        let mut thresholds: BTreeMap<String, Vec<f64>> = BTreeMap::new();
        for (i, s) in raw.slos.into_iter().enumerate() {
            let f = format!("slos[{i}]");
            if s.name.trim().is_empty() {
                p.push(format!("{f}.name: must not be empty"));
            } else if !names.insert(s.name.clone()) {
                p.push(format!("{f}.name: {:?} is used by another SLO", s.name));
            }
            if s.service.trim().is_empty() {
                p.push(format!("{f}.service: must not be empty"));
            }
            if !(s.objective > 0.0 && s.objective < 1.0) {
                p.push(format!(
                    "{f}.objective: {} is not in (0, 1); write 0.999 for 99.9 %",
                    s.objective
                ));
            }
            let period = s.period.unwrap_or(Span::days(30));
            if period.secs() > 30 * 86_400 || period.secs() < 3600 {
                p.push(format!("{f}.period: {period} is not between 1h and 30d"));
            }
            let sli = match s.sli {
                RawSli::Named(NamedSli::Availability) => SloSli::Availability,
                RawSli::Latency {
                    latency: RawLatency { threshold_ms },
                } => {
                    if !(threshold_ms.is_finite() && threshold_ms > 0.0) {
                        p.push(format!(
                            "{f}.sli.latency.threshold_ms: {threshold_ms} is not a positive number"
                        ));
                    }
                    let list = thresholds.entry(s.service.clone()).or_default();
                    if !list.contains(&threshold_ms) {
                        list.push(threshold_ms);
                    }
                    SloSli::Latency { threshold_ms }
                }
            };
            let tiers = match s.tiers {
                None => BurnTier::defaults(period),
                Some(list) => tiers(&mut p, &f, list, period),
            };
            for (name, value) in &s.selector {
                if name != "operation" && name != "version" && !decode.dimensions.contains(name) {
                    p.push(format!(
                        "{f}.selector.{name}: not a series dimension: write operation, version or one of series.dimensions ({})",
                        decode.dimensions.join(", ")
                    ));
                }
                if value.is_empty() {
                    p.push(format!("{f}.selector.{name}: give a value"));
                }
            }
            slos.push(Slo {
                name: s.name,
                service: s.service,
                objective: s.objective,
                period,
                sli,
                tiers,
                selector: s.selector,
            });
        }

        let mut engine = EngineConfig {
            latency_thresholds_per_service: thresholds,
            ..Default::default()
        };
        if let Some(n) = raw.series.max_series_per_service {
            engine.max_series_per_service = n;
        }
        if let Some(n) = raw.series.max_services {
            engine.max_services = n;
        }
        if let Some(n) = raw.series.max_series {
            if n == 0 {
                p.push("series.max_series: must be at least 1".into());
            }
            engine.max_series = n;
        }
        if let Some(idle) = raw.engine.idle_series_after {
            if idle.secs() < 300 {
                p.push(format!(
                    "engine.idle_series_after: {idle} is shorter than 5m (a series would fold between two requests of a quiet route)"
                ));
            }
            engine.idle_series_after = Some(idle);
        }
        if let Some(l) = raw.engine.allowed_lateness {
            if l.secs() > 300 {
                p.push(format!(
                    "engine.allowed_lateness: {l} is longer than 5m, the history of the 10-second counters and of the series' latency digests (later data would miss the windows that read them)"
                ));
            }
            engine.allowed_lateness = l;
        }
        if let Some(s) = raw.engine.signal_source {
            engine.signal_source = s;
        }
        engine.signal_source_per_service = raw.engine.signal_source_per_service;
        let wants_logs = std::iter::once(&engine.signal_source)
            .chain(engine.signal_source_per_service.values())
            .any(|s| *s == trike_engine::SignalSource::Logs);
        if wants_logs && !decode.logs_as_bad_events {
            p.push(
                "engine.signal_source: logs needs logs.errors_as: bad_events (else log records feed no SLI)".into(),
            );
        }
        if let Some(c) = raw.engine.digest_compression {
            engine.digest_compression = c;
        }
        // The archive's per-second rows carry each series' 1 s digests.
        engine.keep_second_digests = raw.archive.is_some();
        engine.graph = raw.graph;
        decode.calls = raw.graph.enabled;
        if let Some(d) = raw.regions.dimension.clone() {
            engine.region_dimension = d;
        }
        for problem in engine.problems("engine") {
            // Map engine field names back to where users write them.
            p.push(
                problem
                    .replace(
                        "engine.max_series_per_service",
                        "series.max_series_per_service",
                    )
                    .replace("engine.graph", "graph")
                    .replace(
                        "engine.latency_thresholds_per_service.",
                        "slos (latency thresholds of service ",
                    ),
            );
        }
        let metrics_windows = raw
            .engine
            .metrics_windows
            .unwrap_or_else(|| vec![Span::minutes(1), Span::minutes(5), Span::hours(1)]);
        for (i, w) in metrics_windows.iter().enumerate() {
            if w.secs() > 30 * 86_400 {
                p.push(format!(
                    "engine.metrics_windows[{i}]: {w} is longer than 30d"
                ));
            }
        }
        let kafka = raw.kafka.unwrap_or_default();
        let deferred = Vec::new();
        let actuator = raw
            .actuator
            .validate("actuator")
            .unwrap_or_else(|problems| {
                p.extend(problems);
                trike_actuate::config::ActuatorConfig::default()
                    .validate("actuator")
                    .expect("the defaults are valid")
            });
        p.extend(kafka.client.problems());
        let kafka_ingest = match kafka.ingest.clone() {
            None => None,
            Some(ki) => {
                let encoding = match ki.encoding.as_deref().unwrap_or("otlp_proto") {
                    "otlp_proto" => Encoding::Protobuf,
                    "otlp_json" => Encoding::Json,
                    other => {
                        p.push(format!(
                            "kafka.ingest.encoding: {other:?} is not otlp_proto or otlp_json"
                        ));
                        Encoding::Protobuf
                    }
                };
                let topics = ki.topics.unwrap_or_else(|| {
                    ["otlp_spans", "otlp_metrics", "otlp_logs"]
                        .map(String::from)
                        .to_vec()
                });
                for (i, t) in topics.iter().enumerate() {
                    if trike_ingest::kafka::signal_of(t).is_none() {
                        p.push(format!("kafka.ingest.topics[{i}]: {t:?} must end in spans, traces, metrics or logs (that names its signal)"));
                    }
                }
                match o.kafka_brokers.clone().or(kafka.brokers.clone()) {
                    Some(brokers) => Some(KafkaSourceConfig {
                        brokers,
                        group_id: ki.group_id.unwrap_or_else(|| "trike".into()),
                        topics,
                        encoding,
                        dead_letter_topic: ki.dead_letter_topic.filter(|t| !t.is_empty()),
                        group_instance_id: ki.group_instance_id.filter(|t| !t.is_empty()),
                        client: kafka.client.clone(),
                    }),
                    None => {
                        p.push("kafka.ingest: needs kafka.brokers (or --kafka-brokers / TRIKE_KAFKA_BROKERS)".into());
                        None
                    }
                }
            }
        };
        let canaries = super::decisions::canaries(&mut p, raw.canary);
        let tier_names: BTreeSet<&str> = slos
            .iter()
            .flat_map(|s| s.tiers.iter().map(|t| t.name.as_str()))
            .collect();
        let rules = super::decisions::rules(&mut p, raw.policies, &tier_names);
        let stale = StaleRule {
            after: raw.stale.after.unwrap_or(StaleRule::default().after),
            max_lag: raw.stale.max_lag.unwrap_or(StaleRule::default().max_lag),
        };
        let anomaly = super::decisions::anomaly(&mut p, &raw.anomaly);
        let capacity = super::decisions::capacity(&mut p, &raw.capacity);
        for (i, c) in raw.cost.iter().enumerate() {
            if c.service.trim().is_empty() {
                p.push(format!("cost[{i}].service: give the service's name"));
            }
            for (field, price) in [
                ("per_request", c.per_request),
                ("per_cpu_second", c.per_cpu_second),
            ] {
                if !(price.is_finite() && price >= 0.0) {
                    p.push(format!("cost[{i}].{field}: {price} is not a price (≥ 0)"));
                }
            }
            if !(c.per_request > 0.0 || c.per_cpu_second > 0.0) {
                p.push(format!(
                    "cost[{i}]: give a price: per_request, per_cpu_second, or both"
                ));
            }
            if c.cpu_metric.is_some() && c.per_cpu_second <= 0.0 {
                p.push(format!(
                    "cost[{i}].cpu_metric: is read only with a per_cpu_second price"
                ));
            }
            if c.cpu_metric.as_deref().is_some_and(|m| m.trim().is_empty()) {
                p.push(format!(
                    "cost[{i}].cpu_metric: a metric name must not be empty"
                ));
            }
            if !(c.budget_per_day.is_finite() && c.budget_per_day > 0.0) {
                p.push(format!(
                    "cost[{i}].budget_per_day: {} is not a budget (> 0)",
                    c.budget_per_day
                ));
            }
        }
        decode.usage_metrics = usage_metrics(&capacity, &raw.cost);
        for m in &decode.usage_metrics {
            if decode.duration_metrics.contains(m) || decode.request_counters.contains(m) {
                p.push(format!(
                    "{m:?} is read as a request metric (decode.duration_metrics / request_counters) and cannot also be a usage metric (capacity[].metric, cost[].cpu_metric)"
                ));
            }
        }
        for (i, t) in raw.forward.iter().enumerate() {
            if let Err(e) = t.check() {
                p.push(format!("forward[{i}].{e}"));
            }
        }
        let sinks = raw.sinks.unwrap_or_else(|| vec![SinkConfig::Stdout]);
        let brokers = o.kafka_brokers.clone().or(kafka.brokers.clone());
        if let Some(i) = sinks.iter().position(|s| *s == SinkConfig::Kafka)
            && brokers.is_none()
        {
            p.push(format!("sinks[{i}]: type kafka needs kafka.brokers (or --kafka-brokers / TRIKE_KAFKA_BROKERS)"));
        }
        let fleet = super::fleet::validate(
            raw.fleet.clone(),
            o.role.unwrap_or_default(),
            brokers.is_some(),
            &mut p,
        );
        // A processor reads the gateways' partials, not OTLP (the gateways read that).
        let kafka_ingest = match (fleet.role, brokers.clone()) {
            (super::fleet::Role::Processor, Some(brokers)) => {
                let ki = kafka.ingest.clone().unwrap_or_default();
                Some(KafkaSourceConfig {
                    brokers,
                    group_id: fleet.group_id.clone(),
                    topics: vec![fleet.partials_topic.clone()],
                    encoding: Encoding::TrikePartials,
                    dead_letter_topic: ki.dead_letter_topic.filter(|t| !t.is_empty()),
                    group_instance_id: ki.group_instance_id.filter(|t| !t.is_empty()),
                    client: kafka.client.clone(),
                })
            }
            _ => kafka_ingest,
        };
        let control_partitions = kafka.control_partitions.unwrap_or(3);
        let control_replication = kafka.control_replication.unwrap_or(1);
        if control_partitions < 1 || control_replication < 1 {
            p.push(
                "kafka.control_partitions, kafka.control_replication: must be at least 1".into(),
            );
        }
        for (i, s) in sinks.iter().enumerate() {
            if let SinkConfig::File { path } = s
                && path.as_os_str().is_empty()
            {
                p.push(format!("sinks[{i}].path: must not be empty"));
            }
        }
        let instance = raw.instance.unwrap_or_else(default_instance);
        let trace_url_template = raw.trace_url_template.clone();
        if let Some(t) = &trace_url_template
            && !t.contains("{trace_id}")
        {
            p.push(format!(
                "trace_url_template: {t:?} has no {{trace_id}}: write where the id goes, e.g. http://jaeger:16686/trace/{{trace_id}}"
            ));
        }
        let checkpoint_every = raw.state.checkpoint_every.unwrap_or(Span(10));
        if checkpoint_every.secs() < 1 {
            p.push(format!(
                "state.checkpoint_every: {checkpoint_every} is under 1s"
            ));
        }
        if raw
            .state
            .dir
            .as_ref()
            .is_some_and(|d| d.as_os_str().is_empty())
        {
            p.push("state.dir: must not be empty".into());
        }
        let archive = raw.archive.as_ref().map(|a| {
            let mut c = trike_sql::archive::ArchiveConfig::new(a.dir.clone());
            if a.dir.as_os_str().is_empty() {
                p.push("archive.dir: must not be empty".into());
            }
            if let Some(f) = a.flush_every {
                if f.secs() < 1 {
                    p.push(format!("archive.flush_every: {f} is under 1s"));
                }
                c.flush_every = std::time::Duration::from_secs(f.secs());
            }
            if let Some(n) = a.max_file_rows {
                if n == 0 {
                    p.push("archive.max_file_rows: must be at least 1".into());
                }
                c.max_file_rows = n;
            }
            if let Some(r) = a.retention {
                if r.secs() < 3600 {
                    p.push(format!("archive.retention: {r} is under 1h"));
                }
                c.retention = std::time::Duration::from_secs(r.secs());
            }
            if let Some(b) = a.max_bytes {
                c.max_bytes = b;
            }
            if a.sample_observations.is_some_and(|x| !(0.0..=1.0).contains(&x)) {
                p.push(format!(
                    "archive.sample_observations: {} is not in [0, 1]; write 0.01 to keep 1 % of requests",
                    a.sample_observations.unwrap_or_default()
                ));
            }
            c
        });
        let archive_sample_observations = raw
            .archive
            .as_ref()
            .and_then(|a| a.sample_observations)
            .unwrap_or(0.0)
            .clamp(0.0, 1.0);
        let query = validate_query(&raw.query, &mut p);
        let auth = validate_auth(&raw.auth, &mut p);
        let tls = validate_tls(raw.tls.as_ref(), &mut p);
        if fleet.role != super::fleet::Role::All
            && p.is_empty()
            && let Err(e) = crate::admin::fleet::member_client(tls.as_ref(), &fleet)
        {
            p.push(format!("{e:#}"));
        }
        let memory_limit = validate_memory_limit(raw.limits.memory_limit, &mut p);
        let maintenance = super::decisions::maintenance(&mut p, raw.maintenance.clone());
        if !p.is_empty() {
            return Err(p);
        }
        let rule_set = super::revision::RuleSet {
            slos: &slos,
            canaries: &canaries,
            stale: &stale,
            policies: &rules,
        }
        .canonical();
        let revision = super::revision::revision_of(&rule_set);
        Ok(Config {
            grpc_addr,
            http_addr,
            admin_addr,
            limits,
            queue_observations,
            decode,
            engine,
            slos,
            metrics_windows,
            metrics_max_services: raw.engine.metrics_max_services.unwrap_or(500),
            kafka_brokers: o.kafka_brokers.clone().or(kafka.brokers),
            kafka_client: kafka.client,
            control_topic: o
                .control_topic
                .clone()
                .or(kafka.control_topic)
                .unwrap_or_else(|| "trike.control".into()),
            deploys_topic: kafka
                .deploys_topic
                .clone()
                .unwrap_or_else(|| "trike.deploys".into()),
            deploys_max_age: kafka.deploys_max_age.unwrap_or(Span::minutes(10)),
            deploys_group: kafka
                .deploys_group
                .clone()
                .unwrap_or_else(|| crate::deploys::GROUP.into()),
            deferred_sections: deferred,
            rule_set,
            canaries,
            policy: Policy { rules, revision },
            stale,
            anomaly,
            capacity,
            costs: raw.cost.clone(),
            forward: raw.forward.clone(),
            sinks,
            instance,
            control_partitions,
            control_replication,
            kafka_ingest,
            actuator,
            state_dir: raw.state.dir.clone(),
            checkpoint_every,
            archive,
            archive_sample_observations,
            query,
            auth,
            tls,
            memory_limit,
            fleet,
            source: None,
            maintenance,
            trace_url_template,
            signing_key_env: raw
                .signing
                .key_env
                .unwrap_or_else(|| "TRIKE_SIGNING_KEY".into()),
            signing_key: raw.signing.key.filter(|k| !k.is_empty()),
            signing_key_id: raw.signing.key_id.filter(|k| !k.is_empty()),
            verify_keys: raw.signing.verify_keys.into_iter().collect(),
        })
    }

    /// Loads and validates a YAML file (or the defaults when `path` is None).
    pub fn load(path: Option<&std::path::Path>, o: &Overrides) -> Result<Config, Vec<String>> {
        Self::load_with(path, o, &|name| std::env::var(name).ok())
    }

    /// Like [`Config::load`], with `${VAR}` replaced by `lookup(VAR)`.
    pub fn load_with(
        path: Option<&std::path::Path>,
        o: &Overrides,
        lookup: &dyn Fn(&str) -> Option<String>,
    ) -> Result<Config, Vec<String>> {
        let mut raw = match path {
            None => RawConfig::default(),
            Some(p) => {
                let text = std::fs::read_to_string(p)
                    .map_err(|e| vec![format!("config file {}: {e}", p.display())])?;
                RawConfig::from_yaml_with(&text, lookup).map_err(|e| vec![e])?
            }
        };
        if !raw.openslo.is_empty() {
            let base = path
                .and_then(|p| p.parent())
                .unwrap_or(std::path::Path::new("."));
            let extra = super::openslo::load(&raw.openslo, base)?;
            raw.slos.extend(extra);
        }
        let mut cfg = Config::validate(raw, o)?;
        cfg.source = path.map(|p| (p.to_path_buf(), o.clone()));
        Ok(cfg)
    }
}

/// The usage metrics the decoder reads: those with a capacity limit, and the CPU metrics that
/// are priced; sorted, each once.
fn usage_metrics(
    capacity: &[trike_engine::forecast::CapacityLimit],
    costs: &[trike_engine::cost::CostSpec],
) -> Vec<String> {
    let named = capacity
        .iter()
        .map(|c| c.metric.as_str())
        .filter(|m| *m != trike_engine::forecast::REQUEST_RATE)
        .chain(costs.iter().filter_map(|c| c.cpu_metric()));
    let set: BTreeSet<&str> = named.collect();
    set.into_iter().map(String::from).collect()
}
