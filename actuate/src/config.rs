//! The `actuator:` section: executors chosen per action and service pattern.

use crate::breaker::BreakerConfig;
use serde::Deserialize;
use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::Duration;
use trike_sinks::{Action, Secret, Span};

/// An executor as written.
#[derive(Clone, Debug, Deserialize, PartialEq)]
#[serde(tag = "type", rename_all = "snake_case", deny_unknown_fields)]
pub enum ExecutorKind {
    /// An HTTP call: the body template gets `{{service}}`, `{{version}}`, `{{action}}`,
    /// `{{id}}`, `{{reason}}` and `{{params.NAME}}` substituted; header values `env:NAME` are
    /// read from the environment (secrets stay out of the file).
    Webhook {
        /// URL.
        url: String,
        /// Method (default POST).
        #[serde(default)]
        method: Option<String>,
        /// Body template (default: the whole control event).
        #[serde(default)]
        body: Option<String>,
        /// Headers.
        #[serde(default)]
        headers: BTreeMap<String, Secret>,
        /// Attempts after the first (default 3), with exponential backoff and jitter.
        #[serde(default)]
        retries: Option<u32>,
    },
    /// A command (argv, no shell); event fields in `TRIKE_*` environment variables.
    Command {
        /// Program and arguments.
        argv: Vec<String>,
    },
    /// Log the event (and do nothing else).
    Log,
}

/// One executor. (Unknown keys are still refused: the flattened kind denies them.)
#[derive(Clone, Debug, Deserialize, PartialEq)]
pub struct ExecutorConfig {
    /// Name (in outcomes and logs).
    pub name: String,
    /// Actions it carries out.
    pub actions: Vec<Action>,
    /// Service patterns (`*` wildcard at either end; default all).
    #[serde(default)]
    pub services: Vec<String>,
    /// Timeout per attempt (default 10s).
    #[serde(default)]
    pub timeout: Option<Span>,
    /// How it acts.
    #[serde(flatten)]
    pub kind: ExecutorKind,
}

/// `actuator:` as written. Every field is optional; [`ActuatorConfig::validate`] applies the
/// defaults (the `DEFAULT_*` constants) and checks meaning.
#[derive(Clone, Debug, Default, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct ActuatorConfig {
    /// Consumer group (default `trike-actuators`).
    pub group_id: Option<String>,
    /// Outcome topic (default `trike.actions`).
    pub actions_topic: Option<String>,
    /// The shared claim log all actuators of the group write to before executing (default
    /// `trike.actuator.claims`; created with 3 partitions if missing).
    pub claims_topic: Option<String>,
    /// Where this actuator records executed event ids before executing (default
    /// `./trike-actuator-state`): a fast local check in front of the claim log.
    pub state_dir: Option<PathBuf>,
    /// Consecutive failures after which an executor's circuit opens (default 3).
    pub breaker_failures: Option<u32>,
    /// How long an open circuit holds its executor's events before one is tried as a probe
    /// (default 30s; each failed probe doubles it, up to 2m).
    pub breaker_cooldown: Option<Span>,
    /// How long a claim by another actuator may stay without an outcome before it is taken
    /// as dead (then a human is paged; the event is never executed twice). Default 2m: longer
    /// than an executor's attempts take.
    pub claim_lease: Option<Span>,
    /// Control events older than this (by their `time`) are rejected, never executed: a
    /// replayed old signed rollback must not act again (default 10m).
    pub max_event_age: Option<Span>,
    /// Run without a signing key, executing unsigned events (default false: `trike actuate`
    /// refuses to start without a key).
    pub allow_unsigned: bool,
    /// Where `trike actuate` serves `/metrics` and `/healthz` (e.g. `0.0.0.0:8481`; default:
    /// not served).
    pub admin: Option<String>,
    /// Executors, first match wins.
    pub executors: Vec<ExecutorConfig>,
}

/// Default maximum age of a control event.
pub const DEFAULT_MAX_EVENT_AGE: Duration = Duration::from_secs(600);

