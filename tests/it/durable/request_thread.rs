//! Publishing connections are served on the node's request threads
//! (`--request-threads`, one by default), apart from the workers that
//! write event streams.

use crate::helpers::*;

/// The node's threads named `name`.
fn threads_named(node: &NodeProcess, name: &str) -> Vec<u32> {
    let dir = format!("/proc/{}/task", node.child.id());
    std::fs::read_dir(dir)
        .unwrap()
        .filter_map(|e| e.ok()?.file_name().to_str()?.parse::<u32>().ok())
        .filter(|tid| {
            let comm = std::fs::read_to_string(format!("/proc/{}/task/{tid}/comm", node.child.id()));
            comm.is_ok_and(|c| c.trim_end() == name)
        })
        .collect()
}

/// How many times the thread has gone to sleep (given up the CPU to wait).
fn voluntary_switches(node: &NodeProcess, tid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{}/task/{tid}/status", node.child.id())).unwrap();
    status
        .lines()
        .find_map(|l| l.strip_prefix("voluntary_ctxt_switches:"))
        .expect("a voluntary_ctxt_switches line")
        .trim()
        .parse()
        .unwrap()
}

/// `n` durable publishes, one after the other on one kept-alive connection.
async fn post_in_turn(node: &NodeProcess, channel: &str, n: usize) {
    let http = reqwest::Client::new();
    for i in 0..n {
        let resp = http
            .post(node.url(&format!("/v1/stream/{channel}")))
            .body(format!("event {i}"))
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status(), 201);
    }
}

/// How many times the node's request threads went to sleep, in all.
fn request_threads_slept(node: &NodeProcess, threads: &[u32]) -> u64 {
    threads.iter().map(|t| voluntary_switches(node, *t)).sum()
}

/// Requires `threads` threads named as the request threads, and 200
/// publishes in turn to find them asleep at least half the time: the
/// client sends the next only once the answer came, so a thread that
/// serves them waits for most (the next may already have come when the
/// thread looks again after answering one: 178 sleeps in 200 were seen),
/// and one that serves none sleeps through them all, once.
async fn assert_publishes_served_by_request_threads(node: &NodeProcess, threads: usize) {
    let found = threads_named(node, "ssegate-request");
    assert_eq!(found.len(), threads, "request threads: found {found:?}");
    let before = request_threads_slept(node, &found);
    let n = 200;
    post_in_turn(node, &unique("on-thread"), n).await;
    let slept = request_threads_slept(node, &found) - before;
    assert!(
        slept >= n as u64 / 2,
        "the request threads slept {slept} times over {n} publishes: they were served elsewhere"
    );
}

/// A node on `redis` with `extra` flags.
fn node_on(redis: &RedisServer, extra: &[&str]) -> NodeProcess {
    let url = redis.url();
    let mut args = vec!["--redis-url", &url, "--allow-anonymous"];
    args.extend_from_slice(extra);
    NodeProcess::spawn(&args)
}

#[tokio::test]
async fn publishes_are_served_on_the_request_thread() {
    let redis = RedisServer::spawn();
    let node = node_on(&redis, &[]);
    // One by default.
    assert_publishes_served_by_request_threads(&node, 1).await;
}

#[tokio::test]
async fn several_request_threads_serve_publishes() {
    let redis = RedisServer::spawn();
    let node = node_on(&redis, &["--request-threads", "3"]);
    // Three workers, and the thread that keeps their runtime.
    assert_publishes_served_by_request_threads(&node, 4).await;
}

#[tokio::test]
async fn without_request_threads_publishes_are_served_by_the_workers() {
    let redis = RedisServer::spawn();
    let node = node_on(&redis, &["--request-threads", "0"]);
    assert!(threads_named(&node, "ssegate-request").is_empty());
    post_in_turn(&node, &unique("on-workers"), 20).await;
}

#[tokio::test]
async fn a_request_thread_count_out_of_range_stops_the_start() {
    let out = std::process::Command::new(binary())
        .args(["--listen", "127.0.0.1:0", "--request-threads", "1000"])
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("--request-threads") && err.contains("0..=256"),
        "{err}"
    );
}

/// Reads one answer with a `Content-Length` body from `sock`: its status
/// and body.
async fn read_answer(sock: &mut tokio::net::TcpStream) -> (u16, String) {
    use tokio::io::AsyncReadExt;
    let mut got = Vec::new();
    loop {
        let text = String::from_utf8_lossy(&got).into_owned();
        if let Some(end) = text.find("\r\n\r\n") {
            let head = &text[..end];
            let len: usize = head
                .lines()
                .find_map(|l| {
                    l.to_ascii_lowercase()
                        .strip_prefix("content-length:")
                        .map(|v| v.trim().to_owned())
                })
                .expect("a Content-Length")
                .parse()
                .unwrap();
            if got.len() >= end + 4 + len {
                let status = head[9..12].parse().unwrap();
                return (status, text[end + 4..end + 4 + len].to_owned());
            }
        }
        let mut buf = [0u8; 4096];
        let n = sock.read(&mut buf).await.unwrap();
        assert!(n > 0, "the connection closed after {text:?}");
        got.extend_from_slice(&buf[..n]);
    }
}

/// A durable publish of `data` to `channel` on a kept-alive connection.
async fn post_on(sock: &mut tokio::net::TcpStream, channel: &str, data: &str) {
    use tokio::io::AsyncWriteExt;
    let req = format!(
        "POST /v1/stream/{channel} HTTP/1.1\r\nHost: x\r\nContent-Length: {}\r\n\r\n{data}",
        data.len()
    );
    sock.write_all(req.as_bytes()).await.unwrap();
    let (status, body) = read_answer(sock).await;
    assert_eq!(status, 201, "{body}");
}

