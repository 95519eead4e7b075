//! A page's own EventSource survives the SIGKILL of its node behind
//! HAProxy and ends with every durable event exactly once.

use std::path::Path;
use std::process::{Child, Command, Stdio};

use serde_json::json;

use super::{Browser, OPEN, fcall_publish, js, root};
use crate::helpers::*;

pub(super) struct Balancer {
    child: Child,
    log: tempfile::NamedTempFile,
    pub(super) port: u16,
    stats: u16,
}

impl Balancer {
    /// deploy/haproxy.cfg in front of the given node addresses (three slots;
    /// a slot nobody listens on stays DOWN).
    pub(super) fn spawn(haproxy: &Path, nodes: [String; 3]) -> Balancer {
        let (port, stats) = (free_port(), free_port());
        let log = tempfile::NamedTempFile::new().unwrap();
        let out = log.reopen().unwrap();
        let child = Command::new(haproxy)
            .arg("-db")
            .arg("-f")
            .arg(root().join("deploy/haproxy.cfg"))
            .envs(crate::deploy::haproxy_env(port, stats, nodes))
            .stdin(Stdio::null())
            .stdout(out.try_clone().unwrap())
            .stderr(out)
            .spawn()
            .unwrap();
        Balancer {
            child,
            log,
            port,
            stats,
        }
    }

    fn log(&self) -> String {
        std::fs::read_to_string(self.log.path()).unwrap_or_default()
    }

    /// Each server's status on the stats page (`UP`, `DOWN`, ..).
    pub(super) async fn status(&self) -> Vec<(String, String)> {
        crate::deploy::haproxy_status(self.stats)
            .await
            .into_iter()
            .collect()
    }
}

impl Drop for Balancer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[tokio::test]
async fn a_page_reconnects_by_itself_after_its_node_is_killed_and_gets_every_event_once() {
    let Some(haproxy) = require_tool("haproxy") else {
        return;
    };
    let Some(mut b) = Browser::launch(json!({})).await else {
        return;
    };
    let redis = RedisServer::spawn();
    let url = redis.url();
    let args = [
        "--redis-url",
        &url,
        "--allow-anonymous",
        "--demo",
        "on",
        // deploy/haproxy.cfg names each client in a PROXY header.
        "--trusted-proxies",
        "127.0.0.1",
        "--ip-rate",
        "0",
        "--retry",
        "500ms",
    ];
    let nodes = [NodeProcess::spawn(&args), NodeProcess::spawn(&args)];
    let nobody = format!("127.0.0.1:{}", free_port());
    let lb = Balancer::spawn(
        &haproxy,
        [nodes[0].addr.to_string(), nodes[1].addr.to_string(), nobody],
    );
    eventually("HAProxy sees node1 and node2 UP and node3 DOWN", || async {
        let s = lb.status().await;
        s.len() == 3 && s[0].1 == "UP" && s[1].1 == "UP" && s[2].1.starts_with("DOWN")
    })
    .await;

    // The demo page, loaded through the balancer, subscribes at once.
    let ch = unique("failover");
    b.open("page", &format!("http://127.0.0.1:{}/?channel={ch}", lb.port))
        .await;
    b.wait("page", OPEN).await;
    eventually("the stream is on one node", || async {
        nodes[0].metric("ssegate_streams_open").await + nodes[1].metric("ssegate_streams_open").await == 1.0
    })
    .await;
    let (victim, survivor) = if nodes[0].metric("ssegate_streams_open").await == 1.0 {
        (&nodes[0], &nodes[1])
    } else {
        (&nodes[1], &nodes[0])
    };

    let received = |n: usize| {
        format!("window.__sse.events.filter(e => e.source === 0 && e.type === 'message').length >= {n}")
    };
    for i in 0..10 {
        fcall_publish(&redis, &ch, &format!("before-{i}")).await;
    }
    b.wait("page", &received(10)).await;

    // SIGKILL: no drain, no goodbye. The browser sees the stream drop and
    // reconnects by itself through the balancer to the other node.
    b.eval(
        "page",
        "window.states = []; const el = document.querySelector('#state'); \
         new MutationObserver(() => window.states.push(el.dataset.state)) \
           .observe(el, {attributes: true, attributeFilter: ['data-state']}); true",
    )
    .await;
    victim.signal("-KILL");
    b.wait("page", "window.__sse.sources[0].errors >= 1").await;
    for i in 0..10 {
        fcall_publish(&redis, &ch, &format!("during-{i}")).await;
    }
    b.wait("page", "window.__sse.sources[0].opens >= 2").await;
    let states = b
        .eval("page", "window.states.filter((s, i, all) => s !== all[i - 1])")
        .await;
    assert_eq!(states, json!(["reconnecting", "open"]), "the page's states");
    let mut last = String::new();
    for i in 0..10 {
        last = fcall_publish(&redis, &ch, &format!("after-{i}")).await;
    }
    b.wait(
        "page",
        &format!("window.__sse.events.some(e => e.id === {})", js(&last)),
    )
    .await;

    // Exactly the stream's history, in order: nothing lost, nothing twice.
    let history: redis::streams::StreamRangeReply = redis::cmd("XRANGE")
        .arg(format!("sse:{{{ch}}}:log"))
        .arg("-")
        .arg("+")
        .query_async(&mut redis.conn().await)
        .await
        .unwrap();
    let want: Vec<String> = history
        .ids
        .iter()
        .map(|e| format!("message {} {}", e.id, e.get::<String>("p").unwrap()))
        .collect();
    assert_eq!(want.len(), 30);
    let got = b
        .eval(
            "page",
            // The demo page also asks for joins and leaves (events without
            // an id, never in history): the history is the `message` events.
            "window.__sse.events.filter(e => e.source === 0 && e.type === 'message').map(e => `${e.type} ${e.id} ${e.data}`)",
        )
        .await;
    let got: Vec<String> = serde_json::from_value(got).unwrap();
    assert_eq!(got, want, "events the page received (left) vs XRANGE (right)");

    // One EventSource all along: the browser's reconnect, not the page's.
    assert_eq!(b.eval("page", "window.__sse.sources.length").await, 1);
    assert_eq!(survivor.metric("ssegate_streams_open").await, 1.0);
    let status = lb.status().await;
    assert!(
        status.iter().filter(|(_, s)| s == "UP").count() >= 1,
        "{status:?}\n{}",
        lb.log()
    );
}
