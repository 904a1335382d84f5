//! Telemetry hygiene (DESIGN §8): what becomes a series key is scrubbed first, so personal data
//! and unbounded ids never reach series keys, labels, the archive or control events.
//! - By default, ids in operation names are collapsed, path segment by segment: all digits,
//!   UUIDs, long hex strings (16+ characters with a digit) and e-mail addresses become `{id}`
//!   (`GET /users/123/orders/9f8e…` → `GET /users/{id}/orders/{id}`). It also bounds
//!   cardinality when a client puts raw paths in span names.
//! - `scrub.rules` (regex → replacement) then apply, in order, to operation names and to
//!   dimension values.
//!
//! The common case costs a scan for a digit or `@`; nothing is allocated unless something
//! changes.

use regex::Regex;
use std::borrow::Cow;

/// What an id becomes.
pub const ID: &str = "{id}";

/// One rule.
#[derive(Clone, Debug)]
pub struct Rule {
    /// The pattern.
    pub pattern: Regex,
    /// Its replacement (`$1` and `${name}` refer to groups).
    pub replacement: String,
}

/// The scrubbing applied while decoding.
#[derive(Clone, Debug)]
pub struct Scrub {
    /// Collapse ids in operation names.
    pub collapse_ids: bool,
    /// Rules, in order.
    pub rules: Vec<Rule>,
}

impl Default for Scrub {
    fn default() -> Self {
        Self {
            collapse_ids: true,
            rules: Vec::new(),
        }
    }
}

impl PartialEq for Scrub {
    fn eq(&self, other: &Self) -> bool {
        self.collapse_ids == other.collapse_ids
            && self.rules.len() == other.rules.len()
            && self.rules.iter().zip(&other.rules).all(|(a, b)| {
                a.pattern.as_str() == b.pattern.as_str() && a.replacement == b.replacement
            })
    }
}

impl Scrub {
    /// True when dimension values may change (there are rules).
    pub fn has_rules(&self) -> bool {
        !self.rules.is_empty()
    }

    /// An operation name, scrubbed.
    pub fn operation<'a>(&self, op: &'a str) -> Cow<'a, str> {
        let collapsed = if self.collapse_ids {
            collapse_ids(op)
        } else {
            Cow::Borrowed(op)
        };
        self.apply_rules(collapsed)
    }

    /// A dimension value, scrubbed (rules only: dimension values are not paths).
    pub fn value<'a>(&self, v: &'a str) -> Cow<'a, str> {
        self.apply_rules(Cow::Borrowed(v))
    }

    fn apply_rules<'a>(&self, mut s: Cow<'a, str>) -> Cow<'a, str> {
        for r in &self.rules {
            if let Cow::Owned(changed) = r.pattern.replace_all(&s, r.replacement.as_str()) {
                s = Cow::Owned(changed);
            }
        }
        s
    }
}

fn is_uuid(b: &[u8]) -> bool {
    b.len() == 36
        && b.iter().enumerate().all(|(i, c)| match i {
            8 | 13 | 18 | 23 => *c == b'-',
            _ => c.is_ascii_hexdigit(),
        })
}

fn is_id(seg: &[u8]) -> bool {
    if seg.is_empty() || seg[0] == b'{' {
        return false;
    }
    // Every kind of id has a digit or an `@`, but a UUID, which has 36 characters.
    if seg.len() != 36 && !seg.iter().any(|c| c.is_ascii_digit() || *c == b'@') {
        return false;
    }
    let all_digits = seg.iter().all(u8::is_ascii_digit);
    let long_hex = seg.len() >= 16
        && seg.iter().all(u8::is_ascii_hexdigit)
        && seg.iter().any(u8::is_ascii_digit);
    let email = match seg.iter().position(|&c| c == b'@') {
        Some(at) => {
            let host = &seg[at + 1..];
            at > 0 && host.contains(&b'.') && !host.contains(&b'@')
        }
        None => false,
    };
    all_digits || long_hex || email || is_uuid(seg)
}

