//! Exactly once per channel over reconnects: a subscribe with `after`
//! replays history strictly after it, on any node, with a publisher
//! running flat out; and a WebSocket and an SSE client see the same ids.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use serde_json::Value;

use super::*;

/// `ms-seq` as numbers, for ordering.
fn id_of(v: &Value) -> (u64, u64) {
    let s = v["id"].as_str().expect("a durable event");
    let (ms, seq) = s.split_once('-').unwrap();
    (ms.parse().unwrap(), seq.parse().unwrap())
}

#[tokio::test]
async fn resuming_on_another_node_under_flat_out_publishing_loses_and_repeats_nothing() {
    let redis = RedisServer::spawn();
    let args = ["--redis-url", &redis.url(), "--allow-anonymous"];
    let nodes = [NodeProcess::spawn(&args), NodeProcess::spawn(&args)];
    let channel = unique("ws-resume");
    let stop = Arc::new(AtomicBool::new(false));
    let publisher = {
        let (url, stop, channel) = (nodes[0].url(""), stop.clone(), channel.clone());
        tokio::spawn(async move {
            let client = reqwest::Client::new();
            let mut n = 0u64;
            while !stop.load(Ordering::Relaxed) {
                let r = client
                    .post(format!("{url}/v1/stream/{channel}"))
                    .body(n.to_string())
                    .send()
                    .await
                    .unwrap();
                assert_eq!(r.status(), 201);
                n += 1;
            }
            n
        })
    };
    let mut seen: Vec<u64> = Vec::new();
    let mut position: Option<String> = None;
    for round in 0..20 {
        let node = &nodes[round % 2];
        let mut ws = Ws::connect(node.addr, "").await;
        let reply = subscribe(&mut ws, &channel, position.as_deref()).await;
        let mut last = position
            .clone()
            .unwrap_or_else(|| reply["position"].as_str().unwrap().to_owned());
        for _ in 0..50 {
            let ev = ws.next_of("event").await;
            seen.push(ev["data"].as_str().unwrap().parse().unwrap());
            last = ev["id"].as_str().unwrap().to_owned();
        }
        position = Some(last);
    }
    stop.store(true, Ordering::Relaxed);
    publisher.await.unwrap();
    let first = seen[0];
    let expected: Vec<u64> = (first..first + seen.len() as u64).collect();
    assert_eq!(seen, expected, "every event once, in order, across 20 reconnects");
}

#[tokio::test]
async fn a_websocket_and_an_eventsource_on_different_nodes_get_the_same_ids() {
    let redis = RedisServer::spawn();
    let args = ["--redis-url", &redis.url(), "--allow-anonymous"];
    let (a, b) = (NodeProcess::spawn(&args), NodeProcess::spawn(&args));
    let channel = unique("mixed");
    let mut ws = Ws::connect(a.addr, &format!("?channel={channel}")).await;
    assert_eq!(ws.next().await["type"], "subscribed");
    let mut sse = Sse::open(&b.url(&format!("/v1/stream/{channel}"))).await;
    let mut ids = Vec::new();
    for i in 0..20 {
        ids.push(a.publish(&channel, format!("line one {i}\nline two")).await);
    }
    for id in &ids {
        let w = ws.next_of("event").await;
        let s = sse.next().await.unwrap();
        assert_eq!(
            (w["id"].as_str().unwrap(), s.id.as_str()),
            (id.as_str(), id.as_str())
        );
        assert_eq!(w["data"].as_str().unwrap(), s.data, "the same text as e.data");
    }
    let mut last = (0, 0);
    let mut again = Ws::connect(b.addr, "").await;
    subscribe(&mut again, &channel, Some(&ids[4])).await;
    for id in &ids[5..] {
        let ev = again.next_of("event").await;
        assert_eq!(ev["id"].as_str(), Some(id.as_str()));
        assert!(id_of(&ev) > last);
        last = id_of(&ev);
    }
}
