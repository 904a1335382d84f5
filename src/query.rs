//! `trike query "SQL"`: asks a running processor (`POST /api/v1/query` on its admin address,
//! with a read token and over TLS when the admin API asks for them), or, with `--archive DIR`,
//! runs the SQL here over that archive; prints a table or JSON.

use crate::cli::QueryFormat;
use anyhow::Context;
use serde_json::Value;
use std::path::PathBuf;
use trike_sql::query::Limits;

/// How to reach a running processor's admin API.
#[derive(Clone, Debug, Default)]
pub struct Remote {
    /// `host:port` (plain HTTP unless a TLS file is given), or `http://host:port`,
    /// `https://host:port`.
    pub admin_addr: String,
    /// A bearer token: one of `auth.admin_read_tokens` (or a write token).
    pub token: Option<trike_sinks::Secret>,
    /// The CA that signed the admin API's certificate (default, over `https://`: the
    /// system's trusted roots).
    pub ca_file: Option<PathBuf>,
    /// A client certificate and its key, for an admin API that verifies them
    /// (`tls.client_ca_file`).
    pub cert_file: Option<PathBuf>,
    /// The client certificate's key.
    pub key_file: Option<PathBuf>,
}

impl Remote {
    /// The admin API's base URL and a client for it.
    fn client(&self) -> anyhow::Result<(String, reqwest::Client)> {
        let addr = self.admin_addr.trim_end_matches('/');
        let tls_files = self.ca_file.is_some() || self.cert_file.is_some();
        let (https, host_port) = match addr.split_once("://") {
            Some(("https", rest)) => (true, rest),
            Some(("http", rest)) if !tls_files => (false, rest),
            Some(("http", _)) => anyhow::bail!(
                "--admin-addr {addr}: --ca-file and --cert-file are for https:// (give https:// or host:port)"
            ),
            Some((scheme, _)) => {
                anyhow::bail!("--admin-addr {addr}: {scheme}:// is neither http:// nor https://")
            }
            None => (tls_files, addr),
        };
        // Bounded: a stalled admin API ends the command (a query's own limit is the server's
        // `query.timeout`, 30 s by default).
        let builder = reqwest::Client::builder()
            .connect_timeout(std::time::Duration::from_secs(10))
            .timeout(std::time::Duration::from_secs(300));
        let builder = if https {
            let tls = trike_ingest::tls::HopTls {
                ca_file: self.ca_file.clone(),
                cert_file: self.cert_file.clone(),
                key_file: self.key_file.clone(),
                server_name_override: None,
            };
            // HTTP/1.1, which this client speaks (it is built without HTTP/2).
            let cfg = trike_ingest::tls::hop_client_config(&tls, &[b"http/1.1"])
                .map_err(|e| anyhow::anyhow!("{}: {}", e.path, e.reason))?;
            builder.tls_backend_preconfigured(cfg)
        } else {
            builder
        };
        let scheme = if https { "https" } else { "http" };
        Ok((format!("{scheme}://{host_port}"), builder.build()?))
    }
}

