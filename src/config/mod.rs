//! The configuration file (YAML, DESIGN §5): parsed with serde, then validated purely into a
//! [`Config`] that reports every problem at once, naming the field.

mod boundaries;
pub mod bytes;
mod decisions;
pub mod env;
pub mod fleet;
mod openslo;
pub mod revision;
pub mod validate;

pub use validate::Config;

use serde::Deserialize;
use std::collections::BTreeMap;
use trike_engine::{SignalSource, Span};
use trike_ingest::decode::SpanKind;

/// The file as written.
#[derive(Clone, Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RawConfig {
    /// OTLP receivers.
    pub receivers: RawReceivers,
    /// Admin API listen address.
    pub admin: Option<String>,
    /// How series are keyed.
    pub series: RawSeries,
    /// Windowing and source selection.
    pub engine: RawEngine,
    /// Which spans and metrics become observations.
    pub decode: RawDecode,
    /// Kafka: brokers, the control topic and the OTLP source.
    pub kafka: Option<RawKafka>,
    /// Service level objectives.
    pub slos: Vec<RawSlo>,
    /// OpenSLO files or directories (`kind: SLO` documents), relative to the config file.
    pub openslo: Vec<std::path::PathBuf>,
    /// Canary comparisons.
    pub canary: Vec<RawCanary>,
    /// Maintenance windows: decisions they match are recorded, not sent.
    pub maintenance: Vec<RawMaintenance>,
    /// Policy rules.
    pub policies: Vec<RawRule>,
    /// When telemetry counts as stale.
    pub stale: RawStale,
    /// How the anomaly watch samples and scores every service's SLIs.
    pub anomaly: RawAnomaly,
    /// Services' capacity limits, for the forecast's `days_to_limit`.
    pub capacity: Vec<RawCapacity>,
    /// Services' prices and daily budgets, for the spend burn.
    pub cost: Vec<trike_engine::cost::CostSpec>,
    /// The dimension region health reads (default `cloud.region`).
    pub regions: RawRegions,
    /// How the service graph pairs calls and names root causes.
    pub graph: trike_engine::graph::GraphSettings,
    /// Whether log records count toward SLIs.
    pub logs: RawLogs,
    /// Next hops every accepted OTLP request is also sent to.
    pub forward: Vec<crate::forward::Target>,
    /// Where control events go (default: stdout).
    pub sinks: Option<Vec<trike_sinks::SinkConfig>>,
    /// This instance's name, in control events' `source` (`trike://<instance>`; default: host name).
    pub instance: Option<String>,
    /// A link to a trace in the tracing backend, with `{trace_id}` where the id goes (e.g.
    /// `http://jaeger:16686/trace/{trace_id}`): the service page links failing requests there.
    pub trace_url_template: Option<String>,
    /// Control-event signing (HMAC-SHA256, extension `trikesignature`).
    pub signing: RawSigning,
    /// `trike actuate`: executors per action and service.
    pub actuator: trike_actuate::config::ActuatorConfig,
    /// Checkpoints of the processor's state.
    pub state: RawState,
    /// The Parquet archive of SLI seconds and decisions (`trike query`, `trike backtest`).
    pub archive: Option<RawArchive>,
    /// Limits on SQL queries (`POST /api/v1/query`).
    pub query: RawQuery,
    /// Bearer tokens per scope.
    pub auth: RawAuth,
    /// What is scrubbed from operation names and dimension values before they become keys.
    pub scrub: RawScrub,
    /// Overload limits.
    pub limits: RawLimits,
    /// TLS for the OTLP receivers and the admin API.
    pub tls: Option<RawTls>,
    /// `fleet:` (DESIGN §6).
    pub fleet: fleet::RawFleet,
}

