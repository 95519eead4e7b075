//! A socket's channel numbers: one freed by an unsubscribe is not handed to
//! the next subscribe while the node's queue for the socket may still hold
//! items of the channel that had it.

use serde_json::json;

use super::raw::{RawWs, text};
use crate::helpers::*;

#[tokio::test]
async fn a_channel_subscribed_right_after_an_unsubscribe_reports_its_own_position() {
    let redis = RedisServer::spawn();
    let node = Node::spawn(config(Some(&redis))).await;
    let (a, b) = (unique("slot-a"), unique("slot-b"));
    let b_last = node.publish(&b, "b1").await;
    // `a` is live on the node (another socket holds it), at a later id.
    let mut watcher = RawWs::connect(node.addr, &format!("/v1/ws?channel={a}")).await;
    assert_eq!(watcher.next_json().await["type"], "subscribed");
    let a_last = node.publish(&a, "a1").await;
    assert_eq!(watcher.next_json().await["id"], a_last);
    assert!(a_last > b_last);

    // Read by the node together: `a` goes live at once (its position is
    // queued for the socket), is dropped, and `b` takes the freed number.
    let mut ws = RawWs::connect(node.addr, "/v1/ws").await;
    ws.send_together(&[
        text(&json!({"type": "subscribe", "channel": a, "ref": 1})),
        text(&json!({"type": "unsubscribe", "channel": a, "ref": 2})),
        text(&json!({"type": "subscribe", "channel": b, "ref": 3})),
    ])
    .await;
    assert_eq!(
        ws.next_json().await,
        json!({"type": "unsubscribed", "channel": a, "ref": 2})
    );
    assert_eq!(
        ws.next_json().await,
        json!({"type": "subscribed", "channel": b, "ref": 3, "position": b_last}),
        "b's position, not a's ({a_last})"
    );
    // Live from there: b's next event, and nothing of a.
    let a_next = node.publish(&a, "a2").await;
    assert_eq!(watcher.next_json().await["id"], a_next);
    let b_next = node.publish(&b, "b2").await;
    assert_eq!(
        ws.next_json().await,
        json!({"type": "event", "channel": b, "id": b_next, "data": "b2"})
    );
}
