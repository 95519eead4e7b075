//! Hostile input against a running node: every case gets a clear answer
//! (or a closed connection), and afterwards the node still serves a normal
//! client and its memory has not grown without bound.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpSocket, TcpStream};

use crate::helpers::*;

mod auth;
mod cursors;
mod limits;
mod publish;
mod replay;
mod slots;

/// Sends raw bytes; returns the status code and body of the answer (if
/// any) once the server closes the connection or stops talking.
async fn raw(addr: SocketAddr, request: &[u8]) -> (Option<u16>, String) {
    let mut sock = TcpStream::connect(addr).await.unwrap();
    let _ = sock.write_all(request).await;
    let mut buf = Vec::new();
    let mut chunk = [0u8; 4096];
    loop {
        match tokio::time::timeout(Duration::from_secs(3), sock.read(&mut chunk)).await {
            Ok(Ok(n)) if n > 0 => {
                buf.extend_from_slice(&chunk[..n]);
                if complete(&buf) {
                    break;
                }
            }
            _ => break,
        }
    }
    let text = String::from_utf8_lossy(&buf).into_owned();
    let status = text.split_whitespace().nth(1).and_then(|s| s.parse().ok());
    let body = text
        .split_once("\r\n\r\n")
        .map(|(_, b)| b.to_owned())
        .unwrap_or_default();
    (status, body)
}

/// A response with a Content-Length whose body has arrived.
fn complete(buf: &[u8]) -> bool {
    let text = String::from_utf8_lossy(buf);
    let Some((head, body)) = text.split_once("\r\n\r\n") else {
        return false;
    };
    head.lines()
        .find_map(|l| {
            l.to_ascii_lowercase()
                .strip_prefix("content-length:")
                .map(|v| v.trim().to_owned())
        })
        .and_then(|v| v.parse::<usize>().ok())
        .is_some_and(|n| body.len() >= n)
}

async fn still_serves(addr: SocketAddr) {
    let url = format!("http://{addr}/v1/stream/after-abuse");
    let mut s = Sse::open(&url).await;
    let published = reqwest::Client::new()
        .post(format!("http://{addr}/v1/stream/after-abuse"))
        .body("still here")
        .send()
        .await
        .unwrap();
    assert_eq!(published.status(), 201);
    assert_eq!(s.next().await.unwrap().data, "still here");
}

#[tokio::test]
async fn oversized_heads_and_bodies_get_431_and_413() {
    let node = NodeProcess::spawn(&["--max-header-bytes", "16KiB", "--max-payload", "64KiB"]);
    let big = "a".repeat(32 * 1024);
    let head = format!("GET /v1/stream/x HTTP/1.1\r\nHost: x\r\nX-Big: {big}\r\n\r\n");
    let (status, _) = raw(node.addr, head.as_bytes()).await;
    assert_eq!(status, Some(431));
    let resp = reqwest::Client::new()
        .post(node.url("/v1/stream/x"))
        .body(vec![b'x'; 100 * 1024])
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 413);
    let body: serde_json::Value = resp.json().await.unwrap();
    assert_eq!(body["error"], "payload_too_large");
    still_serves(node.addr).await;
}

#[tokio::test]
async fn invalid_utf8_and_control_characters_get_clear_errors() {
    let node = NodeProcess::spawn(&[]);
    for path in [
        "/v1/stream/a%00b",
        "/v1/stream/a%0d%0aX-Evil:%201",
        "/v1/stream/%ff%fe",
        "/v1/stream/a%09b",
    ] {
        let req = format!("GET {path} HTTP/1.1\r\nHost: x\r\n\r\n");
        let (status, body) = raw(node.addr, req.as_bytes()).await;
        assert_eq!(status, Some(400), "{path}");
        let json: serde_json::Value = serde_json::from_str(&body).unwrap();
        assert_eq!(json["error"], "invalid_channel", "{path}");
    }
    // Raw non-ASCII bytes in the request line, and control bytes in a header
    // value, are refused at the HTTP layer.
    let (status, _) = raw(node.addr, b"GET /v1/stream/\xff\xfe HTTP/1.1\r\nHost: x\r\n\r\n").await;
    assert_eq!(status, Some(400));
    let (status, _) = raw(
        node.addr,
        b"GET /v1/stream/a HTTP/1.1\r\nHost: x\r\nLast-Event-ID: 1-0\x01\r\n\r\n",
    )
    .await;
    assert_eq!(status, Some(400));
    // Envelopes: CR/LF/NUL in event or id are refused and publish nothing.
    let client = reqwest::Client::new();
    for bad in [
        r#"{"event":"a\rb","data":"x"}"#,
        r#"{"id":"1\u0000","data":"x"}"#,
        r#"{"retry":1.5,"data":"x"}"#,
    ] {
        let resp = client
            .post(node.url("/v1/stream/env"))
            .body(bad)
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status(), 400, "{bad}");
        let json: serde_json::Value = resp.json().await.unwrap();
        assert_eq!(json["error"], "invalid_envelope", "{bad}");
    }
    // Bytes that are not UTF-8 are not an envelope: they are data, verbatim.
    let resp = client
        .post(node.url("/v1/stream/env"))
        .body(&b"\xff\xfe{\"data\""[..])
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 201);
    still_serves(node.addr).await;
}

