//! Resumers that never read: a resume from the start of a large history
//! must not make the node buffer that history, per stream or in total.

use std::time::Duration;

use tokio::io::AsyncWriteExt;
use tokio::net::{TcpSocket, TcpStream};

use crate::helpers::*;

const EVENTS: usize = 1000;
const EVENT_BYTES: usize = 64 * 1024;
const RESUMERS: usize = 100;

/// A client that asks for everything after `0-0` and reads nothing, with a
/// small receive buffer so that little sits in the kernel.
async fn non_reading_resumer(node: &NodeProcess, channel: &str) -> TcpStream {
    let sock = TcpSocket::new_v4().unwrap();
    sock.set_recv_buffer_size(4096).unwrap();
    let mut s = sock.connect(node.addr).await.unwrap();
    let head = format!("GET /v1/stream/{channel} HTTP/1.1\r\nHost: x\r\nLast-Event-ID: 0-0\r\n\r\n");
    s.write_all(head.as_bytes()).await.unwrap();
    s
}

#[tokio::test]
async fn a_hundred_non_reading_resumers_of_a_large_history_stay_within_the_memory_bound() {
    let redis = RedisServer::spawn();
    let node = NodeProcess::spawn(&[
        "--redis-url",
        &redis.url(),
        "--allow-anonymous",
        "--heartbeat",
        "1s",
        "--write-timeout",
        "5s",
        "--ip-rate",
        "0",
    ]);
    let channel = unique("big-history");
    let mut conn = redis.conn().await;
    let payload = "x".repeat(EVENT_BYTES);
    // In batches: a test connection answers within half a second or fails.
    for _ in 0..EVENTS / 10 {
        let mut pipe = redis::pipe();
        for _ in 0..10 {
            pipe.cmd("FCALL")
                .arg("ssegate_publish")
                .arg(1)
                .arg(format!("sse:{{{channel}}}:log"))
                .arg(&payload)
                .ignore();
        }
        let () = pipe.query_async(&mut conn).await.unwrap();
    }
    let before = rss_kib(node.child.id());
    let mut resumers = Vec::new();
    for _ in 0..RESUMERS {
        resumers.push(non_reading_resumer(&node, &channel).await);
    }
    // Each resumer is handed at least its first page...
    let base = node.url("");
    let first_pages = (RESUMERS * EVENT_BYTES) as f64;
    eventually("every resumer gets its first page", || {
        let base = base.clone();
        async move { metric_at(&base, "ssegate_bytes_out_total").await >= first_pages }
    })
    .await;
    // ...and the node's memory is watched until the stalled resumers are
    // closed: their sockets' windows stay shut for --write-timeout, which
    // the kernel counts against TCP_USER_TIMEOUT.
    let mut peak = 0;
    let deadline = tokio::time::Instant::now() + WAIT * 2;
    loop {
        peak = peak.max(rss_kib(node.child.id()));
        if metric_at(&base, "ssegate_streams_open").await == 0.0 {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "stalled resumers are still open"
        );
        // Sampling the memory, not waiting for anything.
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let grown = peak.saturating_sub(before);
    println!(
        "{RESUMERS} non-reading resumers of {EVENTS} x {} KiB: peak RSS growth {} KiB",
        EVENT_BYTES / 1024,
        grown
    );
    // 100 pages of --client-queue (256 KiB) plus one event each, under the
    // 64 MiB --replay-memory; the whole history would be 6 GiB.
    assert!(grown < 96 * 1024, "peak RSS grew by {grown} KiB");
    // A client that reads gets the whole history, in order.
    let mut reader = Sse::open_with(&node.url(&format!("/v1/stream/{channel}")), Some("0-0")).await;
    let mut last = (0, 0);
    for _ in 0..EVENTS {
        let ev = reader.next().await.expect("the history");
        let id = event_id(&ev.id);
        assert!(id > last, "{} after {last:?}", ev.id);
        assert_eq!(ev.data.len(), EVENT_BYTES);
        last = id;
    }
    drop(resumers);
}

/// `ms-seq` as numbers, for ordering.
fn event_id(text: &str) -> (u64, u64) {
    let (ms, seq) = text.split_once('-').expect("an event id");
    (ms.parse().unwrap(), seq.parse().unwrap())
}

/// HTTP/2 resumers that never grant flow-control credit: the TCP
/// connection stays healthy (no write timeout in the kernel), so the node
/// itself must notice that the streams take nothing and close them.
#[tokio::test]
async fn http2_resumers_without_flow_control_credit_are_closed_and_hold_little() {
    let node = NodeProcess::spawn(&["--heartbeat", "1s", "--write-timeout", "3s", "--ip-rate", "0"]);
    let channel = unique("h2-history");
    let client = reqwest::Client::new();
    let payload = "y".repeat(EVENT_BYTES);
    for _ in 0..200 {
        let r = client
            .post(node.url(&format!("/v1/stream/{channel}")))
            .body(payload.clone())
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 201);
    }
    let before = rss_kib(node.child.id());
    let tcp = TcpStream::connect(node.addr).await.unwrap();
    let (h2, connection) = h2::client::Builder::new()
        .initial_window_size(1024)
        .initial_connection_window_size(65_535)
        .handshake::<_, bytes::Bytes>(tcp)
        .await
        .unwrap();
    tokio::spawn(connection);
    let mut h2 = h2.ready().await.unwrap();
    let mut responses = Vec::new();
    for _ in 0..6 {
        let req = http::Request::get(format!("http://{}/v1/stream/{channel}", node.addr))
            .header("last-event-id", "0-0")
            .body(())
            .unwrap();
        let (resp, _) = h2.send_request(req, true).unwrap();
        h2 = h2.ready().await.unwrap();
        // Read the head, never the body: no credit is ever given back.
        responses.push(resp.await.unwrap());
    }
    assert!(responses.iter().all(|r| r.status() == 200));
    let base = node.url("");
    eventually("the node closes the six streams that take nothing", || {
        let base = base.clone();
        async move { metric_at(&base, "ssegate_stalled_streams_total").await >= 6.0 }
    })
    .await;
    let grown = rss_kib(node.child.id()).saturating_sub(before);
    println!("6 HTTP/2 resumers without credit: RSS growth {grown} KiB");
    assert!(grown < 16 * 1024, "RSS grew by {grown} KiB");
    drop(responses);
}
