//! The Mercure hub in Chromium, as the reference hub's own conformance
//! tests drive it: a page's `EventSource`s subscribe and its `fetch`
//! publishes (form bodies, a Bearer JWT), against one node with the
//! embedded broker and against two nodes on Redis behind HAProxy with the
//! subscriber and the publisher on different nodes. Raw-string,
//! multiple-topic, multiple-selector, IRI and URI-template updates arrive;
//! others do not; private updates reach only the subscribers whose JWT
//! (query parameter or the `mercureAuthorization` cookie) allows them; a
//! custom id is the event id; multi-line data arrives intact; a resume
//! with `lastEventID` on the other node gets exactly what followed.

use serde_json::{Value, json};

use super::failover::Balancer;
use super::{Browser, js};
use crate::helpers::*;
use crate::mercure::{KEY, publisher, token};

const BOOKS: &str = "https://example.com/books/{id}";
const PRIVATE: &str = "https://example.com/private/{id}";

/// Opens an EventSource named `name` on `topics` (with extra query pairs).
async fn subscribe(b: &mut Browser, page: &str, name: &str, query: &[(&str, &str)]) {
    let q: String = form_urlencoded::Serializer::new(String::new())
        .extend_pairs(query)
        .finish();
    let url = format!("/.well-known/mercure?{q}");
    b.eval(
        page,
        &format!(
            "window.got = window.got || {{}}; window.got[{n}] = []; \
             const es = new EventSource({u}, {{withCredentials: true}}); \
             es.onmessage = (e) => window.got[{n}].push({{id: e.lastEventId, data: e.data}}); \
             new Promise((ok, ko) => {{ es.onopen = () => ok(true); es.onerror = () => ko(new Error('refused')); }})",
            n = js(name),
            u = js(&url)
        ),
    )
    .await;
}

/// Publishes with `fetch` from the page; returns the update's id.
async fn publish(b: &mut Browser, page: &str, form: &[(&str, &str)]) -> String {
    let pairs = serde_json::to_string(form).unwrap();
    let v = b
        .eval(
            page,
            &format!(
                "fetch('/.well-known/mercure', {{method: 'POST', headers: {{Authorization: 'Bearer ' + {t}}}, \
                 body: new URLSearchParams({pairs})}}).then(async r => [r.status, await r.text()])",
                t = js(&publisher())
            ),
        )
        .await;
    assert_eq!(v[0], 200, "publish {form:?}: {v}");
    v[1].as_str().unwrap().to_owned()
}

async fn got(b: &mut Browser, page: &str, name: &str) -> Value {
    b.eval(page, &format!("window.got[{}]", js(name))).await
}

/// The whole scenario: public subscribers on `sub_page`, private ones on
/// `private_page` (another host name, which alone has the cookie; a browser
/// opens at most six HTTP/1.1 connections per host), the publisher (and the resume) on `pub_page`,
/// which may be served by another node.
async fn scenario(b: &mut Browser, sub_page: &str, private_page: &str, pub_page: &str) {
    let reader = token(json!({"mercure": {"subscribe": [PRIVATE]}}));
    subscribe(b, sub_page, "raw", &[("topic", "a raw string topic")]).await;
    subscribe(
        b,
        sub_page,
        "multi",
        &[("topic", "topic-a"), ("topic", "topic-b")],
    )
    .await;
    subscribe(b, sub_page, "iri", &[("topic", "https://example.com/books/1")]).await;
    subscribe(b, sub_page, "template", &[("topic", BOOKS)]).await;
    // Without the cookie (which goes to the other host name only).
    subscribe(b, sub_page, "anonymous", &[("topic", PRIVATE)]).await;
    subscribe(
        b,
        private_page,
        "private",
        &[("topic", PRIVATE), ("authorization", &reader)],
    )
    .await;
    // The cookie set by the test carries the same JWT.
    subscribe(b, private_page, "cookie", &[("topic", PRIVATE)]).await;

    publish(b, pub_page, &[("topic", "a raw string topic"), ("data", "raw")]).await;
    publish(b, pub_page, &[("topic", "topic-b"), ("data", "from b")]).await;
    publish(b, pub_page, &[("topic", "topic-a"), ("data", "from a")]).await;
    let custom = publish(
        b,
        pub_page,
        &[
            ("topic", "https://example.com/other"),
            ("topic", "https://example.com/books/1"),
            ("data", "book 1"),
            ("id", "custom-id-1"),
        ],
    )
    .await;
    assert_eq!(custom, "custom-id-1");
    let multi_line = "line 1\nline 2\n\nline 4";
    let second = publish(
        b,
        pub_page,
        &[("topic", "https://example.com/books/2"), ("data", multi_line)],
    )
    .await;
    publish(
        b,
        pub_page,
        &[("topic", "https://example.com/authors/1"), ("data", "nobody")],
    )
    .await;
    publish(
        b,
        pub_page,
        &[
            ("topic", "https://example.com/private/1"),
            ("data", "secret"),
            ("private", "on"),
        ],
    )
    .await;
    let marker = publish(
        b,
        pub_page,
        &[("topic", "https://example.com/private/2"), ("data", "public")],
    )
    .await;

    let arrived = |names: &str| {
        format!(
            "{names}.every(n => window.got[n].some(e => e.id === {}))",
            js(&marker)
        )
    };
    b.wait(private_page, &arrived("['private', 'cookie']")).await;
    b.wait(sub_page, &arrived("['anonymous']")).await;
    b.wait(
        sub_page,
        "window.got.template.length >= 2 && window.got.multi.length >= 2",
    )
    .await;
    let data = |v: Value| -> Vec<String> {
        v.as_array()
            .unwrap()
            .iter()
            .map(|e| e["data"].as_str().unwrap().to_owned())
            .collect()
    };
    assert_eq!(data(got(b, sub_page, "raw").await), ["raw"]);
    assert_eq!(data(got(b, sub_page, "multi").await), ["from b", "from a"]);
    assert_eq!(
        got(b, sub_page, "iri").await,
        json!([{"id": "custom-id-1", "data": "book 1"}])
    );
    assert_eq!(
        got(b, sub_page, "template").await,
        json!([{"id": "custom-id-1", "data": "book 1"}, {"id": second, "data": multi_line}])
    );
    assert_eq!(
        data(got(b, sub_page, "anonymous").await),
        ["public"],
        "no private update"
    );
    assert_eq!(data(got(b, private_page, "private").await), ["secret", "public"]);
    assert_eq!(data(got(b, private_page, "cookie").await), ["secret", "public"]);

    // Resume after the custom id, on the publisher's page (its node).
    subscribe(
        b,
        pub_page,
        "resumed",
        &[("topic", BOOKS), ("lastEventID", "custom-id-1")],
    )
    .await;
    b.wait(pub_page, "window.got.resumed.length >= 1").await;
    assert_eq!(
        got(b, pub_page, "resumed").await,
        json!([{"id": second, "data": multi_line}])
    );
}

