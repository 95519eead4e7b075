//! State snapshots: stored at the channel's position, served first on a
//! stream or a socket that asks, then every event after them; and right
//! after a reset.

use serde_json::json;

use super::*;
use crate::ws::{Ws, subscribe};

#[tokio::test]
async fn a_snapshot_is_stored_at_the_channels_position_and_read_back() {
    let redis = RedisServer::spawn();
    for node in [redis_node(&redis, &[]), NodeProcess::spawn(&[])] {
        let channel = unique("snap");
        let (status, body) = get_json(&node.url(&format!("/v1/state/{channel}"))).await;
        assert_eq!((status, body["error"].as_str()), (404, Some("no_state")));
        assert_eq!(put_state(&node.url(""), &channel, "empty").await, "0-0");
        let id = node.publish(&channel, "one").await;
        let at = put_state(&node.url(""), &channel, r#"{"count":1}"#).await;
        assert_eq!(at, id, "stored at the channel's newest id");
        let (status, body) = get_json(&node.url(&format!("/v1/state/{channel}"))).await;
        assert_eq!(status, 200);
        assert_eq!(body, json!({"position": id, "state": r#"{"count":1}"#}));
    }
}

#[tokio::test]
async fn bad_state_requests_change_nothing() {
    let node = NodeProcess::spawn(&["--max-payload", "1KiB", "--client-queue", "4KiB"]);
    let channel = unique("badsnap");
    put_state(&node.url(""), &channel, "kept").await;
    let too_big = reqwest::Client::new()
        .put(node.url(&format!("/v1/state/{channel}")))
        .body("x".repeat(2048))
        .send()
        .await
        .unwrap();
    assert_eq!(too_big.status(), 413);
    let bad = reqwest::Client::new()
        .put(node.url("/v1/state/bad%20name"))
        .body("x")
        .send()
        .await
        .unwrap();
    assert_eq!(bad.status(), 400);
    let (_, body) = get_json(&node.url(&format!("/v1/state/{channel}"))).await;
    assert_eq!(body["state"], "kept");
    // state=1 is for one channel.
    let multi = reqwest::get(node.url("/v1/stream?channel=a&channel=b&state=1"))
        .await
        .unwrap();
    assert_eq!(multi.status(), 400);
}

#[tokio::test]
async fn a_stream_with_state_gets_the_snapshot_then_every_later_event() {
    let redis = RedisServer::spawn();
    let (a, b) = (redis_node(&redis, &[]), redis_node(&redis, &[]));
    let channel = unique("state-sse");
    for i in 0..3 {
        a.publish(&channel, format!("before {i}")).await;
    }
    let at = put_state(&a.url(""), &channel, "line one\nline two").await;
    let mut after = Vec::new();
    for i in 0..3 {
        after.push(a.publish(&channel, format!("after {i}")).await);
    }
    let mut s = Sse::open(&b.url(&format!("/v1/stream/{channel}?state=1"))).await;
    let state = s.next().await.unwrap();
    assert_eq!(
        (state.event.as_str(), state.id.as_str()),
        ("ssegate.state", at.as_str())
    );
    assert_eq!(state.data, "line one\nline two");
    for id in &after {
        let ev = s.next().await.unwrap();
        assert_eq!(&ev.id, id, "every event after the snapshot, once, in order");
    }
    let later = a.publish(&channel, "live").await;
    assert_eq!(s.next().await.unwrap().id, later);
}

#[tokio::test]
async fn a_websocket_subscribe_with_state_gets_the_snapshot_then_every_later_event() {
    let redis = RedisServer::spawn();
    let (a, b) = (redis_node(&redis, &[]), redis_node(&redis, &[]));
    let channel = unique("state-ws");
    a.publish(&channel, "before").await;
    let at = put_state(&a.url(""), &channel, r#"{"n":1}"#).await;
    let next = a.publish(&channel, "after").await;
    let mut ws = Ws::connect(b.addr, "").await;
    ws.send(json!({"type": "subscribe", "channel": channel, "state": true, "ref": 1}))
        .await;
    let subscribed = ws.next().await;
    assert_eq!(
        (subscribed["type"].as_str(), subscribed["position"].as_str()),
        (Some("subscribed"), Some(at.as_str()))
    );
    assert_eq!(
        ws.next().await,
        json!({"type": "state", "channel": channel, "id": at, "data": r#"{"n":1}"#})
    );
    let ev = ws.next().await;
    assert_eq!(
        (ev["id"].as_str(), ev["data"].as_str()),
        (Some(next.as_str()), Some("after"))
    );
    // Without a snapshot: live from now, as without `state`.
    let other = unique("no-state");
    subscribe(&mut ws, &other, None).await;
}

#[tokio::test]
async fn a_resume_older_than_the_history_gets_the_snapshot_right_after_its_reset() {
    let redis = RedisServer::spawn();
    let node = redis_node(&redis, &["--history-size", "5"]);
    let channel = unique("state-reset");
    let first = node.publish(&channel, "0").await;
    for i in 1..300 {
        node.publish(&channel, i.to_string()).await;
    }
    let at = put_state(&node.url(""), &channel, "state at 299").await;
    let after = node.publish(&channel, "300").await;
    let url = node.url(&format!("/v1/stream/{channel}?state=1"));
    let mut s = Sse::open_with(&url, Some(&first)).await;
    let reset = s.next().await.unwrap();
    assert_eq!(reset.event, "ssegate.reset");
    let state = s.next().await.unwrap();
    assert_eq!(
        (state.event.as_str(), state.id.as_str(), state.data.as_str()),
        ("ssegate.state", at.as_str(), "state at 299")
    );
    assert_eq!(s.next().await.unwrap().id, after);
    // The same over a WebSocket.
    let mut ws = Ws::connect(node.addr, "").await;
    ws.send(json!({"type": "subscribe", "channel": channel, "after": first, "state": true, "ref": 1}))
        .await;
    let kinds: Vec<String> = {
        let mut k = Vec::new();
        while k.len() < 4 {
            k.push(ws.next().await["type"].as_str().unwrap().to_owned());
        }
        k
    };
    assert_eq!(kinds, ["subscribed", "reset", "state", "event"]);
}
