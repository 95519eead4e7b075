//! A socket's requests in flight are bounded: past the bound a publish or a
//! refresh is refused with `too_many_pending`, and the refusal echoes the
//! request's `ref` like every reply (the client matches replies by it).

use std::process::Command;

use serde_json::json;

use super::raw::{RawWs, text};
use crate::helpers::*;

#[tokio::test]
async fn requests_past_the_bound_in_flight_are_refused_with_their_ref() {
    let redis = RedisServer::spawn();
    let url = redis.url();
    let node = NodeProcess::spawn(&["--redis-url", &url, "--allow-anonymous", "--ip-rate", "0"]);
    let ch = unique("pending");
    let mut ws = RawWs::connect(node.addr, &format!("/v1/ws?channel={ch}")).await;
    assert_eq!(ws.next_json().await["type"], "subscribed");

    // Redis stopped: publishes stay in flight until it answers.
    let signal = |sig: &str| {
        let ok = Command::new("kill")
            .args([sig, &redis.pid().to_string()])
            .status()
            .unwrap()
            .success();
        assert!(ok, "kill {sig}");
    };
    signal("-STOP");
    let mut frames: Vec<Vec<u8>> = (0..64)
        .map(|i| text(&json!({"type": "publish", "channel": ch, "data": i, "ref": i})))
        .collect();
    frames.push(text(
        &json!({"type": "publish", "channel": ch, "data": "one more", "ref": "p"}),
    ));
    frames.push(text(&json!({"type": "refresh", "token": "any", "ref": "r"})));
    ws.send_together(&frames).await;
    let first = ws.next_json().await;
    let second = ws.next_json().await;
    signal("-CONT");
    assert_eq!(
        (first["type"].clone(), first["code"].clone(), first["ref"].clone()),
        (json!("error"), json!("too_many_pending"), json!("p"))
    );
    assert_eq!(
        (
            second["type"].clone(),
            second["code"].clone(),
            second["ref"].clone()
        ),
        (json!("error"), json!("too_many_pending"), json!("r")),
        "{second}"
    );
}
