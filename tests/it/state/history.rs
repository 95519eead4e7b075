//! `GET /v1/history/{channel}`: pages of the same history a resume reads.

use super::*;

async fn pages_after_limits_and_resets(node: &NodeProcess) {
    let channel = unique("hist");
    let mut ids = Vec::new();
    for i in 0..25 {
        ids.push(
            node.publish(
                &channel,
                format!(r#"{{"event":"e{i}","data":"line a\nline b {i}"}}"#),
            )
            .await,
        );
    }
    let (status, page) = get_json(&node.url(&format!("/v1/history/{channel}?limit=10"))).await;
    assert_eq!(status, 200, "{page}");
    assert_eq!(page["channel"], channel.as_str());
    assert_eq!(page["position"], ids[24].as_str());
    assert_eq!(page["reset"], false);
    let events = page["events"].as_array().unwrap();
    assert_eq!(events.len(), 10);
    assert_eq!(events[0]["id"], ids[0].as_str());
    assert_eq!(events[0]["event"], "e0");
    assert_eq!(events[0]["data"], "line a\nline b 0");
    let (_, rest) = get_json(&node.url(&format!("/v1/history/{channel}?after={}&limit=1000", ids[9]))).await;
    let rest: Vec<&str> = rest["events"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["id"].as_str().unwrap())
        .collect();
    assert_eq!(rest, ids[10..].iter().map(String::as_str).collect::<Vec<_>>());
    // The default page is 100 events.
    let (_, all) = get_json(&node.url(&format!("/v1/history/{channel}"))).await;
    assert_eq!(all["events"].as_array().unwrap().len(), 25);
}

#[tokio::test]
async fn history_pages_with_the_embedded_broker() {
    let node = NodeProcess::spawn(&[]);
    pages_after_limits_and_resets(&node).await;
}

#[tokio::test]
async fn history_pages_with_redis_and_a_reset_past_the_retained_history() {
    let redis = RedisServer::spawn();
    let node = redis_node(&redis, &[]);
    pages_after_limits_and_resets(&node).await;
    // A small history: an `after` older than what is kept is a reset, and the
    // page starts at the oldest retained event.
    let small = redis_node(&redis, &["--history-size", "5"]);
    let channel = unique("trim");
    let mut ids = Vec::new();
    for i in 0..300 {
        ids.push(small.publish(&channel, i.to_string()).await);
    }
    let (_, page) = get_json(&small.url(&format!("/v1/history/{channel}?after={}", ids[0]))).await;
    assert_eq!(page["reset"], true, "{page}");
    let first = page["events"][0]["id"].as_str().unwrap();
    assert!(
        id_of(first) > id_of(&ids[1]),
        "the page starts at the oldest retained event"
    );
    assert_eq!(
        page["events"].as_array().unwrap().last().unwrap()["id"],
        ids[299].as_str()
    );
}

#[tokio::test]
async fn bad_history_requests_get_clear_errors() {
    let node = NodeProcess::spawn(&["--jwt-secret", "s3cret"]);
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs();
    let token = jsonwebtoken::encode(
        &jsonwebtoken::Header::default(),
        &serde_json::json!({"exp": now + 600, "channels": ["mine"]}),
        &jsonwebtoken::EncodingKey::from_secret(b"s3cret"),
    )
    .unwrap();
    let cases = [
        (
            format!("/v1/history/mine?after=nope&token={token}"),
            400,
            "invalid_query",
        ),
        (
            format!("/v1/history/mine?limit=0&token={token}"),
            400,
            "invalid_query",
        ),
        (
            format!("/v1/history/mine?limit=1001&token={token}"),
            400,
            "invalid_query",
        ),
        (
            format!("/v1/history/bad%20name?token={token}"),
            400,
            "invalid_channel",
        ),
        (format!("/v1/history/theirs?token={token}"), 403, "forbidden"),
        ("/v1/history/mine".to_owned(), 401, "unauthorized"),
    ];
    for (path, status, code) in cases {
        let (got, body) = get_json(&node.url(&path)).await;
        assert_eq!(
            (got, body["error"].as_str()),
            (status, Some(code)),
            "{path}: {body}"
        );
    }
    let (ok, _) = get_json(&node.url(&format!("/v1/history/mine?token={token}"))).await;
    assert_eq!(ok, 200);
}
