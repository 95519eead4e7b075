//! Resume on any node, with the events missed and nothing else; a reset
//! for cursors the history cannot serve; one path for every durable
//! publish.

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
