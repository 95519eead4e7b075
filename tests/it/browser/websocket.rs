//! Chromium's own `WebSocket`, through deploy/haproxy.cfg in front of three
//! nodes on one Redis: a page that loads the client from the gateway
//! (`/ssegate.js`, another origin, through CORS) and subscribes two
//! channels receives every durable event exactly once and in order per
//! channel while one node is SIGKILLed and another drained with SIGTERM,
//! with a publisher POSTing through HAProxy all along.

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use serde_json::{Value, json};

use super::{Browser, js};
use crate::deploy::{haproxy_in_front, haproxy_status};
use crate::durable::stream_log;
use crate::helpers::*;

/// POSTs to the channels in turn through the balancer until told to stop,
/// retrying a publish that failed (its node died under it) with the same
/// Idempotency-Key, so that it is in the history once either way.
async fn publisher(
    base: String,
    channels: [String; 2],
    sent: Arc<AtomicUsize>,
    mut stop: tokio::sync::watch::Receiver<bool>,
) {
    let http = reqwest::Client::new();
    for i in 0.. {
        if *stop.borrow() {
            return;
        }
        let ch = &channels[i % 2];
        let key = format!("{ch}-{i}");
        loop {
            let resp = http
                .post(format!("{base}/v1/stream/{ch}"))
                .header("Idempotency-Key", &key)
                .body(format!("{ch}/{i}"))
                .send()
                .await;
            match resp {
                Ok(r) if r.status() == 201 => break,
                // A node that went away under the request, or a balancer
                // that has not noticed yet: the same publish again.
                _ => tokio::time::sleep(Duration::from_millis(20)).await,
            }
        }
        sent.fetch_add(1, Ordering::Relaxed);
        // Pacing: publishing spans the faults.
        tokio::select! {
            _ = tokio::time::sleep(Duration::from_millis(15)) => {}
            _ = stop.changed() => {}
        }
    }
}

/// The node that holds the page's socket, among those still running.
async fn holder(nodes: &[NodeProcess; 3], alive: &[usize]) -> usize {
    let found = std::sync::Mutex::new(None);
    eventually("one node holds the page's socket", || async {
        let mut on = Vec::new();
        for &i in alive {
            if nodes[i].metric("ssegate_websockets_open").await == 1.0 {
                on.push(i);
            }
        }
        *found.lock().unwrap() = on.first().copied();
        on.len() == 1
    })
    .await;
    found.into_inner().unwrap().unwrap()
}

