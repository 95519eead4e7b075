//! Clients that take a connection slot and then stall, with or without a
//! token: each is cut off within the configured timeouts, a node full of
//! them still answers its health checks, and it serves again once they are
//! gone.

use std::net::SocketAddr;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::helpers::*;

/// The HTTP/2 client preface and an empty SETTINGS frame.
const H2_PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";
const H2_SETTINGS: &[u8] = &[0, 0, 0, 4, 0, 0, 0, 0, 0];

/// Ways to hold a connection without finishing a request.
#[derive(Debug, Clone, Copy)]
enum Stall {
    /// A POST head announcing 100 bytes of body, then nothing.
    BodyNeverSent,
    /// A POST whose body arrives one byte every two seconds.
    BodyTrickle,
    /// A chunked POST that sends no chunk.
    NoChunk,
    /// The HTTP/2 preface, then nothing.
    H2PrefaceOnly,
    /// A complete HTTP/2 connection start, then no stream.
    H2Idle,
    /// One HTTP/1.1 request answered, then an idle kept-alive connection.
    KeptAlive,
}

const STALLS: [Stall; 6] = [
    Stall::BodyNeverSent,
    Stall::BodyTrickle,
    Stall::NoChunk,
    Stall::H2PrefaceOnly,
    Stall::H2Idle,
    Stall::KeptAlive,
];

const POST_HEAD: &[u8] = b"POST /v1/stream/stall HTTP/1.1\r\nHost: x\r\nContent-Length: 100\r\n\r\n";

/// Opens a connection that stalls in the way given; a trickling body keeps
/// sending in the background for as long as the socket lasts.
async fn stall(addr: SocketAddr, how: Stall) -> TcpStream {
    let mut sock = TcpStream::connect(addr).await.unwrap();
    match how {
        Stall::BodyNeverSent => sock.write_all(POST_HEAD).await.unwrap(),
        Stall::BodyTrickle => {
            sock.write_all(POST_HEAD).await.unwrap();
            let std = sock.into_std().unwrap();
            let writer = std.try_clone().unwrap();
            tokio::spawn(async move {
                let mut w = TcpStream::from_std(writer).unwrap();
                // The trickle is the point: one byte every two seconds.
                while w.write_all(b"x").await.is_ok() {
                    tokio::time::sleep(Duration::from_secs(2)).await;
                }
            });
            sock = TcpStream::from_std(std).unwrap();
        }
        Stall::NoChunk => sock
            .write_all(b"POST /v1/stream/stall HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n")
            .await
            .unwrap(),
        Stall::H2PrefaceOnly => sock.write_all(H2_PREFACE).await.unwrap(),
        Stall::H2Idle => {
            sock.write_all(H2_PREFACE).await.unwrap();
            sock.write_all(H2_SETTINGS).await.unwrap();
        }
        Stall::KeptAlive => {
            sock.write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
                .await
                .unwrap();
            let mut buf = [0u8; 512];
            let n = sock.read(&mut buf).await.unwrap();
            assert!(
                buf[..n].starts_with(b"HTTP/1.1 200"),
                "{:?}",
                String::from_utf8_lossy(&buf[..n])
            );
        }
    }
    sock
}

/// Waits until the server closes the connection (whatever it says first);
/// false if it is still open after `limit`.
async fn closed_by_server(sock: &mut TcpStream, limit: Duration) -> bool {
    let mut buf = [0u8; 4096];
    tokio::time::timeout(limit, async {
        loop {
            match sock.read(&mut buf).await {
                Ok(0) | Err(_) => return,
                Ok(_) => {}
            }
        }
    })
    .await
    .is_ok()
}

#[tokio::test]
async fn every_kind_of_stalled_client_is_cut_off_within_the_timeouts() {
    let node = NodeProcess::spawn(&["--header-timeout", "1s", "--ip-rate", "0"]);
    let mut stalled = Vec::new();
    for how in STALLS {
        stalled.push((how, stall(node.addr, how).await));
    }
    for (how, sock) in &mut stalled {
        // The timeouts are 1 s: the bound only says "not kept for good".
        assert!(
            closed_by_server(sock, WAIT).await,
            "{how:?} still holds its connection after {WAIT:?}"
        );
    }
}

#[tokio::test]
async fn a_publish_without_a_token_is_refused_before_its_body_arrives() {
    let node = NodeProcess::spawn(&["--jwt-secret", "s3cret", "--body-timeout", "30s"]);
    let mut sock = TcpStream::connect(node.addr).await.unwrap();
    sock.write_all(POST_HEAD).await.unwrap();
    let mut buf = vec![0u8; 1024];
    // The body timeout is 30 s: an answer within the wait comes from the head.
    let n = tokio::time::timeout(WAIT, sock.read(&mut buf))
        .await
        .expect("answered without the body")
        .unwrap();
    let text = String::from_utf8_lossy(&buf[..n]);
    assert!(text.starts_with("HTTP/1.1 401"), "{text}");
}

