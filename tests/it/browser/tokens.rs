//! Tokens in the browser: a cookie through CORS from an allowed origin and
//! nothing for other origins; the JavaScript guide's `subscribe` function
//! through a token expiry and an HTTP error.

use std::time::{SystemTime, UNIX_EPOCH};

use jsonwebtoken::{Algorithm, EncodingKey, Header, encode};
use serde_json::{Value, json};

use super::{Browser, js, post, root};
use crate::helpers::*;

pub(super) const SECRET: &str = "browser-test-secret";
pub(super) const COOKIE: &str = "ssegate_session";

fn now() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).unwrap().as_secs()
}

/// An HS256 token signed with `secret`; `exp` in 10 minutes unless given.
fn signed(secret: &str, mut claims: Value) -> String {
    if claims["exp"].is_null() {
        claims["exp"] = json!(now() + 600);
    }
    encode(
        &Header::new(Algorithm::HS256),
        &claims,
        &EncodingKey::from_secret(secret.as_bytes()),
    )
    .unwrap()
}

pub(super) fn token(claims: Value) -> String {
    signed(SECRET, claims)
}

#[tokio::test]
async fn a_page_on_an_allowed_origin_reads_with_its_cookie_and_other_origins_read_nothing() {
    let Some(mut b) = Browser::launch(json!({})).await else {
        return;
    };
    // The application's pages: http://localhost:A (allowed) and
    // http://127.0.0.1:A (another origin, and another site).
    let app = b.serve().await;
    let allowed = format!("http://localhost:{app}");
    let node = NodeProcess::spawn(&[
        "--jwt-secret",
        SECRET,
        "--jwt-cookie",
        COOKIE,
        "--cors-origin",
        &allowed,
        "--ip-rate",
        "0",
        "--retry",
        "500ms",
    ]);
    let ch = unique("cors");
    let gateway = format!("http://localhost:{}/v1/stream/{ch}", node.addr.port());
    let publisher = token(json!({"publish": [ch]}));
    let reader = token(json!({"channels": [ch]}));
    // Cookies ignore ports: this one goes to the gateway on localhost:B.
    b.call(json!({"op": "addCookies", "cookies": [{
        "name": COOKIE, "value": reader, "domain": "localhost", "path": "/",
        "httpOnly": true, "sameSite": "Lax",
    }]}))
    .await;

    // Allowed origin: with credentials the cookie authenticates; without,
    // the stream is refused (401) and EventSource gives up.
    b.open("allowed", &format!("{allowed}/")).await;
    b.eval(
        "allowed",
        &format!(
            "window.withCookie = new EventSource({g}, {{withCredentials: true}}); \
             window.withoutCookie = new EventSource({g}); true",
            g = js(&gateway)
        ),
    )
    .await;
    b.wait(
        "allowed",
        "window.__sse.sources[0].opens === 1 && window.__sse.sources[1].state === 'closed'",
    )
    .await;

    // Another origin: with credentials (the cookie is cross-site there) and
    // with a valid token in the URL, which the node serves but the browser
    // does not hand to a page the gateway does not allow.
    let opened = node.metric("ssegate_streams_opened_total").await;
    b.open("other", &format!("http://127.0.0.1:{app}/")).await;
    b.eval(
        "other",
        &format!(
            "window.withCookie = new EventSource({g}, {{withCredentials: true}}); \
             window.withToken = new EventSource({t}); true",
            g = js(&gateway),
            t = js(&format!("{gateway}?token={reader}"))
        ),
    )
    .await;
    b.wait(
        "other",
        "window.__sse.sources.length === 2 && window.__sse.sources.every(s => s.state === 'closed')",
    )
    .await;
    assert!(
        node.metric("ssegate_streams_opened_total").await > opened,
        "the node served the token stream: the browser refused it for CORS"
    );

    for data in ["first", "second"] {
        post(&gateway.replace("localhost", "127.0.0.1"), data, Some(&publisher)).await;
        b.wait(
            "allowed",
            &format!(
                "window.__sse.events.some(e => e.source === 0 && e.data === {})",
                js(data)
            ),
        )
        .await;
    }
    let allowed_got = b
        .eval("allowed", "window.__sse.events.map(e => [e.source, e.data])")
        .await;
    assert_eq!(allowed_got, json!([[0, "first"], [0, "second"]]));
    let allowed_state = b
        .eval("allowed", "window.__sse.sources.map(s => [s.opens, s.state])")
        .await;
    assert_eq!(allowed_state, json!([[1, "open"], [0, "closed"]]));
    let other = b
        .eval(
            "other",
            "window.__sse.sources.map(s => [s.opens, s.messages, s.state])",
        )
        .await;
    assert_eq!(other, json!([[0, 0, "closed"], [0, 0, "closed"]]));
}

