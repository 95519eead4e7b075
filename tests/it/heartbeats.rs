//! Heartbeats on event streams: an idle stream's comment is written by the
//! node's heartbeat tick straight to the socket, so it must be framed as
//! the stream is (a chunk on HTTP/1.1, bare on HTTP/1.0) and must never
//! land inside an event the stream's writer is writing.

use std::time::Duration;

use futures::StreamExt;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::helpers::*;

const BEAT: &str = ":\n\n";

/// A node whose streams get a heartbeat every 10 ms (the shortest allowed).
async fn fast_beating_node() -> Node {
    let mut c = config(None);
    c.heartbeat = Duration::from_millis(10);
    Node::spawn(c).await
}

/// Splits an event stream's text into its blocks and checks that each is
/// a heartbeat, the retry hint or a whole event; returns the events' data.
fn events_in(text: &str) -> (Vec<String>, usize) {
    assert!(text.ends_with("\n\n"), "a block cut short: {text:?}");
    let mut data = Vec::new();
    let mut beats = 0;
    for block in text[..text.len() - 2].split("\n\n") {
        if block == ":" {
            beats += 1;
            continue;
        }
        let mut lines = block.lines();
        let first = lines.next().unwrap_or_default();
        if first.starts_with("retry: ") {
            continue;
        }
        let mut seen = None;
        for line in block.lines() {
            let (field, value) = line
                .split_once(": ")
                .unwrap_or_else(|| panic!("not a field: {line:?} in {block:?}"));
            assert!(["id", "event", "data"].contains(&field), "{line:?} in {block:?}");
            if field == "data" {
                seen = Some(value.to_owned());
            }
        }
        data.push(seen.unwrap_or_else(|| panic!("an event without data: {block:?}")));
    }
    (data, beats)
}

#[tokio::test]
async fn heartbeats_between_events_are_whole_chunks_on_http_1_1() {
    let node = fast_beating_node().await;
    let ch = unique("beats-chunked");
    let resp = reqwest::get(node.url(&format!("/v1/stream/{ch}"))).await.unwrap();
    assert_eq!(resp.status(), 200);
    assert_eq!(resp.headers()["transfer-encoding"], "chunked");
    // hyper decodes the chunks: a heartbeat written without its chunk
    // framing, or inside another chunk, fails the read.
    let mut body = resp.bytes_stream();
    let mut text = String::new();
    let mut sent = Vec::new();
    let published = 300;
    for round in 0..published / 10 {
        // Bursts of events, each followed by a few idle beats, so that
        // heartbeats come both while the writer is busy and while it waits.
        for i in 0..10 {
            let data = format!("event-{}", round * 10 + i);
            node.publish(&ch, data.clone()).await;
            sent.push(data);
        }
        let beats_before = text.matches(BEAT).count();
        let deadline = tokio::time::Instant::now() + WAIT;
        while !text.ends_with("\n\n")
            || text.matches(BEAT).count() < beats_before + 3
            || !text.contains(&format!("data: {}\n", sent.last().unwrap()))
        {
            let chunk = tokio::time::timeout_at(deadline, body.next())
                .await
                .expect("the burst and three heartbeats after it arrive in time")
                .expect("the stream stays open")
                .expect("well-framed chunks");
            text.push_str(std::str::from_utf8(&chunk).expect("utf-8"));
        }
    }
    let (data, beats) = events_in(&text);
    assert_eq!(data, sent, "every event once, in order, whole");
    assert!(beats >= 3 * (published / 10), "{beats} heartbeats");
}

