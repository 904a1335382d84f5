//! Silences and maintenance windows (DESIGN §9): a decision that a silence matches while it is
//! active is still decided, recorded (`/api/v1/decisions`, the archive, the checkpoint's
//! outbox) with `silenced: true` and the silence's id, but not sent to the control sinks.
//!
//! Matchers are Alertmanager's: `{name, value, isRegex, isEqual}` on `service`, `version`,
//! `action`, `rule` or `severity`; all of a silence's matchers must match; a regex matches the
//! whole value. Silences made over the API are kept in `state.dir/silences.json` (written
//! whole, atomically) when there is one; maintenance windows come from the config (`maintenance:`)
//! and are replaced by a reload. An expired silence is kept for the API for a day.

use crate::checkpoint::write_atomic;
use parking_lot::RwLock;
use serde::{Deserialize, Serialize};
use std::path::PathBuf;
use trike_engine::UnixNanos;
use trike_engine::policy::Decision;

/// The file under `state.dir`.
pub const FILE: &str = "silences.json";
/// Silences kept, at most (the oldest expired ones go first).
pub const MAX_SILENCES: usize = 1000;
/// How long an expired silence stays listed.
const KEEP_EXPIRED_NS: u64 = 86_400 * 1_000_000_000;

/// The labels a matcher may name.
pub const LABELS: [&str; 5] = ["service", "version", "action", "rule", "severity"];

/// One matcher.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Matcher {
    /// `service`, `version`, `action`, `rule` or `severity`.
    pub name: String,
    /// The value (a regex when `is_regex`).
    pub value: String,
    /// A regular expression, matching the whole value.
    #[serde(default)]
    pub is_regex: bool,
    /// Equal (`true`, the default) or not equal.
    #[serde(default = "yes")]
    pub is_equal: bool,
}

fn yes() -> bool {
    true
}

/// A silence or a maintenance window.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Silence {
    /// Id.
    pub id: String,
    /// All must match.
    pub matchers: Vec<Matcher>,
    /// Active from (engine time, ns).
    pub starts_at: UnixNanos,
    /// Active until (engine time, ns).
    pub ends_at: UnixNanos,
    /// Who made it.
    pub created_by: String,
    /// Why.
    pub comment: String,
    /// `api`, or `maintenance` for a window of the config.
    pub origin: String,
}

/// Why a silence was refused.
#[derive(Debug, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct Invalid(pub String);

fn compiled(m: &Matcher) -> Result<Option<regex::Regex>, Invalid> {
    if !LABELS.contains(&m.name.as_str()) {
        return Err(Invalid(format!(
            "matcher name {:?}: write one of {}",
            m.name,
            LABELS.join(", ")
        )));
    }
    if !m.is_regex {
        return Ok(None);
    }
    regex::Regex::new(&format!("^(?:{})$", m.value))
        .map(Some)
        .map_err(|e| Invalid(format!("matcher {}: {e}", m.name)))
}

impl Silence {
    /// Refuses a silence that cannot match as meant.
    pub fn validate(&self) -> Result<(), Invalid> {
        if self.matchers.is_empty() {
            return Err(Invalid(
                "a silence needs at least one matcher (it would silence everything)".into(),
            ));
        }
        if self.ends_at <= self.starts_at {
            return Err(Invalid("endsAt must be after startsAt".into()));
        }
        for m in &self.matchers {
            compiled(m)?;
        }
        if self
            .matchers
            .iter()
            .all(|m| !m.is_equal || (m.is_regex && m.value == ".*"))
        {
            return Err(Invalid(
                "every matcher is negative or matches anything: name what to silence".into(),
            ));
        }
        Ok(())
    }

    /// Active at `at`.
    pub fn active(&self, at: UnixNanos) -> bool {
        self.starts_at <= at && at < self.ends_at
    }

    /// True when every matcher matches `d`.
    pub fn matches(&self, d: &Decision) -> bool {
        self.matchers.iter().all(|m| {
            let value = match m.name.as_str() {
                "service" => d.target.service.as_str(),
                "version" => d.target.version.as_str(),
                "action" => d.action.name(),
                "rule" => d.rule.as_str(),
                "severity" => match d.severity {
                    trike_engine::slo::Severity::Page => "page",
                    trike_engine::slo::Severity::Ticket => "ticket",
                },
                _ => return false,
            };
            let hit = match compiled(m) {
                Ok(Some(re)) => re.is_match(value),
                Ok(None) => m.value == value,
                Err(_) => false,
            };
            hit == m.is_equal
        })
    }
}

