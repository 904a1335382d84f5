//! The `actuator:` section: executors chosen per action and service pattern.

use serde::Deserialize;
use std::collections::BTreeMap;
use std::path::PathBuf;
use trike_sinks::{Action, Span};

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
        headers: BTreeMap<String, String>,
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

/// `actuator:`.
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
    /// Executors, first match wins.
    pub executors: Vec<ExecutorConfig>,
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
