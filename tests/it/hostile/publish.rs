//! Publishes when Redis is slow to answer: an answer that does not come in
//! time is an unknown outcome (504), never a plain failure, and a retry
//! with the same `Idempotency-Key` publishes at most once.

use crate::helpers::*;

async fn post(node: &NodeProcess, channel: &str, body: &str, key: Option<&str>) -> reqwest::Response {
    let mut req = reqwest::Client::new()
        .post(node.url(&format!("/v1/stream/{channel}")))
        .body(body.to_owned());
    if let Some(k) = key {
        req = req.header("Idempotency-Key", k);
    }
    req.send().await.unwrap()
}

fn xlen(redis: &RedisServer, channel: &str) -> u64 {
    redis
        .cli(&["XLEN", &format!("sse:{{{channel}}}:log")])
        .trim()
        .parse()
        .unwrap()
}

#[tokio::test]
async fn a_publish_during_a_short_pause_waits_and_succeeds() {
    let redis = RedisServer::spawn();
    let node = NodeProcess::spawn(&["--redis-url", &redis.url(), "--allow-anonymous"]);
    let channel = unique("pause");
    assert_eq!(redis.cli(&["CLIENT", "PAUSE", "2000", "WRITE"]).trim(), "OK");
    let resp = post(&node, &channel, "through the pause", None).await;
    assert_eq!(resp.status(), 201, "--redis-timeout (5s) outlasts a 2 s pause");
    assert_eq!(xlen(&redis, &channel), 1);
}

#[tokio::test]
async fn an_unanswered_publish_is_an_unknown_outcome_and_its_retry_publishes_once() {
    let redis = RedisServer::spawn();
    let node = NodeProcess::spawn(&[
        "--redis-url",
        &redis.url(),
        "--allow-anonymous",
        "--redis-timeout",
        "1s",
    ]);
    let channel = unique("unknown");
    let url = node.url(&format!("/v1/stream/{channel}"));
    let mut stream = Sse::open(&url).await;
    assert_eq!(redis.cli(&["CLIENT", "PAUSE", "3000", "WRITE"]).trim(), "OK");
    let resp = post(&node, &channel, "once", Some("order-42")).await;
    assert_eq!(resp.status(), 504);
    let body: serde_json::Value = resp.json().await.unwrap();
    assert_eq!(body["error"], "publish_outcome_unknown");
    // Redis carries it out once the pause ends: the outcome was unknown,
    // not a failure.
    let delivered = stream.next().await.expect("the paused publish, delivered");
    assert_eq!(delivered.data, "once");
    let retry = post(&node, &channel, "once", Some("order-42")).await;
    assert_eq!(retry.status(), 201);
    assert_eq!(
        retry.headers().get("idempotent-replayed").map(|v| v.as_bytes()),
        Some(&b"true"[..])
    );
    let id: serde_json::Value = retry.json().await.unwrap();
    assert_eq!(id["id"], delivered.id.as_str(), "the retry answers the first id");
    assert_eq!(xlen(&redis, &channel), 1, "published once");
    let other = post(&node, &channel, "twice", Some("order-43")).await;
    assert_eq!(other.status(), 201);
    assert_eq!(stream.next().await.unwrap().data, "twice");
}

#[tokio::test]
async fn idempotency_keys_work_with_the_embedded_broker_and_bad_keys_are_refused() {
    let node = NodeProcess::spawn(&[]);
    let channel = unique("idem");
    let first = post(&node, &channel, "a", Some("k1")).await;
    assert_eq!(first.status(), 201);
    let first: serde_json::Value = first.json().await.unwrap();
    let again = post(&node, &channel, "a", Some("k1")).await;
    assert_eq!(again.status(), 201);
    let again: serde_json::Value = again.json().await.unwrap();
    assert_eq!(first["id"], again["id"]);
    for bad in ["", "has space", &"k".repeat(256)] {
        let resp = post(&node, &channel, "a", Some(bad)).await;
        assert_eq!(resp.status(), 400, "{bad:?}");
        let body: serde_json::Value = resp.json().await.unwrap();
        assert_eq!(body["error"], "invalid_idempotency_key");
    }
}

#[tokio::test]
async fn the_cli_retries_an_unanswered_publish_with_its_own_key_and_publishes_once() {
    let redis = RedisServer::spawn();
    let _node = NodeProcess::spawn(&["--redis-url", &redis.url(), "--allow-anonymous"]);
    let channel = unique("cli");
    assert_eq!(redis.cli(&["CLIENT", "PAUSE", "2500", "WRITE"]).trim(), "OK");
    let out = tokio::process::Command::new(binary())
        .args([
            "publish",
            &channel,
            "from the cli",
            "--redis-url",
            &redis.url(),
            "--redis-timeout",
            "1s",
        ])
        .output()
        .await
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    assert!(stderr.contains("retrying with the same key"), "{stderr}");
    let id = String::from_utf8_lossy(&out.stdout).trim().to_owned();
    assert_eq!(xlen(&redis, &channel), 1, "published once over all attempts");
    let entries = redis.cli(&["XRANGE", &format!("sse:{{{channel}}}:log"), "-", "+"]);
    assert!(entries.contains(&id), "{id} in {entries}");
}
