//! Nodes killed and drained behind HAProxy while publishing: their
//! clients resume on the other nodes.

use std::time::Duration;

use super::compare;
use crate::deploy::{haproxy_in_front, three_nodes};
use crate::durable::{publish_through_outages, stream_log};
use crate::helpers::*;

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
