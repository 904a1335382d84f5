//! Slow and greedy clients (DESIGN §7): a client that trickles its headers or its body, or
//! opens more connections than allowed, holds nothing for long.

use std::time::{Duration, Instant};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use trike_tests::{metrics_text, sample, start_trike};

/// Reads until the server closes the connection (or `limit` passes); returns what it sent.
async fn read_until_closed(s: &mut TcpStream, limit: Duration) -> Option<String> {
    let mut out = Vec::new();
    let mut buf = [0u8; 4096];
    let deadline = Instant::now() + limit;
    loop {
        let left = deadline.checked_duration_since(Instant::now())?;
        match tokio::time::timeout(left, s.read(&mut buf)).await {
            Err(_) => return None,
            Ok(Ok(0)) | Ok(Err(_)) => return Some(String::from_utf8_lossy(&out).into_owned()),
            Ok(Ok(n)) => out.extend_from_slice(&buf[..n]),
        }
    }
}

/// Scenario: `limits.header_read_timeout: 1s`, `body_read_timeout: 1s`; one client sends half
/// its headers and stops, another sends its headers and 10 of the 1000 body bytes it declared.
/// Guarantees: the first connection is closed after about the header timeout; the second gets
/// 408 naming `limits.body_read_timeout`, its in-flight bytes are released (the budget is back
/// to 0), and the outcome is counted as `timed_out`; a normal request still succeeds.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn trickling_clients_are_cut_off() {
    let running =
        start_trike("limits:\n  header_read_timeout: 1s\n  body_read_timeout: 1s\n").await;
    let addr = running.http_addr;

    let t0 = Instant::now();
    let mut slow_headers = TcpStream::connect(addr).await.unwrap();
    slow_headers
        .write_all(b"POST /v1/traces HTTP/1.1\r\nHost: trike\r\nContent-Ty")
        .await
        .unwrap();
    let got = read_until_closed(&mut slow_headers, Duration::from_secs(10)).await;
    assert!(got.is_some(), "a connection stuck in its headers is closed");
    let took = t0.elapsed();
    assert!(
        took >= Duration::from_millis(900),
        "not before the timeout: {took:?}"
    );

    let mut slow_body = TcpStream::connect(addr).await.unwrap();
    slow_body
        .write_all(
            b"POST /v1/traces HTTP/1.1\r\nHost: trike\r\nContent-Type: application/x-protobuf\r\nContent-Length: 1000\r\n\r\n0123456789",
        )
        .await
        .unwrap();
    let answer = read_until_closed(&mut slow_body, Duration::from_secs(10))
        .await
        .expect("answered and closed");
    assert!(answer.starts_with("HTTP/1.1 408"), "{answer}");
    assert!(answer.contains("limits.body_read_timeout"), "{answer}");

    let metrics = metrics_text(&running).await;
    assert_eq!(sample(&metrics, "trike_receiver_inflight_bytes"), Some(0.0));
    assert_eq!(
        sample(
            &metrics,
            "trike_receiver_requests_total{transport=\"http\",signal=\"traces\",outcome=\"timed_out\"}"
        ),
        Some(1.0),
        "{metrics}"
    );
    let client = reqwest::Client::new();
    let svc = trike_tests::checkout("v1", 0.0);
    trike_tests::post_spans(&client, &running, &svc, 5, 1_000_000, &mut rand::rng()).await;
    running.stop().await.unwrap();
}

/// Scenario: `limits.max_connections: 2`; three clients connect to the admin API.
/// Guarantees: two are served, the third waits (nothing is read from it) until one of the
/// first two closes, then it is served; `/metrics` shows the limit and the wait.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connections_beyond_the_limit_wait() {
    let running = start_trike("limits:\n  max_connections: 2\n").await;
    let addr = running.admin_addr;
    let a = TcpStream::connect(addr).await.unwrap();
    let mut b = TcpStream::connect(addr).await.unwrap();
    tokio::time::sleep(Duration::from_millis(200)).await;
    let mut c = TcpStream::connect(addr).await.unwrap();
    let get = b"GET /healthz HTTP/1.1\r\nHost: trike\r\nConnection: close\r\n\r\n";
    c.write_all(get).await.unwrap();
    assert!(
        read_until_closed(&mut c, Duration::from_millis(500))
            .await
            .is_none(),
        "the third connection is not served while two are open"
    );
    b.write_all(get).await.unwrap();
    let answer = read_until_closed(&mut b, Duration::from_secs(5))
        .await
        .unwrap();
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
    drop(b);
    let answer = read_until_closed(&mut c, Duration::from_secs(5))
        .await
        .expect("served once a slot is free");
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
    drop((a, c));
    tokio::time::sleep(Duration::from_millis(100)).await;
    let metrics = metrics_text(&running).await;
    assert_eq!(
        sample(
            &metrics,
            "trike_listener_connections_limit{listener=\"admin\"}"
        ),
        Some(2.0)
    );
    assert!(
        sample(
            &metrics,
            "trike_listener_connection_limit_waits_total{listener=\"admin\"}"
        )
        .unwrap()
            >= 1.0
    );
    running.stop().await.unwrap();
}

/// Scenario: `limits.memory_limit` far below what the process already holds (32 MiB).
/// Guarantees: OTLP/HTTP exports are refused before their bodies are decoded (or held: a 6 MiB
/// body is read and thrown away, so its sender gets the answer, not a reset), with 429,
/// `RESOURCE_EXHAUSTED` and `Retry-After: 5`, nothing is counted, and `/metrics` shows the
/// limit, the hard pressure and the refusals; the admin API still answers.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn over_the_memory_limit_new_data_is_refused() {
    let running = start_trike("limits:\n  memory_limit: 32MiB\n").await;
    let client = reqwest::Client::new();
    let body = {
        use prost::Message;
        trike_tests::checkout("v1", 0.0)
            .request(
                5,
                trike_runtime::clock::now_nanos(),
                1_000_000,
                &mut rand::rng(),
            )
            .encode_to_vec()
    };
    let r = client
        .post(format!("http://{}/v1/traces", running.http_addr))
        .header("content-type", "application/x-protobuf")
        .body(body)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 429);
    assert_eq!(r.headers()["retry-after"], "5");
    let status = {
        use prost::Message;
        trike_ingest::kinds::RpcStatus::decode(r.bytes().await.unwrap()).unwrap()
    };
    assert_eq!(status.code, 8, "RESOURCE_EXHAUSTED");
    assert!(
        status.message.contains("limits.memory_limit"),
        "{}",
        status.message
    );
    // A large body is read and thrown away, so its sender reads the 429 (an answer before the
    // body is read would close the connection under it: a reset, not a refusal).
    for _ in 0..3 {
        let big = client
            .post(format!("http://{}/v1/traces", running.http_addr))
            .header("content-type", "application/x-protobuf")
            .body(vec![0u8; 6 << 20])
            .send()
            .await
            .expect("a 429, not a reset");
        assert_eq!(big.status(), 429);
    }
    let metrics = metrics_text(&running).await;
    assert_eq!(
        sample(&metrics, "trike_memory_limit_bytes"),
        Some((32u64 << 20) as f64)
    );
    assert_eq!(sample(&metrics, "trike_memory_pressure"), Some(2.0));
    assert!(sample(&metrics, "trike_memory_refused_total").unwrap() >= 1.0);
    assert_eq!(trike_tests::total_requests(&running, "checkout").await, 0);
    running.stop().await.unwrap();
}