/// Every silence: those made over the API and the config's maintenance windows.
#[derive(Debug, Default)]
pub struct Silences {
    api: RwLock<Vec<Silence>>,
    maintenance: RwLock<Vec<Silence>>,
    file: Option<PathBuf>,
}

impl Silences {
    /// Silences kept in `dir/silences.json` when `dir` is given (read now, when it exists).
    pub fn open(dir: Option<&std::path::Path>) -> std::io::Result<Self> {
        let file = dir.map(|d| d.join(FILE));
        let api = match &file {
            Some(f) if f.exists() => {
                let text = std::fs::read(f)?;
                serde_json::from_slice(&text)
                    .map_err(|e| std::io::Error::other(format!("{}: {e}", f.display())))?
            }
            _ => Vec::new(),
        };
        Ok(Self {
            api: RwLock::new(api),
            maintenance: RwLock::default(),
            file,
        })
    }

    /// Replaces the maintenance windows (the config's, at start and at each reload).
    pub fn set_maintenance(&self, windows: Vec<Silence>) {
        *self.maintenance.write() = windows;
    }

    /// The id of an active silence matching `d` at its decision time, if any.
    pub fn silencing(&self, d: &Decision) -> Option<String> {
        let at = d.detected_at;
        let api = self.api.read();
        let maintenance = self.maintenance.read();
        api.iter()
            .chain(maintenance.iter())
            .find(|s| s.active(at) && s.matches(d))
            .map(|s| s.id.clone())
    }

    /// Every silence, newest first.
    pub fn list(&self) -> Vec<Silence> {
        let mut all: Vec<Silence> = self
            .api
            .read()
            .iter()
            .chain(self.maintenance.read().iter())
            .cloned()
            .collect();
        all.sort_by(|a, b| b.starts_at.cmp(&a.starts_at).then(a.id.cmp(&b.id)));
        all
    }

    /// Adds (or replaces, by id) a silence made over the API, at `now`; made durable before
    /// it returns.
    pub fn add(&self, s: Silence, now: UnixNanos) -> Result<(), Invalid> {
        s.validate()?;
        let mut api = self.api.write();
        api.retain(|x| x.id != s.id && x.ends_at + KEEP_EXPIRED_NS > now);
        if api.len() >= MAX_SILENCES {
            return Err(Invalid(format!(
                "{MAX_SILENCES} silences exist: expire some first"
            )));
        }
        api.push(s);
        self.save(&api)
    }

    /// Silence `id` as it would be once expired at `now` (None when there is none by that id).
    pub fn expired(&self, id: &str, now: UnixNanos) -> Option<Silence> {
        let api = self.api.read();
        let s = api.iter().find(|s| s.id == id)?;
        Some(Silence {
            ends_at: s.ends_at.min(now).max(s.starts_at),
            ..s.clone()
        })
    }

    /// Takes a silence from the fleet's log as it is (already validated where it was made):
    /// the newest record of an id wins.
    pub fn apply(&self, s: Silence) {
        let mut api = self.api.write();
        api.retain(|x| x.id != s.id);
        api.push(s);
        if api.len() > MAX_SILENCES {
            // The oldest to have ended go first.
            api.sort_by_key(|x| std::cmp::Reverse(x.ends_at));
            api.truncate(MAX_SILENCES);
        }
        if let Err(e) = self.save(&api) {
            tracing::warn!(error = %e, "keeping a silence from the fleet's log");
        }
    }

    /// Expires silence `id` at `now` (it stays listed); false when there is none by that id
    /// (maintenance windows are the config's: edit it instead).
    pub fn expire(&self, id: &str, now: UnixNanos) -> Result<bool, Invalid> {
        let mut api = self.api.write();
        let Some(s) = api.iter_mut().find(|s| s.id == id) else {
            return Ok(false);
        };
        s.ends_at = s.ends_at.min(now).max(s.starts_at);
        self.save(&api)?;
        Ok(true)
    }

