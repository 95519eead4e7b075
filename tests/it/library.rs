//! The `ssegate` Redis Function library: loaded at start, and loaded again
//! wherever Redis lost it.

use std::time::Duration;

use crate::helpers::*;

#[tokio::test]
async fn a_flushed_function_library_is_loaded_again_by_the_next_publish() {
    let redis = RedisServer::spawn();
    let node = Node::spawn(config(Some(&redis))).await;
    let channel = unique("reload");
    let first = node.publish(&channel, "before").await;
    assert_eq!(redis.cli(&["FUNCTION", "FLUSH"]).trim(), "OK");
    assert!(redis.cli(&["FUNCTION", "LIST"]).trim().is_empty(), "flushed");
    let mut stream = Sse::open_with(&node.url(&format!("/v1/stream/{channel}")), Some(&first)).await;
    let second = node.publish(&channel, "after").await;
    assert!(second > first, "{second} after {first}");
    assert!(redis.cli(&["FUNCTION", "LIST"]).contains("ssegate"));
    let ev = stream.next().await.expect("the event published after the reload");
    assert_eq!((ev.data.as_str(), ev.id.as_str()), ("after", second.as_str()));
}

/// A durable publish keeps the channel's history, and its snapshot, at
/// least `--history-ttl` past the publish: set to the TTL plus a slack of
/// a sixteenth, and refreshed only once it has run down below the TTL.
#[tokio::test]
async fn a_publish_keeps_history_and_snapshot_alive_for_the_ttl() {
    let redis = RedisServer::spawn();
    let mut cfg = config(Some(&redis));
    cfg.history_ttl = Duration::from_secs(16);
    let node = Node::spawn(cfg).await;
    let channel = unique("expiry");
    let (log, state) = (
        format!("sse:{{{channel}}}:log"),
        format!("sse:{{{channel}}}:state"),
    );
    let pttl = |key: &str| -> i64 { redis.cli(&["PTTL", key]).trim().parse().expect("PTTL") };
    let fresh = 16_000..=17_000;

    node.publish(&channel, "first").await;
    assert!(
        fresh.contains(&pttl(&log)),
        "a new history lives TTL plus slack: {}",
        pttl(&log)
    );
    let base = format!("http://{}", node.addr);
    let resp = reqwest::Client::new()
        .put(format!("{base}/v1/state/{channel}"))
        .body("{}")
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    assert!(
        fresh.contains(&pttl(&state)),
        "a snapshot as long: {}",
        pttl(&state)
    );

    // Still above the TTL: a publish leaves both expiries alone.
    redis.cli(&["PEXPIRE", &log, "16500"]);
    redis.cli(&["PEXPIRE", &state, "16500"]);
    node.publish(&channel, "second").await;
    assert!(
        pttl(&log) <= 16_500 && pttl(&state) <= 16_500,
        "not refreshed while fresh"
    );

    // Run down below the TTL: the next publish refreshes both.
    redis.cli(&["PEXPIRE", &log, "5000"]);
    redis.cli(&["PEXPIRE", &state, "5000"]);
    node.publish(&channel, "third").await;
    assert!(fresh.contains(&pttl(&log)), "history refreshed: {}", pttl(&log));
    assert!(
        fresh.contains(&pttl(&state)),
        "snapshot refreshed: {}",
        pttl(&state)
    );
}
