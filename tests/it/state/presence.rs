//! Presence across nodes: every node answers the same counts, a killed
//! node's clients leave within `--presence-ttl` plus a few seconds, and
//! streams that asked get `ssegate.join` and `ssegate.leave`.

use std::collections::BTreeMap;
use std::time::Duration;

use serde_json::json;

use super::*;

const SECRET: &str = "presence-secret";

fn token(sub: &str) -> String {
    let exp = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs()
        + 600;
    jsonwebtoken::encode(
        &jsonwebtoken::Header::default(),
        &json!({"exp": exp, "sub": sub, "channels": ["*"], "presence": ["room-*"]}),
        &jsonwebtoken::EncodingKey::from_secret(SECRET.as_bytes()),
    )
    .unwrap()
}

/// Connections per channel as `node` answers.
async fn counts(node: &NodeProcess, channels: &[String]) -> BTreeMap<String, u64> {
    let reader = token("reader");
    let mut out = BTreeMap::new();
    for c in channels {
        let (status, v) = get_json(&node.url(&format!("/v1/presence/{c}?token={reader}"))).await;
        assert_eq!(status, 200, "{v}");
        out.insert(c.clone(), v["count"].as_u64().unwrap());
    }
    out
}

#[tokio::test]
async fn three_nodes_agree_on_who_is_there_and_a_killed_nodes_clients_leave() {
    let redis = RedisServer::spawn();
    let url = redis.url();
    let args = [
        "--redis-url",
        url.as_str(),
        "--jwt-secret",
        SECRET,
        "--presence-ttl",
        "3s",
        "--ip-rate",
        "0",
    ];
    let mut nodes = vec![
        NodeProcess::spawn(&args),
        NodeProcess::spawn(&args),
        NodeProcess::spawn(&args),
    ];
    let channels: Vec<String> = (0..10)
        .map(|i| format!("room-{}-{i}", std::process::id()))
        .collect();
    // One watcher of joins and leaves on the first channel, on node 0.
    let mut watcher = Sse::open(&nodes[0].url(&format!(
        "/v1/stream/{}?presence=1&token={}",
        channels[0],
        token("watcher")
    )))
    .await;
    let mut streams = Vec::new();
    for i in 0..300 {
        let (node, channel) = (&nodes[i % 3], &channels[i % 10]);
        let url = node.url(&format!(
            "/v1/stream/{channel}?token={}",
            token(&format!("user-{i}"))
        ));
        streams.push((i % 3, Sse::open_owned(url).await));
    }
    let want: BTreeMap<String, u64> = channels
        .iter()
        .enumerate()
        .map(|(i, c)| (c.clone(), 30 + u64::from(i == 0)))
        .collect();
    for node in &nodes {
        eventually("every node answers the same counts", || async {
            counts(node, &channels).await == want
        })
        .await;
    }
    let (_, detail) =
        get_json(&nodes[1].url(&format!("/v1/presence/{}?token={}", channels[3], token("reader")))).await;
    let clients = detail["clients"].as_array().unwrap();
    assert_eq!(clients.len(), 30, "one entry per client and node");
    assert!(
        clients
            .iter()
            .all(|c| c["connections"] == 1 && c["since"].as_str().unwrap().ends_with('Z'))
    );
    // The watcher saw the users of its channel join.
    let mut joined = std::collections::BTreeSet::new();
    while joined.len() < 30 {
        let ev = watcher.next().await.unwrap();
        if ev.event == "ssegate.join" {
            let v: serde_json::Value = serde_json::from_str(&ev.data).unwrap();
            assert_eq!(v["channel"], channels[0].as_str());
            joined.insert(v["client"].as_str().unwrap().to_owned());
        }
    }
    // SIGKILL node 2: no goodbye. Its clients leave within the TTL and a
    // few seconds, and the watcher hears their leaves.
    nodes[2].signal("-KILL");
    streams.retain(|(n, _)| *n != 2);
    let after: BTreeMap<String, u64> = channels
        .iter()
        .enumerate()
        .map(|(i, c)| {
            let on_live_nodes = (0..300).filter(|j| j % 10 == i && j % 3 != 2).count() as u64;
            (c.clone(), on_live_nodes + u64::from(i == 0))
        })
        .collect();
    nodes.truncate(2);
    for node in &nodes {
        eventually_within(
            "the killed node's clients leave the counts",
            Duration::from_secs(3 + 5),
            || async { counts(node, &channels).await == after },
        )
        .await;
    }
    let gone = (0..300).filter(|j| j % 10 == 0 && j % 3 == 2).count();
    let mut left = 0;
    while left < gone {
        if watcher.next().await.unwrap().event == "ssegate.leave" {
            left += 1;
        }
    }
    // A reader without the presence grant is refused.
    let outsider = jsonwebtoken::encode(
        &jsonwebtoken::Header::default(),
        &json!({"exp": 4_000_000_000u64, "channels": ["*"]}),
        &jsonwebtoken::EncodingKey::from_secret(SECRET.as_bytes()),
    )
    .unwrap();
    let (status, body) =
        get_json(&nodes[0].url(&format!("/v1/presence/{}?token={outsider}", channels[0]))).await;
    assert_eq!((status, body["error"].as_str()), (403, Some("forbidden")));
    drop(streams);
}

