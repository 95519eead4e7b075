//! deploy/haproxy.cfg: its settings, `haproxy -c`, and HAProxy in front of
//! three real nodes.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::process::Command;
use std::time::Duration;

use super::proxy::{Proxy, listening, publish_via, three_nodes};
use super::{config_lines, duration, read, root};
use crate::helpers::*;

/// How long HAProxy takes at most to mark a node down once its /readyz
/// answers 503 (at once): one `inter` until the next check, then `fall - 1`
/// more checks `fastinter` apart.
pub(super) fn haproxy_detection_time() -> Duration {
    let text = read("deploy/haproxy.cfg");
    let lines = config_lines(&text);
    let line = lines
        .iter()
        .find(|l| l.starts_with("default-server ") && l.contains(" check"))
        .expect("a default-server line with checks");
    let words: Vec<&str> = line.split_whitespace().collect();
    let after = |k: &str| {
        words
            .iter()
            .position(|w| *w == k)
            .map(|i| words[i + 1])
            .unwrap_or_else(|| panic!("default-server without {k}"))
    };
    let inter = duration(after("inter"));
    let fastinter = duration(after("fastinter"));
    let fall: u32 = after("fall").parse().unwrap();
    inter + fastinter * (fall - 1)
}

#[test]
fn the_haproxy_config_suits_long_streams_without_stickiness() {
    let text = read("deploy/haproxy.cfg");
    let lines = config_lines(&text);
    let has = |prefix: &str| lines.iter().any(|l| l.starts_with(prefix));
    assert!(has("option httpchk GET /readyz"));
    assert!(has("balance leastconn") || has("balance roundrobin"));
    for banned in [
        "cookie",
        "stick",
        "option http-server-close",
        "option httpclose",
        "compression",
        "option http-buffer-request",
        "balance source",
    ] {
        assert!(!has(banned), "haproxy.cfg has `{banned}`");
    }
    for t in ["client", "server", "tunnel"] {
        let v = lines
            .iter()
            .find_map(|l| l.strip_prefix(&format!("timeout {t} ")))
            .unwrap_or_else(|| panic!("no timeout {t}"));
        assert!(duration(v) >= Duration::from_secs(3600), "timeout {t} {v}");
    }
    // The client's address goes to the nodes ahead of each connection,
    // health checks included (the nodes trust HAProxy: manifests.rs).
    let default_server = lines
        .iter()
        .find(|l| l.starts_with("default-server "))
        .expect("a default-server line");
    for want in ["send-proxy-v2", "check-send-proxy"] {
        assert!(
            default_server.split_whitespace().any(|w| w == want),
            "default-server lacks {want}"
        );
    }
    // The defaults point at the compose services on the server's port.
    for i in 1..=3 {
        let var = format!("NODE{i}_ADDR");
        let default = lines
            .iter()
            .find_map(|l| l.strip_prefix(&format!("presetenv {var} ")))
            .unwrap_or_else(|| panic!("no default for {var}"));
        assert_eq!(default.trim(), format!("node{i}:8080"));
        assert!(
            lines
                .iter()
                .any(|l| l.starts_with("server ") && l.contains(&format!("\"${{{var}}}\"")))
        );
    }
}

/// The variables deploy/haproxy.cfg reads, for a balancer on loopback.
pub(crate) fn haproxy_env(lb: u16, stats: u16, nodes: [String; 3]) -> Vec<(String, String)> {
    let [n1, n2, n3] = nodes;
    vec![
        ("LB_BIND".into(), format!("127.0.0.1:{lb}")),
        ("LB_STATS_BIND".into(), format!("127.0.0.1:{stats}")),
        ("NODE1_ADDR".into(), n1),
        ("NODE2_ADDR".into(), n2),
        ("NODE3_ADDR".into(), n3),
        // Node addresses are IPs here: nothing is resolved. The resolver
        // still gets an address, on loopback.
        ("LB_DNS".into(), format!("127.0.0.1:{}", free_port())),
        ("LB_MAXCONN".into(), "1000".into()),
    ]
}

