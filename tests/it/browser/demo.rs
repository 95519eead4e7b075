//! The demo page: what Redis and HTTP publish shows up, with ids, names,
//! resets and refusals; out of the box it works, and its screenshot is
//! docs/demo.png.

use serde_json::{Value, json};

use super::{Browser, OPEN, fcall_publish, js, post, root};
use crate::helpers::*;

/// The demo page's event list, newest first: `[type, id, ephemeral, data]`.
const SHOWN: &str = "[...document.querySelectorAll('#events li')].map(li => \
     [li.dataset.type, li.dataset.id, li.dataset.ephemeral === 'true', li.querySelector('.data').textContent])";

fn shown_with_data(data: &str) -> String {
    format!(
        "[...document.querySelectorAll('#events li')].find(li => li.querySelector('.data').textContent === {})?.dataset.id",
        js(data)
    )
}

#[tokio::test]
async fn the_demo_page_shows_events_published_through_redis_and_through_http() {
    let Some(mut b) = Browser::launch(json!({})).await else {
        return;
    };
    let redis = RedisServer::spawn();
    let url = redis.url();
    let node = NodeProcess::spawn(&[
        "--redis-url",
        &url,
        "--allow-anonymous",
        "--demo",
        "on",
        "--ip-rate",
        "0",
        "--retry",
        "500ms",
    ]);

    // The page subscribes to "demo" as it loads.
    b.open("demo", &node.url("/")).await;
    b.wait("demo", OPEN).await;
    let stream = b
        .eval("demo", "document.querySelector('#stream-url').textContent")
        .await;
    assert_eq!(stream, node.url("/v1/stream/demo?state=1&presence=1"));

    // Another channel, with the named event "order" shown.
    let ch = unique("page");
    b.fill("demo", "#channel", &ch).await;
    b.fill("demo", "#event-types", "order").await;
    b.click("demo", "#subscribe").await;
    b.wait("demo", OPEN).await;
    assert_eq!(
        b.eval("demo", "document.querySelector('#stream-url').textContent")
            .await,
        node.url(&format!("/v1/stream/{ch}?state=1&presence=1"))
    );

    // Durable through Redis (the Redis Function), with an event name.
    let fcall_id = fcall_publish(&redis, &ch, r#"{"event":"order","data":{"id":7}}"#).await;
    assert_eq!(b.wait("demo", &shown_with_data(r#"{"id":7}"#)).await, fcall_id);

    // Ephemeral through Redis pub/sub: no id of its own.
    let _: i64 = redis::cmd("PUBLISH")
        .arg(format!("sse:{{{ch}}}"))
        .arg("typing...")
        .query_async(&mut redis.conn().await)
        .await
        .unwrap();
    b.wait("demo", &shown_with_data("typing...")).await;

    // The page's own form: the answer's id, then the event with that id.
    b.fill("demo", "#publish-event", "").await;
    b.fill("demo", "#publish-data", "from the form").await;
    b.click("demo", "#publish").await;
    let form_id = b
        .wait(
            "demo",
            "document.querySelector('#publish-result').dataset.status === 'ok' \
             && document.querySelector('#publish-result').dataset.id",
        )
        .await;
    assert_eq!(b.wait("demo", &shown_with_data("from the form")).await, form_id);

    // A refused publish shows the JSON error.
    b.fill("demo", "#publish-event", "ssegate.mine").await;
    b.click("demo", "#publish").await;
    let refused = b
        .wait(
            "demo",
            "document.querySelector('#publish-result').dataset.status === 'error' \
             && document.querySelector('#publish-result').textContent",
        )
        .await;
    let refused = refused.as_str().unwrap();
    assert!(
        refused.starts_with("HTTP 400: ") && refused.contains(r#""error":"invalid_envelope""#),
        "{refused}"
    );

    // A POST from outside the page.
    let post_id = post(&node.url(&format!("/v1/stream/{ch}")), "from the test", None).await;
    assert_eq!(b.wait("demo", &shown_with_data("from the test")).await, post_id);

    // Newest first, each with its id and name; nothing else.
    let shown = b.eval("demo", SHOWN).await;
    assert_eq!(
        shown,
        json!([
            ["message", post_id, false, "from the test"],
            ["message", form_id, false, "from the form"],
            ["message", fcall_id, true, "typing..."],
            ["order", fcall_id, false, r#"{"id":7}"#],
        ])
    );
    assert_eq!(
        b.eval("demo", "document.querySelector('#event-count').textContent")
            .await,
        "4"
    );
    assert_eq!(
        b.eval("demo", "document.querySelector('#last-id').textContent")
            .await,
        json!(post_id)
    );

    // A cursor the node cannot resume from: the page shows the reset notice.
    b.fill("demo", "#resume", "not-a-cursor").await;
    b.click("demo", "#subscribe").await;
    let reason = b
        .wait(
            "demo",
            "!document.querySelector('#notice').hidden && document.querySelector('#notice').dataset.reason",
        )
        .await;
    assert_eq!(reason, "malformed_cursor");
    let shown = b.eval("demo", SHOWN).await;
    assert_eq!(shown[0][0], "ssegate.reset", "{shown}");
    let reset: Value = serde_json::from_str(shown[0][3].as_str().unwrap()).unwrap();
    assert_eq!(reset, json!({"channels": [ch], "reason": "malformed_cursor"}));

    // Two channels on one stream: each event's id is the cursor over both.
    let (a, c) = (unique("multi"), unique("multi"));
    b.fill("demo", "#resume", "").await;
    b.fill("demo", "#channel", &format!("{a}, {c}")).await;
    b.click("demo", "#subscribe").await;
    b.wait("demo", OPEN).await;
    assert_eq!(
        b.eval("demo", "document.querySelector('#stream-url').textContent")
            .await,
        node.url(&format!("/v1/stream?channel={a}&channel={c}&presence=1"))
    );
    let on_a = post(&node.url(&format!("/v1/stream/{a}")), "on a", None).await;
    assert_eq!(
        b.wait("demo", &shown_with_data("on a")).await,
        format!("{on_a},0-0")
    );
    let on_c = post(&node.url(&format!("/v1/stream/{c}")), "on c", None).await;
    assert_eq!(
        b.wait("demo", &shown_with_data("on c")).await,
        format!("{on_a},{on_c}")
    );

    // A stream the node refuses (HTTP 400): EventSource does not retry; the
    // page says why and stays closed.
    let many: Vec<String> = (0..17).map(|i| format!("c{i}")).collect();
    b.fill("demo", "#channel", &many.join(",")).await;
    b.click("demo", "#subscribe").await;
    let why = b
        .wait(
            "demo",
            "document.querySelector('#notice').dataset.kind === 'error' \
             && document.querySelector('#notice').textContent",
        )
        .await;
    let why = why.as_str().unwrap();
    assert!(
        why.starts_with("HTTP 400: ") && why.contains(r#""error":"too_many_channels""#),
        "{why}"
    );
    assert_eq!(
        b.eval("demo", "document.querySelector('#state').dataset.state")
            .await,
        "closed"
    );
}

#[tokio::test]
async fn the_demo_page_works_out_of_the_box_and_its_screenshot_is_docs_demo_png() {
    let Some(mut b) = Browser::launch(json!({})).await else {
        return;
    };
    // As `cargo run --release` starts it: embedded broker, demo page on
    // (with a fixed node name, which the presence panel shows).
    let node = NodeProcess::spawn(&["--ip-rate", "0", "--node-id", "node-1"]);
    let origin = format!("http://localhost:{}", node.addr.port());
    b.open("demo", &format!("{origin}/")).await;
    b.wait("demo", OPEN).await;
    assert_eq!(
        b.eval("demo", "document.querySelector('#channel').value").await,
        "demo"
    );
    assert_eq!(
        b.eval("demo", "document.querySelector('#curl-hint').textContent")
            .await,
        format!("curl -X POST {origin}/v1/stream/demo -d 'hello'")
    );

    b.fill("demo", "#event-types", "order").await;
    let demo = node.url("/v1/stream/demo");
    post(&demo, "hello, world", None).await;
    post(
        &demo,
        r#"{"event":"order","data":{"id":7,"status":"shipped"}}"#,
        None,
    )
    .await;
    post(&demo, "line one\nline two", None).await;
    b.fill("demo", "#publish-event", "chat").await;
    b.fill("demo", "#publish-data", r#"{"user":"ada","text":"hi there"}"#)
        .await;
    b.click("demo", "#publish").await;
    b.wait("demo", "document.querySelectorAll('#events li').length === 4")
        .await;
    let shown = b.eval("demo", SHOWN).await;
    let types: Vec<&str> = shown
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e[0].as_str().unwrap())
        .collect();
    assert_eq!(types, ["chat", "message", "order", "message"]);
    assert_eq!(shown[1][3], "line one\nline two");
    assert_eq!(shown[2][3], r#"{"id":7,"status":"shipped"}"#);

    // The screenshot goes to target/ on every run; docs/demo.png is updated
    // with SSEGATE_UPDATE_SCREENSHOT=1 (its ids and times differ per run).
    let path = root().join("target/demo.png");
    std::fs::create_dir_all(path.parent().unwrap()).unwrap();
    b.call(json!({"op": "screenshot", "page": "demo", "path": path}))
        .await;
    let png = std::fs::read(&path).unwrap();
    assert!(
        png.starts_with(b"\x89PNG\r\n\x1a\n") && png.len() > 10_000,
        "{}",
        path.display()
    );
    let docs = root().join("docs/demo.png");
    if std::env::var_os("SSEGATE_UPDATE_SCREENSHOT").is_some() || !docs.exists() {
        std::fs::copy(&path, &docs).unwrap();
    }
}
