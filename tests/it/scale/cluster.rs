//! Redis Cluster: sharded pub/sub on every shard, and a master failover
//! while publishing.

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use super::{collect_until, compare};
use crate::helpers::*;

/// Durable publishes through the cluster, retrying through failovers.
async fn cluster_publish(
    mut c: redis::cluster_async::ClusterConnection,
    ch: String,
    n: usize,
    done: Arc<AtomicUsize>,
) {
    for i in 0..n {
        loop {
            let r: redis::RedisResult<String> = redis::cmd("FCALL")
                .arg("ssegate_publish")
                .arg(1)
                .arg(format!("sse:{{{ch}}}:log"))
                .arg(format!("{ch}/{i}"))
                .query_async(&mut c)
                .await;
            if r.is_ok() {
                break;
            }
            // A retry pause while the slot has no master.
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        done.fetch_add(1, Ordering::Relaxed);
        // Pacing: publishing goes on across the failover.
        tokio::time::sleep(Duration::from_millis(3)).await;
    }
}

async fn cluster_log(c: &mut redis::cluster_async::ClusterConnection, ch: &str) -> Vec<String> {
    let entries: Vec<(String, HashMap<String, String>)> = redis::cmd("XRANGE")
        .arg(format!("sse:{{{ch}}}:log"))
        .arg("-")
        .arg("+")
        .query_async(c)
        .await
        .unwrap();
    entries.into_iter().map(|(id, _)| id).collect()
}

fn cluster_node_config(cluster: &RedisCluster) -> ssegate::Config {
    let mut cfg = config(None);
    cfg.redis_url = Some(cluster.url());
    cfg.redis_cluster = true;
    cfg.allow_anonymous = true;
    cfg
}

#[tokio::test]
async fn in_a_cluster_channels_on_every_shard_reach_subscribers_on_two_nodes() {
    let cluster = RedisCluster::spawn().await;
    let a = Node::spawn(cluster_node_config(&cluster)).await;
    let b = Node::spawn(cluster_node_config(&cluster)).await;
    // Many channels, spread over the slots, and two that share one slot
    // (one SSUBSCRIBE carries both).
    let base = unique("cl");
    let mut channels: Vec<String> = (0..40).map(|i| format!("{base}-{i}")).collect();
    let first_slot = slot(&channels[0]);
    let twin = (0..)
        .map(|i| format!("{base}-twin-{i}"))
        .find(|c| slot(c) == first_slot)
        .unwrap();
    channels.push(twin);
    let mut streams = Vec::new();
    for ch in &channels {
        for node in [&a, &b] {
            streams.push((
                ch.clone(),
                Sse::open(&node.url(&format!("/v1/stream/{ch}"))).await,
            ));
        }
    }
    let mut c = cluster.client().await;
    let mut ids = HashMap::new();
    for ch in &channels {
        let id: String = redis::cmd("FCALL")
            .arg("ssegate_publish")
            .arg(1)
            .arg(format!("sse:{{{ch}}}:log"))
            .arg(format!("hello {ch}"))
            .query_async(&mut c)
            .await
            .unwrap();
        ids.insert(ch.clone(), id);
    }
    for (ch, s) in &mut streams {
        let ev = s.next().await.unwrap();
        assert_eq!(
            (ev.data.as_str(), ev.id.as_str()),
            (format!("hello {ch}").as_str(), ids[ch].as_str())
        );
    }
    // Sharded pub/sub only: no classic subscription anywhere.
    for n in &cluster.nodes {
        assert_eq!(
            n.cli(&["PUBSUB", "CHANNELS"]).trim(),
            "",
            "classic channels on {}",
            n.port
        );
    }
    let shard_channels: usize = cluster
        .nodes
        .iter()
        .map(|n| {
            n.cli(&["PUBSUB", "SHARDCHANNELS"])
                .lines()
                .filter(|l| !l.is_empty())
                .count()
        })
        .sum();
    assert_eq!(
        shard_channels,
        channels.len(),
        "each channel subscribed once, at its master"
    );
    // SSUBSCRIBE is per slot: two nodes, 40 slots (the twins share one).
    let commands = a.metric("ssegate_redis_subscribe_commands_total").await;
    assert!(
        commands <= channels.len() as f64,
        "{commands} SSUBSCRIBE commands"
    );
}

#[tokio::test]
async fn a_cluster_master_failover_during_publishing_loses_and_duplicates_nothing() {
    let mut cluster = RedisCluster::spawn().await;
    let a = Node::spawn(cluster_node_config(&cluster)).await;
    let b = Node::spawn(cluster_node_config(&cluster)).await;
    // Two channels on two different masters, on one stream.
    let x = unique("fx");
    let victim = cluster.master_of(&x);
    let y = (0..)
        .map(|i| format!("{x}-y{i}"))
        .find(|c| cluster.master_of(c) != victim)
        .unwrap();
    let path = format!("/v1/stream?channel={x}&channel={y}");
    let mut sa = Sse::open(&a.url(&path)).await;
    let mut sb = Sse::open(&b.url(&path)).await;
    let total = 400;
    let published = Arc::new(AtomicUsize::new(0));
    let px = tokio::spawn(cluster_publish(
        cluster.client().await,
        x.clone(),
        total,
        published.clone(),
    ));
    let py = tokio::spawn(cluster_publish(
        cluster.client().await,
        y.clone(),
        total,
        published.clone(),
    ));
    eventually("publishing is under way", || async {
        published.load(Ordering::Relaxed) > 150
    })
    .await;
    cluster.kill(victim);
    px.await.unwrap();
    py.await.unwrap();
    let mut c = cluster.client().await;
    let (log_x, log_y) = (cluster_log(&mut c, &x).await, cluster_log(&mut c, &y).await);
    let wanted = log_x.len() + log_y.len();
    for (name, s) in [("a", &mut sa), ("b", &mut sb)] {
        let got = collect_until(s, &[x.as_str(), y.as_str()], wanted).await;
        for (ch, log) in [(&x, &log_x), (&y, &log_y)] {
            let received: Vec<String> = got.get(ch.as_str()).cloned().unwrap_or_default();
            let (lost, dups) = compare(&received, log);
            eprintln!(
                "cluster failover, node {name}, channel {ch}: {} events, lost {lost}, duplicated {dups}",
                log.len()
            );
            assert_eq!((lost, dups), (0, 0), "node {name}, channel {ch}");
            let in_log: Vec<&String> = received.iter().filter(|id| log.contains(id)).collect();
            assert_eq!(in_log, log.iter().collect::<Vec<_>>(), "in order");
        }
    }
    assert!(a.metric("ssegate_gap_repairs_total").await >= 1.0);
}
