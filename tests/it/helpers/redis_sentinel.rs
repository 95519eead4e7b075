//! Redis Sentinel: one master, one replica and three Sentinels, real
//! `redis-server` processes on free ports.

use std::process::Command;

use super::{RedisServer, eventually, free_port};

/// One master, one replica, three Sentinels.
pub struct Sentinels {
    pub master: RedisServer,
    _replica: RedisServer,
    pub sentinels: Vec<(std::process::Child, u16, tempfile::TempDir)>,
}

impl Sentinels {
    pub async fn spawn() -> Sentinels {
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

    /// The Sentinels' addresses, as `--redis-url` takes them.
    pub fn url(&self) -> String {
        self.sentinels
            .iter()
            .map(|(_, p, _)| format!("redis://127.0.0.1:{p}"))
            .collect::<Vec<_>>()
            .join(",")
    }

    pub fn master_url(&self) -> String {
        sentinel_master_url(self.sentinels[0].1)
    }
}

/// The current master's URL, as the Sentinel on `port` says.
pub fn sentinel_master_url(port: u16) -> String {
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
