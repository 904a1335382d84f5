//! Admin HTTP API on `127.0.0.1:8480`: health, readiness, Prometheus metrics, SLI JSON.

mod anomalies;
pub mod auth;
mod cost;
pub mod fleet;
mod forecast;
mod graph;
pub mod history;
mod integrations;
mod prom;
pub mod query;
pub mod revisions;
pub mod rollouts;
pub mod silences;
mod slis;

pub use trike_sinks::rfc3339;

use axum::Router;
use axum::extract::{Query, State};
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering::Relaxed};
use trike_engine::Span;
use trike_ingest::IngestMetrics;
use trike_runtime::worker::WorkerHandle;

/// What the admin handlers read.
#[derive(Debug)]
pub struct AdminState {
    /// The engine thread (read access to the engine behind it).
    pub worker: WorkerHandle,
    /// Ingestion counters.
    pub ingest: Arc<IngestMetrics>,
    /// Set once every listener is bound.
    pub ready: AtomicBool,
    /// Windows exported as SLI gauges.
    pub metrics_windows: Vec<Span>,
    /// Services exported as SLI gauges, at most.
    pub metrics_max_services: usize,
    /// The running rule set (replaced whole by a reload).
    pub rules: Arc<parking_lot::RwLock<Arc<RuleSet>>>,
    /// Recent SLIs per service version, for the dashboard's charts.
    pub history: history::History,
    /// The archive's directory and its writer's counters, when configured.
    pub archive: Option<(std::path::PathBuf, Arc<trike_sql::archive::ArchiveStats>)>,
    /// Recent control events.
    pub decisions: Arc<trike_runtime::hooks::outbox::DecisionStore>,
    /// The Kafka source's counters and per-partition progress, when it runs.
    pub kafka_source: parking_lot::Mutex<Option<KafkaSourceHandles>>,
    /// Checkpoint counters, when `state.dir` is set.
    pub checkpoints: Option<Arc<trike_runtime::hooks::checkpoint::CheckpointStats>>,
    /// Reloads the rule set (`POST /api/v1/reload`), when the config came from a file.
    pub reloader: Option<Arc<crate::reload::Reloader>>,
    /// SQL queries: limits, gate and threads.
    pub query: query::QueryService,
    /// Who may call what.
    pub auth: auth::AdminAuth,
    /// The receivers' in-flight byte budget.
    pub inflight: Arc<trike_ingest::pipeline::Inflight>,
    /// Connection counters per listener.
    pub listeners: Vec<(&'static str, Arc<trike_ingest::listen::ConnStats>)>,
    /// The memory limiter.
    pub memory: Option<Arc<trike_ingest::memory::MemoryLimiter>>,
    /// A gateway's publisher counters.
    pub gateway: Option<Arc<trike_runtime::fleet::gateway::GatewayStats>>,
    /// A processor's changelog counters.
    pub changelog: Option<Arc<trike_runtime::fleet::changelog::ChangelogStats>>,
    /// The fleet's directory, on gateways and processors.
    pub fleet: Option<Arc<fleet::FleetView>>,
    /// This process's role in the fleet.
    pub role: crate::config::fleet::Role,
    /// Where the service page links a failing request's trace (`{trace_id}` replaced).
    pub trace_url_template: Option<String>,
    /// Silences and maintenance windows (shared with the outbox).
    pub silences: Arc<trike_runtime::silences::Silences>,
    /// A fleet member's silence log (every member reads it), where silences are published.
    pub silence_log: Option<Arc<trike_runtime::fleet::silence_log::SilenceLog>>,
    /// A processor's root-cause explanations on the fleet's causes topic.
    pub cause_log: Option<Arc<trike_runtime::fleet::cause_log::CauseLog>>,
    /// The anomaly watch (none on a gateway).
    pub watch: Option<Arc<parking_lot::Mutex<trike_engine::anomaly::SliWatch>>>,
    /// The next hops requests are forwarded to (`forward:`).
    pub forward: Option<Arc<crate::forward::Forwarder>>,
    /// The request-rate forecasts (none on a gateway).
    pub forecasts: Option<Arc<parking_lot::Mutex<trike_engine::forecast::Forecasts>>>,
    /// Deploy events read from the deploys topic.
    pub deploys: Arc<crate::deploys::DeployStats>,
    /// The policy and its rollouts (none on a gateway). Locked after the engine.
    pub policy: Option<Arc<parking_lot::Mutex<trike_engine::policy::PolicyEngine>>>,
    /// Services' prices and daily budgets (`cost:`).
    pub costs: Vec<trike_engine::cost::CostSpec>,
}

/// The rule set the handlers read: SLOs, canaries, and the revision of the whole.
#[derive(Debug, Default)]
pub struct RuleSet {
    /// The SLOs evaluated by `/api/v1/slos` and `/api/v1/gate`.
    pub slos: Vec<trike_engine::slo::Slo>,
    /// The canary comparisons judged by `/api/v1/canaries`.
    pub canaries: Vec<trike_engine::canary::CanarySpec>,
    /// Its revision (stamped on its decisions).
    pub revision: String,
    /// Its canonical text.
    pub rule_set: String,
}

impl AdminState {
    /// The running rule set.
    pub fn rules(&self) -> Arc<RuleSet> {
        self.rules.read().clone()
    }
}

/// What `/metrics` reads of the Kafka source.
pub type KafkaSourceHandles = (
    Arc<trike_ingest::kafka::KafkaSourceStats>,
    Arc<trike_ingest::kafka::progress::Progress>,
);

/// The admin routes.
pub fn router(state: Arc<AdminState>) -> Router {
    Router::new()
        .route("/", get(dashboard))
        .route("/executive", get(|| page(EXECUTIVE_HTML)))
        .route("/oncall", get(|| page(ONCALL_HTML)))
        .route(
            "/assets/common.css",
            get(|| asset("text/css; charset=utf-8", COMMON_CSS)),
        )
        .route(
            "/assets/common.js",
            get(|| asset("text/javascript; charset=utf-8", COMMON_JS)),
        )
        .route("/api", get(index))
        .route("/healthz", get(healthz))
        .route("/readyz", get(readyz))
        .route("/metrics", get(metrics))
        .route("/api/v1/slis", get(slis_handler))
        .route("/api/v1/slos", get(slos_handler))
        .route("/api/v1/gate", get(gate_handler))
        .route("/api/v1/decisions", get(decisions_handler))
        .route("/api/v1/canaries", get(canaries_handler))
        .route("/api/v1/analysis", get(integrations::analysis_handler))
        .route(
            "/api/v1/flagger/rollout",
            axum::routing::post(integrations::flagger_rollout),
        )
        .route(
            "/api/v1/flagger/confirm-promotion",
            axum::routing::post(integrations::flagger_confirm_promotion),
        )
        .route(
            "/api/v1/rollouts",
            get(rollouts::list).post(rollouts::start),
        )
        .route("/api/v1/reload", axum::routing::post(reload_handler))
        .route(
            "/api/v1/silences",
            get(silences::list).post(silences::create),
        )
        .route(
            "/api/v1/silences/{id}",
            axum::routing::delete(silences::expire),
        )
        .route("/api/v1/exemplars", get(exemplars_handler))
        .route("/api/v1/anomalies", get(anomalies::handler))
        .route("/api/v1/forecast", get(forecast::handler))
        .route("/api/v1/graph", get(graph::handler))
        .route("/api/v1/regions", get(cost::regions))
        .route("/api/v1/cost", get(cost::cost))
        .route("/api/v1/usage", get(cost::usage))
        .route(
            "/api/v1/loop",
            get(|State(s): State<Arc<AdminState>>| async move {
                axum::Json(s.decisions.loop_stats.json())
            }),
        )
        .route("/api/v1/history", get(history_handler))
        .route("/api/v1/services", get(services_handler))
        .route("/api/v1/query", axum::routing::post(query::handler))
        .route("/api/v1/query/live", get(query::live_handler))
        .route("/api/v1/revisions", get(revisions::list))
        .route("/api/v1/revisions/{revision}", get(revisions::show))
        .route("/api/v1/fleet", get(fleet::members_handler))
        .layer(axum::middleware::from_fn_with_state(
            state.clone(),
            fleet::route,
        ))
        .layer(axum::middleware::from_fn_with_state(
            state.clone(),
            auth::require,
        ))
        .with_state(state)
}

/// The dashboard: one self-contained page (no external assets; the machine may be offline).
const DASHBOARD_HTML: &str = include_str!("dashboard.html");

/// The executive page: every SLO's budget and burn, sortable.
const EXECUTIVE_HTML: &str = include_str!("pages/executive.html");
/// The on-call page: what is firing, rollouts, canaries, silences, recent decisions.
const ONCALL_HTML: &str = include_str!("pages/oncall.html");
const COMMON_CSS: &str = include_str!("pages/common.css");
const COMMON_JS: &str = include_str!("pages/common.js");

async fn page(html: &'static str) -> impl IntoResponse {
    asset("text/html; charset=utf-8", html).await
}

async fn asset(kind: &'static str, body: &'static str) -> impl IntoResponse {
    (
        [
            (header::CONTENT_TYPE, kind),
            (header::CACHE_CONTROL, "no-cache"),
        ],
        body,
    )
}

async fn dashboard() -> impl IntoResponse {
    (
        [
            (header::CONTENT_TYPE, "text/html; charset=utf-8"),
            (header::CACHE_CONTROL, "no-cache"),
        ],
        DASHBOARD_HTML,
    )
}

async fn index() -> impl IntoResponse {
    "Trike admin API\n\n\
     GET /                                 dashboard: one service (HTML)\n\
     GET /executive                        dashboard: every SLO's budget and burn, sortable (HTML)\n\
     GET /oncall                           dashboard: firing, rollouts, canaries, silences, decisions (HTML)\n\
     GET /healthz                          liveness (503 once the engine thread has died)\n\
     GET /readyz                           readiness (receivers bound, engine running, control sinks delivering)\n\
     GET /metrics                          Prometheus text\n\
     GET /api/v1/slis?service=S&window=5m  SLIs per series (JSON)\n\
     GET /api/v1/slos                      SLO status: budget, burn rates, firing tiers (JSON)\n\
     GET /api/v1/gate?service=S            deploy strategy from the error budget left (JSON)\n\
     GET /api/v1/decisions?service=S&limit=N  recent control events, newest first (JSON)\n\
     GET /api/v1/canaries?service=S       canary verdicts with their statistics (JSON)\n\
     GET /api/v1/rollouts?service=S       progressive rollouts: step, verdict, evidence (JSON)\n\
     POST /api/v1/rollouts                start one (write scope): {\"service\",\"baseline\",\"canary\",\"steps\",\"step_min\",\"step_max\"}\n\
     GET /api/v1/analysis?service=S&canary=V[&baseline=B]  one canary's verdict, always 200 (Argo Rollouts web provider)\n\
     POST /api/v1/flagger/rollout          Flagger rollout hook: 200 unless the canary fails (409)\n\
     POST /api/v1/flagger/confirm-promotion  Flagger confirm-promotion hook: 200 only on pass\n\
     GET /api/v1/silences                 silences and maintenance windows with their state (JSON)\n\
     POST /api/v1/silences                silence decisions (write scope): {\"matchers\":[{\"name\",\"value\",\"isRegex\",\"isEqual\"}],\"startsAt\",\"endsAt\",\"createdBy\",\"comment\"}\n\
     DELETE /api/v1/silences/ID           expire a silence (write scope)\n\
     POST /api/v1/reload                  reload SLOs, canaries, policies (write scope; also SIGHUP and a changed config file)\n\
     GET /api/v1/exemplars?service=S      the newest failing requests' trace ids, linked by trace_url_template (JSON)\n\
     GET /api/v1/anomalies[?service=S]    the anomaly watch's latest scores per service and SLI (JSON)\n\
     GET /api/v1/forecast[?service=S[&metric=M]]  request-rate (or usage) forecast and days to the capacity limit (JSON)\n\
     GET /api/v1/graph[?window=5m]        the service graph: calls, errors and p99 per (caller, callee) (JSON)\n\
     GET /api/v1/regions[?service=S]      each service's regions' health over 5 minutes, worst first (JSON)\n\
     GET /api/v1/cost[?service=S]         spend per day and spend burn against the cost: budget (JSON)\n\
     GET /api/v1/usage[?service=S][&window=5m]  usage metrics (CPU seconds per second, memory…) (JSON)\n\
     GET /api/v1/loop                     the loop's own metrics: time to detect and mitigate, outcomes, false positives (JSON)\n\
     GET /api/v1/history?service=S        the last 10 minutes of SLIs per version, every 2 s (JSON)\n\
     GET /api/v1/services                  services with data, SLOs or canaries (JSON)\n\
     POST /api/v1/query?limit=N            SQL (body) over live tables and the archive; JSON rows\n\
     GET /api/v1/query/live                this member's live tables for a fleet member's SQL (Arrow IPC)\n\
     GET /api/v1/revisions                 the running rule set's revision and the archived ones (JSON)\n\
     GET /api/v1/revisions/R               the rule set (SLOs, canaries, stale, policies) of revision R (JSON)\n"
}

/// Liveness: the process is useless once its engine thread has died, so a supervisor should
/// restart it.
pub fn health(s: &AdminState) -> (StatusCode, &'static str) {
    if s.worker.is_alive() {
        (StatusCode::OK, "ok\n")
    } else {
        (
            StatusCode::SERVICE_UNAVAILABLE,
            "engine thread has stopped: restart the process\n",
        )
    }
}

/// Readiness: listeners bound, engine running, and the control sinks delivering (a processor
/// whose decisions cannot reach the control topic must not look ready).
pub fn readiness(s: &AdminState) -> (StatusCode, &'static str) {
    if !s.ready.load(Relaxed) {
        return (
            StatusCode::SERVICE_UNAVAILABLE,
            "starting: receivers are not bound yet\n",
        );
    }
    if !s.worker.is_alive() {
        return (
            StatusCode::SERVICE_UNAVAILABLE,
            "engine thread has stopped\n",
        );
    }
    if s.decisions.kafka.failing.load(Relaxed) {
        return (
            StatusCode::SERVICE_UNAVAILABLE,
            "control sink failing: the last control event was not delivered to Kafka\n",
        );
    }
    if s.decisions.sinks_failing.load(Relaxed) {
        return (
            StatusCode::SERVICE_UNAVAILABLE,
            "control sink failing: the last control events could not be written\n",
        );
    }
    (StatusCode::OK, "ready\n")
}

async fn healthz(State(s): State<Arc<AdminState>>) -> Response {
    health(&s).into_response()
}

async fn readyz(State(s): State<Arc<AdminState>>) -> Response {
    readiness(&s).into_response()
}

async fn metrics(State(s): State<Arc<AdminState>>) -> Response {
    // The SLI gauges merge digests: off the async workers.
    let body = match tokio::task::spawn_blocking(move || prom::render(&s)).await {
        Ok(b) => b,
        Err(e) => return json_error(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()),
    };
    (
        [(
            header::CONTENT_TYPE,
            "text/plain; version=0.0.4; charset=utf-8",
        )],
        body,
    )
        .into_response()
}

#[derive(Debug, serde::Deserialize)]
struct SliParams {
    service: Option<String>,
    window: Option<String>,
}

/// Runs `f` with the engine locked, on a blocking thread: SLO evaluation and canary judging
/// read windows and merge digests, which must not run on (or stall) the async workers.
async fn with_engine<T: Send + 'static>(
    s: &Arc<AdminState>,
    f: impl FnOnce(&AdminState, &trike_engine::Engine) -> T + Send + 'static,
) -> Result<T, Response> {
    let s = s.clone();
    tokio::task::spawn_blocking(move || f(&s, &s.worker.engine().lock()))
        .await
        .map_err(|e| json_error(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()))
}