/// Default consumer group of the actuators.
pub const DEFAULT_GROUP: &str = "trike-actuators";
/// Default outcome topic.
pub const DEFAULT_ACTIONS_TOPIC: &str = "trike.actions";
/// Default directory of the local ledger.
pub const DEFAULT_STATE_DIR: &str = "trike-actuator-state";
/// Default consecutive failures that open a circuit.
pub const DEFAULT_BREAKER_FAILURES: u32 = 3;
/// Default cool-down of an open circuit.
pub const DEFAULT_BREAKER_COOLDOWN: Duration = Duration::from_secs(30);
/// Longest cool-down of an open circuit. Held events are polled again at least every second,
/// so the consumer stays in its group however long a circuit is open.
pub const MAX_BREAKER_COOLDOWN: Duration = Duration::from_secs(120);
/// Default lease of a claim without an outcome.
pub const DEFAULT_CLAIM_LEASE: Duration = Duration::from_secs(120);
/// Default timeout of one executor attempt.
pub const DEFAULT_EXECUTOR_TIMEOUT: Duration = Duration::from_secs(10);
/// Default webhook retries after the first attempt.
pub const DEFAULT_WEBHOOK_RETRIES: u32 = 3;

/// The `actuator:` section validated, every default applied.
#[derive(Clone, Debug, PartialEq)]
pub struct Validated {
    /// Consumer group.
    pub group_id: String,
    /// Outcome topic.
    pub actions_topic: String,
    /// Claim-log topic.
    pub claims_topic: String,
    /// Local ledger directory.
    pub state_dir: PathBuf,
    /// Circuit breakers.
    pub breaker: BreakerConfig,
    /// Lease of a claim without an outcome.
    pub claim_lease: Duration,
    /// Older control events are rejected.
    pub max_event_age: Duration,
    /// Unsigned operation is allowed.
    pub allow_unsigned: bool,
    /// Where `/metrics` and `/healthz` are served.
    pub admin: Option<std::net::SocketAddr>,
    /// Executors, first match wins.
    pub executors: Vec<ExecutorConfig>,
}

fn duration(s: Span) -> Duration {
    Duration::from_secs(s.secs())
}

impl ActuatorConfig {
    /// Checks the section (problems named under `field`, e.g. `actuator`), all at once, and
    /// applies the defaults. Pure: reads no files and no environment.
    pub fn validate(&self, field: &str) -> Result<Validated, Vec<String>> {
        let mut p = Vec::new();
        let breaker_failures = self.breaker_failures.unwrap_or(DEFAULT_BREAKER_FAILURES);
        if breaker_failures == 0 {
            p.push(format!("{field}.breaker_failures: must be at least 1"));
        }
        let cooldown = self
            .breaker_cooldown
            .map_or(DEFAULT_BREAKER_COOLDOWN, duration);
        if cooldown.is_zero() || cooldown > MAX_BREAKER_COOLDOWN {
            p.push(format!(
                "{field}.breaker_cooldown: {} is not between 1s and 2m",
                self.breaker_cooldown.unwrap_or(Span(0))
            ));
        }
        let claim_lease = self.claim_lease.map_or(DEFAULT_CLAIM_LEASE, duration);
        if claim_lease.is_zero() {
            p.push(format!("{field}.claim_lease: must be at least 1s"));
        }
        let max_event_age = self.max_event_age.map_or(DEFAULT_MAX_EVENT_AGE, duration);
        if max_event_age.is_zero() {
            p.push(format!("{field}.max_event_age: must be at least 1s"));
        }
        let admin = self.admin.as_deref().and_then(|a| match a.parse() {
            Ok(addr) => Some(addr),
            Err(_) => {
                p.push(format!(
                    "{field}.admin: {a:?} is not a listen address (host:port, e.g. 0.0.0.0:8481)"
                ));
                None
            }
        });
        let mut names = std::collections::BTreeSet::new();
        for (i, e) in self.executors.iter().enumerate() {
            let f = format!("{field}.executors[{i}]");
            if e.name.trim().is_empty() {
                p.push(format!("{f}.name: must not be empty"));
            } else if !names.insert(e.name.as_str()) {
                p.push(format!(
                    "{f}.name: {:?} is used by another executor",
                    e.name
                ));
            }
            if e.actions.is_empty() {
                p.push(format!("{f}.actions: name at least one action"));
            }
            if e.timeout.is_some_and(|t| t.secs() == 0) {
                p.push(format!("{f}.timeout: must be at least 1s"));
            }
            match &e.kind {
                ExecutorKind::Command { argv } if argv.is_empty() => {
                    p.push(format!("{f}.argv: must name a program"))
                }
                ExecutorKind::Webhook { url, .. }
                    if !(url.starts_with("http://") || url.starts_with("https://")) =>
                {
                    p.push(format!("{f}.url: {url:?} is not an http(s) URL"))
                }
                ExecutorKind::Webhook {
                    method: Some(m), ..
                } if reqwest::Method::from_bytes(m.as_bytes()).is_err() => {
                    p.push(format!("{f}.method: {m:?} is not an HTTP method"))
                }
                _ => {}
            }
        }
        if !p.is_empty() {
            return Err(p);
        }
        Ok(Validated {
            group_id: self
                .group_id
                .clone()
                .unwrap_or_else(|| DEFAULT_GROUP.into()),
            actions_topic: self
                .actions_topic
                .clone()
                .unwrap_or_else(|| DEFAULT_ACTIONS_TOPIC.into()),
            claims_topic: self
                .claims_topic
                .clone()
                .unwrap_or_else(|| crate::claims::DEFAULT_TOPIC.into()),
            state_dir: self
                .state_dir
                .clone()
                .unwrap_or_else(|| DEFAULT_STATE_DIR.into()),
            breaker: BreakerConfig {
                failures: breaker_failures,
                cooldown,
                max_cooldown: MAX_BREAKER_COOLDOWN.max(cooldown),
            },
            claim_lease,
            max_event_age,
            allow_unsigned: self.allow_unsigned,
            admin,
            executors: self.executors.clone(),
        })
    }
}