#[tokio::test]
async fn a_publishing_connection_that_opens_a_stream_is_handed_back_to_the_workers() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let redis = RedisServer::spawn();
    let node = node_on(&redis, &[]);
    let channel = unique("handed-back");
    // Balancers and browsers reuse a kept-alive connection for anything:
    // here a publish, then an event stream, the request's first byte
    // sent on its own.
    let mut sock = tokio::net::TcpStream::connect(node.addr).await.unwrap();
    post_on(&mut sock, &channel, "before").await;
    sock.write_all(b"G").await.unwrap();
    sock.flush().await.unwrap();
    let rest = format!("ET /v1/stream/{channel} HTTP/1.1\r\nHost: x\r\nLast-Event-ID: 0-0\r\n\r\n");
    sock.write_all(rest.as_bytes()).await.unwrap();
    node.publish(&channel, "after").await;
    let mut got = String::new();
    while !(got.contains("data: before") && got.contains("data: after")) {
        let mut buf = [0u8; 4096];
        let n = sock.read(&mut buf).await.unwrap();
        assert!(n > 0, "the stream closed after {got:?}");
        got.push_str(&String::from_utf8_lossy(&buf[..n]));
    }
    assert!(got.starts_with("HTTP/1.1 200"), "{got}");
    assert!(
        got.to_ascii_lowercase()
            .contains("content-type: text/event-stream"),
        "{got}"
    );
    assert_eq!(node.metric("ssegate_connections_handed_back_total").await, 1.0);
}

#[tokio::test]
async fn a_publishing_connection_keeps_answering_across_a_hand_back() {
    use tokio::io::AsyncWriteExt;
    let redis = RedisServer::spawn();
    let node = node_on(&redis, &[]);
    let channel = unique("across");
    let mut sock = tokio::net::TcpStream::connect(node.addr).await.unwrap();
    post_on(&mut sock, &channel, "one").await;
    post_on(&mut sock, &channel, "two").await;
    assert_eq!(node.metric("ssegate_connections_handed_back_total").await, 0.0);
    sock.write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
        .await
        .unwrap();
    let (status, body) = read_answer(&mut sock).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(node.metric("ssegate_connections_handed_back_total").await, 1.0);
    post_on(&mut sock, &channel, "three").await;
    let mut s = Sse::open_with(&node.url(&format!("/v1/stream/{channel}")), Some("0-0")).await;
    for want in ["one", "two", "three"] {
        assert_eq!(s.next().await.unwrap().data, want);
    }
}

#[tokio::test]
async fn the_rest_of_a_body_refused_as_too_large_is_never_read_as_a_request() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let redis = RedisServer::spawn();
    let node = node_on(&redis, &[]);
    let mut sock = tokio::net::TcpStream::connect(node.addr).await.unwrap();
    post_on(&mut sock, "first", "one").await;
    // Four times --max-payload, sent whole: the node answers 413 from the
    // first 64 KiB, and the rest is still arriving. Its bytes, a request
    // smuggled at the end included, are the body's, never a request: the
    // connection ends after the answer.
    let smuggled = "GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n";
    let body = format!("{}{smuggled}", "x".repeat(256 * 1024));
    let head = format!(
        "POST /v1/stream/big HTTP/1.1\r\nHost: x\r\nContent-Length: {}\r\n\r\n",
        body.len()
    );
    let (mut rd, mut wr) = sock.split();
    let sending = async {
        let _ = wr.write_all(format!("{head}{body}").as_bytes()).await;
    };
    let mut answers = Vec::new();
    let reading = async {
        tokio::time::timeout(std::time::Duration::from_secs(10), rd.read_to_end(&mut answers)).await
    };
    let ((), read) = tokio::join!(sending, reading);
    assert!(read.is_ok(), "the connection is closed after the answer");
    let answers = String::from_utf8_lossy(&answers);
    let statuses: Vec<&str> = answers.matches("HTTP/1.1 ").collect();
    assert!(answers.starts_with("HTTP/1.1 413"), "{answers}");
    assert_eq!(statuses.len(), 1, "one answer, to the POST: {answers}");
}

/// A publish refused (404) without its 6-byte body being read, the body
/// sent with the head or only after the answer, then a health check: hyper
/// skips or reads on into that body, so no request boundary can be seen
/// any more, and what follows would be served on the request thread (or
/// the body taken for a request). The connection ends with the answer.
async fn nothing_is_served_after_a_refusal(body_with_head: bool) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let redis = RedisServer::spawn();
    let node = node_on(&redis, &[]);
    let mut sock = tokio::net::TcpStream::connect(node.addr).await.unwrap();
    post_on(&mut sock, "first", "one").await;
    let head = "POST /v1/nowhere HTTP/1.1\r\nHost: x\r\nContent-Length: 6\r\n\r\n";
    let (first, later) = if body_with_head {
        (format!("{head}hello!"), "")
    } else {
        (head.to_owned(), "hello!")
    };
    sock.write_all(first.as_bytes()).await.unwrap();
    let (status, body) = read_answer(&mut sock).await;
    assert_eq!(status, 404, "{body}");
    let _ = sock
        .write_all(format!("{later}GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n").as_bytes())
        .await;
    let mut rest = Vec::new();
    let _ = sock.read_to_end(&mut rest).await;
    assert!(
        rest.is_empty(),
        "served after the refusal: {}",
        String::from_utf8_lossy(&rest)
    );
}

#[tokio::test]
async fn a_publishing_connection_closes_after_a_refusal_that_left_its_body_unread() {
    nothing_is_served_after_a_refusal(true).await;
}

#[tokio::test]
async fn a_body_sent_after_an_early_refusal_is_never_read_as_a_request() {
    nothing_is_served_after_a_refusal(false).await;
}