pub(crate) fn json_error(status: StatusCode, message: String) -> Response {
    (status, axum::Json(serde_json::json!({ "error": message }))).into_response()
}

/// `GET /api/v1/exemplars?service=S`: the newest failing requests' traces of the service, with
/// a link when `trace_url_template` is set.
async fn exemplars_handler(
    State(s): State<Arc<AdminState>>,
    Query(p): Query<ServiceParam>,
) -> Response {
    let Some(service) = p.service.filter(|s| !s.is_empty()) else {
        return json_error(
            StatusCode::BAD_REQUEST,
            "service: give ?service=NAME".into(),
        );
    };
    let list = s.worker.engine().lock().exemplars(&service);
    let template = s.trace_url_template.clone();
    let traces: Vec<serde_json::Value> = list
        .iter()
        .map(|t| {
            serde_json::json!({
                "trace_id": t.trace_id,
                "version": &*t.version,
                "operation": &*t.operation,
                "time": rfc3339(t.time),
                "latency_ms": finite(t.latency_ms),
                "url": template.as_ref().map(|u| u.replace("{trace_id}", &t.trace_id)),
            })
        })
        .collect();
    axum::Json(serde_json::json!({
        "service": service,
        "trace_url_template": template,
        "exemplars": traces,
    }))
    .into_response()
}

