//! Nothing lost: durable events, resume on any node, gap repair, slow clients.

use std::collections::HashMap;
use std::time::Duration;

use crate::helpers::*;

/// The nodes of a test: two on one Redis, or the embedded broker's one node
/// playing both parts.
struct Pair {
    _redis: Option<RedisServer>,
    a: Node,
    b: Option<Node>,
}

impl Pair {
    async fn redis() -> Pair {
        let redis = RedisServer::spawn();
        let a = Node::spawn(config(Some(&redis))).await;
        let b = Node::spawn(config(Some(&redis))).await;
        Pair {
            _redis: Some(redis),
            a,
            b: Some(b),
        }
    }

    async fn embedded() -> Pair {
        Pair {
            _redis: None,
            a: Node::spawn(config(None)).await,
            b: None,
        }
    }

    fn b(&self) -> &Node {
        self.b.as_ref().unwrap_or(&self.a)
    }
}

async fn resume_on_another_node(p: Pair) {
    let ch = unique("resume");
    let url = |n: &Node| n.url(&format!("/v1/stream/{ch}"));
    let mut s = Sse::open(&url(&p.a)).await;
    for i in 0..3 {
        p.a.publish(&ch, format!("e{i}")).await;
    }
    assert_eq!(s.take(3).await, ["e0", "e1", "e2"]);
    let last = s.last_id.clone();
    drop(s);
    let mut missed = Vec::new();
    for i in 3..23 {
        missed.push(p.b().publish(&ch, format!("e{i}")).await);
    }
    let mut s = Sse::open_with(&url(p.b()), Some(&last)).await;
    let mut ids = Vec::new();
    let mut data = Vec::new();
    for _ in 0..20 {
        let ev = s.next().await.unwrap();
        ids.push(ev.id);
        data.push(ev.data);
    }
    assert_eq!(data, (3..23).map(|i| format!("e{i}")).collect::<Vec<_>>());
    assert_eq!(
        ids, missed,
        "the ids the publisher got are the ones the browser sees"
    );
    p.a.publish(&ch, "live").await;
    assert_eq!(s.next().await.unwrap().data, "live");
}

#[tokio::test]
async fn a_client_resumes_on_another_node_with_exactly_the_events_it_missed() {
    resume_on_another_node(Pair::redis().await).await;
}

#[tokio::test]
async fn a_client_resumes_with_the_embedded_broker() {
    resume_on_another_node(Pair::embedded().await).await;
}

async fn resume_two_channels(p: Pair) {
    let (c1, c2) = (unique("two-a"), unique("two-b"));
    let url = |n: &Node| n.url(&format!("/v1/stream?channel={c1}&channel={c2}"));
    let mut s = Sse::open(&url(&p.a)).await;
    p.a.publish(&c1, "a0").await;
    p.a.publish(&c2, "b0").await;
    let mut first = s.take(2).await;
    first.sort();
    assert_eq!(first, ["a0", "b0"]);
    let last = s.last_id.clone();
    assert_eq!(last.split(',').count(), 2, "one position per channel: {last}");
    drop(s);
    for i in 1..6 {
        p.b().publish(&c1, format!("a{i}")).await;
        p.b().publish(&c2, format!("b{i}")).await;
    }
    let mut s = Sse::open_with(&url(p.b()), Some(&last)).await;
    let got = s.take(10).await;
    let of = |prefix: char| {
        got.iter()
            .filter(|d| d.starts_with(prefix))
            .cloned()
            .collect::<Vec<_>>()
    };
    assert_eq!(of('a'), (1..6).map(|i| format!("a{i}")).collect::<Vec<_>>());
    assert_eq!(of('b'), (1..6).map(|i| format!("b{i}")).collect::<Vec<_>>());
    // The id after the replay resumes both channels again, on the first node.
    let last = s.last_id.clone();
    drop(s);
    p.a.publish(&c2, "b6").await;
    let mut s = Sse::open_with(&url(&p.a), Some(&last)).await;
    assert_eq!(s.next().await.unwrap().data, "b6");
    p.a.publish(&c1, "a6").await;
    assert_eq!(s.next().await.unwrap().data, "a6");
}

#[tokio::test]
async fn a_two_channel_stream_resumes_both_channels_on_another_node() {
    resume_two_channels(Pair::redis().await).await;
}

#[tokio::test]
async fn a_two_channel_stream_resumes_with_the_embedded_broker() {
    resume_two_channels(Pair::embedded().await).await;
}

