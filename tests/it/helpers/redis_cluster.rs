//! A Redis Cluster of real `redis-server` processes: three masters and
//! three replicas on free ports.

use std::process::Command;

use super::{RedisServer, eventually, free_port};

pub fn slot(channel: &str) -> u16 {
    crc16::State::<crc16::XMODEM>::calculate(channel.as_bytes()) % 16384
}

/// Ports `p` whose cluster bus port `p + 10000` is free too.
fn cluster_ports(n: usize) -> Vec<u16> {
    let mut out = Vec::new();
    while out.len() < n {
        let p = free_port();
        if p < 50000 && std::net::TcpListener::bind(("127.0.0.1", p + 10000)).is_ok() && !out.contains(&p) {
            out.push(p);
        }
    }
    out
}

/// Three masters and three replicas, created with `redis-cli --cluster`.
pub struct RedisCluster {
    pub nodes: Vec<RedisServer>,
}

impl RedisCluster {
    pub async fn spawn() -> RedisCluster {
        let nodes: Vec<RedisServer> = cluster_ports(6)
            .into_iter()
            .map(|p| {
                RedisServer::spawn_at(
                    p,
                    &[
                        "--cluster-enabled",
                        "yes",
                        "--cluster-config-file",
                        "nodes.conf",
                        "--cluster-node-timeout",
                        "1000",
                    ],
                )
            })
            .collect();
        let addrs: Vec<String> = nodes.iter().map(|n| format!("127.0.0.1:{}", n.port)).collect();
        let out = Command::new("redis-cli")
            .args(["--cluster", "create"])
            .args(&addrs)
            .args(["--cluster-replicas", "1", "--cluster-yes"])
            .output()
            .unwrap();
        assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stdout));
        let cluster = RedisCluster { nodes };
        for n in &cluster.nodes {
            eventually("the cluster is ok on every node", || async {
                let info = n.cli(&["CLUSTER", "INFO"]);
                info.contains("cluster_state:ok") && info.contains("cluster_slots_ok:16384")
            })
            .await;
            // A replica that never synced cannot take over from its master.
            eventually("every replica has synced", || async {
                let info = n.cli(&["INFO", "replication"]);
                info.contains("role:master") || info.contains("master_link_status:up")
            })
            .await;
        }
        cluster
    }

    pub fn url(&self) -> String {
        self.nodes.iter().map(|n| n.url()).collect::<Vec<_>>().join(",")
    }

    pub async fn client(&self) -> redis::cluster_async::ClusterConnection {
        let seeds: Vec<String> = self.nodes.iter().map(|n| n.url()).collect();
        redis::cluster::ClusterClient::new(seeds)
            .unwrap()
            .get_async_connection()
            .await
            .unwrap()
    }

    /// The port of the master that owns `channel`'s slot, asked of a live node.
    pub fn master_of(&self, channel: &str) -> u16 {
        let s = slot(channel);
        let live = self.nodes.iter().find(|n| n.is_running()).unwrap();
        let text = live.cli(&["CLUSTER", "SHARDS"]);
        // Walk the flat text: a shard lists its slot ranges, then its nodes.
        let lines: Vec<&str> = text.lines().map(str::trim).collect();
        let mut i = 0;
        let mut owner = None;
        while i < lines.len() {
            if lines[i] == "slots" {
                let mut ranges = Vec::new();
                let mut j = i + 1;
                while j + 1 < lines.len() && lines[j] != "nodes" {
                    if let (Ok(a), Ok(b)) = (lines[j].parse::<u16>(), lines[j + 1].parse::<u16>()) {
                        ranges.push((a, b));
                        j += 2;
                    } else {
                        j += 1;
                    }
                }
                let mine = ranges.iter().any(|(a, b)| (*a..=*b).contains(&s));
                // The master of the shard: the node whose role is "master".
                let mut k = j;
                let mut port = None;
                while k < lines.len() && lines[k] != "slots" {
                    if lines[k] == "port" {
                        port = lines[k + 1].parse::<u16>().ok();
                    }
                    if lines[k] == "role" && lines[k + 1] == "master" && mine {
                        owner = port;
                    }
                    k += 1;
                }
                i = k;
            } else {
                i += 1;
            }
        }
        owner.expect("an owner for the slot")
    }

    pub fn kill(&mut self, port: u16) {
        self.nodes.iter_mut().find(|n| n.port == port).unwrap().kill();
    }
}