/// `POST /api/v1/reload` (write scope): 200 with what changed, 400 with the problems (the
/// running rule set stays), 409 when the config came from no file.
async fn reload_handler(State(s): State<Arc<AdminState>>) -> Response {
    let Some(r) = s.reloader.clone() else {
        return json_error(
            StatusCode::CONFLICT,
            "this process was started without a config file: there is nothing to reload".into(),
        );
    };
    match tokio::task::spawn_blocking(move || r.reload("POST /api/v1/reload")).await {
        Ok(Ok(done)) => axum::Json(done).into_response(),
        Ok(Err(problems)) => (
            StatusCode::BAD_REQUEST,
            axum::Json(serde_json::json!({
                "error": "the config does not validate: the running rule set stays",
                "problems": problems,
            })),
        )
            .into_response(),
        Err(e) => json_error(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()),
    }
}

async fn slis_handler(State(s): State<Arc<AdminState>>, Query(p): Query<SliParams>) -> Response {
    let window: Span = match p.window.as_deref().unwrap_or("5m").parse() {
        Ok(w) => w,
        Err(e) => return json_error(StatusCode::BAD_REQUEST, format!("window: {e}")),
    };
    // `?service=` (empty) means every service.
    let service = p.service.filter(|s| !s.is_empty());
    match with_engine(&s, move |_, engine| slis::document(engine, service, window)).await {
        Ok(Ok(doc)) => axum::Json(doc).into_response(),
        Ok(Err(e)) => json_error(StatusCode::BAD_REQUEST, e.to_string()),
        Err(r) => r,
    }
}

