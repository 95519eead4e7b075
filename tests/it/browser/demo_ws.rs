//! The demo page's WebSocket mode: the same channel view over the client
//! the node serves at /ssegate.js: subscribe, publish over the socket with
//! the ack's id shown, refusals, and a reconnect that resumes every channel
//! after a restart of the node.

use serde_json::{Value, json};

use super::{Browser, OPEN, fcall_publish, js, post};
use crate::helpers::*;

/// The shown event whose data is `data`: `[type, id, channel, ephemeral]`.
fn shown(data: &str) -> String {
    format!(
        "(() => {{ const li = [...document.querySelectorAll('#events li')] \
           .find(li => li.querySelector('.data').textContent === {}); \
           return li && [li.dataset.type, li.dataset.id, li.dataset.channel, li.dataset.ephemeral === 'true']; }})()",
        js(data)
    )
}

const RESULT: &str = "(() => { const r = document.querySelector('#publish-result'); \
     return r.dataset.status !== 'pending' && r.dataset.status && [r.dataset.status, r.dataset.id, r.textContent]; })()";

#[tokio::test]
async fn the_demo_page_over_websocket_publishes_with_acks_and_resumes_after_a_restart() {
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
        "--ip-rate",
        "0",
        "--drain-delay",
        "0s",
        "--close-spread",
        "0s",
    ];
    let mut node = NodeProcess::spawn(&args);
    let listen = node.addr.to_string();
    let (a, c) = (unique("demo-ws"), unique("demo-ws"));
    b.open(
        "demo",
        &node.url(&format!("/?channel={a},{c}&transport=websocket")),
    )
    .await;
    b.wait("demo", OPEN).await;
    assert_eq!(
        b.eval("demo", "document.querySelector('#websocket').checked")
            .await,
        true
    );
    assert_eq!(
        b.eval("demo", "document.querySelector('#stream-url').textContent")
            .await,
        format!("ws://{listen}/v1/ws ({a}, {c})")
    );
    assert_eq!(
        b.eval("demo", "window.__sse.sources.length").await,
        0,
        "no EventSource in WebSocket mode"
    );

    // A POST from outside, on the first channel.
    let outside = post(&node.url(&format!("/v1/stream/{a}")), "from outside", None).await;
    assert_eq!(
        b.wait("demo", &shown("from outside")).await,
        json!(["message", outside, a, false])
    );

    // The form publishes over the socket: the ack's id, then the event.
    b.fill("demo", "#publish-channel", &c).await;
    b.fill("demo", "#publish-event", "chat").await;
    b.fill("demo", "#publish-data", "over the socket").await;
    b.click("demo", "#publish").await;
    let result = b.wait("demo", RESULT).await;
    let ack = result[1].as_str().unwrap().to_owned();
    assert_eq!(result, json!(["ok", ack, format!("Acknowledged with id {ack}")]));
    assert_eq!(
        b.wait("demo", &shown("over the socket")).await,
        json!(["chat", ack, c, false])
    );

    // Ephemeral: no id. A refused publish shows the gateway's error.
    let _: i64 = redis::cmd("PUBLISH")
        .arg(format!("sse:{{{c}}}"))
        .arg("typing...")
        .query_async(&mut redis.conn().await)
        .await
        .unwrap();
    assert_eq!(
        b.wait("demo", &shown("typing...")).await,
        json!(["message", "", c, true])
    );
    b.fill("demo", "#publish-event", "ssegate.mine").await;
    b.click("demo", "#publish").await;
    let refused = b.wait("demo", RESULT).await;
    assert_eq!(refused[0], "error");
    assert!(
        refused[2].as_str().unwrap().starts_with("invalid_envelope: "),
        "{refused}"
    );

    // The node drains (close 1001) and a new one starts on its address;
    // what was published meanwhile arrives once, then live events.
    b.eval(
        "demo",
        "window.states = []; const el = document.querySelector('#state'); \
         new MutationObserver(() => window.states.push(el.dataset.state)) \
           .observe(el, {attributes: true, attributeFilter: ['data-state']}); true",
    )
    .await;
    node.signal("-TERM");
    assert!(exited(&mut node.child).await.success());
    b.wait("demo", "window.states.includes('reconnecting')").await;
    let away_a = fcall_publish(&redis, &a, "while away on a").await;
    let away_c = fcall_publish(&redis, &c, "while away on c").await;
    let node = NodeProcess::spawn_on(&listen, &args, &[]);
    b.wait("demo", OPEN).await;
    assert_eq!(
        b.wait("demo", &shown("while away on a")).await,
        json!(["message", away_a, a, false])
    );
    assert_eq!(
        b.wait("demo", &shown("while away on c")).await,
        json!(["message", away_c, c, false])
    );
    let back = post(&node.url(&format!("/v1/stream/{a}")), "back live", None).await;
    assert_eq!(
        b.wait("demo", &shown("back live")).await,
        json!(["message", back, a, false])
    );
    let states: Value = b
        .eval("demo", "window.states.filter((s, i, all) => s !== all[i - 1])")
        .await;
    assert_eq!(states, json!(["reconnecting", "open"]), "the page's states");
    let ids: Vec<String> = serde_json::from_value(
        b.eval(
            "demo",
            "[...document.querySelectorAll('#events li')].map(li => li.dataset.id).filter(Boolean).reverse()",
        )
        .await,
    )
    .unwrap();
    // Each event once, each channel in order; the two channels resume
    // independently, so their missed events may arrive either way round.
    let mut resumed = ids.get(2..4).map(<[String]>::to_vec).unwrap_or_default();
    resumed.sort_by_key(|id| id == &away_c);
    assert_eq!(
        (ids.len(), ids.get(..2), &resumed[..], ids.last()),
        (5, Some(&[outside, ack][..]), &[away_a, away_c][..], Some(&back)),
        "each event once: {ids:?}"
    );
    assert_eq!(
        b.eval("demo", "document.querySelector('#last-id').textContent")
            .await,
        json!(back)
    );

    // An `after` the node cannot take: the page shows the refusal.
    b.fill("demo", "#channel", &a).await;
    b.fill("demo", "#resume", "not-a-cursor").await;
    b.click("demo", "#subscribe").await;
    let why = b
        .wait(
            "demo",
            "document.querySelector('#notice').dataset.kind === 'error' && document.querySelector('#notice').dataset.code",
        )
        .await;
    assert_eq!(why, "invalid_after");
    b.wait(
        "demo",
        "document.querySelector('#state').dataset.state === 'closed'",
    )
    .await;

    // Back to EventSource with the toggle: the page's own stream again.
    b.fill("demo", "#resume", "").await;
    b.click("demo", "#websocket").await;
    b.wait("demo", OPEN).await;
    assert_eq!(
        b.eval("demo", "document.querySelector('#stream-url').textContent")
            .await,
        node.url(&format!("/v1/stream/{a}?state=1&presence=1"))
    );
    let sse = post(&node.url(&format!("/v1/stream/{a}")), "over sse", None).await;
    assert_eq!(b.wait("demo", &shown("over sse")).await[1], json!(sse));
}