    fn save(&self, api: &[Silence]) -> Result<(), Invalid> {
        let Some(f) = &self.file else { return Ok(()) };
        let bytes = serde_json::to_vec_pretty(api).map_err(|e| Invalid(e.to_string()))?;
        write_atomic(f, &bytes).map_err(|e| Invalid(format!("writing {}: {e}", f.display())))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use trike_engine::policy::{Action, Evidence, Target};

    const S: u64 = 1_000_000_000;

    fn decision(service: &str, version: &str, action: Action, rule: &str) -> Decision {
        Decision {
            decision_id: format!("{service}-{}", action.name()),
            action,
            target: Target {
                service: service.into(),
                version: version.into(),
                ..Target::default()
            },
            params: Default::default(),
            severity: trike_engine::slo::Severity::Page,
            reason: "r".into(),
            rule: rule.into(),
            slo: None,
            policy_revision: "p".into(),
            dry_run: false,
            evidence: Evidence::Stale {
                silent_s: 0.0,
                lag_s: 0.0,
            },
            detected_at: 100 * S,
            observed_until: 0,
            resolves: None,
            inhibited_by: None,
        }
    }

    fn m(name: &str, value: &str, is_regex: bool, is_equal: bool) -> Matcher {
        Matcher {
            name: name.into(),
            value: value.into(),
            is_regex,
            is_equal,
        }
    }

    fn silence(id: &str, matchers: Vec<Matcher>, from_s: u64, to_s: u64) -> Silence {
        Silence {
            id: id.into(),
            matchers,
            starts_at: from_s * S,
            ends_at: to_s * S,
            created_by: "sre".into(),
            comment: "test".into(),
            origin: "api".into(),
        }
    }

    /// Table: what a silence matches (equality, regex on the whole value, negative matchers,
    /// all matchers at once) and when (its window, half-open).
    #[test]
    fn silences_match_exactly_what_they_name() {
        let s = Silences::open(None).unwrap();
        s.add(
            silence(
                "a",
                vec![
                    m("service", "checkout", false, true),
                    m("action", "rollback", false, true),
                ],
                50,
                150,
            ),
            0,
        )
        .unwrap();
        s.add(
            silence(
                "b",
                vec![
                    m("service", "pay.*", true, true),
                    m("version", "1\\.4.*", true, false),
                ],
                50,
                150,
            ),
            0,
        )
        .unwrap();
        for (d, want) in [
            (
                decision("checkout", "1.5", Action::Rollback, "r"),
                Some("a"),
            ),
            (decision("checkout", "1.5", Action::Page, "r"), None),
            (decision("checkout2", "1.5", Action::Rollback, "r"), None),
            (decision("payments", "2.0", Action::Page, "r"), Some("b")),
            (decision("payments", "1.4.1", Action::Page, "r"), None),
            (decision("xpayments", "2.0", Action::Page, "r"), None),
        ] {
            assert_eq!(s.silencing(&d).as_deref(), want, "{d:?}");
        }
        let mut late = decision("checkout", "1.5", Action::Rollback, "r");
        late.detected_at = 150 * S;
        assert_eq!(s.silencing(&late), None, "the window is half-open");
        assert!(s.expire("a", 60 * S).unwrap());
        assert_eq!(
            s.silencing(&decision("checkout", "1.5", Action::Rollback, "r")),
            None
        );
        assert!(!s.expire("nope", 60 * S).unwrap());
        assert_eq!(s.list().len(), 2, "expired silences stay listed");
    }

    /// Guarantees: silences that cannot work are refused, saying why.
    #[test]
    fn silences_that_cannot_work_are_refused() {
        let s = Silences::open(None).unwrap();
        for (bad, why) in [
            (silence("x", vec![], 0, 10), "at least one matcher"),
            (
                silence("x", vec![m("service", "a", false, true)], 10, 10),
                "endsAt must be after",
            ),
            (
                silence("x", vec![m("region", "eu", false, true)], 0, 10),
                "matcher name \"region\"",
            ),
            (
                silence("x", vec![m("service", "(", true, true)], 0, 10),
                "matcher service",
            ),
            (
                silence("x", vec![m("service", "a", false, false)], 0, 10),
                "every matcher is negative",
            ),
        ] {
            let err = s.add(bad, 0).unwrap_err().to_string();
            assert!(err.contains(why), "{err} should say {why:?}");
        }
    }

    /// Guarantees: silences made over the API survive a restart (the file), maintenance
    /// windows come from the config.
    #[test]
    fn silences_survive_a_restart() {
        let dir = std::env::temp_dir().join(format!("trike-silences-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let _ = std::fs::remove_file(dir.join(FILE));
        let s = Silences::open(Some(&dir)).unwrap();
        s.add(
            silence("a", vec![m("service", "checkout", false, true)], 0, 1000),
            0,
        )
        .unwrap();
        s.set_maintenance(vec![silence(
            "maintenance:db",
            vec![m("service", "db", false, true)],
            0,
            1000,
        )]);
        let again = Silences::open(Some(&dir)).unwrap();
        assert_eq!(again.list().len(), 1, "maintenance windows are not stored");
        assert_eq!(
            again
                .silencing(&decision("checkout", "", Action::Page, "r"))
                .as_deref(),
            Some("a")
        );
        assert_eq!(
            s.silencing(&decision("db", "", Action::Page, "r"))
                .as_deref(),
            Some("maintenance:db")
        );
        let _ = std::fs::remove_dir_all(&dir);
    }
}