#[tokio::test]
async fn heartbeats_on_http_1_0_are_bare_comments() {
    let node = fast_beating_node().await;
    let ch = unique("beats-bare");
    let mut sock = tokio::net::TcpStream::connect(node.addr).await.unwrap();
    sock.write_all(format!("GET /v1/stream/{ch} HTTP/1.0\r\n\r\n").as_bytes())
        .await
        .unwrap();
    let mut raw = Vec::new();
    let mut buf = [0u8; 4096];
    let mut published = false;
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        let n = tokio::time::timeout_at(deadline, sock.read(&mut buf))
            .await
            .expect("three heartbeats, the event and three more arrive in time")
            .unwrap();
        assert!(n > 0, "the stream stays open");
        raw.extend_from_slice(&buf[..n]);
        let text = String::from_utf8(raw.clone()).expect("utf-8");
        let Some((head, body)) = text.split_once("\r\n\r\n") else {
            continue;
        };
        assert!(
            head.starts_with("HTTP/1.0 200") || head.starts_with("HTTP/1.1 200"),
            "{head}"
        );
        assert!(!head.to_ascii_lowercase().contains("transfer-encoding"), "{head}");
        assert!(!body.contains('\r'), "no chunk framing on HTTP/1.0: {body:?}");
        if !published && body.matches(BEAT).count() >= 3 {
            node.publish(&ch, "between beats").await;
            published = true;
        }
        if published
            && body.ends_with("\n\n")
            && body
                .split("data: between beats\n")
                .nth(1)
                .is_some_and(|after| after.matches(BEAT).count() >= 3)
        {
            let (data, beats) = events_in(body);
            assert_eq!(data, ["between beats"]);
            assert!(beats >= 6, "{beats} heartbeats");
            break;
        }
    }
}

/// A stream that carries events needs no keep-alive: while events come
/// more often than every half `--heartbeat` it gets no heartbeat, while an
/// idle stream on the same node gets one every `--heartbeat`.
#[tokio::test]
async fn a_stream_that_carries_events_gets_no_heartbeats_an_idle_one_does() {
    let mut c = config(None);
    c.heartbeat = Duration::from_secs(1);
    let node = Node::spawn(c).await;
    let ch = unique("beats-busy");
    let busy = reqwest::get(node.url(&format!("/v1/stream/{ch}"))).await.unwrap();
    let idle = reqwest::get(node.url(&format!("/v1/stream/{}", unique("beats-idle"))))
        .await
        .unwrap();
    let (mut busy, mut idle) = (busy.bytes_stream(), idle.bytes_stream());
    let (mut busy_text, mut idle_text) = (String::new(), String::new());
    let mut sent = Vec::new();
    // An event every 20 ms on the busy stream, until the idle one has had
    // three heartbeats (three rounds of the tick over both streams).
    let mut every = tokio::time::interval(Duration::from_millis(20));
    let deadline = tokio::time::Instant::now() + WAIT * 2;
    while idle_text.matches(BEAT).count() < 3 {
        tokio::select! {
            _ = every.tick() => {
                let data = format!("event-{}", sent.len());
                node.publish(&ch, data.clone()).await;
                sent.push(data);
            }
            chunk = busy.next() => {
                let chunk = chunk.expect("the busy stream stays open").unwrap();
                busy_text.push_str(std::str::from_utf8(&chunk).unwrap());
            }
            chunk = idle.next() => {
                let chunk = chunk.expect("the idle stream stays open").unwrap();
                idle_text.push_str(std::str::from_utf8(&chunk).unwrap());
            }
            _ = tokio::time::sleep_until(deadline) => panic!("three heartbeats on the idle stream in time"),
        }
    }
    let last = sent.last().expect("events were published").clone();
    while !(busy_text.ends_with("\n\n") && busy_text.contains(&format!("data: {last}\n"))) {
        let chunk = tokio::time::timeout(WAIT, busy.next())
            .await
            .expect("the last event in time")
            .expect("the busy stream stays open")
            .unwrap();
        busy_text.push_str(std::str::from_utf8(&chunk).unwrap());
    }
    let (data, _) = events_in(&busy_text);
    assert_eq!(data, sent, "every event once, in order");
    // From its first event on. One is allowed: a publisher held up for
    // half a second on a loaded machine leaves the stream quiet that long.
    let since_first = &busy_text[busy_text.find("data: ").unwrap()..];
    let beats = since_first.matches(BEAT).count();
    assert!(beats <= 1, "{beats} heartbeats between {} events", sent.len());
}

