//! The frame protocol: replies, refusals that leave the socket open, and
//! the close codes.

use serde_json::json;
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::Message;

use super::*;

#[tokio::test]
async fn subscribe_publish_ack_and_event_on_one_socket() {
    let node = NodeProcess::spawn(&[]);
    let channel = unique("ws-basic");
    let mut ws = Ws::connect(node.addr, "").await;
    subscribe(&mut ws, &channel, None).await;
    ws.send(json!({"type": "publish", "channel": channel, "data": "hi", "event": "greet", "ref": 7}))
        .await;
    let mut ack = None;
    let mut event = None;
    while ack.is_none() || event.is_none() {
        let m = ws.next().await;
        match m["type"].as_str() {
            Some("ack") => ack = Some(m),
            Some("event") => event = Some(m),
            _ => panic!("{m}"),
        }
    }
    let (ack, event) = (ack.unwrap(), event.unwrap());
    assert_eq!(ack["ref"], 7);
    assert_eq!(
        event,
        json!({"type":"event","channel":channel,"id":ack["id"],"event":"greet","data":"hi"})
    );
    // Any JSON is serialized, as in an envelope.
    ws.send(json!({"type": "publish", "channel": channel, "data": {"n": [1, 2]}}))
        .await;
    assert_eq!(ws.next_of("event").await["data"], r#"{"n":[1,2]}"#);
    ws.send(json!({"type": "unsubscribe", "channel": channel, "ref": "u"}))
        .await;
    assert_eq!(
        ws.next().await,
        json!({"type": "unsubscribed", "channel": channel, "ref": "u"})
    );
    node.publish(&channel, "not delivered").await;
    ws.send(json!({"type": "subscribe", "channel": "other", "ref": "o"}))
        .await;
    assert_eq!(
        ws.next().await["type"],
        "subscribed",
        "nothing of the unsubscribed channel came first"
    );
}

#[tokio::test]
async fn bad_messages_get_an_error_and_change_nothing() {
    let node = NodeProcess::spawn(&[
        "--ws-max-channels",
        "2",
        "--max-payload",
        "1KiB",
        "--client-queue",
        "4KiB",
    ]);
    let mut ws = Ws::connect(node.addr, "?channel=one").await;
    assert_eq!(ws.next().await["type"], "subscribed");
    let cases = [
        (Message::text("{not json"), "invalid_json"),
        (
            Message::text(json!({"type": "dance", "ref": 1}).to_string()),
            "unknown_type",
        ),
        (
            Message::text(json!({"type": "subscribe"}).to_string()),
            "invalid_message",
        ),
        (
            Message::text(json!({"type": "subscribe", "channel": "bad name"}).to_string()),
            "invalid_channel",
        ),
        (
            Message::text(json!({"type": "subscribe", "channel": "one"}).to_string()),
            "already_subscribed",
        ),
        (
            Message::text(json!({"type": "subscribe", "channel": "x", "after": "nope"}).to_string()),
            "invalid_after",
        ),
        (
            Message::text(json!({"type": "unsubscribe", "channel": "never"}).to_string()),
            "not_subscribed",
        ),
        (
            Message::text(json!({"type": "publish", "channel": "one", "data": "x".repeat(2000)}).to_string()),
            "payload_too_large",
        ),
        (
            Message::text(
                json!({"type": "publish", "channel": "one", "data": "x", "event": "ssegate.reset"})
                    .to_string(),
            ),
            "invalid_envelope",
        ),
    ];
    for (msg, code) in cases {
        ws.send_raw(msg).await;
        let reply = ws.next().await;
        assert_eq!(
            (reply["type"].as_str(), reply["code"].as_str()),
            (Some("error"), Some(code)),
            "{reply}"
        );
    }
    subscribe(&mut ws, "two", None).await;
    ws.send(json!({"type": "subscribe", "channel": "three", "ref": 3}))
        .await;
    let reply = ws.next().await;
    assert_eq!(
        (reply["code"].as_str(), reply["ref"].as_i64()),
        (Some("too_many_channels"), Some(3))
    );
    // Still open and working.
    ws.send(json!({"type": "publish", "channel": "two", "data": "after all that", "ref": "p"}))
        .await;
    assert_eq!(ws.next_of("event").await["data"], "after all that");
    assert!(node.metric("ssegate_websocket_errors_total").await >= 10.0);
}

#[tokio::test]
async fn a_binary_frame_closes_with_1003_and_a_frame_over_the_limit_with_1009() {
    let node = NodeProcess::spawn(&["--max-payload", "1KiB", "--client-queue", "4KiB"]);
    let mut ws = Ws::connect(node.addr, "").await;
    ws.send_raw(Message::binary(vec![1, 2, 3])).await;
    assert_eq!(ws.ended().await, Ended::Close(1003));
    let mut ws = Ws::connect(node.addr, "").await;
    ws.send_raw(Message::text("x".repeat(64 * 1024))).await;
    assert_eq!(ws.ended().await, Ended::Close(1009));
}

#[tokio::test]
async fn auth_is_checked_before_the_upgrade_and_expiry_closes_with_4401() {
    let node = NodeProcess::spawn(&["--jwt-secret", "s3cret"]);
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs();
    let token = |exp: u64, channels: &[&str]| {
        jsonwebtoken::encode(
            &jsonwebtoken::Header::default(),
            &json!({"exp": exp, "channels": channels, "publish": channels}),
            &jsonwebtoken::EncodingKey::from_secret(b"s3cret"),
        )
        .unwrap()
    };
    assert_eq!(Ws::try_connect(node.addr, "", None).await.err(), Some(401));
    let reader = token(now + 600, &["mine"]);
    assert_eq!(
        Ws::try_connect(node.addr, "?channel=theirs", Some(&reader))
            .await
            .err(),
        Some(403)
    );
    let mut ws = Ws::try_connect(node.addr, "?channel=mine", Some(&reader))
        .await
        .unwrap();
    assert_eq!(ws.next().await["type"], "subscribed");
    ws.send(json!({"type": "subscribe", "channel": "theirs", "ref": 1}))
        .await;
    assert_eq!(ws.next().await["code"], "forbidden");
    ws.send(json!({"type": "publish", "channel": "theirs", "data": "x", "ref": 2}))
        .await;
    assert_eq!(ws.next().await["code"], "forbidden");
    // A token about to expire: a refresh keeps the socket, then expiry closes it.
    let short = token(now + 2, &["mine"]);
    let mut ws = Ws::try_connect(node.addr, "?channel=mine", Some(&short))
        .await
        .unwrap();
    assert_eq!(ws.next().await["type"], "subscribed");
    ws.send(json!({"type": "refresh", "token": "garbage", "ref": "r0"}))
        .await;
    assert_eq!(ws.next().await["code"], "unauthorized");
    let narrower = token(now + 600, &["elsewhere"]);
    ws.send(json!({"type": "refresh", "token": narrower, "ref": "r1"}))
        .await;
    assert_eq!(
        ws.next().await["code"],
        "forbidden",
        "the new token must grant what is subscribed"
    );
    let longer = token(now + 4, &["mine"]);
    ws.send(json!({"type": "refresh", "token": longer, "ref": "r2"}))
        .await;
    assert_eq!(ws.next().await, json!({"type": "refreshed", "ref": "r2"}));
    assert_eq!(
        ws.ended().await,
        Ended::Close(4401),
        "closed at the refreshed expiry"
    );
}

#[tokio::test]
async fn a_socket_that_never_reads_is_closed_at_its_queue_and_memory_stays_flat() {
    // The node keeps one event of history, not a thousand: what it holds
    // for the slow socket is then what grows. jemalloc hands freed pages
    // back at once rather than over 10 s, so RSS counts what the node holds,
    // not pages the allocator keeps for reuse.
    let node = NodeProcess::spawn_env(
        &["--client-queue", "64KiB", "--history-size", "1"],
        &[("_RJEM_MALLOC_CONF", "dirty_decay_ms:0")],
    );
    let channel = unique("ws-slow");
    let ws = Ws::connect(node.addr, &format!("?channel={channel}")).await;
    let before = rss_kib(node.child.id());
    let payload = "z".repeat(32 * 1024);
    let client = reqwest::Client::new();
    // 16 MiB at a socket that reads nothing.
    for _ in 0..512 {
        client
            .post(node.url(&format!("/v1/stream/{channel}")))
            .body(payload.clone())
            .send()
            .await
            .unwrap();
        if node.metric("ssegate_slow_client_disconnects_total").await >= 1.0 {
            break;
        }
    }
    assert_eq!(node.metric("ssegate_slow_client_disconnects_total").await, 1.0);
    let grown = rss_kib(node.child.id()).saturating_sub(before);
    assert!(grown < 8 * 1024, "RSS grew by {grown} KiB");
    drop(ws);
    eventually("the socket is gone", || async {
        node.metric("ssegate_websockets_open").await == 0.0
    })
    .await;
}

#[tokio::test]
async fn a_draining_node_closes_its_sockets_with_1001() {
    // No ping in the window: a pong the node leaves unread as it closes
    // makes its close a reset, which may take the close frame with it.
    let node = NodeProcess::spawn(&["--drain-delay", "0s", "--close-spread", "0s", "--heartbeat", "1h"]);
    let mut ws = Ws::connect(node.addr, "?channel=drain").await;
    assert_eq!(ws.next().await["type"], "subscribed");
    node.signal("-TERM");
    assert_eq!(ws.ended().await, Ended::Close(1001));
}

/// WebSocket over HTTP/2 (RFC 8441): `CONNECT` with `:protocol websocket`
/// on a stream, then WebSocket frames on that stream.
#[tokio::test]
async fn websockets_run_over_http2_extended_connect() {
    let node = NodeProcess::spawn(&[]);
    let channel = unique("ws-h2");
    let tcp = TcpStream::connect(node.addr).await.unwrap();
    let (h2, connection) = h2::client::handshake(tcp).await.unwrap();
    tokio::spawn(connection);
    let mut h2 = h2.ready().await.unwrap();
    let req = http::Request::builder()
        .method("CONNECT")
        .uri(format!("http://{}/v1/ws?channel={channel}", node.addr))
        .extension(h2::ext::Protocol::from_static("websocket"))
        .header("sec-websocket-version", "13")
        .body(())
        .unwrap();
    let (resp, mut send) = h2.send_request(req, false).unwrap();
    let resp = resp.await.unwrap();
    assert_eq!(resp.status(), 200);
    let mut body = resp.into_body();
    // The first frame: `subscribed`, as a text frame (0x81) of the server.
    let mut received = Vec::new();
    let text = |bytes: &[u8]| -> Option<(String, usize)> {
        let len = match bytes.get(1)? {
            n if *n < 126 => *n as usize,
            126 => u16::from_be_bytes([*bytes.get(2)?, *bytes.get(3)?]) as usize,
            _ => return None,
        };
        let start = if len < 126 { 2 } else { 4 };
        let payload = bytes.get(start..start + len)?;
        Some((String::from_utf8(payload.to_vec()).unwrap(), start + len))
    };
    let mut messages = Vec::new();
    while messages.is_empty() {
        let chunk = tokio::time::timeout(WAIT, body.data())
            .await
            .unwrap()
            .unwrap()
            .unwrap();
        let _ = body.flow_control().release_capacity(chunk.len());
        received.extend_from_slice(&chunk);
        while let Some((msg, used)) = text(&received) {
            messages.push(msg);
            received.drain(..used);
        }
    }
    let first: serde_json::Value = serde_json::from_str(&messages[0]).unwrap();
    assert_eq!(first["type"], "subscribed");
    // A masked client frame: publish, then its ack and event arrive.
    let payload = json!({"type": "publish", "channel": channel, "data": "over h2", "ref": 1}).to_string();
    let mask = [7u8, 1, 2, 3];
    let mut frame = vec![0x81, 0x80 | 126];
    frame.extend_from_slice(&(payload.len() as u16).to_be_bytes());
    frame.extend_from_slice(&mask);
    frame.extend(payload.bytes().enumerate().map(|(i, b)| b ^ mask[i % 4]));
    send.send_data(bytes::Bytes::from(frame), false).unwrap();
    let mut kinds = Vec::new();
    while kinds.len() < 2 {
        let chunk = tokio::time::timeout(WAIT, body.data())
            .await
            .unwrap()
            .unwrap()
            .unwrap();
        let _ = body.flow_control().release_capacity(chunk.len());
        received.extend_from_slice(&chunk);
        while let Some((msg, used)) = text(&received) {
            let v: serde_json::Value = serde_json::from_str(&msg).unwrap();
            kinds.push(v["type"].as_str().unwrap().to_owned());
            received.drain(..used);
        }
    }
    kinds.sort();
    assert_eq!(kinds, ["ack", "event"]);
}
