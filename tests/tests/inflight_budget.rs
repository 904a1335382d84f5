//! The in-flight byte budget (DESIGN §7 `limits.inflight_bytes`), checked before a body is
//! read: a slow client holding a large request open uses the budget, a second large request is
//! refused with 429 and `Retry-After` without being read, and is accepted once the first ends.

use prost::Message;
use rand::SeedableRng;
use std::io::{Read, Write};
use std::time::{Duration, Instant};
use trike_tests::{checkout, metrics_text, sample, start_trike, wait_for_requests};

/// One OTLP/HTTP request body of `n` checkout spans.
fn body(n: usize, seed: u64) -> Vec<u8> {
    let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
    checkout("1.0", 0.0)
        .request(n, trike_runtime::clock::now_nanos(), 1_000_000, &mut rng)
        .encode_to_vec()
}

/// Scenario: `limits.inflight_bytes: 100000`, bodies up to 65 536 bytes. A client sends the
/// headers of a ~55 KB request and stalls; another sends a ~55 KB request whole.
/// Guarantees: the stalled request holds its declared bytes (`trike_receiver_inflight_bytes`);
/// the second is refused with 429 and `Retry-After` and counted; once the first completes
/// (and is accepted), the second is accepted on retry; both requests' spans are counted
/// exactly once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stalled_request_holds_the_budget_and_others_wait() {
    let running =
        start_trike("receivers: { max_request_bytes: 65536 }\nlimits: { inflight_bytes: 100000 }")
            .await;
    let (slow_body, fast_body) = (body(400, 1), body(400, 2));
    assert!(
        slow_body.len() + fast_body.len() > 100_000
            && slow_body.len().max(fast_body.len()) < 65_536,
        "{} + {}",
        slow_body.len(),
        fast_body.len()
    );
    // The stalled client: headers and 10 bytes of the body.
    let http = running.http_addr;
    let mut slow = std::net::TcpStream::connect(http).unwrap();
    write!(
        slow,
        "POST /v1/traces HTTP/1.1\r\nHost: {http}\r\nContent-Type: application/x-protobuf\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
        slow_body.len()
    )
    .unwrap();
    slow.write_all(&slow_body[..10]).unwrap();
    let start = Instant::now();
    loop {
        let m = metrics_text(&running).await;
        if sample(&m, "trike_receiver_inflight_bytes") == Some(slow_body.len() as f64) {
            break;
        }
        assert!(
            start.elapsed() < Duration::from_secs(10),
            "the stalled request never reserved"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let client = reqwest::Client::new();
    let post = || {
        client
            .post(format!("http://{http}/v1/traces"))
            .header("content-type", "application/x-protobuf")
            .body(fast_body.clone())
            .send()
    };
    let refused = post().await.unwrap();
    assert_eq!(refused.status(), 429);
    assert_eq!(refused.headers()["retry-after"], "1");
    // The first completes and is accepted.
    slow.write_all(&slow_body[10..]).unwrap();
    let mut answer = String::new();
    tokio::task::block_in_place(|| slow.read_to_string(&mut answer)).unwrap();
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
    let retried = post().await.unwrap();
    assert_eq!(retried.status(), 200);
    assert_eq!(
        wait_for_requests(&running, "checkout", 800, Duration::from_secs(10)).await,
        800,
        "both requests counted, once"
    );
    let m = metrics_text(&running).await;
    assert_eq!(
        sample(&m, "trike_receiver_inflight_refused_total"),
        Some(1.0)
    );
    assert_eq!(sample(&m, "trike_receiver_inflight_bytes"), Some(0.0));
    running.stop().await.unwrap();
}
