//! A client that stops reading: cut off at its queue bound, memory flat,
//! and it resumes.

use crate::helpers::*;

#[tokio::test]
async fn a_client_that_stops_reading_is_disconnected_memory_stays_flat_and_it_resumes() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let redis = RedisServer::spawn();
    let url = redis.url();
    let node = NodeProcess::spawn(&[
        "--redis-url",
        &url,
        "--allow-anonymous",
        "--client-queue",
        "256KiB",
        "--history-size",
        "1000",
    ]);
    let ch = unique("slow");
    // A client that reads the opening (to learn its cursor), then nothing.
    let mut sock = tokio::net::TcpStream::connect(node.addr).await.unwrap();
    sock.write_all(format!("GET /v1/stream/{ch} HTTP/1.1\r\nHost: x\r\n\r\n").as_bytes())
        .await
        .unwrap();
    let mut head = vec![0u8; 4096];
    let mut n = 0;
    while !String::from_utf8_lossy(&head[..n]).contains("\n\n") {
        n += sock.read(&mut head[n..]).await.unwrap();
    }
    let text = String::from_utf8_lossy(&head[..n]).into_owned();
    let cursor = text
        .lines()
        .find_map(|l| l.strip_prefix("id: "))
        .unwrap()
        .to_owned();
    let before = rss_kib(node.child.id());
    let payload = "x".repeat(60 * 1024);
    let http = reqwest::Client::new();
    for _ in 0..300 {
        let r = http
            .post(node.url(&format!("/v1/stream/{ch}")))
            .body(payload.clone())
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 201);
    }
    eventually("the slow client is disconnected", || async {
        node.metric("ssegate_slow_client_disconnects_total").await >= 1.0
    })
    .await;
    let grown = rss_kib(node.child.id()).saturating_sub(before);
    // 18 MB went to a client that read nothing; the node kept its queue
    // bound (plus transient buffers), not the backlog.
    assert!(grown < 8 * 1024, "RSS grew by {grown} KiB");
    drop(sock);
    let mut s = Sse::open_with(&node.url(&format!("/v1/stream/{ch}")), Some(&cursor)).await;
    for i in 0..300 {
        let ev = s.next().await.unwrap();
        assert_eq!(ev.data.len(), payload.len(), "event {i}");
    }
}