#[derive(Debug, serde::Deserialize)]
struct ServiceParam {
    service: Option<String>,
}

async fn slos_handler(State(s): State<Arc<AdminState>>, Query(p): Query<ServiceParam>) -> Response {
    let service = p.service.filter(|s| !s.is_empty());
    let evaluated = with_engine(&s, move |s, engine| {
        s.rules()
            .slos
            .iter()
            .filter(|slo| service.as_deref().is_none_or(|svc| svc == slo.service))
            .map(|slo| trike_engine::slo::evaluate(engine, slo))
            .collect::<Vec<_>>()
    })
    .await;
    let slos = match evaluated {
        Ok(slos) => slos,
        Err(e) => return e,
    };
    axum::Json(serde_json::json!({ "slos": slos.iter().map(slo_json).collect::<Vec<_>>() }))
        .into_response()
}

fn finite(x: f64) -> Option<f64> {
    x.is_finite().then_some(x)
}

/// One `/api/v1/slos` entry (DESIGN §5 names; tiers added).
fn slo_json(st: &trike_engine::slo::SloStatus) -> serde_json::Value {
    serde_json::json!({
        "name": st.name,
        "service": st.service,
        "objective": st.objective,
        "period": st.period.to_string(),
        "budget_remaining": finite(st.budget_remaining),
        "burn_rates": st.burn_rates.iter().map(|(k, v)| (k.clone(), finite(*v))).collect::<std::collections::BTreeMap<_, _>>(),
        "firing": st.firing,
        "exhaustion_eta_s": st.exhaustion_eta_s.and_then(finite),
        "tiers": st.tiers.iter().map(|t| serde_json::json!({
            "name": t.name,
            "severity": t.severity,
            "factor": t.factor,
            "long": t.long.to_string(),
            "short": t.short.to_string(),
            "burn_long": finite(t.burn_long),
            "burn_short": finite(t.burn_short),
            "events_long": t.events_long,
            "coverage_long": finite(t.coverage_long),
            "coverage_short": finite(t.coverage_short),
            "firing": t.firing,
            "inhibited": t.over && !t.firing,
        })).collect::<Vec<_>>(),
        "attribution": st.attribution,
    })
}