/// Runs the query; the text to print.
pub async fn run(
    sql: &str,
    archive: Option<PathBuf>,
    remote: &Remote,
    format: QueryFormat,
    limit: usize,
) -> anyhow::Result<String> {
    let limits = Limits {
        max_rows: limit.max(1),
        ..Limits::default()
    };
    if let Some(dir) = archive {
        anyhow::ensure!(
            dir.is_dir(),
            "--archive {}: not a directory (the archive.dir of a processor)",
            dir.display()
        );
        let ctx = trike_sql::query::session(None, Some(&dir))?;
        let out = trike_sql::query::run(&ctx, sql, limits).await?;
        let mut text = match format {
            QueryFormat::Table => out.table()?,
            QueryFormat::Json => serde_json::to_string_pretty(&out.json_rows()?)?,
        };
        if out.truncated {
            text.push_str(&format!("\n(cut at {} rows: --limit)", limits.max_rows));
        }
        return Ok(text);
    }
    let (base, client) = remote.client()?;
    let mut request = client
        .post(format!("{base}/api/v1/query?limit={}", limits.max_rows))
        .body(sql.to_string());
    if let Some(token) = &remote.token {
        request = request.bearer_auth(token.expose());
    }
    let resp = request.send().await.with_context(|| {
        format!("no processor answers at {base} (start `trike run`, or pass --admin-addr or --archive; over TLS, --ca-file and, for mTLS, --cert-file and --key-file)")
    })?;
    let status = resp.status();
    if status == reqwest::StatusCode::UNAUTHORIZED || status == reqwest::StatusCode::FORBIDDEN {
        let why: Value = resp.json().await.unwrap_or_default();
        anyhow::bail!(
            "{base} refused the query ({status}: {}): a read token goes in --token or TRIKE_ADMIN_TOKEN, a client certificate in --cert-file and --key-file",
            why["error"].as_str().unwrap_or("no reason given")
        );
    }
    let header = |name: &str| {
        resp.headers()
            .get(name)
            .and_then(|v| v.to_str().ok())
            .unwrap_or("")
            .to_string()
    };
    let (truncated, columns) = (
        header(crate::admin::query::TRUNCATED) == "true",
        header(crate::admin::query::COLUMNS),
    );
    let doc: Value = resp.json().await.context("the processor's answer")?;
    if !status.is_success() {
        anyhow::bail!("{}", doc["error"].as_str().unwrap_or("query failed"));
    }
    let rows = doc.as_array().cloned().unwrap_or_default();
    let mut text = match format {
        QueryFormat::Json => serde_json::to_string_pretty(&rows)?,
        QueryFormat::Table => {
            let columns: Vec<String> = columns
                .split(',')
                .filter(|c| !c.is_empty())
                .map(str::to_string)
                .collect();
            table(&columns, &rows)
        }
    };
    if truncated {
        text.push_str(&format!("\n(cut at {} rows: --limit)", limits.max_rows));
    }
    Ok(text)
}

/// JSON rows as an aligned text table.
pub fn table(columns: &[String], rows: &[Value]) -> String {
    let cell = |v: &Value| match v {
        Value::Null => String::new(),
        Value::String(s) => s.clone(),
        other => other.to_string(),
    };
    let cells: Vec<Vec<String>> = rows
        .iter()
        .map(|r| columns.iter().map(|c| cell(&r[c])).collect())
        .collect();
    let widths: Vec<usize> = columns
        .iter()
        .enumerate()
        .map(|(i, c)| {
            cells
                .iter()
                .map(|r| r[i].chars().count())
                .chain([c.chars().count()])
                .max()
                .unwrap_or(0)
        })
        .collect();
    let line = |vals: &[String]| {
        let parts: Vec<String> = vals
            .iter()
            .zip(&widths)
            .map(|(v, w)| format!("{v:<w$}"))
            .collect();
        format!("| {} |", parts.join(" | "))
    };
    let rule = format!(
        "+{}+",
        widths
            .iter()
            .map(|w| "-".repeat(w + 2))
            .collect::<Vec<_>>()
            .join("+")
    );
    let mut out = vec![rule.clone(), line(columns), rule.clone()];
    out.extend(cells.iter().map(|r| line(r)));
    out.push(rule);
    out.join("\n")
}

#[cfg(test)]
mod tests {
    /// Guarantees: columns are aligned to their widest cell; nulls are blank.
    #[test]
    fn tables_align() {
        let rows = vec![
            serde_json::json!({"a": "x", "b": 1}),
            serde_json::json!({"a": "longer", "b": null}),
        ];
        let t = super::table(&["a".into(), "b".into()], &rows);
        assert_eq!(
            t,
            "+--------+---+\n| a      | b |\n+--------+---+\n| x      | 1 |\n| longer |   |\n+--------+---+"
        );
    }
}
