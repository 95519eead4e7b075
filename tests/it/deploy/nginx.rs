//! deploy/nginx.conf: its settings, `nginx -t`, and nginx in front of three
//! real nodes.

use std::path::{Path, PathBuf};
use std::process::Command;

use super::proxy::{Proxy, listening, publish_via, three_nodes};
use super::{config_lines, read, root};
use crate::helpers::*;

#[test]
fn the_nginx_config_suits_long_streams_without_stickiness() {
    let text = read("deploy/nginx.conf");
    let lines = config_lines(&text);
    for want in [
        "proxy_buffering off;",
        "proxy_cache off;",
        "proxy_http_version 1.1;",
        "proxy_set_header Connection \"\";",
        "proxy_set_header Last-Event-ID $http_last_event_id;",
        "proxy_set_header X-Forwarded-For $proxy_add_x_forwarded_for;",
        "proxy_read_timeout 1h;",
        "chunked_transfer_encoding on;",
        "proxy_set_header Upgrade $http_upgrade;",
        "proxy_set_header Connection \"upgrade\";",
    ] {
        assert!(lines.contains(&want), "nginx.conf lacks `{want}`");
    }
    for banned in ["ip_hash", "hash ", "sticky", "gzip on"] {
        assert!(
            !lines.iter().any(|l| l.starts_with(banned)),
            "nginx.conf has `{banned}`"
        );
    }
    let servers = lines
        .iter()
        .filter(|l| l.starts_with("server 127.0.0.1:"))
        .count();
    assert_eq!(servers, 3);
}

#[test]
fn nginx_accepts_its_config() {
    let Some(nginx) = require_tool("nginx") else {
        return;
    };
    let out = Command::new(nginx)
        .args(["-t", "-q", "-e", "stderr", "-c"])
        .arg(root().join("deploy/nginx.conf"))
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "nginx -t: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// deploy/nginx.conf with its addresses and paths moved: the listener and
/// the three nodes to the given ports, pid and temporary files to `dir`.
fn local_nginx_conf(dir: &Path, listen: u16, nodes: &[NodeProcess; 3]) -> PathBuf {
    let mut conf = read("deploy/nginx.conf");
    let mut replace = |from: &str, to: &str| {
        assert!(conf.contains(from), "deploy/nginx.conf no longer has `{from}`");
        conf = conf.replace(from, to);
    };
    replace("listen 8080;", &format!("listen 127.0.0.1:{listen};"));
    for (i, n) in nodes.iter().enumerate() {
        replace(
            &format!("server 127.0.0.1:{} ", 8081 + i),
            &format!("server {} ", n.addr),
        );
    }
    replace("/tmp/ssegate-nginx", &dir.join("nginx").to_string_lossy());
    replace("worker_processes auto;", "worker_processes 1;");
    let path = dir.join("nginx.conf");
    std::fs::write(&path, conf).unwrap();
    path
}

#[tokio::test]
async fn through_nginx_events_reach_streams_on_every_node() {
    let Some(nginx) = require_tool("nginx") else {
        return;
    };
    let redis = RedisServer::spawn();
    let nodes = three_nodes(&redis);
    let dir = tempfile::tempdir().unwrap();
    let port = free_port();
    let conf = local_nginx_conf(dir.path(), port, &nodes);
    let mut cmd = Command::new(nginx);
    cmd.args(["-e", "stderr", "-g", "daemon off;", "-c"]).arg(conf);
    let mut proxy = Proxy::spawn(cmd);
    proxy.stop_signal = Some("-TERM");
    listening(port, &mut proxy).await;
    let base = format!("http://127.0.0.1:{port}");

    let ch = unique("nginx");
    let mut streams = Vec::new();
    for _ in 0..3 {
        streams.push(Sse::open(&format!("{base}/v1/stream/{ch}")).await);
    }
    for n in &nodes {
        assert_eq!(n.metric("ssegate_streams_open").await, 1.0, "one stream per node");
    }
    // Each event arrives while the response is still open: nothing buffers.
    for body in ["one", "two"] {
        publish_via(&base, &ch, body).await;
        for s in &mut streams {
            assert_eq!(s.take(1).await, [body]);
        }
    }
    let resumed_from = streams[0].last_id.clone();
    publish_via(&base, &ch, "three").await;
    let mut resumed = Sse::open_with(&format!("{base}/v1/stream/{ch}"), Some(&resumed_from)).await;
    assert_eq!(resumed.take(1).await, ["three"], "Last-Event-ID reaches the node");
    proxy.assert_running();
}

#[tokio::test]
async fn through_nginx_a_websocket_upgrades_and_gets_events() {
    let Some(nginx) = require_tool("nginx") else {
        return;
    };
    let redis = RedisServer::spawn();
    let nodes = three_nodes(&redis);
    let dir = tempfile::tempdir().unwrap();
    let port = free_port();
    let conf = local_nginx_conf(dir.path(), port, &nodes);
    let mut cmd = Command::new(nginx);
    cmd.args(["-e", "stderr", "-g", "daemon off;", "-c"]).arg(conf);
    let mut proxy = Proxy::spawn(cmd);
    proxy.stop_signal = Some("-TERM");
    listening(port, &mut proxy).await;
    let base = format!("http://127.0.0.1:{port}");

    let ch = unique("nginx-ws");
    let addr = format!("127.0.0.1:{port}").parse().unwrap();
    let mut ws = crate::websocket::raw::RawWs::connect(addr, &format!("/v1/ws?channel={ch}")).await;
    assert_eq!(ws.next_json().await["type"], "subscribed");
    let id = publish_via(&base, &ch, "through nginx").await;
    assert_eq!(
        ws.next_json().await,
        serde_json::json!({"type": "event", "channel": ch, "id": id, "data": "through nginx"})
    );
    proxy.assert_running();
}
