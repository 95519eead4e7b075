//! Hostile tokens and keys against the `ssegate` binary: claim values at
//! the edge of every type, API keys with trailing bytes. Each gets a normal
//! answer (a stream, or a 401 that says what is wrong) and the node's log
//! never shows a panic.

use std::time::{SystemTime, UNIX_EPOCH};

use jsonwebtoken::{Algorithm, EncodingKey, Header, encode};
use serde_json::{Value, json};

use crate::helpers::*;

const SECRET: &str = "hostile-test-secret";
const API_KEY: &str = "backend-key-0123456789";

fn now() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).unwrap().as_secs()
}

fn hs256(claims: &Value) -> String {
    encode(
        &Header::new(Algorithm::HS256),
        claims,
        &EncodingKey::from_secret(SECRET.as_bytes()),
    )
    .unwrap()
}

/// A node that requires tokens, logs at debug level (so that `synced_logs`
/// has a line to wait for) and takes heads large enough for huge tokens.
fn secured_node(extra: &[&str]) -> NodeProcess {
    let mut args = vec!["--jwt-secret", SECRET, "--max-header-bytes", "1MiB"];
    args.extend_from_slice(extra);
    NodeProcess::spawn_env(&args, &[("RUST_LOG", "info,ssegate=debug")])
}