/// `tls:` (DESIGN §8): PEM files, paths relative to the working directory (as the OTel
/// Collector's). With `client_ca_file` every OTLP client must present a certificate signed by
/// it (mTLS); the admin API requires one too, except on `/healthz` and `/readyz` (probes).
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawTls {
    /// The server certificate chain, leaf first.
    pub cert_file: std::path::PathBuf,
    /// Its private key.
    pub key_file: std::path::PathBuf,
    /// CA certificates that sign client certificates (mTLS).
    #[serde(default)]
    pub client_ca_file: Option<std::path::PathBuf>,
}

/// `limits:` (DESIGN §7).
#[derive(Clone, Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RawLimits {
    /// Request bytes being read or decoded at once, across all receivers (default 64MiB);
    /// checked before a body is read. Beyond it: 429 / RESOURCE_EXHAUSTED with Retry-After.
    pub inflight_bytes: Option<bytes::ByteSize>,
    /// The process's resident memory stays under it: above 80 % new data is refused (429 /
    /// RESOURCE_EXHAUSTED), above it new series are shed into overflow series (default 80 % of
    /// the container's memory, or of the machine's).
    pub memory_limit: Option<bytes::ByteSize>,
    /// Attributes read per resource, span or data point (default 128); the rest are not read
    /// and are counted.
    pub max_attributes: Option<usize>,
    /// Longest attribute read, key and value together (default 4KiB); longer ones are not
    /// read and are counted.
    pub max_attribute_bytes: Option<bytes::ByteSize>,
    /// Connections open at once per listener (default 4096); beyond it new connections wait
    /// in the kernel's backlog until one closes.
    pub max_connections: Option<usize>,
    /// Concurrent gRPC streams per connection (default 100).
    pub max_grpc_streams: Option<u32>,
    /// Longest time for a client to send its request headers, or finish a TLS handshake
    /// (default 10s; slowloris).
    pub header_read_timeout: Option<Span>,
    /// Longest time for a client to send a request body (default 30s): 408 after it.
    pub body_read_timeout: Option<Span>,
}

/// `scrub:`: telemetry hygiene (PII and cardinality).
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RawScrub {
    /// Collapse ids in operation names: digits, UUIDs, long hex, e-mail addresses (default true).
    pub collapse_ids: bool,
    /// Regex rules, applied in order to operation names and dimension values.
    pub rules: Vec<RawScrubRule>,
}

impl Default for RawScrub {
    fn default() -> Self {
        Self {
            collapse_ids: true,
            rules: Vec::new(),
        }
    }
}

/// One `scrub.rules` entry.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawScrubRule {
    /// A regular expression (Rust `regex` syntax).
    pub pattern: String,
    /// What each match becomes (`$1`, `${name}` refer to groups).
    pub replacement: String,
}

/// `auth:`: bearer tokens (DESIGN §8). Once a list is set, calls of its scope without one of
/// its tokens are refused. Write `${VAR}` to keep a token out of the file.
#[derive(Clone, Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RawAuth {
    /// OTLP over gRPC and HTTP.
    pub ingest_tokens: Vec<trike_sinks::Secret>,
    /// Every GET under the admin API (`/api`, `/metrics`, the dashboard) and `POST /api/v1/query`.
    pub admin_read_tokens: Vec<trike_sinks::Secret>,
    /// Every state-changing admin call; implies read.
    pub admin_write_tokens: Vec<trike_sinks::Secret>,
}

/// `query:`: what one SQL query may take, and how many run at once.
#[derive(Clone, Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RawQuery {
    /// Memory for one query's sorts, joins and aggregates (default 256MiB); over it the query
    /// fails (400), nothing spills to disk.
    pub memory_limit: Option<bytes::ByteSize>,
    /// Wall time of one query (default 30s; 504 past it).
    pub timeout: Option<Span>,
    /// Queries running at once (default 2); more are refused with 429 and `Retry-After`.
    pub max_concurrent: Option<usize>,
    /// Rows returned at most (default 10000; `?limit=` may ask for fewer).
    pub max_rows: Option<usize>,
}