/// A publisher runs flat out while the client keeps disconnecting and
/// resuming, alternately on each node: every event arrives exactly once,
/// in order.
async fn resume_under_load(p: Pair, total: usize) {
    let ch = unique("race");
    // The first stream is open before the first event is published.
    let mut first = Some(Sse::open(&p.a.url(&format!("/v1/stream/{ch}"))).await);
    let published = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let publisher = {
        let url = p.a.url(&format!("/v1/stream/{ch}"));
        let published = published.clone();
        tokio::spawn(async move {
            let client = reqwest::Client::new();
            for i in 0..total {
                let r = client.post(&url).body(i.to_string()).send().await.unwrap();
                assert_eq!(r.status(), 201);
                published.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            }
        })
    };
    let mut received: Vec<usize> = Vec::with_capacity(total);
    let mut last: Option<String> = None;
    let mut round = 0usize;
    while received.len() < total {
        let node = if round.is_multiple_of(2) { &p.a } else { p.b() };
        let mut s = match first.take() {
            Some(s) => s,
            None => Sse::open_with(&node.url(&format!("/v1/stream/{ch}")), last.as_deref()).await,
        };
        let want = (37 + round * 53 % 211).min(total - received.len());
        for _ in 0..want {
            let next = tokio::time::timeout(Duration::from_secs(5), s.next()).await;
            let ev = next.unwrap_or_else(|_| {
                panic!(
                    "round {round}: stalled after {} events, last id {}, {} published",
                    received.len(),
                    s.last_id,
                    published.load(std::sync::atomic::Ordering::Relaxed)
                )
            });
            received.push(ev.unwrap().data.parse().unwrap());
        }
        last = Some(s.last_id.clone());
        round += 1;
    }
    publisher.await.unwrap();
    let dups = received.len() - received.iter().collect::<std::collections::HashSet<_>>().len();
    assert_eq!(dups, 0, "duplicates");
    assert_eq!(
        received,
        (0..total).collect::<Vec<_>>(),
        "every event once, in order"
    );
    assert!(round > 10, "the client resumed {round} times");
}

#[tokio::test]
async fn resuming_while_publishing_at_a_high_rate_loses_and_duplicates_nothing() {
    resume_under_load(Pair::redis().await, 4000).await;
}

#[tokio::test]
async fn resuming_while_publishing_with_the_embedded_broker_loses_and_duplicates_nothing() {
    resume_under_load(Pair::embedded().await, 4000).await;
}

async fn reset_for_old_and_garbage_cursors(redis: Option<&RedisServer>) {
    let mut cfg = config(redis);
    cfg.history_size = 10;
    let node = Node::spawn(cfg).await;
    let ch = unique("reset");
    let url = node.url(&format!("/v1/stream/{ch}"));
    let mut s = Sse::open(&url).await;
    node.publish(&ch, "first").await;
    s.next().await.unwrap();
    let old = s.last_id.clone();
    drop(s);
    // Redis trims approximately (whole stream nodes of 100 entries).
    for i in 0..350 {
        node.publish(&ch, format!("later {i}")).await;
    }
    let mut cursors: Vec<(String, Vec<u8>)> = vec![("older than retention".into(), old.into_bytes())];
    for garbage in [
        &b"garbage"[..],
        b"1-2-3",
        b"",
        b"99999999999999999999999-0",
        b"1-0,2-0",
        b"\xff\xfe",
        &[b'9'; 5000],
    ] {
        cursors.push((
            format!(
                "garbage {:?}",
                String::from_utf8_lossy(&garbage[..garbage.len().min(20)])
            ),
            garbage.to_vec(),
        ));
    }
    for (what, cursor) in cursors {
        let resp = reqwest::Client::new()
            .get(&url)
            .header(
                "Last-Event-ID",
                reqwest::header::HeaderValue::from_bytes(&cursor).unwrap(),
            )
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status(), 200, "{what}");
        let mut s = Sse::from_response(resp);
        let ev = s.next().await.unwrap();
        assert_eq!(ev.event, "ssegate.reset", "{what}");
        let data: serde_json::Value = serde_json::from_str(&ev.data).unwrap();
        assert_eq!(data["channels"], serde_json::json!([ch]), "{what}");
        let reason = if what.starts_with("older") {
            "history_trimmed"
        } else {
            "malformed_cursor"
        };
        assert_eq!(data["reason"], reason, "{what}");
        node.publish(&ch, "live").await;
        assert_eq!(
            s.next().await.unwrap().data,
            "live",
            "{what}: live after the reset"
        );
    }
    // The query parameter works like the header.
    let mut s = Sse::open(&format!("{url}?lastEventId=nonsense")).await;
    assert_eq!(s.next().await.unwrap().event, "ssegate.reset");
}

#[tokio::test]
async fn old_and_garbage_cursors_get_a_reset_then_live_events() {
    let redis = RedisServer::spawn();
    reset_for_old_and_garbage_cursors(Some(&redis)).await;
}

#[tokio::test]
async fn old_and_garbage_cursors_get_a_reset_with_the_embedded_broker() {
    reset_for_old_and_garbage_cursors(None).await;
}