/// Reads one HTTP/1.1 chunk's size line, data and CRLF from `raw` at `at`;
/// `None` until all of it is there. Panics on anything else: a heartbeat
/// written inside another chunk breaks the framing here.
fn next_chunk(raw: &[u8], at: usize) -> Option<(usize, &[u8])> {
    let rest = &raw[at..];
    let line_end = rest.windows(2).position(|w| w == b"\r\n")?;
    let line = std::str::from_utf8(&rest[..line_end]).expect("a size line in ASCII");
    let size = usize::from_str_radix(line, 16).unwrap_or_else(|_| panic!("not a chunk size: {line:?}"));
    let data_at = line_end + 2;
    let end = data_at + size + 2;
    if rest.len() < end {
        return None;
    }
    assert_eq!(
        &rest[data_at + size..end],
        b"\r\n",
        "a chunk of {size} bytes ends with CRLF"
    );
    Some((at + end, &rest[data_at..data_at + size]))
}

/// A slow reader's stream, its writer held up mid-chunk by a full socket
/// while the tick comes by, reads back as whole chunks and every event.
/// (Whether the tick may write directly is decided by the writer's idle
/// flag, which the subscriber's unit tests pin: the moment this test could
/// catch a wrong flag, room on the socket before the writer runs again, is
/// too narrow to hit reliably from outside.)
#[tokio::test]
async fn a_slow_readers_stream_stays_whole_with_heartbeats_while_it_catches_up() {
    let mut c = config(None);
    c.heartbeat = Duration::from_millis(10);
    // Room for the whole burst in the stream's queue: the client is slow,
    // not gone.
    c.client_queue = 4 << 20;
    let node = Node::spawn(c).await;
    let ch = unique("beats-stuck");
    // A client with a small receive buffer that reads nothing at first.
    let sock = tokio::net::TcpSocket::new_v4().unwrap();
    sock.set_recv_buffer_size(4096).unwrap();
    let mut stuck = sock.connect(node.addr).await.unwrap();
    stuck
        .write_all(format!("GET /v1/stream/{ch} HTTP/1.1\r\nHost: t\r\n\r\n").as_bytes())
        .await
        .unwrap();
    // An idle stream read as it comes: its heartbeats pace the test, each
    // a visit of the tick to every stream.
    let pace = reqwest::get(node.url(&format!("/v1/stream/{}", unique("pace"))))
        .await
        .unwrap();
    let mut pace = pace.bytes_stream();
    let mut beat = async || {
        let mut seen = String::new();
        while !seen.contains(BEAT) {
            let chunk = tokio::time::timeout(WAIT, pace.next())
                .await
                .expect("a heartbeat on the idle stream in time")
                .expect("the idle stream stays open")
                .unwrap();
            seen.push_str(std::str::from_utf8(&chunk).unwrap());
        }
    };
    // More than the two socket buffers hold, in 8 KiB events: the writer
    // is left in the middle of a chunk with its queue empty.
    let filler = "x".repeat(8 * 1024);
    let sent: Vec<String> = (0..40).map(|i| format!("{i}:{filler}")).collect();
    for data in &sent {
        node.publish(&ch, data.clone()).await;
    }
    // Then read slowly, a little between heartbeats, so that the socket
    // has room again at times while the tick comes by.
    let mut raw = Vec::new();
    let mut buf = [0u8; 2048];
    let (mut at, mut body) = (None, Vec::new());
    let deadline = tokio::time::Instant::now() + WAIT * 4;
    loop {
        beat().await;
        let n = tokio::time::timeout_at(deadline, stuck.read(&mut buf))
            .await
            .expect("the whole burst arrives in time")
            .unwrap();
        assert!(n > 0, "the stream stays open");
        raw.extend_from_slice(&buf[..n]);
        let pos = match at {
            Some(pos) => pos,
            None => match raw.windows(4).position(|w| w == b"\r\n\r\n") {
                Some(head_end) => head_end + 4,
                None => continue,
            },
        };
        let mut pos = pos;
        while let Some((next, data)) = next_chunk(&raw, pos) {
            body.extend_from_slice(data);
            pos = next;
        }
        at = Some(pos);
        let text = String::from_utf8_lossy(&body);
        if text.ends_with("\n\n") && text.contains(&format!("data: {}\n", sent.last().unwrap())) {
            let (data, _) = events_in(&text);
            assert_eq!(data, sent, "every event once, in order, whole");
            return;
        }
    }
}