/// `archive:`.
#[derive(Clone, Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawArchive {
    /// Directory of the archive (required).
    pub dir: std::path::PathBuf,
    /// Buffered rows are written at least this often (default 60s).
    #[serde(default)]
    pub flush_every: Option<Span>,
    /// Rows per file, at most (default 500000).
    #[serde(default)]
    pub max_file_rows: Option<usize>,
    /// Files are removed after this long (default 7d).
    #[serde(default)]
    pub retention: Option<Span>,
    /// Total size kept, in bytes (default 10 GiB; the oldest files go first).
    #[serde(default)]
    pub max_bytes: Option<u64>,
    /// Share of raw requests (from spans) kept in the `observations` table, 0 to 1 (default 0:
    /// none). Sampling is systematic: every 1/share-th request.
    #[serde(default)]
    pub sample_observations: Option<f64>,
}

/// `signing:`. The key comes from the environment variable `key_env` (default
/// `TRIKE_SIGNING_KEY`); `key` in the file is for tests and demos only.
#[derive(Clone, Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RawSigning {
    /// Environment variable holding the key.
    pub key_env: Option<String>,
    /// The key itself (avoid in production: config files leak; `${VAR}` keeps it out).
    pub key: Option<trike_sinks::Secret>,
    /// The key's id, sent as `trikekeyid` so actuators know which key to check.
    pub key_id: Option<String>,
    /// More keys actuators accept, by id (rotation: list the new key here, move the
    /// processors to it, then drop the old one).
    pub verify_keys: BTreeMap<String, trike_sinks::Secret>,
}

/// One canary comparison as written.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawCanary {
    /// Service.
    pub service: String,
    /// Baseline version (none with `detect`).
    #[serde(default)]
    pub baseline: Option<String>,
    /// Canary version (none with `detect`).
    #[serde(default)]
    pub canary: Option<String>,
    /// Detect canaries from telemetry: every version beside the one carrying the most traffic
    /// over the window is judged against it.
    #[serde(default)]
    pub detect: bool,
    /// Time range compared, ending now (default 10m).
    #[serde(default)]
    pub window: Option<Span>,
    /// Requests per arm before a verdict (default 500).
    #[serde(default)]
    pub min_requests: Option<u64>,
    /// Error-ratio increase tolerated, absolute (default 0.0005).
    #[serde(default)]
    pub error_tolerance: Option<f64>,
    /// Median latency increase tolerated, relative (default 0.05).
    #[serde(default)]
    pub latency_tolerance: Option<f64>,
    /// Metrics compared: `error_ratio`, `latency` (default both).
    #[serde(default)]
    pub metrics: Option<Vec<String>>,
    /// `exact` (default) or `sequential` (anytime-valid: rules on it need no `for:`).
    #[serde(default)]
    pub judge: Option<trike_engine::canary::Judge>,
}

/// One maintenance window as written.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawMaintenance {
    /// Unique name (the silence id is `maintenance:<name>`).
    pub name: String,
    /// Alertmanager matchers on service, version, action, rule or severity.
    pub matchers: Vec<trike_runtime::silences::Matcher>,
    /// Start (RFC 3339).
    pub start: String,
    /// End (RFC 3339).
    pub end: String,
    /// Why.
    #[serde(default)]
    pub comment: String,
}

/// One policy rule as written.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawRule {
    /// Unique name.
    pub name: String,
    /// Condition: `burn_rate.page`, `burn_rate.<tier>`, `canary.fail`, `stale`, `budget < 0.2`.
    pub when: String,
    /// `rollback`, `set_weight`, `throttle`, `page`, `ticket` or `freeze_deploys`.
    pub action: trike_engine::policy::Action,
    /// Hysteresis (default 0s).
    #[serde(default, rename = "for")]
    pub for_: Option<Span>,
    /// Cool-down (default 10m).
    #[serde(default)]
    pub cooldown: Option<Span>,
    /// Actions per window, at most (default 10).
    #[serde(default)]
    pub max_actions: Option<u32>,
    /// Window of the cap (default 1h).
    #[serde(default)]
    pub max_actions_window: Option<Span>,
    /// `page` or `ticket` (default: page for rollback and page, ticket otherwise).
    #[serde(default)]
    pub severity: Option<trike_engine::slo::Severity>,
    /// Record and emit marked `dry_run` (default false).
    #[serde(default)]
    pub dry_run: bool,
    /// Parameters, e.g. `{weight: 0}`.
    #[serde(default)]
    pub params: std::collections::BTreeMap<String, f64>,
    /// Only these services (default: all).
    #[serde(default)]
    pub services: Vec<String>,
    /// Act even on stale telemetry (default false).
    #[serde(default)]
    pub act_on_stale: bool,
    /// Which of the service's traffic its decisions act on (dimension → value, e.g.
    /// `traffic.class: batch`).
    #[serde(default)]
    pub selector: std::collections::BTreeMap<String, String>,
}

