//! History, state snapshots and presence: the read API of a channel's
//! history, snapshots served first without a gap or a duplicate, and who
//! is on a channel across the nodes.

mod history;
mod presence;
mod race;
mod snapshot;

use serde_json::Value;

use crate::helpers::*;

pub async fn get_json(url: &str) -> (u16, Value) {
    let resp = reqwest::get(url).await.unwrap();
    let status = resp.status().as_u16();
    (status, resp.json().await.unwrap_or(Value::Null))
}

pub async fn put_state(base: &str, channel: &str, body: &str) -> String {
    let resp = reqwest::Client::new()
        .put(format!("{base}/v1/state/{channel}"))
        .body(body.to_owned())
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    let v: Value = resp.json().await.unwrap();
    v["position"].as_str().unwrap().to_owned()
}

/// `ms-seq` as numbers, for ordering.
pub fn id_of(text: &str) -> (u64, u64) {
    let (ms, seq) = text.split_once('-').expect("an event id");
    (ms.parse().unwrap(), seq.parse().unwrap())
}

pub fn redis_node(redis: &RedisServer, extra: &[&str]) -> NodeProcess {
    let url = redis.url();
    let mut args = vec!["--redis-url", url.as_str(), "--allow-anonymous"];
    args.extend(extra);
    NodeProcess::spawn(&args)
}
