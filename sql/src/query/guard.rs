//! What `POST /api/v1/query` and `trike query` may run: queries only. Checked on the parsed
//! statements *before* planning, so nothing else is ever planned or executed:
//! - exactly one statement, and it is a query (`SELECT`, `WITH`, `VALUES`) or an `EXPLAIN` of
//!   one (`EXPLAIN ANALYZE` runs its statement, so that must be a query too);
//! - every table it reads is a name, never a file path or URL (DataFusion can read files
//!   named as tables, and `CREATE EXTERNAL TABLE` or `COPY … TO` read and write any file the
//!   process can reach).
//!
//! Planning then runs with DDL, DML and `SET`-like statements disabled as well.

use datafusion::sql::parser::{DFParser, Statement};
use datafusion::sql::sqlparser::ast::{self, visit_relations};
use datafusion::sql::sqlparser::dialect::GenericDialect;
use std::ops::ControlFlow;

/// Why a statement is refused.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum Refused {
    /// Not one statement.
    #[error("send exactly one statement (got {0})")]
    StatementCount(usize),
    /// A statement that is not a query.
    #[error(
        "{0} is not allowed: only queries (SELECT, WITH, EXPLAIN) run here; the archive and live tables are read-only"
    )]
    NotAQuery(String),
    /// A file path or URL used as a table.
    #[error(
        "table {0} is not allowed: tables are the live and archive tables by name, never files or URLs"
    )]
    PathTable(String),
    /// The text does not parse.
    #[error("{0}")]
    Syntax(String),
}

/// Checks `sql` before anything is planned.
pub fn check(sql: &str) -> Result<(), Refused> {
    let statements = DFParser::parse_sql_with_dialect(sql, &GenericDialect {})
        .map_err(|e| Refused::Syntax(e.to_string()))?;
    if statements.len() != 1 {
        return Err(Refused::StatementCount(statements.len()));
    }
    check_statement(&statements[0])
}

fn check_statement(s: &Statement) -> Result<(), Refused> {
    match s {
        Statement::Statement(s) => check_sql_statement(s),
        Statement::Explain(e) => check_statement(&e.statement),
        Statement::CreateExternalTable(_) => {
            Err(Refused::NotAQuery("CREATE EXTERNAL TABLE".into()))
        }
        Statement::CopyTo(_) => Err(Refused::NotAQuery("COPY".into())),
        Statement::Reset(_) => Err(Refused::NotAQuery("RESET".into())),
    }
}

fn check_sql_statement(s: &ast::Statement) -> Result<(), Refused> {
    match s {
        ast::Statement::Query(_) => check_tables(s),
        ast::Statement::Explain { statement, .. } => check_sql_statement(statement),
        other => Err(Refused::NotAQuery(kind(other))),
    }
}

/// Every relation read must be a plain name: no path separators, scheme or file extension.
fn check_tables(s: &ast::Statement) -> Result<(), Refused> {
    let flow = visit_relations(s, |name| {
        let text = name.to_string();
        let lower = text.to_ascii_lowercase();
        let looks_like_file = text.contains(['/', '\\', ':', '\''])
            || [
                ".csv", ".parquet", ".json", ".ndjson", ".avro", ".arrow", ".txt", ".gz",
            ]
            .iter()
            .any(|ext| lower.trim_end_matches('"').ends_with(ext));
        if looks_like_file {
            ControlFlow::Break(Refused::PathTable(text))
        } else {
            ControlFlow::Continue(())
        }
    });
    match flow {
        ControlFlow::Break(r) => Err(r),
        ControlFlow::Continue(()) => Ok(()),
    }
}

/// A statement's kind, in its own keywords (`INSERT`, `CREATE TABLE`, `SET`, …).
fn kind(s: &ast::Statement) -> String {
    let text = s.to_string();
    let mut words = text.split_whitespace();
    let first = words.next().unwrap_or("statement").to_ascii_uppercase();
    match first.as_str() {
        "CREATE" | "DROP" | "ALTER" | "SHOW" | "TRUNCATE" => {
            let second = words.next().unwrap_or_default().to_ascii_uppercase();
            format!("{first} {second}")
        }
        _ => first,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Table: what runs and what is refused, with the refusal naming the statement.
    #[test]
    fn queries_only() {
        for ok in [
            "SELECT 1",
            "select service, sum(requests) from slis group by service",
            "WITH t AS (SELECT * FROM slis) SELECT count(*) FROM t",
            "EXPLAIN SELECT * FROM archive_slis WHERE service = 'x'",
            "EXPLAIN ANALYZE SELECT 1",
            "SELECT * FROM generate_series(1, 3)",
        ] {
            assert_eq!(check(ok), Ok(()), "{ok}");
        }
        for (sql, named) in [
            ("COPY (SELECT 1 AS x) TO 'pwned.csv' STORED AS CSV", "COPY"),
            (
                "CREATE EXTERNAL TABLE t STORED AS CSV LOCATION '/etc/passwd'",
                "CREATE EXTERNAL TABLE",
            ),
            ("EXPLAIN ANALYZE COPY (SELECT 1) TO 'x.csv'", "COPY"),
            ("INSERT INTO slis VALUES (1)", "INSERT"),
            ("CREATE TABLE t AS SELECT 1", "CREATE TABLE"),
            ("DROP TABLE slis", "DROP TABLE"),
            ("SET datafusion.execution.batch_size = 1", "SET"),
            ("DELETE FROM slis", "DELETE"),
        ] {
            let e = check(sql).unwrap_err();
            assert_eq!(e, Refused::NotAQuery(named.into()), "{sql}");
            assert!(e.to_string().starts_with(named), "{e}");
        }
        for sql in [
            "SELECT * FROM '/etc/passwd'",
            "SELECT * FROM \"/etc/passwd\"",
            "SELECT * FROM 'data.parquet'",
            "SELECT * FROM \"s3://bucket/x.parquet\"",
            "SELECT * FROM slis WHERE service IN (SELECT x FROM 'secrets.csv')",
        ] {
            assert!(
                matches!(check(sql), Err(Refused::PathTable(_))),
                "{sql}: {:?}",
                check(sql)
            );
        }
        assert_eq!(check("SELECT 1; SELECT 2"), Err(Refused::StatementCount(2)));
        assert!(matches!(check("SELEC 1"), Err(Refused::Syntax(_))));
    }
}