// ---------------------------------------------------------------------------
// The JavaScript guide

/// The guide's `subscribe` function, as docs/javascript.md prints it.
fn guide_subscribe() -> String {
    let guide = std::fs::read_to_string(root().join("docs/javascript.md")).unwrap();
    guide
        .split("```js\n")
        .skip(1)
        .filter_map(|block| block.split("\n```").next())
        .find(|code| code.contains("function subscribe("))
        .expect("docs/javascript.md has a js block with `function subscribe(`")
        .to_owned()
}

#[tokio::test]
async fn the_guides_subscribe_function_resumes_after_token_expiry_and_an_http_error() {
    let Some(mut b) = Browser::launch(json!({})).await else {
        return;
    };
    let app = b.serve().await;
    let origin = format!("http://localhost:{app}");
    let node = NodeProcess::spawn(&[
        "--jwt-secret",
        SECRET,
        "--cors-origin",
        &origin,
        "--ip-rate",
        "0",
        "--retry",
        "500ms",
    ]);
    let ch = unique("guide");
    let gateway = format!("http://localhost:{}", node.addr.port());
    let publish_url = node.url(&format!("/v1/stream/{ch}"));
    let publisher = token(json!({"publish": [ch]}));
    // What getToken() hands out, in turn: a token about to expire, one the
    // gateway refuses (401), then a good one.
    let tokens = json!([
        token(json!({"channels": [ch], "exp": now() + 2})),
        signed("not-the-secret", json!({"channels": [ch]})),
        token(json!({"channels": [ch]})),
    ]);

    b.open("app", &format!("{origin}/")).await;
    b.eval("app", &format!("(0, eval)({}); true", js(&guide_subscribe())))
        .await;
    b.eval(
        "app",
        &format!(
            "window.tokens = {tokens}; window.got = []; \
             window.stream = subscribe({g}, [{c}], async () => window.tokens.shift(), \
               (e) => window.got.push([e.type, e.lastEventId, e.data])); true",
            g = js(&gateway),
            c = js(&ch)
        ),
    )
    .await;
    b.wait("app", "window.__sse.sources[0]?.opens === 1").await;
    let first = post(&publish_url, "first", Some(&publisher)).await;
    b.wait("app", "window.got.length === 1").await;

    // The token expires: a new source with the refused token closes for
    // good, and the function opens another one after its delay.
    b.wait(
        "app",
        "window.__sse.sources.length >= 2 && window.__sse.sources[1].state === 'closed'",
    )
    .await;
    let away = post(&publish_url, "while away", Some(&publisher)).await;
    b.wait(
        "app",
        "window.__sse.sources.length === 3 && window.__sse.sources[2].opens === 1 && window.got.length >= 2",
    )
    .await;
    let got = b.eval("app", "window.got").await;
    assert_eq!(
        got,
        json!([["message", first, "first"], ["message", away, "while away"]])
    );
    let sources = b
        .eval("app", "window.__sse.sources.map(s => [s.opens, s.state, s.url])")
        .await;
    assert_eq!(sources[0][1], "closed", "{sources:#}");
    assert_eq!(sources[1][0], 0, "{sources:#}");
    let resumed = sources[2][2].as_str().unwrap();
    assert!(resumed.contains(&format!("lastEventId={first}")), "{resumed}");
    let expired = b
        .eval(
            "app",
            "window.__sse.events.filter(e => e.type === 'ssegate.token_expired').length",
        )
        .await;
    assert_eq!(expired, 1);
    b.eval("app", "window.stream.close(); true").await;
}
