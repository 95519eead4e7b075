//! Real HAProxy in front of real nodes: with the PROXY protocol
//! (deploy/haproxy.cfg, `send-proxy-v2`) and in http mode with
//! `option forwardfor` only. Either way one client past its rate gets 429
//! while another client through the same HAProxy is served, and the nodes
//! log the clients' addresses.

use std::process::Command;

use crate::deploy::{Proxy, haproxy_column, haproxy_in_front, listening};

use super::*;

/// `count` requests for `/healthz` through `base` from `from`, each naming
/// a made-up client in X-Forwarded-For; the number answered 429.
async fn limited_of(from: &str, base: &str, count: usize) -> usize {
    let client = client_from(from);
    let mut limited = 0;
    for i in 0..count {
        let resp = client
            .get(format!("{base}/healthz"))
            .header("X-Forwarded-For", format!("127.0.0.{}", 50 + i))
            .send()
            .await
            .unwrap();
        match resp.status().as_u16() {
            200 => {}
            429 => {
                assert!(resp.headers().contains_key("retry-after"));
                let body: serde_json::Value = resp.json().await.unwrap();
                assert_eq!(body["error"], "rate_limited");
                limited += 1;
            }
            other => panic!("request {i} from {from}: {other}"),
        }
    }
    limited
}

/// Another client is served, a request and a stream.
async fn still_served(from: &str, base: &str, channel: &str) -> Sse {
    let client = client_from(from);
    let health = client.get(format!("{base}/healthz")).send().await.unwrap();
    assert_eq!(health.status(), 200, "{from} is served");
    let resp = client
        .get(format!("{base}/v1/stream/{channel}"))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200, "{from}'s stream");
    Sse::from_response(resp)
}

fn stream_opened_for(client: &'static str) -> impl Fn(&Value) -> bool {
    move |v| v["message"] == "stream opened" && field(v, "client") == Some(client)
}

#[tokio::test]
async fn through_haproxy_with_send_proxy_v2_each_client_has_its_own_rate() {
    let Some(haproxy) = require_tool("haproxy") else {
        return;
    };
    let redis = RedisServer::spawn();
    let url = redis.url();
    let mut args = vec!["--redis-url", url.as_str(), "--allow-anonymous"];
    args.extend(BEHIND_PROXY);
    let mut nodes = [(); 3].map(|_| NodeProcess::spawn_env(&args, DEBUG));
    let (mut proxy, lb, stats) = haproxy_in_front(haproxy, &nodes).await;
    // The health checks carry a PROXY header too (LOCAL), and pass.
    eventually("HAProxy's health checks pass on three nodes", || async {
        let s = haproxy_column(stats, "check_status").await;
        s.len() == 3 && s.values().all(|v| v == "L7OK")
    })
    .await;
    let base = format!("http://127.0.0.1:{lb}");

    // 127.0.0.2 opens connection after connection, each relayed with a
    // PROXY header naming it: past 3 per node, and whatever it claims in
    // X-Forwarded-For, it is refused.
    let limited = limited_of("127.0.0.2", &base, 30).await;
    assert!(limited >= 5, "only {limited} of 30 were limited");
    let _s = still_served("127.0.0.3", &base, &unique("proxied")).await;

    let [a, b, c] = &mut nodes;
    let line = wait_for_log(
        &mut [a, b, c],
        "a connection of 127.0.0.2 relayed by HAProxy",
        |v| v["message"] == "connection" && v["client"] == "127.0.0.2",
    );
    assert!(field(&line, "peer").unwrap().starts_with("127.0.0.1:"), "{line}");
    wait_for_log(
        &mut [a, b, c],
        "127.0.0.3's stream",
        stream_opened_for("127.0.0.3"),
    );
    proxy.assert_running();
}

#[tokio::test]
async fn through_haproxy_in_http_mode_forwarded_clients_are_limited_per_request() {
    let Some(haproxy) = require_tool("haproxy") else {
        return;
    };
    let mut node = NodeProcess::spawn_env(BEHIND_PROXY, DEBUG);
    let lb = free_port();
    let dir = tempfile::tempdir().unwrap();
    let cfg = dir.path().join("haproxy.cfg");
    // HAProxy keeps its connections to the node open and shares them
    // among clients: a client's requests do not come with connections of
    // their own.
    let text = format!(
        "defaults\n  mode http\n  timeout connect 2s\n  timeout client 30s\n  timeout server 30s\n\
         frontend fe\n  bind 127.0.0.1:{lb}\n  option forwardfor\n  default_backend nodes\n\
         backend nodes\n  http-reuse always\n  server node1 {}\n",
        node.addr
    );
    std::fs::write(&cfg, text).unwrap();
    let mut cmd = Command::new(haproxy);
    cmd.arg("-db").arg("-f").arg(&cfg);
    let mut proxy = Proxy::spawn(cmd);
    proxy.stop_signal = Some("-TERM");
    listening(lb, &mut proxy).await;
    let base = format!("http://127.0.0.1:{lb}");

    let limited = limited_of("127.0.0.2", &base, 12).await;
    assert!(limited >= 5, "only {limited} of 12 were limited");
    let channel = unique("forwarded");
    let mut s = still_served("127.0.0.3", &base, &channel).await;
    let published = client_from("127.0.0.3")
        .post(format!("{base}/v1/stream/{channel}"))
        .body("from 127.0.0.3")
        .send()
        .await
        .unwrap();
    assert_eq!(published.status(), 201);
    assert_eq!(s.take(1).await, ["from 127.0.0.3"]);

    let line = wait_for_log(&mut [&mut node], "127.0.0.2 limited per request", |v| {
        v["message"] == "request rate limited" && v["client"] == "127.0.0.2"
    });
    assert_eq!(field(&line, "peer"), Some("127.0.0.1"), "{line}");
    wait_for_log(
        &mut [&mut node],
        "127.0.0.3's stream",
        stream_opened_for("127.0.0.3"),
    );
    wait_for_log(&mut [&mut node], "127.0.0.3's publish", |v| {
        v["message"] == "published" && field(v, "client") == Some("127.0.0.3")
    });
    proxy.assert_running();
}