impl ExecutorConfig {
    /// The timeout of one attempt.
    pub fn attempt_timeout(&self) -> Duration {
        self.timeout.map_or(DEFAULT_EXECUTOR_TIMEOUT, duration)
    }
}

/// True when `service` matches `pattern` (`*` alone, `prefix*`, `*suffix`, or exact).
pub fn matches(pattern: &str, service: &str) -> bool {
    if pattern == "*" {
        return true;
    }
    match (pattern.strip_suffix('*'), pattern.strip_prefix('*')) {
        (Some(prefix), _) => service.starts_with(prefix),
        (None, Some(suffix)) => service.ends_with(suffix),
        _ => pattern == service,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Guarantees: an empty section gets every default; every problem is named at once with
    /// its field.
    #[test]
    fn defaults_and_problems() {
        let v = ActuatorConfig::default().validate("actuator").unwrap();
        assert_eq!(v.group_id, DEFAULT_GROUP);
        assert_eq!(v.actions_topic, DEFAULT_ACTIONS_TOPIC);
        assert_eq!(v.claims_topic, crate::claims::DEFAULT_TOPIC);
        assert_eq!(v.breaker.failures, DEFAULT_BREAKER_FAILURES);
        assert_eq!(v.breaker.cooldown, DEFAULT_BREAKER_COOLDOWN);
        assert_eq!(v.claim_lease, DEFAULT_CLAIM_LEASE);
        let bad: ActuatorConfig = serde_yaml_ng::from_str(
            r#"
breaker_failures: 0
breaker_cooldown: 1h
executors:
  - { name: a, type: webhook, actions: [], url: "ftp://x" }
  - { name: a, type: command, actions: [page], argv: [] }
  - { name: c, type: webhook, actions: [page], url: "http://x", method: "NOT A METHOD" }
"#,
        )
        .unwrap();
        let problems = bad.validate("actuator").unwrap_err();
        for want in [
            "actuator.breaker_failures: must be at least 1",
            "actuator.breaker_cooldown: 1h is not between 1s and 2m",
            "actuator.executors[0].actions: name at least one action",
            "actuator.executors[0].url: \"ftp://x\" is not an http(s) URL",
            "actuator.executors[1].name: \"a\" is used by another executor",
            "actuator.executors[1].argv: must name a program",
            "actuator.executors[2].method: \"NOT A METHOD\" is not an HTTP method",
        ] {
            assert!(
                problems.iter().any(|p| p == want),
                "{want} in {problems:#?}"
            );
        }
    }
}
