//! The client's real address behind balancers, for the per-IP rate and the
//! logs: the parsers (`parsers`), a node spoken to directly by trusted and
//! untrusted peers (`direct`), and real HAProxy in front of real nodes,
//! with the PROXY protocol and in http mode with X-Forwarded-For
//! (`haproxy`). Loopback addresses stand for hosts: 127.0.0.1 is the
//! trusted proxy, 127.0.0.2 and up are clients.

mod direct;
mod haproxy;
mod parsers;

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use serde_json::Value;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpSocket, TcpStream};

use crate::helpers::*;

/// Node flags: 127.0.0.1 is a trusted proxy; each client may open 3
/// connections (or send 3 forwarded requests) at once, then 1 a second.
const BEHIND_PROXY: &[&str] = &[
    "--trusted-proxies",
    "127.0.0.1/32",
    "--ip-rate",
    "1",
    "--ip-burst",
    "3",
];
/// Debug logs, which have a line per connection.
const DEBUG: &[(&str, &str)] = &[("RUST_LOG", "ssegate=debug")];

/// A connection to `addr` from the loopback address `from`.
async fn connect_from(from: &str, addr: SocketAddr) -> TcpStream {
    let sock = TcpSocket::new_v4().unwrap();
    sock.bind(format!("{from}:0").parse().unwrap()).unwrap();
    sock.connect(addr).await.unwrap()
}

/// An answer read off a socket: its status line's code (none when the
/// connection closed without one) and its text.
struct Answer {
    status: Option<u16>,
    text: String,
}

/// Reads one answer: a head and its Content-Length body, or whatever came
/// before the connection closed.
async fn read_answer(sock: &mut TcpStream) -> Answer {
    let mut buf = Vec::new();
    let mut chunk = [0u8; 4096];
    loop {
        match tokio::time::timeout(WAIT, sock.read(&mut chunk)).await {
            Ok(Ok(n)) if n > 0 => buf.extend_from_slice(&chunk[..n]),
            Ok(_) => break,
            Err(_) => panic!("no answer within {WAIT:?}"),
        }
        if head_complete(&buf) {
            break;
        }
    }
    let text = String::from_utf8_lossy(&buf).into_owned();
    let status = text
        .starts_with("HTTP/1.1 ")
        .then(|| text.split_whitespace().nth(1).and_then(|s| s.parse().ok()))
        .flatten();
    Answer { status, text }
}

/// A head with its body (by Content-Length), or an event stream's head.
fn head_complete(buf: &[u8]) -> bool {
    let text = String::from_utf8_lossy(buf);
    let Some((head, body)) = text.split_once("\r\n\r\n") else {
        return false;
    };
    let head = head.to_ascii_lowercase();
    if head.contains("content-type: text/event-stream") {
        return true;
    }
    head.lines()
        .find_map(|l| l.strip_prefix("content-length:"))
        .and_then(|v| v.trim().parse::<usize>().ok())
        .is_some_and(|n| body.len() >= n)
}

/// Sends `bytes` on a new connection from `from`; the answer.
async fn exchange(from: &str, addr: SocketAddr, bytes: &[u8]) -> Answer {
    let mut sock = connect_from(from, addr).await;
    sock.write_all(bytes).await.unwrap();
    read_answer(&mut sock).await
}

/// An HTTP client whose connections come from `ip`, one per request.
fn client_from(ip: &str) -> reqwest::Client {
    reqwest::Client::builder()
        .local_address(ip.parse::<std::net::IpAddr>().unwrap())
        .pool_max_idle_per_host(0)
        .build()
        .unwrap()
}

/// Waits until one of `nodes` logs a JSON line that `matches`; returns it.
/// Lines arrive on the node's stderr pipe: each is awaited, not polled.
fn wait_for_log(nodes: &mut [&mut NodeProcess], what: &str, matches: impl Fn(&Value) -> bool) -> Value {
    let parse = |l: &str| serde_json::from_str::<Value>(l).ok();
    for node in nodes.iter_mut() {
        if let Some(v) = node.logs().iter().filter_map(|l| parse(l)).find(&matches) {
            return v;
        }
    }
    let deadline = Instant::now() + WAIT;
    loop {
        for node in nodes.iter_mut() {
            let slice = Duration::from_millis(50).min(deadline.saturating_duration_since(Instant::now()));
            while let Some(line) = node.next_log(slice) {
                if let Some(v) = parse(&line).filter(&matches) {
                    return v;
                }
            }
        }
        assert!(Instant::now() < deadline, "no log line: {what}");
    }
}

/// A log line's field, whether on the event or on its span.
fn field<'a>(line: &'a Value, name: &str) -> Option<&'a str> {
    line[name].as_str().or_else(|| line["span"][name].as_str())
}

/// The request `GET <path>` that closes its connection, with extra header
/// lines.
fn get(path: &str, extra: &str) -> Vec<u8> {
    format!("GET {path} HTTP/1.1\r\nHost: x\r\n{extra}Connection: close\r\n\r\n").into_bytes()
}
