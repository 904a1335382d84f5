//! Reload (DESIGN §9): `SIGHUP`, `POST /api/v1/reload` (write scope) or a change of the config
//! file's content reloads the rule set — SLOs, canaries, policy rules and the stale rule —
//! and the maintenance windows
//! without losing state: the engine's windows are untouched, every rule that keeps its name
//! keeps its episodes, cool-downs and caps, rollouts go on, and the new revision is stamped on
//! the decisions that follow (and archived). A config that does not validate changes nothing:
//! the old rule set keeps running and the reload says why (the API's answer, the log, and
//! `trike_config_last_reload_successful 0`, like Prometheus's own). Other sections (listeners,
//! Kafka, sinks, state, TLS, tokens, the fleet, the anomaly watch) need a restart: a reload that changes them
//! applies the rule set and names them.

use crate::admin::RuleSet;
use crate::config::Config;
use crate::config::validate::Overrides;
use parking_lot::{Mutex, RwLock};
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering::Relaxed};
use trike_engine::policy::PolicyEngine;
use trike_runtime::EngineHandle;
use trike_runtime::hooks::decide::DecideRules;

/// Reload counters for `/metrics`.
#[derive(Debug)]
pub struct ReloadStats {
    /// Reloads applied.
    pub successes: AtomicU64,
    /// Reloads refused.
    pub failures: AtomicU64,
    /// The last reload was applied (true before any).
    pub last_ok: AtomicBool,
    /// Unix seconds of the last applied reload (or of the start).
    pub last_success_s: AtomicU64,
}

impl ReloadStats {
    /// Renders the families.
    pub fn render(&self, out: &mut String) {
        use trike_engine::expo::{counter, gauge};
        gauge(
            out,
            "trike_config_last_reload_successful",
            "Whether the last configuration reload was applied (1) or refused (0).",
            f64::from(u8::from(self.last_ok.load(Relaxed))),
        );
        gauge(
            out,
            "trike_config_last_reload_success_timestamp_seconds",
            "When the rule set running now was loaded (Unix seconds).",
            self.last_success_s.load(Relaxed) as f64,
        );
        counter(
            out,
            "trike_config_reloads_total",
            "Configuration reloads applied.",
            self.successes.load(Relaxed),
        );
        counter(
            out,
            "trike_config_reload_failures_total",
            "Configuration reloads refused (the old rule set kept running).",
            self.failures.load(Relaxed),
        );
    }
}

/// One reload attempt, for `GET /api/v1/revisions`.
#[derive(Clone, Debug, serde::Serialize)]
pub struct Attempt {
    /// What asked for it: `SIGHUP`, `POST /api/v1/reload`, `the config file changed`.
    pub trigger: String,
    /// When (RFC 3339).
    pub at: String,
    /// Applied (else refused, and `problems` says why).
    pub ok: bool,
    /// The revision running after it.
    pub revision: String,
    /// Why it was refused.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub problems: Vec<String>,
}

/// Reload attempts kept, and rule sets of earlier revisions kept in memory.
const KEPT: usize = 20;

/// What a reload did.
#[derive(Debug, serde::Serialize)]
pub struct Reloaded {
    /// The revision running now.
    pub revision: String,
    /// The revision before.
    pub previous: String,
    /// The rule set changed.
    pub changed: bool,
    /// Sections that changed but take effect only at a restart.
    pub restart_needed: Vec<&'static str>,
    /// Rules whose state was dropped (removed or renamed).
    pub dropped_rule_state: Vec<String>,
}

/// A digest of secret values (their printed form is `***`, so a changed secret would not show
/// in it): compared, never printed.
fn secrets_digest<'a>(values: impl IntoIterator<Item = &'a str>) -> String {
    use sha2::Digest;
    let mut h = sha2::Sha256::new();
    for v in values {
        h.update((v.len() as u64).to_le_bytes());
        h.update(v.as_bytes());
    }
    format!("{:x}", h.finalize())
}