/// The part of a path segment checked for an id: after its last space ("GET /users/1": the
/// method stays).
fn tail(seg: &[u8]) -> &[u8] {
    seg.iter()
        .rposition(|&c| c == b' ')
        .map_or(seg, |i| &seg[i + 1..])
}

/// Collapses ids in the `/`-separated segments of `op` (a query string is cut: it is never
/// part of an operation). Nothing is allocated unless something changes.
pub fn collapse_ids(op: &str) -> Cow<'_, str> {
    let path = match op.bytes().position(|c| c == b'?') {
        Some(q) => &op[..q],
        None => op,
    };
    let segments = || path.as_bytes().split(|&c| c == b'/');
    if path.len() == op.len() && !segments().any(|seg| is_id(tail(seg))) {
        return Cow::Borrowed(op);
    }
    let mut out = String::with_capacity(path.len());
    let mut rest = path;
    loop {
        let (seg, next) = match rest.find('/') {
            Some(i) => (&rest[..i], Some(&rest[i + 1..])),
            None => (rest, None),
        };
        let t = tail(seg.as_bytes());
        if is_id(t) {
            // The head (up to and including the space) is ASCII-delimited: a valid `str` cut.
            out.push_str(&seg[..seg.len() - t.len()]);
            out.push_str(ID);
        } else {
            out.push_str(seg);
        }
        match next {
            Some(n) => {
                out.push('/');
                rest = n;
            }
            None => break,
        }
    }
    Cow::Owned(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Table: ids collapse, templates and ordinary names stay (and are not copied).
    #[test]
    fn ids_collapse() {
        for (raw, want) in [
            ("/users/123", "/users/{id}"),
            ("GET /users/123/orders/42", "GET /users/{id}/orders/{id}"),
            ("/o/3f2b8c1e-9a4d-4e6f-8b7a-1c2d3e4f5a6b", "/o/{id}"),
            ("/blob/9f8e7d6c5b4a39281706f5e4", "/blob/{id}"),
            ("/mail/jane.doe@example.com/inbox", "/mail/{id}/inbox"),
            ("/search?q=jane@example.com", "/search"),
            ("/users/{id}", "/users/{id}"),
            ("/v2/items", "/v2/items"),
            ("/deadbeefdeadbeef", "/deadbeefdeadbeef"),
            ("grpc.health.v1.Health/Check", "grpc.health.v1.Health/Check"),
            ("GET /", "GET /"),
        ] {
            assert_eq!(collapse_ids(raw), want, "{raw}");
        }
        assert!(matches!(collapse_ids("/users/{id}"), Cow::Borrowed(_)));
        assert!(matches!(collapse_ids("/v2/items"), Cow::Borrowed(_)));
        for (raw, want) in [
            ("", ""),
            ("/", "/"),
            ("//7//", "//{id}//"),
            ("42", "{id}"),
            ("GET /a b/7?x=1", "GET /a b/{id}"),
            ("@/x@y.z/a@b", "@/{id}/a@b"),
            ("/é/12/ü", "/é/{id}/ü"),
            ("/3F2B8C1E-9A4D-4E6F-8B7A-1C2D3E4F5A6B/x", "/{id}/x"),
        ] {
            assert_eq!(collapse_ids(raw), want, "{raw}");
        }
    }

    /// Guarantees: rules apply in order to operations (after id collapsing) and to values.
    #[test]
    fn rules_apply_in_order() {
        let s = Scrub {
            collapse_ids: true,
            rules: vec![
                Rule {
                    pattern: Regex::new(r"/tenant-[a-z]+").unwrap(),
                    replacement: "/tenant-{name}".into(),
                },
                Rule {
                    pattern: Regex::new(r"^ip-(\d+)-\d+-\d+-\d+$").unwrap(),
                    replacement: "ip-$1-x".into(),
                },
            ],
        };
        assert_eq!(
            s.operation("/tenant-acme/users/7"),
            "/tenant-{name}/users/{id}"
        );
        assert_eq!(s.value("ip-10-1-2-3"), "ip-10-x");
        assert!(matches!(s.value("prod"), Cow::Borrowed(_)));
    }
}