/// `stale:`.
#[derive(Clone, Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RawStale {
    /// No data for this long (default 1m).
    pub after: Option<Span>,
    /// Newest event time lagging its arrival by more than this (default 1m).
    pub max_lag: Option<Span>,
}

/// One `capacity:` entry.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawCapacity {
    /// The service.
    pub service: String,
    /// What is limited: `request_rate` (the default), or a usage metric the service's
    /// resources export (a monotonic sum such as `process.cpu.time`, read per second; a gauge
    /// or non-monotonic sum such as `process.memory.usage`, read as its value).
    #[serde(default)]
    pub metric: Option<String>,
    /// The limit, in the metric's unit (per second for a counter).
    pub limit: f64,
}

/// `anomaly:`.
#[derive(Clone, Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RawAnomaly {
    /// Score at which a sample is anomalous, in (0, 1]: tail probability 10^(−5 × threshold)
    /// among the stream's own history (default 0.6, about 0.001).
    pub threshold: Option<f64>,
    /// The seasonal cycle (`1d`, `1w`, …) or `none` (default `1d`).
    pub season: Option<String>,
    /// Bins per cycle (default 96).
    pub season_bins: Option<u32>,
    /// Time between samples of each SLI (default 10s).
    pub every: Option<Span>,
    /// Samples the long-run mean and variance remember (default 2000).
    pub memory: Option<u32>,
    /// Whether a request rate that spikes is judged for silences (default true).
    pub silence: Option<bool>,
}

/// `receivers:`.
#[derive(Clone, Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RawReceivers {
    /// OTLP/gRPC listen address (default `127.0.0.1:4317`).
    pub otlp_grpc: Option<String>,
    /// OTLP/HTTP listen address (default `127.0.0.1:4318`).
    pub otlp_http: Option<String>,
    /// Largest request body on the wire, bytes (default 8 MiB).
    pub max_request_bytes: Option<usize>,
    /// Largest body after decompression, bytes (default 32 MiB; also the gRPC message limit).
    pub max_decompressed_bytes: Option<usize>,
    /// Observations queued for the engine before receivers answer 429 / RESOURCE_EXHAUSTED
    /// (default 1 000 000).
    pub queue_observations: Option<usize>,
}

/// `series:`.
#[derive(Clone, Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RawSeries {
    /// Extra dimensions (attribute names), e.g. `deployment.environment`.
    pub dimensions: Vec<String>,
    /// Attribute that holds the version (default `service.version`).
    pub version_attribute: Option<String>,
    /// Series per service before new ones fold into the overflow series (default 10 000).
    pub max_series_per_service: Option<usize>,
    /// Services before new ones fold into one shared overflow series (default 10 000).
    pub max_services: Option<usize>,
    /// Series across all services before new ones fold into overflow series (default 200 000).
    pub max_series: Option<usize>,
}

