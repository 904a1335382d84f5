//! `POST /api/v1/query` as a trust boundary (DESIGN §8): queries only, no file read or written
//! through it, memory and concurrency bounded, refusals counted in `/metrics`.

use std::time::{Duration, Instant};
use trike_tests::{metrics_text, sample, start_trike};

async fn post(admin: std::net::SocketAddr, sql: &str) -> reqwest::Response {
    reqwest::Client::new()
        .post(format!("http://{admin}/api/v1/query"))
        .body(sql.to_string())
        .send()
        .await
        .unwrap()
}

/// Scenario: the statements of the issue's report, sent by anyone who can reach the admin port.
/// Guarantees: `COPY … TO` is refused with 400 naming `COPY`, and no file is written;
/// `CREATE EXTERNAL TABLE` over a secret file and a file path used as a table are refused
/// without the file's content in the answer; DML, DDL and `SET` are refused naming them; a
/// plain query still works; every refusal is counted.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn only_queries_run_and_no_file_is_touched() {
    let running = start_trike("").await;
    let admin = running.admin_addr;
    let dir = std::env::temp_dir().join(format!("trike-query-boundary-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let target = dir.join("pwned.csv");
    let secret = dir.join("secret.csv");
    std::fs::write(&secret, "token\nhunter2-very-secret\n").unwrap();

    let copy = format!(
        "COPY (SELECT 1 AS x) TO '{}' STORED AS CSV",
        target.display()
    );
    let r = post(admin, &copy).await;
    assert_eq!(r.status(), 400);
    let body = r.text().await.unwrap();
    assert!(body.contains("COPY is not allowed"), "{body}");
    assert!(!target.exists(), "no file written");

    for sql in [
        format!(
            "CREATE EXTERNAL TABLE s STORED AS CSV LOCATION '{}'",
            secret.display()
        ),
        format!("SELECT * FROM '{}'", secret.display()),
        format!("SELECT * FROM \"{}\"", secret.display()),
    ] {
        let r = post(admin, &sql).await;
        assert_eq!(r.status(), 400, "{sql}");
        let body = r.text().await.unwrap();
        assert!(!body.contains("hunter2"), "the file leaked: {body}");
        assert!(body.contains("not allowed"), "{body}");
    }
    for (sql, named) in [
        ("INSERT INTO slis VALUES ('a')", "INSERT"),
        ("DROP TABLE slis", "DROP TABLE"),
        ("SET datafusion.execution.batch_size = 1", "SET"),
        ("SELECT 1; SELECT 2", "exactly one statement"),
    ] {
        let r = post(admin, sql).await;
        assert_eq!(r.status(), 400, "{sql}");
        let body = r.text().await.unwrap();
        assert!(body.contains(named), "{sql}: {body}");
    }
    let ok = post(admin, "SELECT count(*) AS n FROM slis").await;
    assert_eq!(ok.status(), 200);
    assert_eq!(
        ok.json::<serde_json::Value>().await.unwrap(),
        serde_json::json!([{"n": 0}])
    );
    let m = metrics_text(&running).await;
    assert_eq!(
        sample(&m, r#"trike_query_refused_total{reason="statement"}"#),
        Some(8.0)
    );
    let _ = std::fs::remove_dir_all(&dir);
    running.stop().await.unwrap();
}

/// Scenario: `query: { max_concurrent: 1, memory_limit: 4MiB, timeout: 5s }`; one query that
/// cannot finish in 5 s runs while a second arrives, then one groups far more than 4 MiB.
/// Guarantees: the second gets 429 with `Retry-After` while the first runs; the first ends
/// with 504 at its time limit, after which queries are accepted again; the big grouping fails
/// with 400 saying it is over its memory limit; `/metrics` counts each refusal and shows no
/// query running at the end.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrency_time_and_memory_are_bounded() {
    let running =
        start_trike("query: { max_concurrent: 1, memory_limit: 4MiB, timeout: 5s }").await;
    let admin = running.admin_addr;
    let slow = tokio::spawn(async move {
        post(
            admin,
            "SELECT count(*) FROM generate_series(1, 100000000000) AS t(v) WHERE v % 7 = 3",
        )
        .await
    });
    // Wait until it runs, then knock.
    let start = Instant::now();
    loop {
        let m = metrics_text(&running).await;
        if sample(&m, "trike_query_running") == Some(1.0) {
            break;
        }
        assert!(
            start.elapsed() < Duration::from_secs(10),
            "the slow query never started"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let busy = post(admin, "SELECT 1").await;
    assert_eq!(busy.status(), 429);
    assert_eq!(busy.headers()["retry-after"], "1");
    let slow = slow.await.unwrap();
    assert_eq!(slow.status(), 504, "{:?}", slow.text().await);
    let after = post(admin, "SELECT 1 AS one").await;
    assert_eq!(after.status(), 200);
    let big = post(
        admin,
        "SELECT v % 2000003 AS k, count(*) FROM generate_series(1, 3000000) AS t(v) GROUP BY v % 2000003",
    )
    .await;
    assert_eq!(big.status(), 400);
    let body = big.text().await.unwrap();
    assert!(body.contains("memory limit"), "{body}");
    let m = metrics_text(&running).await;
    for (reason, n) in [("busy", 1.0), ("timeout", 1.0), ("memory", 1.0)] {
        assert_eq!(
            sample(
                &m,
                &format!("trike_query_refused_total{{reason=\"{reason}\"}}")
            ),
            Some(n),
            "{reason}"
        );
    }
    assert_eq!(sample(&m, "trike_query_running"), Some(0.0));
    running.stop().await.unwrap();
}
