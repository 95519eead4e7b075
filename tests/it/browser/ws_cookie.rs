//! A WebSocket authenticated by the token cookie: a browser sends the
//! cookie with a WebSocket opened by any page of the same site, and
//! WebSocket has no CORS, so the node itself reads only the origins that
//! an EventSource with credentials could read from (its own, and those of
//! `--cors-origin`). A page on another origin of the site gets nothing.

use serde_json::json;

use super::tokens::{COOKIE, SECRET, token};
use super::{Browser, js};
use crate::helpers::*;

/// Opens a WebSocket in `page` and resolves with what became of it:
/// `["open", first message]` or `["closed", code]`.
fn open_socket(url: &str) -> String {
    format!(
        "new Promise((resolve) => {{
           const ws = new WebSocket({url});
           ws.onmessage = (e) => {{ resolve(['open', JSON.parse(e.data)]); ws.close(); }};
           ws.onclose = (e) => resolve(['closed', e.code]);
         }})",
        url = js(url)
    )
}

#[tokio::test]
async fn only_allowed_origins_read_over_a_websocket_with_the_cookie() {
    let Some(mut b) = Browser::launch(json!({})).await else {
        return;
    };
    // Two pages on one site (cookies ignore ports): localhost:A is listed
    // in --cors-origin, localhost:O is not.
    let (allowed, other) = (b.serve().await, b.serve().await);
    let node = NodeProcess::spawn(&[
        "--jwt-secret",
        SECRET,
        "--jwt-cookie",
        COOKIE,
        "--cors-origin",
        &format!("http://localhost:{allowed}"),
        "--ip-rate",
        "0",
    ]);
    let ch = unique("ws-cookie");
    b.call(json!({"op": "addCookies", "cookies": [{
        "name": COOKIE, "value": token(json!({"channels": [ch]})),
        "domain": "localhost", "path": "/", "httpOnly": true, "sameSite": "Lax",
    }]}))
    .await;
    let socket = format!("ws://localhost:{}/v1/ws?channel={ch}", node.addr.port());

    b.open("allowed", &format!("http://localhost:{allowed}/")).await;
    let got = b.eval("allowed", &open_socket(&socket)).await;
    assert_eq!(got[0], "open", "{got}");
    assert_eq!(got[1]["type"], "subscribed");

    b.open("other", &format!("http://localhost:{other}/")).await;
    let got = b.eval("other", &open_socket(&socket)).await;
    assert_eq!(
        got,
        json!(["closed", 1006]),
        "a page on another origin read with the cookie"
    );
    assert_eq!(node.metric("ssegate_websockets_opened_total").await, 1.0);

    // A token the page holds itself is not ambient: any origin may use it.
    let explicit = format!("{socket}&token={}", token(json!({"channels": [ch]})));
    let got = b.eval("other", &open_socket(&explicit)).await;
    assert_eq!(got[0], "open", "{got}");
}