/// `engine:`.
#[derive(Clone, Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RawEngine {
    /// Late data older than this is dropped (default `5m`).
    pub allowed_lateness: Option<Span>,
    /// Which signal counts for a service sending both (default `auto`: spans when present).
    pub signal_source: Option<SignalSource>,
    /// Per-service override of `signal_source`.
    pub signal_source_per_service: BTreeMap<String, SignalSource>,
    /// t-digest compression (default 200).
    pub digest_compression: Option<f32>,
    /// Windows exported as SLI gauges on `/metrics` (default `[1m, 5m, 1h]`).
    pub metrics_windows: Option<Vec<Span>>,
    /// Services exported as SLI gauges on `/metrics`, at most (default 500).
    pub metrics_max_services: Option<usize>,
    /// A series without new data this long folds into its service version's aggregate, its
    /// history kept there (default `15m`; at least `5m`).
    pub idle_series_after: Option<Span>,
}

/// `decode:`.
#[derive(Clone, Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RawDecode {
    /// Span kinds that are entry spans (default `[SERVER, CONSUMER]`).
    pub entry_span_kinds: Option<Vec<SpanKind>>,
    /// `rpc.grpc.status_code` values that count as bad.
    pub bad_grpc_codes: Option<Vec<i64>>,
    /// Histogram metric names read as request durations.
    pub duration_metrics: Option<Vec<String>>,
    /// Monotonic sum metric names read as request counts.
    pub request_counters: Option<Vec<String>>,
}

/// `regions:`.
#[derive(Clone, Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RawRegions {
    /// The series dimension holding the region (default `cloud.region`; must be one of
    /// `series.dimensions` for regions to be told apart).
    pub dimension: Option<String>,
}

/// `logs:`.
#[derive(Clone, Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RawLogs {
    /// `bad_events`: every log record is an event of its service's SLIs, bad at severity
    /// ERROR or above (a service's third signal, after spans and request metrics); `none`
    /// (default): log records are only counted.
    pub errors_as: LogErrors,
}

/// What log records are to the SLIs.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum LogErrors {
    /// Only counted.
    #[default]
    None,
    /// Events, bad at ERROR or above.
    BadEvents,
}

/// `kafka:`.
#[derive(Clone, Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RawKafka {
    /// Bootstrap servers.
    pub brokers: Option<String>,
    /// Control topic (default `trike.control`).
    pub control_topic: Option<String>,
    /// Partitions of the control topic when Trike creates it (default 3).
    pub control_partitions: Option<i32>,
    /// Replication factor of the control topic when Trike creates it (default 1).
    pub control_replication: Option<i32>,
    /// The Kafka source of OTLP records (off unless given).
    pub ingest: Option<RawKafkaIngest>,
    /// Topic of `io.trike.deploy.started` events that start rollouts (default
    /// `trike.deploys`; read by every process but a gateway when `brokers` is set).
    pub deploys_topic: Option<String>,
    /// Deploy events older than this are skipped (default 10m).
    pub deploys_max_age: Option<Span>,
    /// The consumer group of the processes that read deploy events (default `trike-deploys`).
    pub deploys_group: Option<String>,
    /// librdkafka properties for every Kafka client (TLS, SASL, compression, tuning); `${VAR}`
    /// for secrets.
    #[serde(default)]
    pub client: trike_sinks::kafka_client::ClientProps,
}

/// `kafka.ingest:`.
#[derive(Clone, Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RawKafkaIngest {
    /// Topics (default the Collector's: `otlp_spans`, `otlp_metrics`, `otlp_logs`).
    pub topics: Option<Vec<String>>,
    /// `otlp_proto` (default) or `otlp_json`.
    pub encoding: Option<String>,
    /// Consumer group (default `trike`).
    pub group_id: Option<String>,
    /// Topic that undecodable messages are copied to (default: none; they are counted,
    /// logged and skipped).
    pub dead_letter_topic: Option<String>,
    /// Static group membership id (`group.instance.id`): stable and unique per processor, so a
    /// restart takes its partitions back at once (default: none, dynamic membership).
    pub group_instance_id: Option<String>,
}

/// `state:`: where the processor checkpoints its state, so a restart (or a crash) resumes
/// where it was instead of from empty windows.
#[derive(Clone, Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RawState {
    /// Directory for checkpoints (default: none, state lives in memory only).
    pub dir: Option<std::path::PathBuf>,
    /// How often the engine state is checkpointed (default 10s). Kafka offsets are committed
    /// only up to the newest checkpoint.
    pub checkpoint_every: Option<Span>,
}

