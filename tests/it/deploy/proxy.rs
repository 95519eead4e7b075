//! What the HAProxy and nginx runs share: a proxy process, three nodes
//! behind it, a publish through it.

use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use crate::helpers::*;

/// A process that logs to a file, stopped on drop.
pub(crate) struct Proxy {
    child: Child,
    log: tempfile::NamedTempFile,
    /// Signal for a graceful stop (`-TERM`), then SIGKILL.
    pub(crate) stop_signal: Option<&'static str>,
}

impl Proxy {
    pub(crate) fn spawn(mut cmd: Command) -> Proxy {
        let log = tempfile::NamedTempFile::new().unwrap();
        // One open file for both streams, so they share its offset.
        let out = log.reopen().unwrap();
        let child = cmd
            .stdin(Stdio::null())
            .stdout(out.try_clone().unwrap())
            .stderr(out)
            .spawn()
            .unwrap();
        Proxy {
            child,
            log,
            stop_signal: None,
        }
    }

    pub(crate) fn log(&self) -> String {
        std::fs::read_to_string(self.log.path()).unwrap_or_default()
    }

    pub(crate) fn assert_running(&mut self) {
        if let Some(status) = self.child.try_wait().unwrap() {
            panic!("the proxy exited ({status}):\n{}", self.log());
        }
    }
}

impl Drop for Proxy {
    fn drop(&mut self) {
        let grace = match self.stop_signal {
            Some(sig) => {
                let _ = Command::new("kill")
                    .args([sig, &self.child.id().to_string()])
                    .status();
                Duration::from_secs(5)
            }
            None => Duration::ZERO,
        };
        wait_or_kill(&mut self.child, grace);
    }
}

/// its log if it exits first.
pub(crate) async fn listening(port: u16, proxy: &mut Proxy) {
    let deadline = Instant::now() + WAIT;
    while tokio::net::TcpStream::connect(("127.0.0.1", port)).await.is_err() {
        proxy.assert_running();
        assert!(
            Instant::now() < deadline,
            "the proxy does not listen:\n{}",
            proxy.log()
        );
        // Polling: the proxy says nothing when it starts listening.
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

pub(crate) async fn publish_via(base: &str, channel: &str, body: &str) -> String {
    let resp = reqwest::Client::new()
        .post(format!("{base}/v1/stream/{channel}"))
        .body(body.to_owned())
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 201, "publish through the balancer");
    let v: serde_json::Value = resp.json().await.unwrap();
    v["id"].as_str().unwrap().to_owned()
}

/// Three nodes on one Redis, as in docker-compose.yml, with a drain long
/// enough to watch. They trust the balancer in front of them, on 127.0.0.1
/// (deploy/haproxy.cfg sends PROXY headers).
pub(crate) fn three_nodes(redis: &RedisServer) -> [NodeProcess; 3] {
    let url = redis.url();
    let args = [
        "--redis-url",
        url.as_str(),
        "--allow-anonymous",
        "--trusted-proxies",
        "127.0.0.1",
        "--ip-rate",
        "0",
        "--drain-delay",
        "3s",
        "--close-spread",
        "0s",
        "--shutdown-grace",
        "8s",
    ];
    [
        NodeProcess::spawn(&args),
        NodeProcess::spawn(&args),
        NodeProcess::spawn(&args),
    ]
}
