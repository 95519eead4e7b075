//! The demo page's state and presence panels, over EventSource and over
//! WebSocket, with two nodes on one Redis: a snapshot stored with the
//! page's button is what a page opened afterwards shows first (then only
//! the events after it), and a page opened on the other node shows up on
//! the first as a join, in its count and its list of clients, and leaves
//! when it closes.

use serde_json::{Value, json};

use super::{Browser, OPEN, js, post};
use crate::helpers::*;

/// The shown events' data, newest first.
const DATA: &str =
    "[...document.querySelectorAll('#events li')].map(li => li.querySelector('.data').textContent)";

/// The presence panel: `[count, [[client, node, connections]...]]`, sorted.
const PRESENCE: &str = "[document.querySelector('#presence-count').textContent, \
     [...document.querySelectorAll('#presence-clients li')] \
       .map(li => [li.dataset.client, li.dataset.node, li.dataset.connections]).sort()]";

/// The joins and leaves shown, oldest first: `[type, client]`.
const LOG: &str = "[...document.querySelectorAll('#presence-log li')].map(li => [li.dataset.type, li.dataset.client]).reverse()";

/// The snapshot panel: `[state, position, events shown before it, text]`.
const SNAPSHOT: &str = "(() => { const at = document.querySelector('#snapshot-at'); \
     return [at.dataset.state, at.dataset.position, at.dataset.eventsBefore ?? null, \
       document.querySelector('#snapshot-box').value]; })()";

/// Waits until `page`'s presence panel shows `want`.
async fn presence_is(b: &mut Browser, page: &str, want: Value) {
    b.wait(
        page,
        &format!("JSON.stringify({PRESENCE}) === {}", js(&want.to_string())),
    )
    .await;
}

#[tokio::test]
async fn the_demo_page_shows_state_and_presence_over_sse_and_websocket() {
    let Some(mut b) = Browser::launch(json!({})).await else {
        return;
    };
    let redis = RedisServer::spawn();
    let url = redis.url();
    let node = |id: &str| {
        NodeProcess::spawn(&[
            "--redis-url",
            &url,
            "--allow-anonymous",
            "--demo",
            "on",
            "--ip-rate",
            "0",
            "--node-id",
            id,
        ])
    };
    let (a, z) = (node("node-a"), node("node-z"));
    for transport in ["sse", "websocket"] {
        let ch = unique("demo-state");
        let page = |n: &NodeProcess| n.url(&format!("/?channel={ch}&transport={transport}"));
        // Page one, on node a: no snapshot yet; it is on the channel.
        b.open("one", &page(&a)).await;
        b.wait("one", OPEN).await;
        if transport == "sse" {
            assert_eq!(
                b.eval("one", "document.querySelector('#stream-url').textContent")
                    .await,
                a.url(&format!("/v1/stream/{ch}?state=1&presence=1"))
            );
        }
        assert_eq!(b.eval("one", SNAPSHOT).await, json!(["none", "", null, ""]));
        presence_is(&mut b, "one", json!(["1", [["anonymous", "node-a", "1"]]])).await;

        // An event, then a snapshot stored with the page's button, then one more event.
        let before = post(&a.url(&format!("/v1/stream/{ch}")), "before the snapshot", None).await;
        b.wait("one", "document.querySelectorAll('#events li').length === 1")
            .await;
        b.fill("one", "#snapshot-box", r#"{"cards":[1,2]}"#).await;
        b.click("one", "#put-snapshot").await;
        let stored = b
            .wait(
                "one",
                "document.querySelector('#snapshot-result').dataset.status === 'ok' \
                 && document.querySelector('#snapshot-result').dataset.position",
            )
            .await;
        assert_eq!(
            stored,
            json!(before),
            "the snapshot is at the channel's newest event"
        );
        let after = post(&a.url(&format!("/v1/stream/{ch}")), "after the snapshot", None).await;

        // Page two, on node z: the snapshot first, then only the event after it.
        let joins_before = b.eval("one", &format!("{LOG}.length")).await;
        b.open("two", &page(&z)).await;
        b.wait("two", OPEN).await;
        b.wait(
            "two",
            "document.querySelector('#snapshot-at').dataset.state === 'received'",
        )
        .await;
        assert_eq!(
            b.eval("two", SNAPSHOT).await,
            json!(["received", before, "0", r#"{"cards":[1,2]}"#]),
            "{transport}: the snapshot came before any event"
        );
        b.wait("two", &format!("{DATA}.length === 1")).await;
        assert_eq!(b.eval("two", DATA).await, json!(["after the snapshot"]));
        assert_eq!(
            b.eval("two", "document.querySelector('#last-id').textContent")
                .await,
            json!(after)
        );

        // Page one hears page two join (node z's first client), and lists both.
        b.wait("one", &format!("{LOG}.length > {joins_before}")).await;
        let log = b.eval("one", LOG).await;
        assert_eq!(
            log.as_array().unwrap().last(),
            Some(&json!(["join", "anonymous"])),
            "{log}"
        );
        presence_is(
            &mut b,
            "one",
            json!(["2", [["anonymous", "node-a", "1"], ["anonymous", "node-z", "1"]]]),
        )
        .await;

        // Page two closes its stream: page one hears it leave.
        b.click("two", "#unsubscribe").await;
        b.wait(
            "one",
            &format!("JSON.stringify({LOG}.at(-1)) === '[\"leave\",\"anonymous\"]'"),
        )
        .await;
        presence_is(&mut b, "one", json!(["1", [["anonymous", "node-a", "1"]]])).await;
    }
}