const MALFORMED: &[&[u8]] = &[
    b"\x00\x01\x02\x03 garbage\r\n\r\n",
    b"GET / HTTP/9.9\r\n\r\n",
    b"GET /v1/stream/%zz HTTP/1.1\r\nHost: x\r\n\r\n",
    b"GET /v1/stream/has space HTTP/1.1\r\nHost: x\r\n\r\n",
    b"POST /v1/stream/a HTTP/1.1\r\nHost: x\r\nContent-Length: -1\r\n\r\n",
    b"POST /v1/stream/a HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n\r\n",
    b"POST /v1/stream/a HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\nContent-Length: 6\r\n\r\nhello",
    b"GET /v1/stream?channel=a&channel=a HTTP/1.1\r\nHost: x\r\n\r\n",
    b"GET /v1/stream?channel=%ff HTTP/1.1\r\nHost: x\r\n\r\n",
    b"BREW /v1/stream/a HTTP/1.1\r\nHost: x\r\n\r\n",
    b"GET /v1/stream/a HTTP/1.1\r\nHost: x\r\nNoColonHere\r\n\r\n",
    b"POST /v1/stream/a HTTP/1.1\r\nHost: x\r\nContent-Length: 25\r\n\r\n{\"event\":\"\\n\",\"data\":\"x\"}",
    b"GET /v1/stream/a HTTP/1.1\r\nHost: x\r\nLast-Event-ID: \x7f\x00\r\n\r\n",
    b"GET /nowhere HTTP/1.1\r\nHost: x\r\n\r\n",
];

#[tokio::test]
async fn ten_thousand_malformed_requests_leave_the_node_serving_with_flat_memory() {
    let node = NodeProcess::spawn(&["--ip-rate", "0"]);
    // A first thousand at the same concurrency makes what a node makes once
    // (its code paths paged in, its allocator's pools for 64 connections at
    // a time); the ten thousand after it must leave its memory there.
    malformed_flood(node.addr, 1_000).await;
    let before = rss_kib(node.child.id());
    let started = Instant::now();
    let answered = malformed_flood(node.addr, 10_000).await;
    eprintln!(
        "10,000 malformed requests in {:?}: {answered:?}",
        started.elapsed()
    );
    let grown = rss_kib(node.child.id()).saturating_sub(before);
    assert!(grown < 4 * 1024, "RSS grew by {grown} KiB");
    still_serves(node.addr).await;
}

/// Sends `count` malformed requests, 64 at a time, and counts the answers
/// by status: only client errors (or a closed connection), each naming its
/// problem in JSON.
async fn malformed_flood(addr: SocketAddr, count: usize) -> std::collections::BTreeMap<Option<u16>, u32> {
    let mut answered = std::collections::BTreeMap::new();
    let results = futures::stream::iter(0..count)
        .map(|i| async move {
            let (status, body) = raw(addr, MALFORMED[i % MALFORMED.len()]).await;
            let json: serde_json::Value = serde_json::from_str(&body).unwrap_or_else(|_| {
                panic!(
                    "{:?} got {status:?} {body:?}",
                    String::from_utf8_lossy(MALFORMED[i % MALFORMED.len()])
                )
            });
            assert!(json["error"].is_string());
            status
        })
        .buffer_unordered(64);
    futures::pin_mut!(results);
    while let Some(status) = futures::StreamExt::next(&mut results).await {
        *answered.entry(status).or_insert(0u32) += 1;
    }
    assert!(
        answered.keys().all(|s| s.is_none_or(|s| (400..500).contains(&s))),
        "only client errors (or a closed connection): {answered:?}"
    );
    answered
}

use futures::StreamExt as _;

