//! Bearer tokens (DESIGN §8): once a list is configured, calls without one of its tokens are
//! refused. Tokens are kept as SHA-256 digests and compared digest to digest, so neither the
//! token nor its length can be read from timing or from a memory dump of the config.

use sha2::{Digest, Sha256};
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};

/// A set of accepted tokens.
#[derive(Clone, Default, PartialEq, Eq)]
pub struct Tokens {
    digests: Vec<[u8; 32]>,
}

impl std::fmt::Debug for Tokens {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Tokens({} configured)", self.digests.len())
    }
}

fn digest(token: &[u8]) -> [u8; 32] {
    Sha256::digest(token).into()
}

impl Tokens {
    /// The tokens in `tokens` (empty ones are ignored).
    pub fn new<T: AsRef<[u8]>>(tokens: impl IntoIterator<Item = T>) -> Self {
        Self {
            digests: tokens
                .into_iter()
                .filter(|t| !t.as_ref().is_empty())
                .map(|t| digest(t.as_ref()))
                .collect(),
        }
    }

    /// True when no token is configured: nothing is required.
    pub fn is_open(&self) -> bool {
        self.digests.is_empty()
    }

    /// True when `token` is one of the set.
    pub fn accepts(&self, token: &str) -> bool {
        let d = digest(token.as_bytes());
        // Every digest is compared, whichever matches.
        self.digests.iter().fold(false, |ok, x| {
            ok | (x.iter().zip(&d).fold(0u8, |acc, (a, b)| acc | (a ^ b)) == 0)
        })
    }

    /// Both sets' tokens.
    pub fn union(&self, other: &Tokens) -> Tokens {
        let mut digests = self.digests.clone();
        digests.extend(other.digests.iter().copied());
        Tokens { digests }
    }
}

/// The token of an `Authorization: Bearer T` header value (the scheme is case-insensitive).
pub fn bearer(value: &str) -> Option<&str> {
    let (scheme, token) = value.trim().split_once(' ')?;
    scheme
        .eq_ignore_ascii_case("bearer")
        .then(|| token.trim())
        .filter(|t| !t.is_empty())
}

/// Why a call was refused.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Refusal {
    /// No token.
    Missing,
    /// A token that is not in the set.
    Invalid,
    /// A valid token without the scope the call needs (a read token on a write call).
    Scope,
    /// No client certificate on a connection where `tls.client_ca_file` requires one (the
    /// admin API lets probes in without one; everything else is refused).
    ClientCert,
}

impl Refusal {
    /// Its metric label.
    pub const fn name(self) -> &'static str {
        match self {
            Self::Missing => "missing",
            Self::Invalid => "invalid",
            Self::Scope => "scope",
            Self::ClientCert => "client_cert",
        }
    }

    /// What the caller is told.
    pub const fn message(self) -> &'static str {
        match self {
            Self::Missing => "a bearer token is required (Authorization: Bearer <token>)",
            Self::Invalid => "the bearer token is not valid",
            Self::Scope => "the token does not allow this call (it needs an admin write token)",
            Self::ClientCert => {
                "a client certificate is required (tls.client_ca_file): only /healthz and /readyz are open without one"
            }
        }
    }
}

/// Checks an `Authorization` header value against `tokens`.
pub fn check(tokens: &Tokens, authorization: Option<&str>) -> Result<(), Refusal> {
    if tokens.is_open() {
        return Ok(());
    }
    let token = authorization.and_then(bearer).ok_or(Refusal::Missing)?;
    if tokens.accepts(token) {
        Ok(())
    } else {
        Err(Refusal::Invalid)
    }
}

/// Where a refusal happened.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Surface {
    /// OTLP/gRPC.
    OtlpGrpc,
    /// OTLP/HTTP.
    OtlpHttp,
    /// The admin API.
    Admin,
}

const SURFACES: [(Surface, &str); 3] = [
    (Surface::OtlpGrpc, "otlp_grpc"),
    (Surface::OtlpHttp, "otlp_http"),
    (Surface::Admin, "admin"),
];
const REFUSALS: [Refusal; 4] = [
    Refusal::Missing,
    Refusal::Invalid,
    Refusal::Scope,
    Refusal::ClientCert,
];

/// Refusals by surface and reason, for `/metrics`.
#[derive(Debug, Default)]
pub struct AuthStats {
    refused: [[AtomicU64; 4]; 3],
}

impl AuthStats {
    /// Counts a refusal.
    pub fn refused(&self, surface: Surface, why: Refusal) {
        let s = SURFACES
            .iter()
            .position(|(x, _)| *x == surface)
            .unwrap_or(0);
        let r = REFUSALS.iter().position(|x| *x == why).unwrap_or(0);
        self.refused[s][r].fetch_add(1, Relaxed);
    }

    /// Refusals so far of `surface` for `why`.
    pub fn count(&self, surface: Surface, why: Refusal) -> u64 {
        let s = SURFACES
            .iter()
            .position(|(x, _)| *x == surface)
            .unwrap_or(0);
        let r = REFUSALS.iter().position(|x| *x == why).unwrap_or(0);
        self.refused[s][r].load(Relaxed)
    }

    /// Renders `trike_auth_refused_total{surface, reason}`.
    pub fn render(&self, out: &mut String) {
        use std::fmt::Write;
        let name = "trike_auth_refused_total";
        trike_engine::expo::header(
            out,
            name,
            "Calls refused for a missing or invalid bearer token, a token without the scope, or no client certificate.",
            "counter",
        );
        for (s, (_, surface)) in SURFACES.iter().enumerate() {
            for (r, why) in REFUSALS.iter().enumerate() {
                let v = self.refused[s][r].load(Relaxed);
                let _ = writeln!(
                    out,
                    "{name}{{surface=\"{surface}\",reason=\"{}\"}} {v}",
                    why.name()
                );
            }
        }
    }
}

/// The ingest side's token check: the tokens (open when none) and where refusals are counted.
#[derive(Clone, Debug, Default)]
pub struct IngestAuth {
    /// Accepted tokens.
    pub tokens: std::sync::Arc<Tokens>,
    /// Refusal counters.
    pub stats: std::sync::Arc<AuthStats>,
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Table: the header forms accepted and refused, and an open set that requires nothing.
    #[test]
    fn bearer_tokens() {
        let t = Tokens::new(["s3cret", "other", ""]);
        assert!(!t.is_open());
        assert_eq!(check(&t, Some("Bearer s3cret")), Ok(()));
        assert_eq!(check(&t, Some("bearer other")), Ok(()));
        assert_eq!(check(&t, None), Err(Refusal::Missing));
        assert_eq!(check(&t, Some("Basic czNjcmV0")), Err(Refusal::Missing));
        assert_eq!(check(&t, Some("Bearer ")), Err(Refusal::Missing));
        assert_eq!(check(&t, Some("Bearer s3cre")), Err(Refusal::Invalid));
        assert_eq!(check(&Tokens::new([""]), None), Ok(()), "no token: open");
        assert_eq!(format!("{t:?}"), "Tokens(2 configured)", "never printed");
        let stats = AuthStats::default();
        stats.refused(Surface::Admin, Refusal::Scope);
        let mut out = String::new();
        stats.render(&mut out);
        assert!(out.contains("trike_auth_refused_total{surface=\"admin\",reason=\"scope\"} 1"));
    }
}
