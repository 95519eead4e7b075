//! An upstream SSE endpoint (another ssegate) followed by two nodes: one
//! at a time holds the lease; when the holder is SIGKILLed the other takes
//! over, resumes with `Last-Event-ID` and the events the upstream sends
//! again are not published twice.

use super::*;

const EVENTS: usize = 400;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_node_follows_an_upstream_and_another_takes_over_without_duplicates() {
    let upstream = Node::spawn(config(None)).await;
    let redis = RedisServer::spawn();
    let up_ch = unique("up");
    let source = format!(
        "sse+http://{}/v1/stream/{up_ch}?channel=copy.{{event}}&lease=1s",
        upstream.addr
    );
    let args = node_args(&redis, &source);
    let mut nodes = vec![spawn_node(&args), spawn_node(&args)];
    following(&upstream).await;
    let copy = "copy.tick".to_owned();
    let copied = || async { history(&redis, &copy).await };
    for n in 0..EVENTS / 2 {
        upstream
            .publish(&up_ch, format!("{{\"event\":\"tick\",\"data\":\"{n}\"}}"))
            .await;
    }
    eventually("the first half is copied", || async {
        copied().await.len() == EVENTS / 2
    })
    .await;
    // The holder is the node that published; the other stood by.
    let mut published = Vec::new();
    for n in &nodes {
        published.push(n.metric("ssegate_source_published_total{source=\"sse-0\"}").await);
    }
    let holder = published.iter().position(|p| *p > 0.0).expect("one node follows");
    assert_eq!(published[1 - holder], 0.0, "both nodes followed: {published:?}");
    wait_for_stored_position(&redis).await;
    let mut dead = nodes.remove(holder);
    dead.signal("-KILL");
    let _ = dead.child.wait();
    for n in EVENTS / 2..EVENTS {
        upstream
            .publish(&up_ch, format!("{{\"event\":\"tick\",\"data\":\"{n}\"}}"))
            .await;
    }
    eventually_within("everything is copied", INGEST_WAIT, || async {
        copied().await.len() >= EVENTS
    })
    .await;
    let got = copied().await;
    let want: Vec<String> = (0..EVENTS)
        .map(|n| format!("{{\"data\":\"{n}\",\"event\":\"tick\"}}"))
        .collect();
    assert_eq!(got.len(), EVENTS, "duplicates in history");
    assert!(got == want, "{:?}", super::first_difference(&got, &want));
}

/// A source with no stored position starts live: wait until the holder's
/// stream is open on the upstream before publishing.
async fn following(upstream: &Node) {
    eventually("a node follows the upstream", || async {
        upstream.metric("ssegate_streams_open").await == 1.0
    })
    .await;
}

/// The holder stores its position with a lease renewal (every third of
/// the lease): wait for one, so that a successor resumes from it.
async fn wait_for_stored_position(redis: &RedisServer) {
    eventually("a position is stored with the lease", || async {
        !redis.cli(&["KEYS", "sse:{source:*}:pos"]).trim().is_empty()
    })
    .await;
}

#[tokio::test]
async fn a_killed_holder_is_replaced_and_the_replay_is_skipped() {
    let upstream = Node::spawn(config(None)).await;
    let redis = RedisServer::spawn();
    let up_ch = unique("up2");
    let source = format!(
        "sse+http://{}/v1/stream/{up_ch}?lease=1s&name=feed",
        upstream.addr
    );
    let args = node_args(&redis, &source);
    let mut first = spawn_node(&args);
    following(&upstream).await;
    // `first` is alone: it takes the lease and copies 50 events.
    for n in 0..50 {
        upstream.publish(&up_ch, n.to_string()).await;
    }
    let copied = || async { history(&redis, "message").await };
    eventually("copied by the first node", || async {
        copied().await.len() == 50
    })
    .await;
    wait_for_stored_position(&redis).await;
    let second = spawn_node(&args);
    first.signal("-KILL");
    let _ = first.child.wait();
    for n in 50..100 {
        upstream.publish(&up_ch, n.to_string()).await;
    }
    eventually_within("copied by the second node", INGEST_WAIT, || async {
        copied().await.len() >= 100
    })
    .await;
    let got = copied().await;
    assert_eq!(got.len(), 100);
    // The position stored with the lease may lag: what the second node
    // read again was skipped, not published twice.
    let skipped = second
        .metric("ssegate_source_duplicates_total{source=\"feed\"}")
        .await;
    let published = second
        .metric("ssegate_source_published_total{source=\"feed\"}")
        .await;
    assert_eq!(published, 50.0, "skipped {skipped}");
}

#[tokio::test]
async fn the_lease_is_taken_once_renewed_by_its_holder_and_handed_over_with_its_position() {
    let redis = RedisServer::spawn();
    // A node loads the function library.
    let _node = Node::spawn(config(Some(&redis))).await;
    let lease = |holder: &str, ttl: &str, pos: &str| {
        redis.cli(&["FCALL", "ssegate_lease", "2", "l{x}", "p{x}", holder, ttl, pos])
    };
    assert_eq!(lease("a", "10000", "").trim(), "1", "a takes the free lease");
    assert_eq!(lease("b", "10000", "").trim(), "0", "b cannot while a holds it");
    assert_eq!(
        lease("a", "10000", "id-7").trim(),
        "1\nid-7",
        "a renews and stores its position"
    );
    assert_eq!(
        lease("b", "10000", "id-9").trim(),
        "0\nid-7",
        "b stores nothing while it does not hold it"
    );
    assert_eq!(lease("a", "0", "").trim(), "0\nid-7", "a lets go");
    assert_eq!(
        lease("b", "10000", "").trim(),
        "1\nid-7",
        "b takes it over with a's position"
    );
    let ttl: i64 = redis.cli(&["PTTL", "l{x}"]).trim().parse().unwrap();
    assert!((1..=10_000).contains(&ttl), "the lease expires: {ttl}");
}