#[tokio::test]
async fn all_three_durable_entry_points_share_one_path() {
    let redis = RedisServer::spawn();
    let node = Node::spawn(config(Some(&redis))).await;
    let ch = unique("entry");
    let mut s = Sse::open(&node.url(&format!("/v1/stream/{ch}"))).await;
    let via_http = node.publish(&ch, "via http").await;
    let via_fcall = redis.cli(&[
        "FCALL",
        "ssegate_publish",
        "1",
        &format!("sse:{{{ch}}}:log"),
        "via fcall",
    ]);
    let out = std::process::Command::new(binary())
        .args([
            "publish",
            &ch,
            r#"{"event":"cli","data":"via cli"}"#,
            "--redis-url",
            &redis.url(),
        ])
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let via_cli = String::from_utf8(out.stdout).unwrap();
    let got: Vec<_> = [s.next().await, s.next().await, s.next().await]
        .into_iter()
        .map(Option::unwrap)
        .collect();
    assert_eq!(
        (got[0].data.as_str(), got[0].id.as_str()),
        ("via http", via_http.as_str())
    );
    assert_eq!(
        (got[1].data.as_str(), got[1].id.as_str()),
        ("via fcall", via_fcall.trim())
    );
    assert_eq!((got[2].event.as_str(), got[2].data.as_str()), ("cli", "via cli"));
    assert_eq!(got[2].id, via_cli.trim());
    let len = redis.cli(&["XLEN", &format!("sse:{{{ch}}}:log")]);
    assert_eq!(len.trim(), "3");
}

/// Publishes `n` durable events straight through the Redis Function,
/// retrying while Redis is away; returns how many calls succeeded.
pub(crate) async fn publish_through_outages(url: String, ch: String, n: usize, pause: Duration) -> usize {
    let client = redis::Client::open(url).unwrap();
    let mut ok = 0;
    for i in 0..n {
        loop {
            let res: redis::RedisResult<String> = async {
                let mut c = client.get_multiplexed_async_connection().await?;
                redis::cmd("FCALL")
                    .arg("ssegate_publish")
                    .arg(1)
                    .arg(format!("sse:{{{ch}}}:log"))
                    .arg(i.to_string())
                    .query_async(&mut c)
                    .await
            }
            .await;
            match res {
                Ok(_) => {
                    ok += 1;
                    break;
                }
                // A retry pause while Redis is away.
                Err(_) => tokio::time::sleep(Duration::from_millis(20)).await,
            }
        }
        // Pacing: publishing spans the faults the caller makes.
        tokio::time::sleep(pause).await;
    }
    ok
}

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

pub(crate) async fn stream_log(redis: &RedisServer, ch: &str) -> Vec<String> {
    let mut conn = redis.conn().await;
    let entries: Vec<(String, HashMap<String, String>)> = redis::cmd("XRANGE")
        .arg(format!("sse:{{{ch}}}:log"))
        .arg("-")
        .arg("+")
        .query_async(&mut conn)
        .await
        .unwrap();
    entries.into_iter().map(|(id, _)| id).collect()
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
async fn a_client_that_stops_reading_is_disconnected_memory_stays_flat_and_it_resumes() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let redis = RedisServer::spawn();
    let url = redis.url();
    let node = NodeProcess::spawn(&[
        "--redis-url",
        &url,
        "--allow-anonymous",
        "--client-queue",
        "256KiB",
        "--history-size",
        "1000",
    ]);
    let ch = unique("slow");
    // A client that reads the opening (to learn its cursor), then nothing.
    let mut sock = tokio::net::TcpStream::connect(node.addr).await.unwrap();
    sock.write_all(format!("GET /v1/stream/{ch} HTTP/1.1\r\nHost: x\r\n\r\n").as_bytes())
        .await
        .unwrap();
    let mut head = vec![0u8; 4096];
    let mut n = 0;
    while !String::from_utf8_lossy(&head[..n]).contains("\n\n") {
        n += sock.read(&mut head[n..]).await.unwrap();
    }
    let text = String::from_utf8_lossy(&head[..n]).into_owned();
    let cursor = text
        .lines()
        .find_map(|l| l.strip_prefix("id: "))
        .unwrap()
        .to_owned();
    let before = rss_kib(node.child.id());
    let payload = "x".repeat(60 * 1024);
    let http = reqwest::Client::new();
    for _ in 0..300 {
        let r = http
            .post(node.url(&format!("/v1/stream/{ch}")))
            .body(payload.clone())
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 201);
    }
    eventually("the slow client is disconnected", || async {
        node.metric("ssegate_slow_client_disconnects_total").await >= 1.0
    })
    .await;
    let grown = rss_kib(node.child.id()).saturating_sub(before);
    // 18 MB went to a client that read nothing; the node kept its queue
    // bound (plus transient buffers), not the backlog.
    assert!(grown < 8 * 1024, "RSS grew by {grown} KiB");
    drop(sock);
    let mut s = Sse::open_with(&node.url(&format!("/v1/stream/{ch}")), Some(&cursor)).await;
    for i in 0..300 {
        let ev = s.next().await.unwrap();
        assert_eq!(ev.data.len(), payload.len(), "event {i}");
    }
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