#[tokio::test]
async fn a_page_on_websocket_behind_haproxy_gets_every_event_once_through_a_kill_and_a_drain() {
    let Some(haproxy) = require_tool("haproxy") else {
        return;
    };
    let Some(mut b) = Browser::launch(json!({})).await else {
        return;
    };
    let app = b.serve().await;
    let page_origin = format!("http://localhost:{app}");
    let redis = RedisServer::spawn();
    let url = redis.url();
    let args = [
        "--redis-url",
        &url,
        "--allow-anonymous",
        "--cors-origin",
        &page_origin,
        "--ip-rate",
        "0",
        // HAProxy (deploy/haproxy.cfg) sends PROXY headers from here.
        "--trusted-proxies",
        "127.0.0.1",
        // Long enough for HAProxy to take a draining node out before it
        // closes its sockets (see deploy/haproxy.cfg).
        "--drain-delay",
        "3s",
        "--close-spread",
        "0s",
        "--shutdown-grace",
        "8s",
    ];
    let mut nodes = [
        NodeProcess::spawn(&args),
        NodeProcess::spawn(&args),
        NodeProcess::spawn(&args),
    ];
    let (mut proxy, lb, stats) = haproxy_in_front(haproxy, &nodes).await;
    eventually("HAProxy sees three nodes UP", || async {
        let s = haproxy_status(stats).await;
        s.len() == 3 && s.values().all(|v| v == "UP")
    })
    .await;
    let gateway = format!("http://127.0.0.1:{lb}");

    // The page: the client from the gateway, Chromium's WebSocket, two
    // channels; every event's id is recorded per channel.
    let (a, c) = (unique("ws-a"), unique("ws-c"));
    b.open("page", &format!("{page_origin}/")).await;
    b.eval(
        "page",
        &format!(
            "(async () => {{
               const {{ connect }} = await import({script});
               window.got = {{ [{a}]: [], [{c}]: [] }};
               window.closes = [];
               window.opens = 0;
               const client = connect({gateway}, {{ backoff: {{ initial: 100, max: 1000 }} }});
               client.on('event', (e) => window.got[e.channel].push(e.id));
               client.on('close', (e) => window.closes.push(e.code));
               client.on('open', () => window.opens++);
               window.client = client;
               await client.subscribe({a});
               await client.subscribe({c});
               return client.transport;
             }})()",
            script = js(&format!("{gateway}/ssegate.js")),
            gateway = js(&gateway),
            a = js(&a),
            c = js(&c),
        ),
    )
    .await;
    assert_eq!(b.eval("page", "window.client.transport").await, "websocket");
    let received = |n: usize| format!("Object.values(window.got).flat().length >= {n}");

    let sent = Arc::new(AtomicUsize::new(0));
    let (stop, stop_rx) = tokio::sync::watch::channel(false);
    let publishing = tokio::spawn(publisher(
        gateway.clone(),
        [a.clone(), c.clone()],
        sent.clone(),
        stop_rx,
    ));
    b.wait("page", &received(20)).await;

    // SIGKILL: the socket breaks without a close frame (1006); the client
    // reconnects through HAProxy to another node and resumes both channels.
    let killed = holder(&nodes, &[0, 1, 2]).await;
    nodes[killed].signal("-KILL");
    b.wait("page", "window.opens >= 2").await;
    let seen = sent.load(Ordering::Relaxed);
    b.wait("page", &received(seen + 20)).await;

    // SIGTERM: the node drains, HAProxy takes it out, and its sockets are
    // closed with 1001; the client goes to the last node and resumes.
    let alive: Vec<usize> = (0..3).filter(|i| *i != killed).collect();
    let drained = holder(&nodes, &alive).await;
    nodes[drained].signal("-TERM");
    let status = exited(&mut nodes[drained].child).await;
    assert!(status.success(), "the drained node exits 0: {status:?}");
    b.wait("page", "window.opens >= 3").await;
    let seen = sent.load(Ordering::Relaxed);
    b.wait("page", &received(seen + 20)).await;
    stop.send(true).unwrap();
    publishing.await.unwrap();

    // Exactly each channel's history, in order: nothing lost, nothing twice.
    let mut want = HashMap::new();
    for ch in [&a, &c] {
        let log = stream_log(&redis, ch).await;
        b.wait(
            "page",
            &format!("window.got[{}].includes({})", js(ch), js(log.last().unwrap())),
        )
        .await;
        want.insert(ch.clone(), log);
    }
    let got: HashMap<String, Vec<String>> =
        serde_json::from_value(b.eval("page", "window.got").await).unwrap();
    for ch in [&a, &c] {
        assert_eq!(
            got[ch], want[ch],
            "{ch}: ids the page received (left) vs XRANGE (right)"
        );
    }
    let total = want.values().map(Vec::len).sum::<usize>();
    assert_eq!(
        total,
        sent.load(Ordering::Relaxed),
        "one history entry per publish"
    );
    assert_eq!(
        b.eval("page", "window.closes").await,
        json!([1006, 1001]),
        "the kill breaks the socket, the drain closes it"
    );
    let last = holder(&nodes, &[3 - killed - drained]).await;
    assert_eq!(last, 3 - killed - drained);
    let _: Value = b.eval("page", "window.client.close(), true").await;
    proxy.assert_running();
    eprintln!(
        "websocket behind haproxy: {total} events over two channels, one kill and one drain, lost 0, duplicated 0"
    );
}
