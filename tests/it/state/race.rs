//! The initial-load race, solved: a publisher flat out, the state rewritten
//! every 100 events, 500 clients opening with `?state=1` on random nodes:
//! each client's snapshot plus the events after it is the publisher's
//! final state, nothing applied twice, nothing missed.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use super::*;

const EVENTS: u64 = 1000;
const CLIENTS: usize = 500;

/// The publisher: event `n` carries `n`; after every 100 events the state
/// becomes "n" (everything up to and including event n).
async fn publish_with_snapshots(bases: Vec<String>, channel: String, done: Arc<AtomicBool>) {
    let client = reqwest::Client::new();
    for n in 0..EVENTS {
        let base = &bases[n as usize % bases.len()];
        let r = client
            .post(format!("{base}/v1/stream/{channel}"))
            .body(n.to_string())
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 201);
        if n % 100 == 99 {
            let r = client
                .put(format!("{base}/v1/state/{channel}"))
                .body(n.to_string())
                .send()
                .await
                .unwrap();
            assert_eq!(r.status(), 200);
        }
    }
    done.store(true, Ordering::Relaxed);
}

/// One client: opens with state, applies what follows, until the last
/// event. The state says the last event it includes ("initial": none).
async fn client_view(url: String) -> Result<(), String> {
    let mut s = Sse::open_owned(url).await;
    let mut applied: Option<i64> = None;
    loop {
        let ev = s.next().await.ok_or("the stream ended")?;
        let n: i64 = match ev.data.as_str() {
            "initial" => -1,
            d => d.parse().map_err(|_| format!("not a number: {d:?}"))?,
        };
        match (ev.event.as_str(), applied) {
            ("ssegate.state", None) => applied = Some(n),
            ("message", Some(last)) if n == last + 1 => applied = Some(n),
            (kind, last) => return Err(format!("{kind} {n} after {last:?}")),
        }
        if applied == Some(EVENTS as i64 - 1) {
            return Ok(());
        }
    }
}

/// Publishers on `channels`, and `CLIENTS` clients spread over them and
/// over the nodes.
async fn run(bases: Vec<String>, channels: Vec<String>) {
    let done = Arc::new(AtomicBool::new(false));
    let client = reqwest::Client::new();
    let mut publishers = Vec::new();
    for channel in &channels {
        // A first snapshot, so that every client starts from one.
        let r = client
            .put(format!("{}/v1/state/{channel}", bases[0]))
            .body("initial")
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 200);
        publishers.push(tokio::spawn(publish_with_snapshots(
            bases.clone(),
            channel.clone(),
            done.clone(),
        )));
    }
    let mut clients = Vec::new();
    for i in 0..CLIENTS {
        let base = &bases[(i * 7 + 3) % bases.len()];
        let channel = &channels[i % channels.len()];
        clients.push(tokio::spawn(client_view(format!(
            "{base}/v1/stream/{channel}?state=1"
        ))));
        // Opening throughout the publishing (pacing, not synchronisation).
        if i % 10 == 9 && !done.load(Ordering::Relaxed) {
            tokio::task::yield_now().await;
        }
    }
    for p in publishers {
        p.await.unwrap();
    }
    let mut failures = Vec::new();
    for c in clients {
        if let Err(e) = c.await.unwrap() {
            failures.push(e);
        }
    }
    assert!(
        failures.is_empty(),
        "{} of {CLIENTS} clients: {:?}",
        failures.len(),
        &failures[..failures.len().min(5)]
    );
}

fn node_bases(nodes: &[NodeProcess]) -> Vec<String> {
    nodes.iter().map(|n| n.url("")).collect()
}

#[tokio::test]
async fn five_hundred_clients_open_with_state_under_a_flat_out_publisher() {
    let redis = RedisServer::spawn();
    let nodes = [
        redis_node(&redis, &["--ip-rate", "0"]),
        redis_node(&redis, &["--ip-rate", "0"]),
        redis_node(&redis, &["--ip-rate", "0"]),
    ];
    run(node_bases(&nodes), vec![unique("race")]).await;
}

#[tokio::test]
async fn the_same_on_redis_cluster_for_a_channel_on_each_master() {
    let cluster = RedisCluster::spawn().await;
    let url = cluster.url();
    let args = [
        "--redis-url",
        url.as_str(),
        "--redis-cluster",
        "--allow-anonymous",
        "--ip-rate",
        "0",
    ];
    let nodes = [
        NodeProcess::spawn(&args),
        NodeProcess::spawn(&args),
        NodeProcess::spawn(&args),
    ];
    // One channel per master.
    let mut masters = std::collections::HashSet::new();
    let mut channels = Vec::new();
    while channels.len() < 3 {
        let c = unique("race-cluster");
        if masters.insert(cluster.master_of(&c)) {
            channels.push(c);
        }
    }
    run(node_bases(&nodes), channels).await;
}
