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

/// The presence refresh writes the reports of many channels in one
/// pipeline (200 channels: one batch); it loads a flushed library again
/// and writes every report while one channel's report is refused.
#[tokio::test]
async fn the_presence_refresh_writes_every_channel_and_loads_a_flushed_library() {
    let redis = RedisServer::spawn();
    let mut cfg = config(Some(&redis));
    cfg.presence_ttl = Duration::from_secs(3);
    cfg.node_id = Some("refresher".into());
    let node = Node::spawn(cfg).await;
    let base = unique("refresh");
    let channels: Vec<String> = (0..200).map(|i| format!("{base}-{i}")).collect();
    let mut streams = Vec::new();
    for c in &channels {
        streams.push(Sse::open(&node.url(&format!("/v1/stream/{c}"))).await);
    }
    let hashes: Vec<String> = channels.iter().map(|c| format!("sse:{{{c}}}:presence")).collect();
    let reported = |hash: &str| redis.cli(&["HEXISTS", hash, "refresher"]).trim() == "1";
    eventually("every channel reported", || async {
        hashes.iter().all(|h| reported(h))
    })
    .await;

    // The library goes first, so reports written after the DEL below were
    // written by a reloaded library. One channel's report is refused (its
    // hash holds a string): the rest are still written. Its key is spoiled
    // before the others are deleted, so no refresh can write them while it
    // is still a hash (SET replaces a hash a refresh may have rewritten).
    assert_eq!(redis.cli(&["FUNCTION", "FLUSH"]).trim(), "OK");
    redis.cli(&["SET", &hashes[7], "not a hash"]);
    let others: Vec<&str> = hashes
        .iter()
        .enumerate()
        .filter(|(i, _)| *i != 7)
        .map(|(_, h)| h.as_str())
        .collect();
    redis.cli(&[&["DEL"][..], &others].concat());
    eventually(
        "the refresh loaded the library and wrote the reports again",
        || async { hashes.iter().enumerate().all(|(i, h)| i == 7 || reported(h)) },
    )
    .await;
    assert!(redis.cli(&["FUNCTION", "LIST"]).contains("ssegate"));
    assert_eq!(redis.cli(&["GET", &hashes[7]]).trim(), "not a hash");
    drop(streams);
}

/// A durable publish keeps the channel's history, its snapshot and its
/// idempotency keys at least `--history-ttl` past the publish: set to the
/// TTL plus a slack of a sixteenth, all together, and refreshed only once
/// they have run down below the TTL.
#[tokio::test]
async fn a_publish_keeps_history_and_snapshot_alive_for_the_ttl() {
    let redis = RedisServer::spawn();
    let mut cfg = config(Some(&redis));
    cfg.history_ttl = Duration::from_secs(16);
    let node = Node::spawn(cfg).await;
    let channel = unique("expiry");
    let keys: Vec<String> = ["log", "state", "idem", "idem:t"]
        .iter()
        .map(|k| format!("sse:{{{channel}}}:{k}"))
        .collect();
    let pttl = |key: &str| -> i64 { redis.cli(&["PTTL", key]).trim().parse().expect("PTTL") };
    let all_within = |range: std::ops::RangeInclusive<i64>, what: &str| {
        for key in &keys {
            let left = pttl(key);
            assert!(range.contains(&left), "{what}: {key} expires in {left} ms");
        }
    };
    let set_all = |ms: &str| {
        for key in &keys {
            redis.cli(&["PEXPIRE", key, ms]);
        }
    };
    let http = reqwest::Client::new();
    let base = format!("http://{}", node.addr);
    let publish_once = |key: &'static str| {
        http.post(format!("{base}/v1/stream/{channel}"))
            .header("Idempotency-Key", key)
            .body("once")
            .send()
    };
    let fresh = 16_000..=17_000;

    node.publish(&channel, "first").await;
    crate::state::put_state(&base, &channel, "{}").await;
    assert_eq!(publish_once("a").await.unwrap().status(), 201);
    all_within(fresh.clone(), "new keys live the TTL plus slack");

    // Still above the TTL: publishes leave every expiry alone.
    set_all("16500");
    node.publish(&channel, "second").await;
    assert_eq!(publish_once("b").await.unwrap().status(), 201);
    all_within(0..=16_500, "not refreshed while fresh");

    // Run down below the TTL: the next publish refreshes them all.
    set_all("5000");
    node.publish(&channel, "third").await;
    all_within(fresh.clone(), "refreshed by a publish");
    set_all("5000");
    assert_eq!(publish_once("c").await.unwrap().status(), 201);
    all_within(fresh, "refreshed by an idempotent publish");
}

/// Idempotency keys outlive no history: once a channel's keys outnumber
/// its history by a quarter, those of trimmed events are forgotten, and
/// every event the history still holds keeps its key.
#[tokio::test]
async fn idempotency_keys_of_trimmed_events_are_pruned_and_the_rest_kept() {
    let redis = RedisServer::spawn();
    // Small stream nodes, so that `MAXLEN ~ 8` trims at every fourth entry.
    redis.cli(&["CONFIG", "SET", "stream-node-max-entries", "4"]);
    let mut cfg = config(Some(&redis));
    cfg.history_size = 8;
    let node = Node::spawn(cfg).await;
    let channel = unique("prune");
    let http = reqwest::Client::new();
    let url = format!("http://{}/v1/stream/{channel}", node.addr);
    let publish = |key: String| {
        let request = http.post(&url).header("Idempotency-Key", key).body("keyed");
        async move {
            let resp = request.send().await.unwrap();
            assert_eq!(resp.status(), 201);
            let replayed = resp.headers().contains_key("idempotent-replayed");
            let body: serde_json::Value = resp.json().await.unwrap();
            (body["id"].as_str().unwrap().to_owned(), replayed)
        }
    };
    let mut ids = Vec::new();
    for i in 0..40 {
        ids.push(publish(format!("k{i}")).await.0);
    }
    let count = |cmd: &str, suffix: &str| -> usize {
        let key = format!("sse:{{{channel}}}:{suffix}");
        redis.cli(&[cmd, &key]).trim().parse().unwrap()
    };
    let (held, keys) = (count("XLEN", "log"), count("HLEN", "idem"));
    assert_eq!(keys, count("ZCARD", "idem:t"), "the key index matches the keys");
    assert!((8..=12).contains(&held), "history trimmed to about 8: {held}");
    assert!(
        keys <= held.max(10) + 1,
        "{keys} keys for {held} events in history"
    );
    // The events still in history keep their keys: a retry is replayed.
    for (i, first_id) in ids.iter().enumerate().skip(40 - held) {
        let (id, replayed) = publish(format!("k{i}")).await;
        assert!(
            replayed && &id == first_id,
            "k{i} kept while its event is in history"
        );
    }
    let first = redis.cli(&["HGET", &format!("sse:{{{channel}}}:idem"), "k0"]);
    assert!(first.trim().is_empty(), "the first key was forgotten: {first:?}");
}
