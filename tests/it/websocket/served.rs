//! `GET /ssegate.js`: every node serves the JavaScript client, the very
//! file of clients/js, as JavaScript with a short cache lifetime.

use crate::helpers::*;

#[tokio::test]
async fn every_node_serves_the_javascript_client() {
    let node = Node::spawn(config(None)).await;
    let resp = reqwest::get(node.url("/ssegate.js")).await.unwrap();
    assert_eq!(resp.status(), 200);
    let header = |name: &str| {
        resp.headers()
            .get(name)
            .unwrap_or_else(|| panic!("no {name}"))
            .to_str()
            .unwrap()
            .to_owned()
    };
    assert_eq!(header("content-type"), "text/javascript; charset=utf-8");
    let cache = header("cache-control");
    let max_age: u64 = cache
        .strip_prefix("public, max-age=")
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("cache-control: {cache}"));
    assert!((60..=3600).contains(&max_age), "a short cache: {cache}");
    let body = resp.text().await.unwrap();
    let file =
        std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/clients/js/ssegate.js")).unwrap();
    assert!(body == file, "the body is clients/js/ssegate.js");
    // With the demo page off too: the client is not part of the demo.
    let mut cfg = config(None);
    cfg.demo = ssegate::config::Demo::Off;
    let quiet = Node::spawn(cfg).await;
    assert_eq!(reqwest::get(quiet.url("/")).await.unwrap().status(), 404);
    assert_eq!(
        reqwest::get(quiet.url("/ssegate.js")).await.unwrap().status(),
        200
    );
}
