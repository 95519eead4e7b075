//! Positions that no channel ever had: a `Last-Event-ID` from the future,
//! an ephemeral event's own id reused as a cursor, and a durable message
//! published by hand with a forged id. None of them may silence a stream
//! or a channel.

use crate::helpers::*;

async fn first_event_after(node_url: &str, channel: &str, cursor: &str) -> Sse {
    Sse::open_with(&format!("{node_url}/v1/stream/{channel}"), Some(cursor)).await
}

async fn a_future_cursor_is_reset_and_the_stream_gets_every_later_event(redis: Option<&RedisServer>) {
    let node = Node::spawn(config(redis)).await;
    let channel = unique("future");
    node.publish(&channel, "before").await;
    let mut s = first_event_after(&node.url(""), &channel, "99999999999999-0").await;
    let reset = s.next().await.expect("a reset");
    assert_eq!(reset.event, "ssegate.reset");
    let data: serde_json::Value = serde_json::from_str(&reset.data).unwrap();
    assert_eq!(data["reason"], "unknown_position");
    for i in 0..3 {
        let id = node.publish(&channel, format!("later {i}")).await;
        let ev = s.next().await.expect("the later event");
        assert_eq!((ev.data, ev.id), (format!("later {i}"), id));
    }
    assert_eq!(
        node.metric("ssegate_resets_total{reason=\"unknown_position\"}")
            .await,
        1.0
    );
}

#[tokio::test]
async fn a_cursor_ahead_of_the_channel_is_reset_with_redis() {
    let redis = RedisServer::spawn();
    a_future_cursor_is_reset_and_the_stream_gets_every_later_event(Some(&redis)).await;
}

#[tokio::test]
async fn a_cursor_ahead_of_the_channel_is_reset_with_the_embedded_broker() {
    a_future_cursor_is_reset_and_the_stream_gets_every_later_event(None).await;
}

#[tokio::test]
async fn an_ephemeral_events_own_id_reused_as_a_cursor_does_not_silence_the_stream() {
    let redis = RedisServer::spawn();
    let node = Node::spawn(config(Some(&redis))).await;
    let channel = unique("snowflake");
    let mut s = Sse::open(&node.url(&format!("/v1/stream/{channel}"))).await;
    // A backend's own id (a 19-digit snowflake) on an ephemeral event.
    let envelope = r#"{"id":"1234567890123456789","data":"ephemeral"}"#;
    redis.cli(&["PUBLISH", &format!("sse:{{{channel}}}"), envelope]);
    let ev = s.next().await.unwrap();
    assert_eq!(ev.data, "ephemeral");
    assert_eq!(ev.id, "1234567890123456789");
    // The browser reconnects with the id it remembers.
    let mut again = first_event_after(&node.url(""), &channel, &ev.id).await;
    assert_eq!(again.next().await.unwrap().event, "ssegate.reset");
    let id = node.publish(&channel, "durable").await;
    let ev = again.next().await.unwrap();
    assert_eq!((ev.data.as_str(), ev.id.as_str()), ("durable", id.as_str()));
}

#[tokio::test]
async fn a_durable_message_with_a_forged_future_id_is_dropped_and_the_channel_goes_on() {
    let redis = RedisServer::spawn();
    let node = Node::spawn(config(Some(&redis))).await;
    let channel = unique("forged");
    let mut s = Sse::open(&node.url(&format!("/v1/stream/{channel}"))).await;
    let forged = "\u{0}99999999999999-0\u{0}forged";
    let mut conn = redis.conn().await;
    let receivers: i64 = redis::cmd("PUBLISH")
        .arg(format!("sse:{{{channel}}}"))
        .arg(forged.as_bytes())
        .query_async(&mut conn)
        .await
        .unwrap();
    assert_eq!(receivers, 1, "the node is subscribed");
    for i in 0..3 {
        let id = node.publish(&channel, format!("real {i}")).await;
        let ev = s.next().await.expect("a real event after the forged one");
        assert_eq!((ev.data, ev.id), (format!("real {i}"), id));
    }
    assert_eq!(
        node.metric("ssegate_events_dropped_total{reason=\"id_ahead_of_redis_clock\"}")
            .await,
        1.0
    );
}
