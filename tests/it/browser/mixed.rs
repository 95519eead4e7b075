//! One channel read two ways in one page: Chromium's `EventSource` on one
//! node and the WebSocket client (clients/js/ssegate.js over Chromium's
//! `WebSocket`) on another, both on one Redis. Whatever is published (POST
//! on either node, the Redis Function, an ephemeral PUBLISH), both get the
//! same events, in the same order, with the same ids, names and data text.

use serde_json::{Value, json};

use super::{Browser, fcall_publish, js, post};
use crate::helpers::*;

/// The channel's history ids (its payloads need not be UTF-8).
async fn history_ids(redis: &RedisServer, ch: &str) -> Vec<String> {
    let entries: Vec<(String, std::collections::HashMap<String, Vec<u8>>)> = redis::cmd("XRANGE")
        .arg(format!("sse:{{{ch}}}:log"))
        .arg("-")
        .arg("+")
        .query_async(&mut redis.conn().await)
        .await
        .unwrap();
    entries.into_iter().map(|(id, _)| id).collect()
}

#[tokio::test]
async fn an_eventsource_and_a_websocket_on_different_nodes_get_the_same_events() {
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
    ];
    let (sse_node, ws_node) = (NodeProcess::spawn(&args), NodeProcess::spawn(&args));
    let ch = unique("mixed");

    b.open("page", &format!("{page_origin}/")).await;
    b.eval(
        "page",
        &format!(
            "(async () => {{
               const es = new EventSource({stream});
               es.addEventListener('order', () => {{}}); // named events are recorded too
               await new Promise((resolve) => es.addEventListener('open', resolve, {{ once: true }}));
               const {{ connect }} = await import({script});
               window.ws = [];
               const client = connect({ws_base});
               client.on('event', (e) => window.ws.push({{ type: e.event ?? 'message', id: e.id ?? null, data: e.data }}));
               await client.subscribe({ch});
               return true;
             }})()",
            stream = js(&sse_node.url(&format!("/v1/stream/{ch}"))),
            script = js(&ws_node.url("/ssegate.js")),
            ws_base = js(&ws_node.url("")),
            ch = js(&ch),
        ),
    )
    .await;

    // Durable through either node and through Redis; one ephemeral.
    let on = |i: usize| if i.is_multiple_of(2) { &sse_node } else { &ws_node };
    let bodies = [
        "plain text",
        "line one\nline two",
        "crlf\r\nline",
        "cr\ronly",
        "trailing newline\n",
        "  leading spaces",
        r#"{"event":"order","data":{"id":7,"status":"shipped"}}"#,
        r#"{"data":"an envelope's string"}"#,
        r#"{"data":""}"#,
        r#"{"not":"an envelope"}"#,
        "unicode: héllo ✓ 🚀",
        r#"{"event":"order","data":"named\nand multi-line"}"#,
    ];
    for (i, body) in bodies.iter().enumerate() {
        post(&on(i).url(&format!("/v1/stream/{ch}")), body, None).await;
    }
    fcall_publish(&redis, &ch, r#"{"event":"order","data":[1,"two",null]}"#).await;
    let _: String = redis::cmd("FCALL")
        .arg("ssegate_publish")
        .arg(1)
        .arg(format!("sse:{{{ch}}}:log"))
        .arg(&b"not UTF-8: caf\xe9 \xff!"[..])
        .query_async(&mut redis.conn().await)
        .await
        .unwrap();
    let _: i64 = redis::cmd("PUBLISH")
        .arg(format!("sse:{{{ch}}}"))
        .arg("ephemeral, no id")
        .query_async(&mut redis.conn().await)
        .await
        .unwrap();
    let last = post(&ws_node.url(&format!("/v1/stream/{ch}")), "the end", None).await;

    let done = |list: &str| format!("{list}.some((e) => e.id === {})", js(&last));
    b.wait("page", &done("window.__sse.events")).await;
    b.wait("page", &done("window.ws")).await;
    let sse: Vec<Value> = serde_json::from_value(
        b.eval(
            "page",
            "window.__sse.events.filter((e) => e.source === 0).map(({type, id, data}) => ({type, id, data}))",
        )
        .await,
    )
    .unwrap();
    let ws: Vec<Value> = serde_json::from_value(b.eval("page", "window.ws").await).unwrap();

    // The WebSocket's ephemeral event has no id; an EventSource keeps the
    // id before it as its lastEventId.
    let mut previous = Value::from("");
    let ws_as_sse: Vec<Value> = ws
        .iter()
        .map(|e| {
            let mut e = e.clone();
            if e["id"].is_null() {
                e["id"] = previous.clone();
            }
            previous = e["id"].clone();
            e
        })
        .collect();
    assert_eq!(ws_as_sse, sse, "WebSocket (left) vs EventSource (right)");

    // Every durable event, once, in the history's order; the ephemeral one
    // without an id; the data texts as an EventSource gives them.
    let durable: Vec<&str> = ws.iter().filter_map(|e| e["id"].as_str()).collect();
    assert_eq!(durable, history_ids(&redis, &ch).await);
    let texts: Vec<&str> = ws.iter().map(|e| e["data"].as_str().unwrap()).collect();
    assert_eq!(
        texts,
        [
            "plain text",
            "line one\nline two",
            "crlf\nline",
            "cr\nonly",
            "trailing newline\n",
            "  leading spaces",
            r#"{"id":7,"status":"shipped"}"#,
            "an envelope's string",
            "",
            r#"{"not":"an envelope"}"#,
            "unicode: héllo ✓ 🚀",
            "named\nand multi-line",
            r#"[1,"two",null]"#,
            "not UTF-8: caf\u{fffd} \u{fffd}!",
            "ephemeral, no id",
            "the end",
        ]
    );
    let ephemeral: Vec<&Value> = ws.iter().filter(|e| e["id"].is_null()).collect();
    assert_eq!(
        ephemeral,
        [&json!({"type": "message", "id": null, "data": "ephemeral, no id"})]
    );
    let named = ws.iter().filter(|e| e["type"] == "order").count();
    assert_eq!(named, 3);
}
