//! Gap repair from history: pub/sub connections killed, Redis restarted,
//! a node drained, while publishing.

use std::collections::HashMap;
use std::time::Duration;

use super::{publish_through_outages, stream_log};
use crate::helpers::*;

/// Reads until `expected` ids arrived; returns (id, data) in arrival order.
async fn read_until(s: &mut Sse, expected: usize) -> Vec<(String, String)> {
    let mut out = Vec::new();
    while out.len() < expected {
        let ev = s.next().await.expect("stream stays open");
        assert_ne!(ev.event, "ssegate.reset", "nothing was trimmed");
        out.push((ev.id, ev.data));
    }
    out
}

fn losses_and_duplicates(got: &[(String, String)], log: &[String]) -> (usize, usize) {
    let mut seen = HashMap::new();
    for (id, _) in got {
        *seen.entry(id.clone()).or_insert(0) += 1;
    }
    let lost = log.iter().filter(|id| !seen.contains_key(*id)).count();
    let dups = seen.values().map(|n| n - 1).sum();
    (lost, dups)
}

#[tokio::test]
async fn killed_pubsub_connections_are_repaired_from_history_while_publishing() {
    let redis = RedisServer::spawn();
    let a = Node::spawn(config(Some(&redis))).await;
    let b = Node::spawn(config(Some(&redis))).await;
    let ch = unique("repair-kill");
    let mut sa = Sse::open(&a.url(&format!("/v1/stream/{ch}"))).await;
    let mut sb = Sse::open(&b.url(&format!("/v1/stream/{ch}"))).await;
    let total = 600;
    let publisher = tokio::spawn(publish_through_outages(
        redis.url(),
        ch.clone(),
        total,
        Duration::from_millis(2),
    ));
    let ra = tokio::spawn(async move { read_until(&mut sa, total).await });
    let rb = tokio::spawn(async move { read_until(&mut sb, total).await });
    // Five kills, each once events have been published since the last one
    // and both nodes have reconnected and resubscribed after it.
    let mut published = 0;
    for kill in 1..=5 {
        eventually("events published since the last kill", || async {
            xlen(&redis, &ch).await >= published + 20 || publisher.is_finished()
        })
        .await;
        published = xlen(&redis, &ch).await;
        let killed = redis.cli(&["CLIENT", "KILL", "TYPE", "pubsub"]);
        assert_eq!(killed.trim(), "2", "one pub/sub connection per node");
        eventually("both nodes reconnected and resubscribed", || async {
            a.metric("ssegate_redis_reconnects_total").await >= f64::from(kill)
                && b.metric("ssegate_redis_reconnects_total").await >= f64::from(kill)
                && redis
                    .cli(&["PUBSUB", "NUMSUB", &format!("sse:{{{ch}}}")])
                    .lines()
                    .nth(1)
                    == Some("2")
        })
        .await;
    }
    assert_eq!(publisher.await.unwrap(), total);
    let log = stream_log(&redis, &ch).await;
    for (name, got) in [("a", ra.await.unwrap()), ("b", rb.await.unwrap())] {
        let ids: Vec<String> = got.iter().map(|(id, _)| id.clone()).collect();
        assert_eq!(losses_and_duplicates(&got, &log), (0, 0), "node {name}");
        assert_eq!(ids, log, "node {name}: in order");
    }
    assert!(a.metric("ssegate_gap_repairs_total").await >= 1.0);
}

/// The length of a channel's history in Redis.
async fn xlen(redis: &RedisServer, ch: &str) -> usize {
    redis::cmd("XLEN")
        .arg(format!("sse:{{{ch}}}:log"))
        .query_async(&mut redis.conn().await)
        .await
        .unwrap()
}

#[tokio::test]
async fn a_redis_restart_with_its_data_is_repaired_from_history_while_publishing() {
    let mut redis = RedisServer::spawn_with(&["--appendonly", "yes", "--appendfsync", "always"]);
    let a = Node::spawn(config(Some(&redis))).await;
    let b = Node::spawn(config(Some(&redis))).await;
    let ch = unique("repair-restart");
    let mut sa = Sse::open(&a.url(&format!("/v1/stream/{ch}"))).await;
    let mut sb = Sse::open(&b.url(&format!("/v1/stream/{ch}"))).await;
    let total = 400;
    let publisher = tokio::spawn(publish_through_outages(
        redis.url(),
        ch.clone(),
        total,
        Duration::from_millis(3),
    ));
    let ra = tokio::spawn(async move { read_until(&mut sa, total).await });
    let rb = tokio::spawn(async move { read_until(&mut sb, total).await });
    eventually("publishing is under way", || async {
        xlen(&redis, &ch).await >= 50
    })
    .await;
    redis.restart();
    assert_eq!(publisher.await.unwrap(), total);
    // A call cut off by the kill may or may not have been applied; the
    // stream's own log is the truth to compare against.
    let log = stream_log(&redis, &ch).await;
    assert!(log.len() >= total);
    for (name, mut s_got) in [("a", ra.await.unwrap()), ("b", rb.await.unwrap())] {
        // Read any extra entry the log holds beyond `total` (a retried call).
        s_got.truncate(log.len());
        let ids: Vec<String> = s_got.iter().map(|(id, _)| id.clone()).collect();
        assert_eq!(
            losses_and_duplicates(&s_got, &log[..ids.len()]),
            (0, 0),
            "node {name}"
        );
        assert_eq!(ids, log[..ids.len()], "node {name}: in order");
    }
    assert!(a.metric("ssegate_gap_repairs_total").await >= 1.0);
}

#[tokio::test]
async fn streams_closed_by_a_draining_node_resume_on_another_with_nothing_lost() {
    let redis = RedisServer::spawn();
    let a = Node::spawn(config(Some(&redis))).await;
    let b = Node::spawn(config(Some(&redis))).await;
    let ch = unique("drain");
    let mut s = Sse::open(&a.url(&format!("/v1/stream/{ch}"))).await;
    let total = 300;
    let publisher = tokio::spawn(publish_through_outages(
        redis.url(),
        ch.clone(),
        total,
        Duration::from_millis(2),
    ));
    let mut got = Vec::new();
    while got.len() < 50 {
        got.push(s.next().await.unwrap().id);
    }
    a.stop().await;
    // The stream ends (the node closed it); the client reconnects elsewhere.
    while let Some(ev) = s.next().await {
        got.push(ev.id);
    }
    let mut s = Sse::open_with(&b.url(&format!("/v1/stream/{ch}")), Some(&s.last_id)).await;
    assert_eq!(publisher.await.unwrap(), total);
    while got.len() < total {
        got.push(s.next().await.unwrap().id);
    }
    assert_eq!(got, stream_log(&redis, &ch).await);
}