/// The sections a reload does not apply, each with its printed form (with a digest of the
/// secrets they hold, so a rotated header or key shows as a change too).
fn restart_only(c: &Config) -> Vec<(&'static str, String)> {
    vec![
        (
            "listeners",
            format!("{:?} {:?} {:?}", c.grpc_addr, c.http_addr, c.admin_addr),
        ),
        (
            "limits",
            format!(
                "{:?} {:?} {:?}",
                c.limits, c.queue_observations, c.memory_limit
            ),
        ),
        ("decode", format!("{:?}", c.decode)),
        ("engine", format!("{:?}", c.engine)),
        ("anomaly", format!("{:?}", c.anomaly)),
        ("capacity", format!("{:?}", c.capacity)),
        (
            "forward",
            format!(
                "{:?} {}",
                c.forward,
                secrets_digest(
                    c.forward
                        .iter()
                        .flat_map(|t| t.headers.values().map(|v| v.expose()))
                )
            ),
        ),
        (
            "metrics",
            format!("{:?} {:?}", c.metrics_windows, c.metrics_max_services),
        ),
        (
            "kafka",
            format!(
                "{:?} {:?} {:?} {:?} {:?} {:?} {:?} {:?} {:?}",
                c.kafka_brokers,
                c.kafka_client,
                c.control_topic,
                c.deploys_topic,
                c.deploys_group,
                c.deploys_max_age,
                c.kafka_ingest,
                c.control_partitions,
                c.control_replication
            ),
        ),
        ("sinks", format!("{:?} {:?}", c.sinks, c.instance)),
        (
            "signing",
            format!(
                "{:?} {:?} {:?} {:?} {}",
                c.signing_key_env,
                c.signing_key,
                c.signing_key_id,
                c.verify_keys,
                secrets_digest(c.signing_key.as_ref().map(|k| k.expose()))
            ),
        ),
        ("actuator", format!("{:?}", c.actuator)),
        (
            "state",
            format!("{:?} {:?}", c.state_dir, c.checkpoint_every),
        ),
        (
            "archive",
            format!("{:?} {:?}", c.archive, c.archive_sample_observations),
        ),
        ("query", format!("{:?}", c.query)),
        ("auth", format!("{:?}", c.auth)),
        ("tls", format!("{:?}", c.tls)),
        ("fleet", format!("{:?}", c.fleet)),
    ]
}

/// Reloads the rule set from the config file the process started with.
pub struct Reloader {
    path: PathBuf,
    overrides: Overrides,
    engine: EngineHandle,
    decide: Arc<Mutex<DecideRules>>,
    policy: Arc<Mutex<PolicyEngine>>,
    rules: Arc<RwLock<Arc<RuleSet>>>,
    silences: Arc<trike_runtime::silences::Silences>,
    archive_dir: Option<PathBuf>,
    /// The restart-only sections as the process runs them.
    running: Vec<(&'static str, String)>,
    /// The file's content at the last reload (or the start), for the file watch.
    last_text: Mutex<Vec<u8>>,
    /// One reload at a time.
    busy: Mutex<()>,
    /// The last [`KEPT`] attempts, newest last.
    attempts: Mutex<std::collections::VecDeque<Attempt>>,
    /// Rule sets of the revisions that ran before (revision, canonical text), newest last.
    earlier: Mutex<std::collections::VecDeque<(String, String)>>,
    /// Counters.
    pub stats: ReloadStats,
}

impl std::fmt::Debug for Reloader {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Reloader")
            .field("path", &self.path)
            .finish_non_exhaustive()
    }
}

/// What a [`Reloader`] reaches into.
#[derive(Debug)]
pub struct Targets {
    /// The engine (locked first, for the lock order).
    pub engine: EngineHandle,
    /// The decide hook's SLOs, canaries and stale rule.
    pub decide: Arc<Mutex<DecideRules>>,
    /// The policy.
    pub policy: Arc<Mutex<PolicyEngine>>,
    /// The admin API's rule set.
    pub rules: Arc<RwLock<Arc<RuleSet>>>,
    /// Silences, whose maintenance windows the config holds.
    pub silences: Arc<trike_runtime::silences::Silences>,
}

impl Reloader {
    /// A reloader of `cfg`'s file (None when it came from no file).
    pub fn new(cfg: &Config, targets: Targets) -> Option<Self> {
        let (path, overrides) = cfg.source.clone()?;
        let last_text = std::fs::read(&path).unwrap_or_default();
        Some(Self {
            path,
            overrides,
            engine: targets.engine,
            decide: targets.decide,
            policy: targets.policy,
            rules: targets.rules,
            silences: targets.silences,
            archive_dir: cfg.archive.as_ref().map(|a| a.dir.clone()),
            running: restart_only(cfg),
            last_text: Mutex::new(last_text),
            busy: Mutex::new(()),
            attempts: Mutex::default(),
            earlier: Mutex::default(),
            stats: ReloadStats {
                successes: AtomicU64::new(0),
                failures: AtomicU64::new(0),
                last_ok: AtomicBool::new(true),
                last_success_s: AtomicU64::new(trike_runtime::clock::now_nanos() / 1_000_000_000),
            },
        })
    }

    /// The config file.
    pub fn path(&self) -> &std::path::Path {
        &self.path
    }

    /// The last reload attempts, newest first.
    pub fn attempts(&self) -> Vec<Attempt> {
        self.attempts.lock().iter().rev().cloned().collect()
    }

    /// The rule set of an earlier revision this process ran, if it still holds it.
    pub fn earlier(&self, revision: &str) -> Option<String> {
        self.earlier
            .lock()
            .iter()
            .rev()
            .find(|(r, _)| r == revision)
            .map(|(_, t)| t.clone())
    }

    /// Revisions this process ran before the current one, oldest first.
    pub fn earlier_revisions(&self) -> Vec<String> {
        self.earlier.lock().iter().map(|(r, _)| r.clone()).collect()
    }

