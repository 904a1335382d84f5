//! Control-event signatures (DESIGN §4): extension attribute `trikesignature`, the lowercase
//! hex HMAC-SHA256 of the canonical event without that attribute. Canonical = compact JSON
//! with object keys sorted (what `serde_json::Value` writes), so any reader can recompute it.

use hmac::{Hmac, Mac};
use serde_json::Value;
use sha2::Sha256;

/// The extension attribute's name.
pub const SIGNATURE_ATTRIBUTE: &str = "trikesignature";

fn digest(event: &Value, key: &[u8]) -> Option<Vec<u8>> {
    let mut unsigned = event.clone();
    unsigned.as_object_mut()?.remove(SIGNATURE_ATTRIBUTE);
    let canonical = serde_json::to_vec(&unsigned).ok()?;
    let mut mac = Hmac::<Sha256>::new_from_slice(key).ok()?;
    mac.update(&canonical);
    Some(mac.finalize().into_bytes().to_vec())
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// Adds `trikesignature` to `event`.
pub fn sign(event: &mut Value, key: &[u8]) {
    if let Some(d) = digest(event, key)
        && let Some(obj) = event.as_object_mut()
    {
        obj.insert(SIGNATURE_ATTRIBUTE.into(), Value::String(hex(&d)));
    }
}

/// Signs a control event (sets `trikesignature` over its canonical form without it).
pub fn sign_event(event: &mut crate::ControlEvent, key: &[u8]) {
    event.trikesignature = None;
    if let Some(d) = digest(&event.to_value(), key) {
        event.trikesignature = Some(hex(&d));
    }
}

/// True when `event` carries a valid signature for `key` (constant-time comparison).
pub fn verify(event: &Value, key: &[u8]) -> bool {
    let Some(given) = event.get(SIGNATURE_ATTRIBUTE).and_then(Value::as_str) else {
        return false;
    };
    let Some(expected) = digest(event, key) else {
        return false;
    };
    let given = given.as_bytes();
    let expected = hex(&expected);
    let expected = expected.as_bytes();
    given.len() == expected.len()
        && given
            .iter()
            .zip(expected)
            .fold(0u8, |acc, (a, b)| acc | (a ^ b))
            == 0
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    /// Guarantees: a signed event verifies with its key only; any change to it, a missing
    /// signature, or another key is rejected; the signature matches a known HMAC.
    #[test]
    fn sign_and_verify() {
        let mut e = json!({"specversion": "1.0", "id": "x", "data": {"action": "rollback", "b": 1, "a": 2}});
        sign(&mut e, b"secret");
        assert!(verify(&e, b"secret"));
        assert!(!verify(&e, b"other"));
        let mut tampered = e.clone();
        tampered["data"]["action"] = json!("page");
        assert!(!verify(&tampered, b"secret"));
        let mut unsigned = e.clone();
        unsigned
            .as_object_mut()
            .unwrap()
            .remove(SIGNATURE_ATTRIBUTE);
        assert!(!verify(&unsigned, b"secret"));
        // Key order does not matter: the canonical form sorts keys.
        let reordered: Value = serde_json::from_str(&e.to_string()).unwrap();
        assert!(verify(&reordered, b"secret"));
        // A typed event signs exactly as its JSON value does.
        let d = trike_engine::policy::Decision {
            decision_id: "d".into(),
            action: trike_engine::policy::Action::Page,
            target: trike_engine::policy::Target {
                service: "s".into(),
                version: String::new(),
            },
            params: Default::default(),
            severity: trike_engine::slo::Severity::Page,
            reason: "r".into(),
            rule: "x".into(),
            slo: None,
            policy_revision: "p".into(),
            dry_run: false,
            evidence: trike_engine::policy::Evidence::Stale {
                silent_s: 1.0,
                lag_s: 0.0,
            },
            detected_at: 0,
            observed_until: 0,
            resolves: None,
        };
        let mut typed = crate::ControlEvent::from_decision(&d, "i");
        sign_event(&mut typed, b"secret");
        assert!(verify(&typed.to_value(), b"secret"));
        let mut as_value = crate::ControlEvent::from_decision(&d, "i").to_value();
        sign(&mut as_value, b"secret");
        assert_eq!(as_value, typed.to_value());
        // RFC 4231 test case 2 shape: HMAC-SHA256("Jefe", "what do ya want for nothing?").
        let mut mac = Hmac::<Sha256>::new_from_slice(b"Jefe").unwrap();
        mac.update(b"what do ya want for nothing?");
        assert_eq!(
            hex(&mac.finalize().into_bytes()),
            "5bdcc146bf60754e6a042426089575c75a003f089d2739839dec58b964ec3843"
        );
    }
}
