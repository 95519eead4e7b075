//! Scale out: Redis Cluster with sharded pub/sub, Sentinel failover, and
//! nodes killed behind a load balancer, with durable events being published
//! all along. Each fault test compares what every subscriber received with
//! the channel's history in Redis: nothing lost, nothing duplicated, in
//! order.

use std::collections::HashMap;
use std::process::Command;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use crate::deploy::{haproxy_in_front, three_nodes};
use crate::durable::{publish_through_outages, stream_log};
use crate::helpers::*;

fn slot(channel: &str) -> u16 {
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
struct RedisCluster {
    nodes: Vec<RedisServer>,
}

impl RedisCluster {
    async fn spawn() -> RedisCluster {
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

    fn url(&self) -> String {
        self.nodes.iter().map(|n| n.url()).collect::<Vec<_>>().join(",")
    }

    async fn client(&self) -> redis::cluster_async::ClusterConnection {
        let seeds: Vec<String> = self.nodes.iter().map(|n| n.url()).collect();
        redis::cluster::ClusterClient::new(seeds)
            .unwrap()
            .get_async_connection()
            .await
            .unwrap()
    }

    /// The port of the master that owns `channel`'s slot, asked of a live node.
    fn master_of(&self, channel: &str) -> u16 {
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

    fn kill(&mut self, port: u16) {
        self.nodes.iter_mut().find(|n| n.port == port).unwrap().kill();
    }
}

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

/// Reads `wanted` events from a stream on `channels` (in the stream's
/// order); returns, per channel, the stream ids received: each event's id is
/// the connection's cursor, whose position for the event's channel is that
/// event's stream id.
async fn collect_until(s: &mut Sse, channels: &[&str], wanted: usize) -> HashMap<String, Vec<String>> {
    let mut got: HashMap<String, Vec<String>> = HashMap::new();
    for _ in 0..wanted {
        let ev = s.next().await.expect("the stream stays open");
        assert_ne!(ev.event, "ssegate.reset", "nothing was trimmed");
        let ch = ev.data.split('/').next().unwrap().to_owned();
        let index = channels
            .iter()
            .position(|c| *c == ch)
            .expect("a channel of the stream");
        let id = ev
            .id
            .split(',')
            .nth(index)
            .expect("a position per channel")
            .to_owned();
        got.entry(ch).or_default().push(id);
    }
    got
}

/// The ids received on one channel against its history: (lost, duplicated).
fn compare(received: &[String], log: &[String]) -> (usize, usize) {
    let mut seen = std::collections::HashSet::new();
    let dups = received.iter().filter(|id| !seen.insert(id.as_str())).count();
    let lost = log.iter().filter(|id| !seen.contains(id.as_str())).count();
    (lost, dups)
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

/// One master, one replica, three Sentinels.
struct Sentinels {
    master: RedisServer,
    _replica: RedisServer,
    sentinels: Vec<(std::process::Child, u16, tempfile::TempDir)>,
}

impl Sentinels {
    async fn spawn() -> Sentinels {
        let master = RedisServer::spawn();
        let replica = RedisServer::spawn_with(&["--replicaof", "127.0.0.1", &master.port.to_string()]);
        eventually("the replica is in sync", || async {
            replica
                .cli(&["INFO", "replication"])
                .contains("master_link_status:up")
        })
        .await;
        let mut sentinels = Vec::new();
        for _ in 0..3 {
            let port = free_port();
            let dir = tempfile::tempdir().unwrap();
            let conf = dir.path().join("sentinel.conf");
            std::fs::write(
                &conf,
                format!(
                    "port {port}\nbind 127.0.0.1\nsentinel monitor mymaster 127.0.0.1 {} 2\n\
                     sentinel down-after-milliseconds mymaster 1000\nsentinel failover-timeout mymaster 5000\n\
                     sentinel parallel-syncs mymaster 1\n",
                    master.port
                ),
            )
            .unwrap();
            let child = Command::new("redis-server")
                .arg(&conf)
                .arg("--sentinel")
                .stdout(std::process::Stdio::null())
                .spawn()
                .unwrap();
            sentinels.push((child, port, dir));
        }
        for (_, port, _) in &sentinels {
            let port = *port;
            eventually(
                "the sentinel knows the replica and the other sentinels",
                || async move {
                    let out = |args: &[&str]| {
                        let o = Command::new("redis-cli")
                            .args(["-p", &port.to_string()])
                            .args(args)
                            .output()
                            .unwrap();
                        String::from_utf8_lossy(&o.stdout).into_owned()
                    };
                    out(&["SENTINEL", "REPLICAS", "mymaster"]).contains("slave")
                        && out(&["SENTINEL", "SENTINELS", "mymaster"])
                            .matches("127.0.0.1")
                            .count()
                            >= 2
                },
            )
            .await;
        }
        Sentinels {
            master,
            _replica: replica,
            sentinels,
        }
    }

    fn url(&self) -> String {
        self.sentinels
            .iter()
            .map(|(_, p, _)| format!("redis://127.0.0.1:{p}"))
            .collect::<Vec<_>>()
            .join(",")
    }

    fn master_url(&self) -> String {
        master_url(self.sentinels[0].1)
    }
}

/// The current master's URL, as the Sentinel on `port` says.
fn master_url(port: u16) -> String {
    {
        let o = Command::new("redis-cli")
            .args([
                "-p",
                &port.to_string(),
                "SENTINEL",
                "GET-MASTER-ADDR-BY-NAME",
                "mymaster",
            ])
            .output()
            .unwrap();
        let text = String::from_utf8_lossy(&o.stdout).into_owned();
        let mut l = text.lines();
        format!("redis://{}:{}", l.next().unwrap(), l.next().unwrap())
    }
}

impl Drop for Sentinels {
    fn drop(&mut self) {
        for (c, _, _) in &mut self.sentinels {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

/// Durable publishes to whichever master the Sentinel on `sentinel` names,
/// retrying through the failover.
async fn sentinel_publish(sentinel: u16, ch: String, n: usize, done: Arc<AtomicUsize>) {
    for i in 0..n {
        loop {
            let url = master_url(sentinel);
            let r: redis::RedisResult<String> = async {
                let mut c = redis::Client::open(url)?
                    .get_multiplexed_async_connection()
                    .await?;
                redis::cmd("FCALL")
                    .arg("ssegate_publish")
                    .arg(1)
                    .arg(format!("sse:{{{ch}}}:log"))
                    .arg(format!("{ch}/{i}"))
                    .query_async(&mut c)
                    .await
            }
            .await;
            if r.is_ok() {
                break;
            }
            // A retry pause while the Sentinels elect a new master.
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        done.fetch_add(1, Ordering::Relaxed);
        // Pacing: publishing goes on across the failover.
        tokio::time::sleep(Duration::from_millis(3)).await;
    }
}

#[tokio::test]
async fn a_sentinel_failover_during_publishing_loses_and_duplicates_nothing() {
    let mut sentinels = Sentinels::spawn().await;
    let node_cfg = || {
        let mut cfg = config(None);
        cfg.redis_url = Some(sentinels.url());
        cfg.redis_sentinel_master = Some("mymaster".into());
        cfg.allow_anonymous = true;
        cfg
    };
    let a = Node::spawn(node_cfg()).await;
    let b = Node::spawn(node_cfg()).await;
    let ch = unique("sentinel");
    let mut sa = Sse::open(&a.url(&format!("/v1/stream/{ch}"))).await;
    let mut sb = Sse::open(&b.url(&format!("/v1/stream/{ch}"))).await;
    let total = 300;
    let published = Arc::new(AtomicUsize::new(0));
    let publisher = tokio::spawn(sentinel_publish(
        sentinels.sentinels[0].1,
        ch.clone(),
        total,
        published.clone(),
    ));
    eventually("publishing is under way", || async {
        published.load(Ordering::Relaxed) > 100
    })
    .await;
    sentinels.master.kill();
    publisher.await.unwrap();
    let url = sentinels.master_url();
    let mut c = redis::Client::open(url)
        .unwrap()
        .get_multiplexed_async_connection()
        .await
        .unwrap();
    let entries: Vec<(String, HashMap<String, String>)> = redis::cmd("XRANGE")
        .arg(format!("sse:{{{ch}}}:log"))
        .arg("-")
        .arg("+")
        .query_async(&mut c)
        .await
        .unwrap();
    let log: Vec<String> = entries.into_iter().map(|(id, _)| id).collect();
    for (name, s) in [("a", &mut sa), ("b", &mut sb)] {
        let got = collect_until(s, &[ch.as_str()], log.len()).await;
        let received = got.get(ch.as_str()).cloned().unwrap_or_default();
        let (lost, dups) = compare(&received, &log);
        eprintln!(
            "sentinel failover, node {name}: {} events, lost {lost}, duplicated {dups}",
            log.len()
        );
        assert_eq!((lost, dups), (0, 0), "node {name}");
    }
    assert!(a.metric("ssegate_redis_reconnects_total").await >= 1.0);
}

/// How a following client's streams came to an end before it had every
/// event.
#[derive(Default, Debug)]
struct Drops {
    /// The node ended the stream cleanly (a drain).
    ended: usize,
    /// The connection was cut mid-stream (a killed node).
    cut: usize,
    /// The request failed or was refused.
    refused: usize,
}

impl Drops {
    fn any(&self) -> bool {
        self.ended + self.cut + self.refused > 0
    }
}

/// A client that follows a stream through the balancer as a browser
/// would: on every end, cut or refusal it reconnects after a short delay
/// with its last id, until it has the final id (known once publishing is
/// over).
async fn follow(url: String, mut last: tokio::sync::watch::Receiver<Option<String>>) -> (Vec<String>, Drops) {
    let client = reqwest::Client::new();
    let mut ids: Vec<String> = Vec::new();
    let mut last_id: Option<String> = None;
    let mut drops = Drops::default();
    let done = |ids: &[String], last: &Option<String>| last.is_some() && ids.last() == last.as_ref();
    loop {
        let mut req = client.get(&url);
        if let Some(id) = &last_id {
            req = req.header("Last-Event-ID", id);
        }
        match req.send().await {
            Ok(resp) if resp.status() == 200 => {
                let mut s = Sse::from_response(resp);
                s.last_id = last_id.clone().unwrap_or_default();
                loop {
                    tokio::select! {
                        ev = s.next_or_cut() => match ev {
                            Ok(Some(ev)) => ids.push(ev.id),
                            Ok(None) => {
                                drops.ended += 1;
                                break;
                            }
                            Err(_) => {
                                drops.cut += 1;
                                break;
                            }
                        },
                        _ = last.changed() => {}
                    }
                    if done(&ids, &last.borrow()) {
                        return (ids, drops);
                    }
                }
                last_id = Some(s.last_id.clone()).filter(|l| !l.is_empty());
            }
            _ => drops.refused += 1,
        }
        // A browser's reconnect delay (the `retry:` hint), shortened.
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test]
async fn behind_haproxy_clients_of_a_killed_and_a_drained_node_resume_elsewhere_with_nothing_lost() {
    let Some(haproxy) = require_tool("haproxy") else {
        return;
    };
    let redis = RedisServer::spawn();
    let nodes = three_nodes(&redis);
    let (_proxy, lb, _) = haproxy_in_front(haproxy, &nodes).await;
    let ch = unique("lb");
    let url = format!("http://127.0.0.1:{lb}/v1/stream/{ch}");
    // Clients spread over the three nodes by the balancer.
    let mut clients = Vec::new();
    let (last, last_rx) = tokio::sync::watch::channel(None);
    for _ in 0..30 {
        clients.push(tokio::spawn(follow(url.clone(), last_rx.clone())));
    }
    eventually("every client is subscribed", || async {
        let n: f64 = futures::future::join_all(nodes.iter().map(|n| n.metric("ssegate_streams_open")))
            .await
            .iter()
            .sum();
        n >= 30.0
    })
    .await;
    let [n1, mut n2, n3] = nodes;
    // Pacing: publishing spans the faults.
    let publish = |n| publish_through_outages(redis.url(), ch.clone(), n, Duration::from_millis(3));
    // Before the faults, after the kill, and after the drained node is gone.
    assert_eq!(publish(150).await, 150);
    n1.signal("-KILL");
    assert_eq!(publish(150).await, 150);
    n2.signal("-TERM");
    let status = exited(&mut n2.child).await;
    assert!(status.success(), "the drained node exits 0: {status:?}");
    assert_eq!(publish(100).await, 100);
    let log = stream_log(&redis, &ch).await;
    last.send(log.last().cloned()).unwrap();
    let mut resumed = 0;
    let mut all = Drops::default();
    for (i, c) in clients.into_iter().enumerate() {
        let (ids, drops) = tokio::time::timeout(WAIT, c)
            .await
            .expect("the client caught up")
            .unwrap();
        let (lost, dups) = compare(&ids, &log);
        assert_eq!((lost, dups), (0, 0), "client {i}");
        assert_eq!(ids, log, "client {i}: in order");
        resumed += usize::from(drops.any());
        all.ended += drops.ended;
        all.cut += drops.cut;
        all.refused += drops.refused;
    }
    eprintln!(
        "behind haproxy: 30 clients, {} events each, {resumed} resumed on another node ({all:?}), lost 0, duplicated 0",
        log.len()
    );
    // The killed node's and the drained node's clients (leastconn spreads
    // the 30 over the three nodes): the killed node's streams were cut,
    // the drained node's ended cleanly.
    assert!(resumed >= 15, "only {resumed} clients had to resume");
    assert!(all.cut >= 1, "no stream was cut by the SIGKILL: {all:?}");
    assert!(all.ended >= 1, "no stream was ended by the drain: {all:?}");
    drop((n1, n2, n3));
}
