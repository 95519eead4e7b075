//! The node's connections to Redis send each command as it is written:
//! `TCP_NODELAY` on every one. With Nagle's algorithm a command written to
//! a multiplexed connection while an earlier one is unacknowledged would
//! wait for that ACK.
//!
//! The test takes copies of the node's sockets (`pidfd_getfd`, allowed for
//! a child process) and reads the option on those facing Redis.

use std::net::SocketAddr;

use rustix::net::{getpeername, sockopt};
use rustix::process::{Pid, PidfdFlags, PidfdGetfdFlags, pidfd_getfd, pidfd_open};

use crate::helpers::*;

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

    let pid = Pid::from_raw(node.child.id() as i32).expect("a child's pid");
    let pidfd = pidfd_open(pid, PidfdFlags::empty()).expect("pidfd_open on the node");
    let mut to_redis = Vec::new();
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
        // connections) is gone: skipped; the count below still requires
        // every connection to Redis.
        let Ok(fd) = pidfd_getfd(&pidfd, n, PidfdGetfdFlags::empty()) else {
            continue;
        };
        let peer = getpeername(&fd)
            .ok()
            .flatten()
            .and_then(|a| SocketAddr::try_from(a).ok());
        if peer.is_some_and(|p| p.port() == redis.port) {
            to_redis.push((n, sockopt::tcp_nodelay(&fd).unwrap()));
        }
    }
    // The pub/sub connection and every command connection.
    assert!(
        to_redis.len() > pool,
        "expected the pub/sub and {pool} command connections to Redis, found {to_redis:?}"
    );
    let delayed: Vec<i32> = to_redis.iter().filter(|(_, on)| !on).map(|(n, _)| *n).collect();
    assert!(
        delayed.is_empty(),
        "connections to Redis without TCP_NODELAY (fds {delayed:?} of {to_redis:?})"
    );
}
