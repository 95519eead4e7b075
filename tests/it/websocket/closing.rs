//! The closing handshake (RFC 6455 section 7.1): a node that closes a
//! socket (drain, token expiry) gets its close frame to a client that still
//! reads, even one that is behind with its reads, so that the client knows
//! to reconnect elsewhere at once instead of taking the end for a fault.

use tokio::net::TcpStream;

use super::raw::RawWs;
use crate::helpers::*;

/// The kernel's largest send buffer for a TCP socket: what the node's
/// socket may hold at most, however it grows.
fn send_buffer_max() -> usize {
    let wmem = std::fs::read_to_string("/proc/sys/net/ipv4/tcp_wmem").expect("Linux's tcp_wmem");
    wmem.split_whitespace()
        .nth(2)
        .and_then(|v| v.parse().ok())
        .expect("tcp_wmem holds three sizes")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_behind_on_its_reads_still_gets_1001_from_a_draining_node() {
    // A queue large enough that the backlog below does not overflow it (an
    // overflow closes with 4008, as it should, and is another test's).
    let node = NodeProcess::spawn(&[
        "--drain-delay",
        "0s",
        "--close-spread",
        "0s",
        "--heartbeat",
        "1h",
        "--ip-rate",
        "0",
        "--client-queue",
        "16MiB",
        "--replay-memory",
        "64MiB",
    ]);
    let ch = unique("ws-behind");
    let mut ws =
        RawWs::connect_with_receive_buffer(node.addr, &format!("/v1/ws?channel={ch}"), 64 * 1024).await;
    assert_eq!(ws.next_json().await["type"], "subscribed");

    // More than the node's socket and the client's can hold between them,
    // unread: the node has frames left to write when it drains.
    let payload = "z".repeat(32 * 1024);
    let backlog = send_buffer_max() + 2 * 1024 * 1024;
    let http = reqwest::Client::new();
    let mut published = 0;
    while published * payload.len() < backlog {
        let resp = http
            .post(node.url(&format!("/v1/stream/{ch}")))
            .body(payload.clone())
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status(), 201);
        published += 1;
    }
    assert_eq!(node.metric("ssegate_slow_client_disconnects_total").await, 0.0);

    node.signal("-TERM");
    // The listener closes just before the streams are closed.
    eventually("the node stops listening", || async {
        TcpStream::connect(node.addr).await.is_err()
    })
    .await;

    // Now the client catches up: the events the node had taken, then 1001.
    let mut events = 0;
    let code = loop {
        match ws.next_frame_or_end().await {
            Some(f) if f.opcode == 0x1 => events += 1,
            Some(f) if f.opcode == 0x8 => break Some(u16::from_be_bytes([f.payload[0], f.payload[1]])),
            Some(f) => panic!("unexpected opcode {}", f.opcode),
            None => break None,
        }
    };
    assert_eq!(
        code,
        Some(1001),
        "the socket ended after {events} of {published} events without the close frame"
    );
}