#[tokio::test]
async fn slow_loris_clients_are_cut_off_at_the_header_timeout() {
    let node = NodeProcess::spawn(&["--header-timeout", "1s", "--ip-rate", "0"]);
    let addr = node.addr;
    // Each client sends its head one byte per 200 ms (the slowness is the
    // point) until the node closes the connection (with a 408 or nothing).
    // Five times the header timeout is the failure bound: well below the
    // default timeout (10s), which would cut them off too.
    let loris = (0..100).map(|_| async move {
        let mut sock = TcpStream::connect(addr).await.unwrap();
        let started = Instant::now();
        for b in b"GET /v1/stream/a HTTP/1.1\r\nX-Slow: ".iter().cycle() {
            if sock.write_all(&[*b]).await.is_err() {
                return;
            }
            let mut one = [0u8; 1];
            match tokio::time::timeout(Duration::from_millis(200), sock.read(&mut one)).await {
                Ok(Ok(0)) | Ok(Err(_)) => return,
                Ok(Ok(_)) | Err(_) => {}
            }
            assert!(
                started.elapsed() < Duration::from_secs(5),
                "a slow-loris connection is never cut off"
            );
        }
    });
    let serving = still_serves(addr);
    tokio::join!(futures::future::join_all(loris), serving);
    still_serves(addr).await;
}

#[tokio::test]
async fn a_flood_past_max_connections_gets_503_with_retry_after() {
    let node = NodeProcess::spawn(&["--max-connections", "20", "--ip-rate", "0"]);
    let mut streams = Vec::new();
    for i in 0..20 {
        streams.push(Sse::open(&node.url(&format!("/v1/stream/flood-{i}"))).await);
    }
    let before = rss_kib(node.child.id());
    for _ in 0..500 {
        let (status, body) = raw(node.addr, b"GET /v1/stream/one-more HTTP/1.1\r\nHost: x\r\n\r\n").await;
        assert_eq!(status, Some(503));
        let json: serde_json::Value = serde_json::from_str(&body).unwrap();
        assert_eq!(json["error"], "too_many_connections");
    }
    let resp = raw_head(node.addr, b"GET /v1/stream/x HTTP/1.1\r\nHost: x\r\n\r\n").await;
    assert!(resp.to_ascii_lowercase().contains("retry-after: 1"), "{resp}");
    // A full node is healthy, just full: health checks are still answered.
    let health = raw_head(node.addr, b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n").await;
    assert!(health.starts_with("HTTP/1.1 200"), "{health}");
    assert!(rss_kib(node.child.id()).saturating_sub(before) < 2 * 1024);
    streams.truncate(10);
    eventually("closed streams free their places", || async {
        raw_head(node.addr, b"GET /v1/stream/one-more HTTP/1.1\r\nHost: x\r\n\r\n")
            .await
            .starts_with("HTTP/1.1 200")
    })
    .await;
}

async fn raw_head(addr: SocketAddr, request: &[u8]) -> String {
    let mut sock = TcpStream::connect(addr).await.unwrap();
    sock.write_all(request).await.unwrap();
    let mut buf = vec![0u8; 2048];
    let n = tokio::time::timeout(Duration::from_secs(3), sock.read(&mut buf))
        .await
        .unwrap()
        .unwrap();
    String::from_utf8_lossy(&buf[..n]).into_owned()
}

#[tokio::test]
async fn a_flood_past_the_per_ip_rate_gets_429_and_other_addresses_still_connect() {
    let node = NodeProcess::spawn(&["--ip-rate", "5", "--ip-burst", "10"]);
    let mut limited = 0;
    for _ in 0..40 {
        let head = raw_head(
            node.addr,
            b"GET /healthz HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n",
        )
        .await;
        if head.starts_with("HTTP/1.1 429") {
            assert!(head.to_ascii_lowercase().contains("retry-after: "), "{head}");
            assert!(head.contains(r#""error":"rate_limited""#), "{head}");
            limited += 1;
        }
    }
    assert!(limited >= 25, "only {limited} of 40 were limited");
    // Another client address is not affected.
    let sock = TcpSocket::new_v4().unwrap();
    sock.bind("127.0.0.2:0".parse().unwrap()).unwrap();
    let mut s = sock.connect(node.addr).await.unwrap();
    s.write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        .await
        .unwrap();
    let mut buf = vec![0u8; 512];
    let n = s.read(&mut buf).await.unwrap();
    assert!(
        buf[..n].starts_with(b"HTTP/1.1 200"),
        "{}",
        String::from_utf8_lossy(&buf[..n])
    );
}
