//! `trike query "SQL"`: asks a running processor (`POST /api/v1/query` on its admin address),
//! or, with `--archive DIR`, runs the SQL here over that archive; prints a table or JSON.

use crate::cli::QueryFormat;
use anyhow::Context;
use serde_json::Value;
use std::path::PathBuf;
use trike_sql::query::Limits;

/// Runs the query; the text to print.
pub async fn run(
    sql: &str,
    archive: Option<PathBuf>,
    admin_addr: &str,
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
    let url = format!("http://{admin_addr}/api/v1/query?limit={}", limits.max_rows);
    let resp = reqwest::Client::new()
        .post(&url)
        .body(sql.to_string())
        .send()
        .await
        .with_context(|| {
            format!("no processor answers at {admin_addr} (start `trike run`, or pass --admin-addr or --archive)")
        })?;
    let status = resp.status();
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
