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

/// The attribute naming the key that signed.
pub const KEY_ID_ATTRIBUTE: &str = "trikekeyid";

/// A key that signs: its id (sent as `trikekeyid`, so actuators know which key to check) and
/// its secret, which `Debug` never prints.
#[derive(Clone, PartialEq, Eq)]
pub struct SigningKey {
    /// The key's id (`signing.key_id`).
    pub id: Option<String>,
    secret: Vec<u8>,
}

impl std::fmt::Debug for SigningKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "SigningKey {{ id: {:?}, secret: *** }}", self.id)
    }
}

impl SigningKey {
    /// A key named `id` (or unnamed).
    pub fn new(id: Option<String>, secret: impl Into<Vec<u8>>) -> Self {
        Self {
            id,
            secret: secret.into(),
        }
    }

    /// Signs `event`: sets `trikekeyid` (covered by the signature), then `trikesignature`.
    pub fn sign(&self, event: &mut crate::ControlEvent) {
        event.trikekeyid = self.id.clone();
        sign_event(event, &self.secret);
    }
}

/// Why an event's signature is not accepted.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum Rejection {
    /// No `trikesignature`.
    #[error("unsigned: no trikesignature")]
    Unsigned,
    /// `trikekeyid` names a key this actuator does not have.
    #[error("signed with key {0:?}, which is not among signing.verify_keys")]
    UnknownKey(String),
    /// The signature does not match.
    #[error("trikesignature does not match the event")]
    BadSignature,
}

/// The keys an actuator accepts: any of them verifies an event (rotation without downtime:
/// list the new key beside the old, move the processors to it, then drop the old one). An
/// event naming its key (`trikekeyid`) is checked against that key only.
#[derive(Clone, Default, PartialEq, Eq)]
pub struct VerifyKeys {
    keys: Vec<(Option<String>, Vec<u8>)>,
}

impl std::fmt::Debug for VerifyKeys {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let ids: Vec<_> = self.keys.iter().map(|(id, _)| id).collect();
        write!(f, "VerifyKeys {{ ids: {ids:?}, secrets: *** }}")
    }
}

impl VerifyKeys {
    /// One unnamed key.
    pub fn single(secret: impl Into<Vec<u8>>) -> Self {
        Self::default().with(None, secret)
    }

    /// Adds a key named `id` (or unnamed).
    pub fn with(mut self, id: Option<&str>, secret: impl Into<Vec<u8>>) -> Self {
        self.keys.push((id.map(str::to_string), secret.into()));
        self
    }

    /// True when no key is configured (events are not checked).
    pub fn is_empty(&self) -> bool {
        self.keys.is_empty()
    }

    /// Checks `event`'s signature against the keys.
    pub fn verify(&self, event: &Value) -> Result<(), Rejection> {
        if event
            .get(SIGNATURE_ATTRIBUTE)
            .and_then(Value::as_str)
            .is_none()
        {
            return Err(Rejection::Unsigned);
        }
        match event.get(KEY_ID_ATTRIBUTE).and_then(Value::as_str) {
            Some(id) => {
                let named: Vec<_> = self
                    .keys
                    .iter()
                    .filter(|(k, _)| k.as_deref() == Some(id))
                    .collect();
                if named.is_empty() {
                    return Err(Rejection::UnknownKey(id.to_string()));
                }
                named
                    .iter()
                    .any(|(_, s)| verify(event, s))
                    .then_some(())
                    .ok_or(Rejection::BadSignature)
            }
            None => self
                .keys
                .iter()
                .any(|(_, s)| verify(event, s))
                .then_some(())
                .ok_or(Rejection::BadSignature),
        }
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
                ..Default::default()
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
            inhibited_by: None,
        };
        let mut typed = crate::ControlEvent::from_decision(&d, "i");
        sign_event(&mut typed, b"secret");
        assert!(verify(&typed.to_value(), b"secret"));
        let mut as_value = crate::ControlEvent::from_decision(&d, "i").to_value();
        sign(&mut as_value, b"secret");
        assert_eq!(as_value, typed.to_value());
        // Named keys and rotation: an event names its key; any listed key verifies.
        let old = SigningKey::new(Some("2026-11".into()), b"old-secret".to_vec());
        let new = SigningKey::new(Some("2026-12".into()), b"new-secret".to_vec());
        let keys = VerifyKeys::default()
            .with(Some("2026-11"), b"old-secret".to_vec())
            .with(Some("2026-12"), b"new-secret".to_vec());
        for k in [&old, &new] {
            let mut e = crate::ControlEvent::from_decision(&d, "i");
            k.sign(&mut e);
            assert_eq!(e.trikekeyid, k.id);
            assert_eq!(keys.verify(&e.to_value()), Ok(()));
        }
        let mut e = crate::ControlEvent::from_decision(&d, "i");
        SigningKey::new(Some("2025-01".into()), b"retired".to_vec()).sign(&mut e);
        assert_eq!(
            keys.verify(&e.to_value()),
            Err(Rejection::UnknownKey("2025-01".into()))
        );
        let mut e = crate::ControlEvent::from_decision(&d, "i");
        old.sign(&mut e);
        e.trikekeyid = Some("2026-12".into()); // the id is covered by the signature
        assert_eq!(keys.verify(&e.to_value()), Err(Rejection::BadSignature));
        assert_eq!(
            keys.verify(&crate::ControlEvent::from_decision(&d, "i").to_value()),
            Err(Rejection::Unsigned)
        );
        assert!(
            !format!("{old:?}{keys:?}").contains("secret\""),
            "never printed"
        );
        // RFC 4231 test case 2 shape: HMAC-SHA256("Jefe", "what do ya want for nothing?").
        let mut mac = Hmac::<Sha256>::new_from_slice(b"Jefe").unwrap();
        mac.update(b"what do ya want for nothing?");
        assert_eq!(
            hex(&mac.finalize().into_bytes()),
            "5bdcc146bf60754e6a042426089575c75a003f089d2739839dec58b964ec3843"
        );
    }
}