#[tokio::test]
async fn a_node_full_of_stalled_clients_answers_health_checks_and_recovers() {
    let node = NodeProcess::spawn(&[
        "--max-connections",
        "30",
        "--header-timeout",
        "2s",
        "--ip-rate",
        "0",
    ]);
    // The first round also makes what a node makes once, on first use (the
    // HTTP/2 machinery, a channel, the metrics' buckets); the second must
    // leave its memory where the first did.
    fill_with_stalled_clients_and_recover(&node, "first").await;
    let before = rss_kib(node.child.id());
    fill_with_stalled_clients_and_recover(&node, "second").await;
    let grown = rss_kib(node.child.id()).saturating_sub(before);
    assert!(grown < 8 * 1024, "RSS grew by {grown} KiB");
}

/// Thirty stalled clients fill a node of 30 connections: it refuses
/// streams but answers its health checks, cuts every one off, and serves
/// again.
async fn fill_with_stalled_clients_and_recover(node: &NodeProcess, round: &str) {
    let mut stalled = Vec::new();
    for i in 0..30 {
        stalled.push(stall(node.addr, STALLS[i % STALLS.len()]).await);
    }
    let full = raw_answer(node.addr, b"GET /v1/stream/x HTTP/1.1\r\nHost: x\r\n\r\n").await;
    assert!(full.starts_with("HTTP/1.1 503"), "the node is full: {full}");
    for probe in ["/healthz", "/readyz"] {
        let req = format!("GET {probe} HTTP/1.1\r\nHost: x\r\n\r\n");
        let answer = raw_answer(node.addr, req.as_bytes()).await;
        assert!(
            answer.starts_with("HTTP/1.1 200"),
            "{probe} on a full node: {answer}"
        );
    }
    for sock in &mut stalled {
        assert!(
            closed_by_server(sock, WAIT).await,
            "a stalled client kept its slot"
        );
    }
    let channel = format!("/v1/stream/after-the-{round}-stall");
    let mut stream = Sse::open(&node.url(&channel)).await;
    reqwest::Client::new()
        .post(node.url(&channel))
        .body("served again")
        .send()
        .await
        .unwrap();
    assert_eq!(stream.next().await.unwrap().data, "served again");
}

/// The first bytes of the answer to one request.
async fn raw_answer(addr: SocketAddr, request: &[u8]) -> String {
    let mut sock = TcpStream::connect(addr).await.unwrap();
    sock.write_all(request).await.unwrap();
    let mut buf = vec![0u8; 2048];
    let n = tokio::time::timeout(WAIT, sock.read(&mut buf))
        .await
        .expect("an answer")
        .unwrap();
    String::from_utf8_lossy(&buf[..n]).into_owned()
}

#[tokio::test]
async fn a_full_node_is_ready_unless_told_otherwise() {
    for (flag, want) in [
        (None, "HTTP/1.1 200"),
        (Some("--not-ready-when-full"), "HTTP/1.1 503"),
    ] {
        let mut args = vec!["--max-connections", "2", "--ip-rate", "0"];
        args.extend(flag);
        let node = NodeProcess::spawn(&args);
        let _a = Sse::open(&node.url("/v1/stream/a")).await;
        let _b = Sse::open(&node.url("/v1/stream/b")).await;
        let ready = raw_answer(node.addr, b"GET /readyz HTTP/1.1\r\nHost: x\r\n\r\n").await;
        assert!(ready.starts_with(want), "{flag:?}: {ready}");
        if flag.is_some() {
            assert!(ready.contains(r#""reason":"full""#), "{ready}");
        }
    }
}

#[tokio::test]
async fn refused_connections_leave_the_descriptors_redis_needs() {
    let prlimit = require_tool("prlimit");
    let Some(prlimit) = prlimit else { return };
    let redis = RedisServer::spawn();
    // A node with 300 files: 172 connections, 128 kept back.
    let mut node = NodeProcess::spawn_wrapped(
        &[prlimit.to_str().unwrap(), "--nofile=300:300", "--"],
        &[
            "--redis-url",
            &redis.url(),
            "--allow-anonymous",
            "--header-timeout",
            "60s",
            "--ip-rate",
            "0",
        ],
    );
    // A stream, so that the node's pub/sub connection has a subscription.
    let _stream = Sse::open(&node.url("/v1/stream/subscribed")).await;
    // 600 connections that say nothing and stay: the node fills, then refuses.
    let mut flood = Vec::new();
    for _ in 0..600 {
        match TcpStream::connect(node.addr).await {
            Ok(s) => flood.push(s),
            Err(e) => panic!("connect: {e}"),
        }
    }
    // Redis drops the node's pub/sub connection while the flood holds on.
    assert_eq!(redis.cli(&["CLIENT", "KILL", "TYPE", "pubsub"]).trim(), "1");
    eventually("the node reconnects its pub/sub connection", || {
        let lines = node.logs();
        async move { lines.iter().any(|l| l.contains("reconnected to Redis pub/sub")) }
    })
    .await;
    let failed: Vec<String> = node
        .logs()
        .into_iter()
        .filter(|l| l.contains("reconnect failed"))
        .collect();
    assert!(failed.is_empty(), "{failed:?}");
    drop(flood);
}
