//! Limits that must hold everywhere: the request-head limit on every
//! request of a connection, the embedded broker's memory over all channels,
//! settings that cannot work, a Redis that stops answering, and logs that
//! stay plain text when they are not on a terminal.

use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::helpers::*;

/// Reads one answer's head and body from a kept-alive connection.
async fn answer(sock: &mut TcpStream) -> String {
    let mut buf = vec![0u8; 4096];
    let n = tokio::time::timeout(WAIT, sock.read(&mut buf))
        .await
        .expect("an answer")
        .unwrap();
    String::from_utf8_lossy(&buf[..n]).into_owned()
}

#[tokio::test]
async fn the_head_limit_holds_on_every_request_of_a_kept_alive_connection() {
    let node = NodeProcess::spawn(&["--max-header-bytes", "16KiB"]);
    let mut sock = TcpStream::connect(node.addr).await.unwrap();
    sock.write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
        .await
        .unwrap();
    assert!(answer(&mut sock).await.starts_with("HTTP/1.1 200"));
    let big = "a".repeat(30 * 1024);
    let second = format!("GET /healthz HTTP/1.1\r\nHost: x\r\nX-Big: {big}\r\n\r\n");
    sock.write_all(second.as_bytes()).await.unwrap();
    let text = answer(&mut sock).await;
    assert!(text.starts_with("HTTP/1.1 431"), "{text}");
    assert!(text.contains(r#""error":"head_too_large""#), "{text}");
}

#[tokio::test]
async fn the_embedded_brokers_history_stays_within_its_memory_over_many_channels() {
    let node = NodeProcess::spawn(&["--history-memory", "1MiB"]);
    let client = reqwest::Client::new();
    let first = unique("oldest");
    let payload = "z".repeat(32 * 1024);
    let mut first_id = String::new();
    for i in 0..200 {
        let channel = if i == 0 { first.clone() } else { unique("many") };
        let resp = client
            .post(node.url(&format!("/v1/stream/{channel}")))
            .body(payload.clone())
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status(), 201);
        if i == 0 {
            let v: serde_json::Value = resp.json().await.unwrap();
            first_id = v["id"].as_str().unwrap().to_owned();
        }
        let held = node.metric("ssegate_history_memory_bytes").await;
        assert!(held <= (1 << 20) as f64, "{held} bytes after {i} channels");
    }
    // The oldest channel's history went first: resuming it is a reset.
    let mut s = Sse::open_with(&node.url(&format!("/v1/stream/{first}")), Some(&first_id)).await;
    assert_eq!(s.next().await.unwrap().event, "ssegate.reset");
}

/// Runs the binary to its end; a node that starts instead fails the test.
async fn run_to_exit(args: &[&str]) -> std::process::Output {
    let child = tokio::process::Command::new(binary())
        .args(args)
        .kill_on_drop(true)
        .output();
    tokio::time::timeout(WAIT, child)
        .await
        .expect("the binary exits instead of serving")
        .unwrap()
}

#[tokio::test]
async fn a_client_queue_smaller_than_the_largest_payload_is_refused_at_start() {
    let out = run_to_exit(&[
        "--listen",
        "127.0.0.1:0",
        "--client-queue",
        "32KiB",
        "--max-payload",
        "64KiB",
    ])
    .await;
    assert_eq!(out.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("--client-queue") && stderr.contains("SSEGATE_CLIENT_QUEUE"),
        "{stderr}"
    );
}

#[tokio::test]
async fn a_large_event_reaches_a_stream_whose_queue_holds_just_one() {
    let node = NodeProcess::spawn(&["--client-queue", "64KiB", "--max-payload", "64KiB"]);
    let channel = unique("large");
    let mut s = Sse::open(&node.url(&format!("/v1/stream/{channel}"))).await;
    // Every line break becomes a `data:` line: the frame outgrows the payload.
    let body = "\n".repeat(60 * 1024);
    let resp = reqwest::Client::new()
        .post(node.url(&format!("/v1/stream/{channel}")))
        .body(body)
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 201);
    assert!(s.next().await.is_some(), "the event arrives, the stream stays");
    assert_eq!(node.metric("ssegate_slow_client_disconnects_total").await, 0.0);
}

#[tokio::test]
async fn a_redis_that_stops_answering_is_noticed_within_the_redis_timeout() {
    let redis = RedisServer::spawn();
    let node = NodeProcess::spawn(&[
        "--redis-url",
        &redis.url(),
        "--allow-anonymous",
        "--redis-timeout",
        "1s",
    ]);
    let ready = || async { reqwest::get(node.url("/readyz")).await.unwrap().status().as_u16() };
    // Ready once its broker connection answers: on a loaded machine a
    // ping can take longer than the 1 s timeout, so wait for it first.
    eventually("/readyz says ready", || async { ready().await == 200 }).await;
    let pid = redis.pid().to_string();
    assert!(
        std::process::Command::new("kill")
            .args(["-STOP", &pid])
            .status()
            .unwrap()
            .success()
    );
    // 1 s of timeout plus 1 s between pings: noticed well within 5 s (a
    // 10 s ping interval used to take 10 to 20 s).
    eventually_within(
        "/readyz says the broker is gone",
        Duration::from_secs(5),
        || async { ready().await == 503 },
    )
    .await;
    assert!(
        std::process::Command::new("kill")
            .args(["-CONT", &pid])
            .status()
            .unwrap()
            .success()
    );
    eventually("/readyz is back", || async { ready().await == 200 }).await;
}

#[tokio::test]
async fn text_logs_have_no_colour_codes_off_a_terminal() {
    let out = run_to_exit(&[
        "--listen",
        "127.0.0.1:0",
        "--log-format",
        "text",
        "--heartbeat",
        "1ms",
    ])
    .await;
    // The start fails (the heartbeat is too short) and logs why, on a pipe.
    assert_eq!(out.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("--heartbeat"), "{stderr}");
    assert!(!stderr.contains('\u{1b}'), "colour codes in {stderr:?}");
}