async fn gate_handler(State(s): State<Arc<AdminState>>, Query(p): Query<ServiceParam>) -> Response {
    let Some(service) = p.service.filter(|s| !s.is_empty()) else {
        return json_error(
            StatusCode::BAD_REQUEST,
            "service: give ?service=NAME".into(),
        );
    };
    // The tightest SLO of the service decides; a service without SLOs has its whole budget.
    let budget = {
        let service = service.clone();
        with_engine(&s, move |s, engine| {
            s.rules()
                .slos
                .iter()
                .filter(|slo| slo.service == service)
                .map(|slo| trike_engine::slo::evaluate(engine, slo).budget_remaining)
                .fold(None, |acc: Option<f64>, b| {
                    Some(acc.map_or(b, |a| a.min(b)))
                })
        })
        .await
    };
    let budget = match budget {
        Ok(b) => b,
        Err(e) => return e,
    };
    let strategy = trike_engine::slo::Strategy::for_budget(budget.unwrap_or(1.0));
    axum::Json(serde_json::json!({
        "service": service,
        "budget_remaining": budget.and_then(finite),
        "strategy": strategy,
        "slos": s.rules().slos.iter().filter(|slo| slo.service == service).count(),
    }))
    .into_response()
}

#[derive(Debug, serde::Deserialize)]
struct DecisionParams {
    service: Option<String>,
    limit: Option<usize>,
}