#[tokio::test]
async fn presence_works_with_the_embedded_broker() {
    let node = NodeProcess::spawn(&[]);
    let channel = unique("solo");
    let mut watcher = Sse::open(&node.url(&format!("/v1/stream/{channel}?presence=1"))).await;
    assert_eq!(watcher.next().await.unwrap().event, "ssegate.join");
    let other = Sse::open(&node.url(&format!("/v1/stream/{channel}"))).await;
    eventually("two connections", || async {
        get_json(&node.url(&format!("/v1/presence/{channel}"))).await.1["count"] == 2
    })
    .await;
    drop(other);
    eventually("one connection", || async {
        get_json(&node.url(&format!("/v1/presence/{channel}"))).await.1["count"] == 1
    })
    .await;
}

/// Joins and leaves name the clients on a channel, as `GET /v1/presence`
/// does: a token without the `presence` claim for the channel gets neither.
#[tokio::test]
async fn joins_and_leaves_need_the_presence_claim() {
    let node = NodeProcess::spawn(&["--jwt-secret", SECRET, "--ip-rate", "0"]);
    let channel = format!("lobby-{}", std::process::id());
    let reader_only = jsonwebtoken::encode(
        &jsonwebtoken::Header::default(),
        &json!({"exp": 4_000_000_000u64, "sub": "eve", "channels": ["*"]}),
        &jsonwebtoken::EncodingKey::from_secret(SECRET.as_bytes()),
    )
    .unwrap();
    // SSE: refused before the stream opens; without ?presence=1 it opens.
    let opened = reqwest::get(node.url(&format!("/v1/stream/{channel}?presence=1&token={reader_only}")))
        .await
        .unwrap();
    assert_eq!(opened.status(), 403, "a stream with joins and leaves opened");
    let body: serde_json::Value = opened.json().await.unwrap();
    assert_eq!(body["error"], "forbidden", "{body}");
    let plain = reqwest::get(node.url(&format!("/v1/stream/{channel}?token={reader_only}")))
        .await
        .unwrap();
    assert_eq!(plain.status(), 200);
    drop(plain);
    // WebSocket: the subscribe is refused, the socket stays open.
    let mut ws =
        crate::websocket::raw::RawWs::connect(node.addr, &format!("/v1/ws?token={reader_only}")).await;
    let subscribe = |presence: bool, r: u32| {
        crate::websocket::raw::text(&json!({
            "type": "subscribe", "channel": channel, "presence": presence, "ref": r
        }))
    };
    ws.send_together(&[subscribe(true, 1)]).await;
    let refused = ws.next_json().await;
    assert_eq!(
        (refused["type"].as_str(), refused["code"].as_str()),
        (Some("error"), Some("forbidden")),
        "{refused}"
    );
    assert_eq!(refused["ref"], 1);
    ws.send_together(&[subscribe(false, 2)]).await;
    let ok = ws.next_json().await;
    assert_eq!(
        (ok["type"].as_str(), ok["ref"].as_u64()),
        (Some("subscribed"), Some(2)),
        "{ok}"
    );
    // With the claim, the stream opens and hears its own join.
    let room = format!("room-{}", std::process::id());
    let mut watcher = Sse::open(&node.url(&format!(
        "/v1/stream/{room}?presence=1&token={}",
        token("watcher")
    )))
    .await;
    let join = watcher.next().await.unwrap();
    assert_eq!(
        (join.event.as_str(), join.data.as_str()),
        (
            "ssegate.join",
            &*format!(r#"{{"channel":"{room}","client":"watcher"}}"#)
        )
    );
}

/// A live node refreshes its reports before they expire: over several TTLs
/// every one of its clients stays in the counts another node reads from
/// Redis.
#[tokio::test]
async fn a_live_nodes_clients_stay_in_the_counts_past_the_ttl() {
    let redis = RedisServer::spawn();
    let url = redis.url();
    let args = [
        "--redis-url",
        url.as_str(),
        "--allow-anonymous",
        "--presence-ttl",
        "1s",
        "--ip-rate",
        "0",
    ];
    let (holder, reader) = (NodeProcess::spawn(&args), NodeProcess::spawn(&args));
    let channels: Vec<String> = (0..40).map(|i| unique(&format!("stay-{i}"))).collect();
    let mut streams = Vec::new();
    for c in &channels {
        streams.push(Sse::open_owned(holder.url(&format!("/v1/stream/{c}"))).await);
    }
    let all_counted = || async {
        for c in &channels {
            let (status, v) = get_json(&reader.url(&format!("/v1/presence/{c}"))).await;
            assert_eq!(status, 200, "{v}");
            if v["count"] != 1 {
                return Err(format!("{c}: {v}"));
            }
        }
        Ok(())
    };
    eventually("every channel counts its stream", || async {
        all_counted().await.is_ok()
    })
    .await;
    // Four TTLs, reports refreshed every third of one.
    let until = std::time::Instant::now() + Duration::from_secs(4);
    while std::time::Instant::now() < until {
        if let Err(e) = all_counted().await {
            panic!("a live node's client dropped out of presence: {e}");
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    drop(streams);
}
