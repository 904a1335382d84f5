//! The trust-boundary and overload sections of the config (DESIGN §7, §8): `auth:`, `tls:`,
//! `limits:` and `query:`, each validated with its defaults, every problem naming its field.

use trike_ingest::Limits;

/// Bearer tokens per scope (none configured: that scope is open).
#[derive(Clone, Debug, Default)]
pub struct AuthConfig {
    /// OTLP ingest.
    pub ingest: trike_ingest::auth::Tokens,
    /// Admin reads.
    pub admin_read: trike_ingest::auth::Tokens,
    /// Admin writes (which also read).
    pub admin_write: trike_ingest::auth::Tokens,
    /// The first write token: what a member presents when it passes on a call of its own
    /// (a deploy event's rollout) to the member that owns the service.
    pub member_token: Option<trike_sinks::Secret>,
}

/// Tokens shorter than this are refused: a token must not be guessable.
pub const MIN_TOKEN_LEN: usize = 16;

pub(super) fn validate_auth(a: &super::RawAuth, p: &mut Vec<String>) -> AuthConfig {
    for (field, list) in [
        ("ingest_tokens", &a.ingest_tokens),
        ("admin_read_tokens", &a.admin_read_tokens),
        ("admin_write_tokens", &a.admin_write_tokens),
    ] {
        for (i, t) in list.iter().enumerate() {
            if t.expose().len() < MIN_TOKEN_LEN {
                p.push(format!(
                    "auth.{field}[{i}]: shorter than {MIN_TOKEN_LEN} characters; use a random token (e.g. openssl rand -hex 32)"
                ));
            }
        }
    }
    let tokens = |l: &Vec<trike_sinks::Secret>| {
        trike_ingest::auth::Tokens::new(l.iter().map(|s| s.expose().as_bytes()))
    };
    AuthConfig {
        ingest: tokens(&a.ingest_tokens),
        admin_read: tokens(&a.admin_read_tokens),
        admin_write: tokens(&a.admin_write_tokens),
        member_token: a.admin_write_tokens.first().cloned(),
    }
}

/// `limits.memory_limit` in bytes (default: 80 % of the container's or the machine's memory).
pub(super) fn validate_memory_limit(
    raw: Option<super::bytes::ByteSize>,
    p: &mut Vec<String>,
) -> u64 {
    match raw {
        Some(b) if b.0 < MIN_MEMORY_LIMIT => {
            p.push(format!(
                "limits.memory_limit: {b} is below the minimum of {}",
                super::bytes::ByteSize(MIN_MEMORY_LIMIT)
            ));
            MIN_MEMORY_LIMIT
        }
        Some(b) => b.0,
        None => trike_ingest::memory::default_limit(),
    }
}

/// The smallest `limits.memory_limit`: below it the process cannot even start its threads.
const MIN_MEMORY_LIMIT: u64 = 32 << 20;

/// `limits:` connection and read-time keys (the byte budget is checked with the receivers).
pub(super) fn validate_limits(raw: &super::RawLimits, limits: &mut Limits, p: &mut Vec<String>) {
    if let Some(n) = raw.max_connections {
        if n == 0 {
            p.push("limits.max_connections: must be at least 1".into());
        }
        limits.max_connections = n;
    }
    if let Some(n) = raw.max_grpc_streams {
        if n == 0 {
            p.push("limits.max_grpc_streams: must be at least 1".into());
        }
        limits.max_grpc_streams = n;
    }
    for (value, slot) in [
        (raw.header_read_timeout, &mut limits.header_read_timeout),
        (raw.body_read_timeout, &mut limits.body_read_timeout),
    ] {
        // A `Span` is never zero (the parser refuses `0s`).
        if let Some(t) = value {
            *slot = std::time::Duration::from_secs(t.secs());
        }
    }
}

/// `tls:`: the files must load now, not at the first connection.
pub(super) fn validate_tls(
    raw: Option<&super::RawTls>,
    p: &mut Vec<String>,
) -> Option<trike_ingest::tls::TlsFiles> {
    use trike_ingest::tls::{Alpn, ClientCerts, TlsFiles, server_config};
    let raw = raw?;
    let files = TlsFiles {
        cert_file: raw.cert_file.clone(),
        key_file: raw.key_file.clone(),
        client_ca_file: raw.client_ca_file.clone(),
    };
    if let Err(e) = server_config(&files, ClientCerts::Required, Alpn::H2) {
        p.push(e.to_string());
    }
    Some(files)
}

/// `query:`, with its defaults.
pub(super) fn validate_query(
    q: &super::RawQuery,
    p: &mut Vec<String>,
) -> trike_sql::query::QueryConfig {
    let d = trike_sql::query::QueryConfig::default();
    let memory_limit = q.memory_limit.map_or(d.memory_limit, |b| b.as_usize());
    if memory_limit < 1 << 20 {
        p.push(format!(
            "query.memory_limit: {} is below the minimum of 1MiB",
            super::bytes::ByteSize(memory_limit as u64)
        ));
    }
    let max_concurrent = q.max_concurrent.unwrap_or(d.max_concurrent);
    if !(1..=64).contains(&max_concurrent) {
        p.push(format!(
            "query.max_concurrent: {max_concurrent} is not in 1..=64"
        ));
    }
    let max_rows = q.max_rows.unwrap_or(d.max_rows);
    if !(1..=1_000_000).contains(&max_rows) {
        p.push(format!("query.max_rows: {max_rows} is not in 1..=1000000"));
    }
    let timeout = q
        .timeout
        .map_or(d.timeout, |t| std::time::Duration::from_secs(t.secs()));
    if timeout.is_zero() {
        p.push("query.timeout: must be at least 1s".into());
    }
    trike_sql::query::QueryConfig {
        memory_limit,
        timeout,
        max_concurrent,
        max_rows,
    }
}
