//! The rule set's revision: what every decision is stamped with (`policy_revision`), so an
//! audit can tell exactly which rules made it.
//!
//! The rule set is everything that changes decisions: the SLOs (objectives, periods, tiers),
//! the canary comparisons, the stale rule and the policy rules, after validation (defaults
//! filled in). Its canonical text is compact JSON with every object's keys sorted; the revision
//! is the first 16 hex digits of that text's SHA-256. Equal rule sets written differently
//! (key order, defaults spelt out or not) share a revision; any change that can change a
//! decision makes a new one. The text is served at `GET /api/v1/revisions/{revision}` and kept
//! in the archive as `revisions/{revision}.json`.

use serde::Serialize;
use serde_json::Value;
use sha2::{Digest, Sha256};
use trike_engine::canary::CanarySpec;
use trike_engine::facts::StaleRule;
use trike_engine::policy::Rule;
use trike_engine::slo::Slo;

/// What decides: the parts of the config a revision covers.
#[derive(Debug, Serialize)]
pub struct RuleSet<'a> {
    /// SLOs with their tiers.
    pub slos: &'a [Slo],
    /// Canary comparisons.
    pub canaries: &'a [CanarySpec],
    /// When telemetry counts as stale.
    pub stale: &'a StaleRule,
    /// Policy rules, in order (order matters: the first rule wins a deduplication).
    pub policies: &'a [Rule],
}

impl RuleSet<'_> {
    /// The canonical text: compact JSON, object keys sorted at every depth.
    pub fn canonical(&self) -> String {
        let value = serde_json::to_value(self).unwrap_or(Value::Null);
        let mut out = String::new();
        write_canonical(&value, &mut out);
        out
    }
}

/// The revision of a canonical text.
pub fn revision_of(canonical: &str) -> String {
    let digest = Sha256::digest(canonical.as_bytes());
    digest[..8].iter().map(|b| format!("{b:02x}")).collect()
}

/// Compact JSON with sorted keys (independent of serde_json's map ordering features).
fn write_canonical(v: &Value, out: &mut String) {
    match v {
        Value::Object(map) => {
            let mut keys: Vec<&String> = map.keys().collect();
            keys.sort();
            out.push('{');
            for (i, k) in keys.into_iter().enumerate() {
                if i > 0 {
                    out.push(',');
                }
                out.push_str(&Value::String(k.clone()).to_string());
                out.push(':');
                write_canonical(&map[k], out);
            }
            out.push('}');
        }
        Value::Array(items) => {
            out.push('[');
            for (i, item) in items.iter().enumerate() {
                if i > 0 {
                    out.push(',');
                }
                write_canonical(item, out);
            }
            out.push(']');
        }
        scalar => out.push_str(&scalar.to_string()),
    }
}

/// True when `s` looks like a revision (16 lowercase hex digits): safe as a file name.
pub fn is_revision(s: &str) -> bool {
    s.len() == 16
        && s.bytes()
            .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    /// Guarantees: the canonical text sorts keys at every depth and is compact.
    #[test]
    fn canonical_text_sorts_keys() {
        let v = json!({"b": {"y": 1, "x": [{"d": 1, "c": 2}]}, "a": "s"});
        let mut out = String::new();
        write_canonical(&v, &mut out);
        assert_eq!(out, r#"{"a":"s","b":{"x":[{"c":2,"d":1}],"y":1}}"#);
        assert!(is_revision(&revision_of(&out)));
        assert!(!is_revision("../../etc/passwd"));
    }
}