/// The node's log up to now: opens one more stream with a malformed cursor
/// and waits for the debug line it causes, so that everything the node
/// wrote before (a panic message included) has been read from its stderr.
async fn synced_logs(node: &mut NodeProcess) -> Vec<String> {
    let token = hs256(&json!({"exp": now() + 600, "channels": ["sync"]}));
    let resp = reqwest::Client::new()
        .get(node.url("/v1/stream/sync"))
        .bearer_auth(token)
        .header("Last-Event-ID", "not-a-cursor")
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    let deadline = std::time::Instant::now() + WAIT;
    loop {
        let logs = node.logs();
        if logs.iter().any(|l| l.contains("malformed cursor")) {
            return logs;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "the node never logged the sync request: {logs:#?}"
        );
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
}

/// A token over claims given as JSON text, for payloads that `serde_json`
/// should not build (nesting deeper than its recursion limit).
fn hs256_raw(claims: &str) -> String {
    use base64::Engine;
    let b64 = |b: &[u8]| base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(b);
    let message = format!(
        "{}.{}",
        b64(br#"{"alg":"HS256","typ":"JWT"}"#),
        b64(claims.as_bytes())
    );
    let key = EncodingKey::from_secret(SECRET.as_bytes());
    let signature = jsonwebtoken::crypto::sign(message.as_bytes(), &key, Algorithm::HS256).unwrap();
    format!("{message}.{signature}")
}

fn assert_no_panic(logs: &[String]) {
    let panics: Vec<&String> = logs.iter().filter(|l| l.contains("panicked")).collect();
    assert!(panics.is_empty(), "the node panicked: {panics:#?}");
}

/// Status and JSON body (`Null` for a stream, whose first bytes are read).
async fn get_stream(node: &NodeProcess, token: &str) -> (u16, Value) {
    let resp = reqwest::Client::new()
        .get(node.url("/v1/stream/c"))
        .bearer_auth(token)
        .send()
        .await
        .unwrap_or_else(|e| panic!("no answer to a token: {e}"));
    let status = resp.status().as_u16();
    if status == 200 {
        let mut s = Sse::from_response(resp);
        // The stream is live: a published event arrives.
        let published = reqwest::Client::new()
            .post(node.url("/v1/stream/c"))
            .bearer_auth(hs256(&json!({"exp": now() + 600, "publish": ["c"]})))
            .body("live")
            .send()
            .await
            .unwrap();
        assert_eq!(published.status(), 201);
        assert_eq!(s.next().await.expect("an event").data, "live");
        return (200, Value::Null);
    }
    (status, resp.json().await.unwrap())
}

fn assert_401((status, body): &(u16, Value), says: &[&str], what: &str) {
    assert_eq!(*status, 401, "{what}: {body}");
    assert_eq!(body["error"], "unauthorized", "{what}: {body}");
    let msg = body["message"].as_str().unwrap();
    for s in says {
        assert!(msg.contains(s), "{what}: {msg:?} should mention {s:?}");
    }
}

#[tokio::test]
async fn expiry_dates_beyond_any_clock_get_a_stream_and_no_panic() {
    let mut node = secured_node(&[]);
    for exp in [json!(1u64 << 63), json!(u64::MAX), json!(9.3e18)] {
        let token = hs256(&json!({"exp": exp, "nbf": 0, "iat": u64::MAX, "channels": ["c"]}));
        let got = get_stream(&node, &token).await;
        assert_eq!(got.0, 200, "exp {exp}: {got:?}");
    }
    assert_no_panic(&synced_logs(&mut node).await);
}

#[tokio::test]
async fn an_api_key_followed_by_more_bytes_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let keys = dir.path().join("keys");
    std::fs::write(&keys, format!("{API_KEY}\n")).unwrap();
    let mut node = secured_node(&["--publish-keys-file", keys.to_str().unwrap()]);
    let post = |key: String| {
        let req = reqwest::Client::new()
            .post(node.url("/v1/stream/orders"))
            .bearer_auth(key)
            .body("x");
        async move { req.send().await.unwrap().status().as_u16() }
    };
    assert_eq!(post(API_KEY.into()).await, 201);
    for extra in [1, 255, 256, 512, 256 * 40] {
        let longer = format!("{API_KEY}{}", "A".repeat(extra));
        assert_eq!(post(longer).await, 401, "the key followed by {extra} bytes");
    }
    let shorter = &API_KEY[..API_KEY.len() - 1];
    assert_eq!(post(shorter.into()).await, 401, "a prefix of the key");
    assert_no_panic(&synced_logs(&mut node).await);
}

#[tokio::test]
async fn claims_of_the_wrong_type_or_size_get_a_clear_401() {
    let mut node = secured_node(&[]);
    let exp = now() + 600;
    let many: Vec<String> = (0..10_000).map(|i| format!("c{i}")).collect();
    let cases: Vec<(&str, Value, &[&str])> = vec![
        (
            "10,000 channel patterns",
            json!({"exp": exp, "channels": many}),
            &["channels", "256"],
        ),
        (
            "10,000 publish patterns",
            json!({"exp": exp, "channels": ["c"], "publish": many}),
            &["publish", "256"],
        ),
        (
            "numbers as channels",
            json!({"exp": exp, "channels": [1, 2]}),
            &["channels", "strings"],
        ),
        (
            "objects as channels",
            json!({"exp": exp, "channels": [{"name": "c"}]}),
            &["channels", "strings"],
        ),
        (
            "channels as one string",
            json!({"exp": exp, "channels": "c"}),
            &["channels", "array"],
        ),
        (
            "exp as a string",
            json!({"exp": "tomorrow", "channels": ["c"]}),
            &["exp"],
        ),
        ("negative exp", json!({"exp": -5, "channels": ["c"]}), &["exp"]),
        (
            "exp past any u64",
            json!({"exp": 1e300, "channels": ["c"]}),
            &["exp"],
        ),
        (
            "exp as an object",
            json!({"exp": {"at": exp}, "channels": ["c"]}),
            &["exp"],
        ),
        (
            "nbf as a string",
            json!({"exp": exp, "nbf": "soon", "channels": ["c"]}),
            &["nbf"],
        ),
        (
            "nbf far ahead",
            json!({"exp": exp, "nbf": 1u64 << 63, "channels": ["c"]}),
            &["nbf"],
        ),
    ];
    for (what, claims, says) in cases {
        let got = get_stream(&node, &hs256(&claims)).await;
        eprintln!("{what}: {got:?}");
        assert_401(&got, says, what);
    }
    let deep = format!(
        r#"{{"exp":{exp},"channels":["c"],"x":{}1{}}}"#,
        "[".repeat(10_000),
        "]".repeat(10_000)
    );
    assert_401(
        &get_stream(&node, &hs256_raw(&deep)).await,
        &["malformed"],
        "nested 10,000 deep",
    );
    // A fractional `exp` is a valid NumericDate.
    let fractional = hs256(&json!({"exp": exp as f64 + 0.5, "channels": ["c"]}));
    assert_eq!(get_stream(&node, &fractional).await.0, 200);
    assert_no_panic(&synced_logs(&mut node).await);
}