async fn set_cookie(b: &mut Browser) {
    let reader = token(json!({"mercure": {"subscribe": [PRIVATE]}}));
    b.call(json!({"op": "addCookies", "cookies": [{
        "name": "mercureAuthorization", "value": reader, "domain": "localhost", "path": "/",
        "httpOnly": true, "sameSite": "Lax",
    }]}))
    .await;
}

fn args(redis: Option<&str>) -> Vec<String> {
    let mut a: Vec<String> = [
        "--mercure",
        "--mercure-publisher-jwt-key",
        KEY,
        "--mercure-anonymous",
        "--allow-anonymous",
        "--trusted-proxies",
        "127.0.0.1",
        "--ip-rate",
        "0",
    ]
    .map(String::from)
    .to_vec();
    if let Some(url) = redis {
        a.extend(["--redis-url".into(), url.into()]);
    }
    a
}

#[tokio::test]
async fn a_page_subscribes_and_publishes_on_one_node() {
    let Some(mut b) = Browser::launch(json!({})).await else {
        return;
    };
    let a = args(None);
    let node = NodeProcess::spawn(&a.iter().map(String::as_str).collect::<Vec<_>>());
    set_cookie(&mut b).await;
    let port = node.addr.port();
    b.open("page", &node.url("/healthz")).await;
    b.open("private", &format!("http://localhost:{port}/healthz"))
        .await;
    scenario(&mut b, "page", "private", "private").await;
}

#[tokio::test]
async fn pages_on_two_nodes_behind_haproxy_subscribe_on_one_and_publish_on_the_other() {
    let Some(haproxy) = require_tool("haproxy") else {
        return;
    };
    let Some(mut b) = Browser::launch(json!({})).await else {
        return;
    };
    let redis = RedisServer::spawn();
    let a = args(Some(&redis.url()));
    let a: Vec<&str> = a.iter().map(String::as_str).collect();
    let nodes = [NodeProcess::spawn(&a), NodeProcess::spawn(&a)];
    let nobody = format!("127.0.0.1:{}", free_port());
    let lb = Balancer::spawn(
        &haproxy,
        [nodes[0].addr.to_string(), nodes[1].addr.to_string(), nobody],
    );
    eventually("HAProxy sees both nodes UP", || async {
        let s = lb.status().await;
        s.len() == 3 && s[0].1 == "UP" && s[1].1 == "UP"
    })
    .await;
    set_cookie(&mut b).await;
    b.open("subscriber", &format!("http://127.0.0.1:{}/healthz", lb.port))
        .await;
    b.open("private", &format!("http://localhost:{}/healthz", lb.port))
        .await;
    // The publisher's page is served by the second node itself; the
    // balancer spreads the subscribers (leastconn) over both nodes, so the
    // updates of those on the first node crossed nodes through Redis.
    b.open("publisher", &nodes[1].url("/healthz")).await;
    scenario(&mut b, "subscriber", "private", "publisher").await;
    let on_first = nodes[0].metric("ssegate_mercure_subscribers").await;
    let on_second = nodes[1].metric("ssegate_mercure_subscribers").await;
    assert_eq!(on_first + on_second, 8.0, "7 subscribers and the resume");
    assert!(
        on_first >= 3.0,
        "subscribers on the node without the publisher: {on_first}"
    );
}
