//! The node's connections that carry commands or pub/sub to Redis send
//! each command as it is written: `TCP_NODELAY` on every one, in each
//! topology (the connections to Sentinels, which only ask where the
//! master is, are not checked). With Nagle's algorithm a
//! command written to a multiplexed connection while an earlier one is
//! unacknowledged would wait for that ACK.
//!
//! The tests take copies of the node's sockets (`pidfd_getfd`, allowed for
//! a child process) and read the option on those facing Redis.

use std::net::SocketAddr;

use rustix::net::{getpeername, sockopt};
use rustix::process::{Pid, PidfdFlags, PidfdGetfdFlags, pidfd_getfd, pidfd_open};

use crate::helpers::*;

/// The node's sockets whose peer is one of `ports`: (fd, peer port,
/// `TCP_NODELAY` set).
fn sockets_to(node: &NodeProcess, ports: &[u16]) -> Vec<(i32, u16, bool)> {
    let pid = Pid::from_raw(node.child.id() as i32).expect("a child's pid");
    let pidfd = pidfd_open(pid, PidfdFlags::empty()).expect("pidfd_open on the node");
    let mut found = Vec::new();
    for entry in std::fs::read_dir(format!("/proc/{}/fd", node.child.id())).unwrap() {
        let entry = entry.unwrap();
        let is_socket =
            std::fs::read_link(entry.path()).is_ok_and(|t| t.to_string_lossy().starts_with("socket:"));
        let Some(n) = entry.file_name().to_str().and_then(|n| n.parse::<i32>().ok()) else {
            continue;
        };
        if !is_socket {
            continue;
        }
        // A socket closed since the listing (the publishes' HTTP
        // connections) is gone: skipped; the callers' counts still require
        // every connection to Redis.
        let Ok(fd) = pidfd_getfd(&pidfd, n, PidfdGetfdFlags::empty()) else {
            continue;
        };
        let peer = getpeername(&fd)
            .ok()
            .flatten()
            .and_then(|a| SocketAddr::try_from(a).ok());
        if let Some(p) = peer.filter(|p| ports.contains(&p.port())) {
            found.push((n, p.port(), sockopt::tcp_nodelay(&fd).unwrap()));
        }
    }
    found
}

fn assert_all_nodelay(found: &[(i32, u16, bool)]) {
    let delayed: Vec<i32> = found
        .iter()
        .filter(|(_, _, on)| !on)
        .map(|(n, _, _)| *n)
        .collect();
    assert!(
        delayed.is_empty(),
        "connections to Redis without TCP_NODELAY (fds {delayed:?} of {found:?})"
    );
}

#[tokio::test]
async fn every_connection_to_redis_is_set_to_send_at_once() {
    let redis = RedisServer::spawn();
    let pool = 3;
    let node = NodeProcess::spawn(&[
        "--redis-url",
        &redis.url(),
        "--allow-anonymous",
        "--redis-pool-size",
        &pool.to_string(),
    ]);
    // Command connections are made on first use and used in turn: enough
    // publishes open them all.
    let ch = unique("nodelay");
    for i in 0..2 * pool {
        node.publish(&ch, format!("event {i}")).await;
    }
    let found = sockets_to(&node, &[redis.port]);
    // The pub/sub connection and every command connection.
    assert!(
        found.len() > pool,
        "expected the pub/sub and {pool} command connections to Redis, found {found:?}"
    );
    assert_all_nodelay(&found);
}

#[tokio::test]
async fn in_a_cluster_every_connection_to_a_shard_is_set_to_send_at_once() {
    let cluster = RedisCluster::spawn().await;
    let node = NodeProcess::spawn(&[
        "--redis-url",
        &cluster.url(),
        "--redis-cluster",
        "--allow-anonymous",
    ]);
    // Channels on every shard, each with a subscriber (sharded pub/sub)
    // and a publish (the cluster's command connections).
    let base = unique("nodelay-cluster");
    let channels: Vec<String> = (0..30).map(|i| format!("{base}-{i}")).collect();
    let mut streams = Vec::new();
    for ch in &channels {
        streams.push(Sse::open(&node.url(&format!("/v1/stream/{ch}"))).await);
    }
    for ch in &channels {
        node.publish(ch, "event").await;
    }
    for s in &mut streams {
        assert_eq!(s.take(1).await, ["event"]);
    }
    let ports: Vec<u16> = cluster.nodes.iter().map(|n| n.port).collect();
    let found = sockets_to(&node, &ports);
    let masters: Vec<u16> = cluster
        .nodes
        .iter()
        .filter(|n| n.cli(&["ROLE"]).starts_with("master"))
        .map(|n| n.port)
        .collect();
    assert_eq!(masters.len(), 3, "three masters: {masters:?}");
    // A command and a pub/sub connection to every master.
    for m in &masters {
        let to_master = found.iter().filter(|(_, p, _)| p == m).count();
        assert!(
            to_master >= 2,
            "expected command and pub/sub connections to master {m}, found {found:?}"
        );
    }
    assert_all_nodelay(&found);
}

#[tokio::test]
async fn with_sentinel_every_connection_to_the_master_is_set_to_send_at_once() {
    let sentinels = Sentinels::spawn().await;
    let node = NodeProcess::spawn(&[
        "--redis-url",
        &sentinels.url(),
        "--redis-sentinel-master",
        "mymaster",
        "--allow-anonymous",
    ]);
    let ch = unique("nodelay-sentinel");
    let mut s = Sse::open(&node.url(&format!("/v1/stream/{ch}"))).await;
    node.publish(&ch, "event").await;
    assert_eq!(s.take(1).await, ["event"]);
    let found = sockets_to(&node, &[sentinels.master.port]);
    // The pub/sub connection and the command connection. (The connections
    // to the Sentinels only ask where the master is.)
    assert!(
        found.len() >= 2,
        "expected the pub/sub and command connections to the master, found {found:?}"
    );
    assert_all_nodelay(&found);
}
