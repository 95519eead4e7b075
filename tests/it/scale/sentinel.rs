//! Redis Sentinel: a failover while publishing.

use std::collections::HashMap;
use std::process::Command;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use super::{collect_until, compare};
use crate::helpers::*;

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