/// One SLO as written.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawSlo {
    /// Unique name.
    pub name: String,
    /// Service it applies to.
    pub service: String,
    /// Target good ratio, in (0, 1).
    pub objective: f64,
    /// Rolling period (default `30d`).
    #[serde(default)]
    pub period: Option<Span>,
    /// `availability`, or `{latency: {threshold_ms: N}}`.
    pub sli: RawSli,
    /// Alerting tiers (default: the SRE workbook's page 14.4× 1h/5m, page 6× 6h/30m,
    /// ticket 1× 3d/6h for 30 d, factors derived for other periods).
    #[serde(default)]
    pub tiers: Option<Vec<RawTier>>,
    /// Only part of the service: `operation`, `version` or a configured dimension → value.
    #[serde(default)]
    pub selector: BTreeMap<String, String>,
}

/// One alerting tier as written.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawTier {
    /// Name reported when firing.
    pub name: String,
    /// Burn-rate threshold.
    #[serde(default)]
    pub factor: Option<f64>,
    /// Or: share of the period's budget spent within the long window.
    #[serde(default)]
    pub budget_share: Option<f64>,
    /// Long window.
    pub long: Span,
    /// Short window.
    pub short: Span,
    /// `page` or `ticket`.
    pub severity: trike_engine::slo::Severity,
    /// Events needed in the long window (default 100).
    #[serde(default)]
    pub min_events: Option<u64>,
    /// Share of the long window that must be covered by history before the tier may fire,
    /// 0 to 1 (default 0.9).
    #[serde(default)]
    pub min_coverage: Option<f64>,
    /// Drop this tier.
    #[serde(default)]
    pub disabled: bool,
}

/// The SLI of an SLO: `availability`, or `{latency: {threshold_ms: N}}`.
#[derive(Clone, Debug, Deserialize)]
#[serde(
    untagged,
    expecting = "`availability` or `{latency: {threshold_ms: N}}`"
)]
pub enum RawSli {
    /// A named SLI.
    Named(NamedSli),
    /// Good = latency ≤ threshold.
    Latency {
        /// The threshold.
        latency: RawLatency,
    },
}

/// SLIs written as a bare name.
#[derive(Clone, Copy, Debug, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum NamedSli {
    /// Good = not bad.
    Availability,
}

/// `latency:` of an SLI.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawLatency {
    /// Threshold in milliseconds.
    pub threshold_ms: f64,
}

/// Default OTLP/gRPC address.
pub const DEFAULT_GRPC: &str = "127.0.0.1:4317";
/// Default OTLP/HTTP address.
pub const DEFAULT_HTTP: &str = "127.0.0.1:4318";
/// Default admin address.
pub const DEFAULT_ADMIN: &str = "127.0.0.1:8480";

impl RawConfig {
    /// Parses YAML text, replacing `${VAR}` from the environment ([`env`]).
    pub fn from_yaml(text: &str) -> Result<Self, String> {
        Self::from_yaml_with(text, &|name| std::env::var(name).ok())
    }

    /// Parses YAML text, replacing `${VAR}` with `lookup(VAR)`.
    pub fn from_yaml_with(
        text: &str,
        lookup: &dyn Fn(&str) -> Option<String>,
    ) -> Result<Self, String> {
        if text.trim().is_empty() {
            return Ok(Self::default());
        }
        // Parsed as text first, so a syntax error points at the line.
        let mut value: serde_yaml_ng::Value =
            serde_yaml_ng::from_str(text).map_err(|e| format!("config: {e}"))?;
        let unset = env::expand(&mut value, lookup);
        if !unset.is_empty() {
            return Err(format!("config: {}", unset.join("; ")));
        }
        serde_yaml_ng::from_value(value).map_err(|e| format!("config: {e}"))
    }
}

#[cfg(test)]
mod tests;