async fn decisions_handler(
    State(s): State<Arc<AdminState>>,
    Query(p): Query<DecisionParams>,
) -> Response {
    let service = p.service.filter(|s| !s.is_empty());
    let limit = p
        .limit
        .unwrap_or(100)
        .min(trike_runtime::hooks::outbox::STORE_CAPACITY);
    let decisions: Vec<serde_json::Value> = s
        .decisions
        .recent(service.as_deref(), limit)
        .iter()
        .map(trike_sinks::ControlEvent::to_value)
        .collect();
    axum::Json(serde_json::json!({ "decisions": decisions })).into_response()
}

async fn canaries_handler(
    State(s): State<Arc<AdminState>>,
    Query(p): Query<ServiceParam>,
) -> Response {
    let service = p.service.filter(|s| !s.is_empty());
    let judged = with_engine(&s, move |s, engine| {
        trike_engine::canary::expand(engine, &s.rules().canaries)
            .iter()
            .filter(|c| service.as_deref().is_none_or(|svc| svc == c.service))
            .map(|c| trike_engine::canary::judge(engine, c))
            .collect::<Vec<_>>()
    })
    .await;
    match judged {
        Ok(results) => axum::Json(serde_json::json!({ "canaries": results })).into_response(),
        Err(e) => e,
    }
}

async fn history_handler(
    State(s): State<Arc<AdminState>>,
    Query(p): Query<ServiceParam>,
) -> Response {
    let Some(service) = p.service.filter(|s| !s.is_empty()) else {
        return json_error(
            StatusCode::BAD_REQUEST,
            "service: give ?service=NAME".into(),
        );
    };
    s.history
        .watch(&service, s.worker.clock().now() / 1_000_000);
    axum::Json(s.history.document(&service)).into_response()
}

async fn services_handler(State(s): State<Arc<AdminState>>) -> Response {
    let mut services = s.history.services();
    services.extend(s.rules().slos.iter().map(|x| x.service.clone()));
    services.extend(s.rules().canaries.iter().map(|x| x.service.clone()));
    services.sort();
    services.dedup();
    axum::Json(serde_json::json!({ "services": services })).into_response()
}

#[cfg(test)]
mod tests;