#[test]
fn haproxy_accepts_its_config_with_the_compose_defaults_and_with_local_nodes() {
    let Some(haproxy) = require_tool("haproxy") else {
        return;
    };
    let check = |env: Vec<(String, String)>| {
        let mut cmd = Command::new(&haproxy);
        cmd.arg("-c").arg("-f").arg(root().join("deploy/haproxy.cfg"));
        for var in [
            "LB_BIND",
            "LB_STATS_BIND",
            "NODE1_ADDR",
            "NODE2_ADDR",
            "NODE3_ADDR",
            "LB_DNS",
            "LB_MAXCONN",
        ] {
            cmd.env_remove(var);
        }
        cmd.envs(env);
        let out = cmd.output().unwrap();
        assert!(
            out.status.success(),
            "haproxy -c: {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    };
    check(Vec::new());
    check(haproxy_env(
        free_port(),
        free_port(),
        ["127.0.0.1:1".into(), "127.0.0.1:2".into(), "127.0.0.1:3".into()],
    ));
}

/// deploy/haproxy.cfg in front of three nodes, listening; returns the
/// proxy (stopped with SIGTERM on drop), its port and its stats port.
pub(crate) async fn haproxy_in_front(haproxy: PathBuf, nodes: &[NodeProcess; 3]) -> (Proxy, u16, u16) {
    let (lb, stats) = (free_port(), free_port());
    let mut cmd = Command::new(haproxy);
    cmd.arg("-db").arg("-f").arg(root().join("deploy/haproxy.cfg"));
    cmd.envs(haproxy_env(
        lb,
        stats,
        nodes.each_ref().map(|n| n.addr.to_string()),
    ));
    let mut proxy = Proxy::spawn(cmd);
    proxy.stop_signal = Some("-TERM");
    listening(lb, &mut proxy).await;
    (proxy, lb, stats)
}

/// The status HAProxy's stats page gives each server of the `ssegate`
/// backend (`UP`, `DOWN`, `UP 1/2`, ..).
pub(crate) async fn haproxy_status(stats: u16) -> BTreeMap<String, String> {
    haproxy_column(stats, "status").await
}

/// One column of HAProxy's stats for each server of the `ssegate` backend
/// (`status`, `check_status`: `L7OK` after a passed HTTP check, ..).
pub(crate) async fn haproxy_column(stats: u16, column: &str) -> BTreeMap<String, String> {
    let Ok(resp) = reqwest::get(format!("http://127.0.0.1:{stats}/stats;csv")).await else {
        return BTreeMap::new();
    };
    let csv = resp.text().await.unwrap_or_default();
    let mut lines = csv.lines();
    let header: Vec<&str> = lines
        .next()
        .unwrap_or("")
        .trim_start_matches("# ")
        .split(',')
        .collect();
    let col = |name: &str| header.iter().position(|h| *h == name);
    let (Some(px), Some(sv), Some(st)) = (col("pxname"), col("svname"), col(column)) else {
        return BTreeMap::new();
    };
    lines
        .map(|l| l.split(',').collect::<Vec<_>>())
        .filter(|f| f.len() > st && f[px] == "ssegate" && f[sv] != "BACKEND")
        .map(|f| (f[sv].to_owned(), f[st].to_owned()))
        .collect()
}

#[tokio::test]
async fn through_haproxy_streams_spread_over_the_nodes_and_a_drained_node_hands_over() {
    let Some(haproxy) = require_tool("haproxy") else {
        return;
    };
    let redis = RedisServer::spawn();
    let mut nodes = three_nodes(&redis);
    let (mut proxy, lb, stats) = haproxy_in_front(haproxy, &nodes).await;
    eventually("HAProxy sees three nodes UP", || async {
        let s = haproxy_status(stats).await;
        s.len() == 3 && s.values().all(|v| v == "UP")
    })
    .await;
    let base = format!("http://127.0.0.1:{lb}");

    // Three streams through the balancer: least connections puts one on
    // each node, and a publish through any node reaches all of them.
    let ch = unique("haproxy");
    let mut streams = Vec::new();
    for _ in 0..3 {
        streams.push(Sse::open(&format!("{base}/v1/stream/{ch}")).await);
    }
    for n in &nodes {
        assert_eq!(n.metric("ssegate_streams_open").await, 1.0, "one stream per node");
    }
    publish_via(&base, &ch, "one").await;
    for s in &mut streams {
        assert_eq!(s.take(1).await, ["one"]);
    }

    // SIGTERM to node1: HAProxy takes it out while it still accepts (its
    // drain delay is not over), so a new stream goes to another node.
    let opened_before = nodes[0].metric("ssegate_streams_opened_total").await;
    nodes[0].signal("-TERM");
    eventually("HAProxy marks node1 DOWN", || async {
        haproxy_status(stats)
            .await
            .get("node1")
            .is_some_and(|s| s == "DOWN")
    })
    .await;
    let ready = reqwest::get(nodes[0].url("/readyz"))
        .await
        .expect("node1 still accepts when HAProxy takes it out: the drain delay is long enough");
    assert_eq!(ready.status(), 503, "node1 is draining");
    let mut late = Sse::open(&format!("{base}/v1/stream/{ch}")).await;
    assert_eq!(
        nodes[0].metric("ssegate_streams_opened_total").await,
        opened_before,
        "a stream opened on the draining node"
    );

    // node1 closes its stream and exits 0; its client reconnects through
    // the balancer with Last-Event-ID and gets what it missed.
    let status = exited(&mut nodes[0].child).await;
    assert!(status.success(), "node1 exited with {status}");
    publish_via(&base, &ch, "two").await;
    let mut ended = Vec::new();
    for (i, s) in streams.iter_mut().enumerate() {
        match s.next().await {
            Some(ev) => assert_eq!(ev.data, "two"),
            None => ended.push(i),
        }
    }
    assert_eq!(ended.len(), 1, "exactly node1's stream ended");
    let last_id = streams[ended[0]].last_id.clone();
    assert!(!last_id.is_empty());
    let mut resumed = Sse::open_with(&format!("{base}/v1/stream/{ch}"), Some(&last_id)).await;
    assert_eq!(resumed.take(1).await, ["two"]);
    assert_eq!(late.take(1).await, ["two"]);
    proxy.assert_running();
}