    fn record(&self, trigger: &str, ok: bool, revision: String, problems: Vec<String>) {
        let mut a = self.attempts.lock();
        if a.len() == KEPT {
            a.pop_front();
        }
        a.push_back(Attempt {
            trigger: trigger.into(),
            at: trike_sinks::rfc3339(trike_runtime::clock::now_nanos()),
            ok,
            revision,
            problems,
        });
    }

    /// True when the file's content differs from what was last loaded (the file watch).
    pub fn file_changed(&self) -> bool {
        std::fs::read(&self.path).is_ok_and(|t| *self.last_text.lock() != t)
    }

    /// Loads the file again and applies its rule set (`trigger` names why, for the log);
    /// refused with the problems when it does not validate.
    pub fn reload(&self, trigger: &str) -> Result<Reloaded, Vec<String>> {
        let _one = self.busy.lock();
        let text = std::fs::read(&self.path).unwrap_or_default();
        *self.last_text.lock() = text;
        let cfg = match Config::load(Some(&self.path), &self.overrides) {
            Ok(c) => c,
            Err(problems) => {
                self.stats.failures.fetch_add(1, Relaxed);
                self.stats.last_ok.store(false, Relaxed);
                tracing::error!(%trigger, path = %self.path.display(), problems = %problems.join("; "), "config reload refused: the running rule set stays");
                let running = self.rules.read().revision.clone();
                self.record(trigger, false, running, problems.clone());
                return Err(problems);
            }
        };
        let restart_needed: Vec<&'static str> = restart_only(&cfg)
            .into_iter()
            .zip(&self.running)
            .filter(|(new, old)| new.1 != old.1)
            .map(|(new, _)| new.0)
            .collect();
        let previous = self.rules.read().revision.clone();
        let revision = cfg.policy.revision.clone();
        if let Some(dir) = &self.archive_dir
            && let Err(e) = crate::admin::revisions::archive(dir, &revision, &cfg.rule_set)
        {
            tracing::warn!(error = %e, "archiving the reloaded rule set");
        }
        let dropped = {
            // The lock order: engine, decide rules, policy.
            let _engine = self.engine.lock();
            let mut decide = self.decide.lock();
            *decide = DecideRules {
                slos: cfg.slos.clone(),
                canaries: cfg.canaries.clone(),
                stale: cfg.stale,
            };
            let dropped = self.policy.lock().set_policy(cfg.policy.clone());
            let before = self.rules.read().clone();
            if before.revision != revision {
                let mut e = self.earlier.lock();
                e.retain(|(r, _)| *r != before.revision);
                if e.len() == KEPT {
                    e.pop_front();
                }
                e.push_back((before.revision.clone(), before.rule_set.clone()));
            }
            *self.rules.write() = Arc::new(RuleSet {
                slos: cfg.slos,
                canaries: cfg.canaries,
                revision: revision.clone(),
                rule_set: cfg.rule_set,
            });
            dropped
        };
        self.silences.set_maintenance(cfg.maintenance);
        self.stats.successes.fetch_add(1, Relaxed);
        self.stats.last_ok.store(true, Relaxed);
        self.stats
            .last_success_s
            .store(trike_runtime::clock::now_nanos() / 1_000_000_000, Relaxed);
        let changed = revision != previous;
        self.record(trigger, true, revision.clone(), Vec::new());
        tracing::info!(%trigger, %revision, %previous, changed, restart_needed = ?restart_needed, dropped_rule_state = ?dropped, "config reloaded");
        Ok(Reloaded {
            revision,
            previous,
            changed,
            restart_needed,
            dropped_rule_state: dropped,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::RawConfig;

    fn sections(yaml: &str) -> Vec<(&'static str, String)> {
        let c =
            Config::validate(RawConfig::from_yaml(yaml).unwrap(), &Overrides::default()).unwrap();
        restart_only(&c)
    }

    /// Guarantees: a rotated forward header or signing key is a change a reload reports as
    /// needing a restart, though both print as `***`; the same values are no change.
    #[test]
    fn changed_secrets_are_changes() {
        let config = |token: &str, key: &str| {
            format!(
                "forward: [{{ endpoint: \"backend:4317\", headers: {{ authorization: \"Bearer {token}\" }} }}]\nsigning: {{ key: {key} }}\n"
            )
        };
        let changed = |a: &str, b: &str| -> Vec<&'static str> {
            sections(a)
                .into_iter()
                .zip(sections(b))
                .filter(|(x, y)| x.1 != y.1)
                .map(|(x, _)| x.0)
                .collect()
        };
        let first = config("token-one", "key-one");
        assert_eq!(changed(&first, &first), Vec::<&str>::new());
        assert_eq!(
            changed(&first, &config("token-two", "key-one")),
            ["forward"]
        );
        assert_eq!(
            changed(&first, &config("token-one", "key-two")),
            ["signing"]
        );
        assert!(
            sections(&first)
                .iter()
                .all(|(_, s)| !s.contains("token-one"))
        );
    }
}
