//! Only the right reader: every authentication outcome, with its status and
//! body, against a real node.

use std::time::{SystemTime, UNIX_EPOCH};

use jsonwebtoken::{Algorithm, EncodingKey, Header, encode};
use serde_json::{Value, json};

use crate::helpers::*;

const SECRET: &str = "test-secret-not-for-production";

fn fixture(name: &str) -> std::path::PathBuf {
    std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures")
        .join(name)
}

fn now() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).unwrap().as_secs()
}

fn hs256(secret: &str, claims: Value) -> String {
    encode(
        &Header::new(Algorithm::HS256),
        &claims,
        &EncodingKey::from_secret(secret.as_bytes()),
    )
    .unwrap()
}

fn reader(channels: &[&str]) -> String {
    hs256(SECRET, json!({"exp": now() + 600, "channels": channels}))
}

async fn secured_node(redis: &RedisServer, tweak: impl FnOnce(&mut ssegate::Config)) -> Node {
    let mut cfg = config(Some(redis));
    cfg.allow_anonymous = false;
    cfg.jwt_secret = Some(SECRET.into());
    tweak(&mut cfg);
    Node::spawn(cfg).await
}

/// Status and JSON body of a GET with a bearer token (or none).
async fn get(url: &str, token: Option<&str>) -> (u16, Value) {
    let mut req = reqwest::Client::new().get(url);
    if let Some(t) = token {
        req = req.bearer_auth(t);
    }
    let resp = req.send().await.unwrap();
    let status = resp.status().as_u16();
    if status == 200 {
        return (200, Value::Null);
    }
    (status, resp.json().await.unwrap())
}

fn assert_refused((status, body): (u16, Value), want_status: u16, want_code: &str, says: &str) {
    assert_eq!(status, want_status, "{body}");
    assert_eq!(body["error"], want_code, "{body}");
    let msg = body["message"].as_str().unwrap();
    assert!(msg.contains(says), "{msg:?} should mention {says:?}");
    assert!(!msg.contains(SECRET), "the message leaks the secret");
}

#[tokio::test]
async fn every_reader_token_outcome_has_its_status_and_reason() {
    let redis = RedisServer::spawn();
    let node = secured_node(&redis, |c| {
        c.jwt_audience = vec!["app".into()];
        c.jwt_issuer = vec!["https://issuer.example".into()];
    })
    .await;
    let url = node.url("/v1/stream/room:1");
    let base = json!({"aud": "app", "iss": "https://issuer.example", "channels": ["room:*"]});
    let with = |extra: Value| {
        let mut c = base.clone();
        for (k, v) in extra.as_object().unwrap() {
            c[k] = v.clone();
        }
        c
    };
    let good = hs256(SECRET, with(json!({"exp": now() + 600})));
    assert_eq!(get(&url, Some(&good)).await.0, 200);

    let cases: Vec<(&str, String, &str)> = vec![
        (
            "expired",
            hs256(SECRET, with(json!({"exp": now() - 120}))),
            "expired",
        ),
        (
            "wrong signature",
            hs256("another-secret", with(json!({"exp": now() + 600}))),
            "signature",
        ),
        (
            "wrong audience",
            hs256(SECRET, with(json!({"exp": now() + 600, "aud": "other"}))),
            "audience",
        ),
        (
            "no audience",
            hs256(
                SECRET,
                json!({"exp": now() + 600, "iss": "https://issuer.example", "channels": ["room:*"]}),
            ),
            "aud",
        ),
        (
            "wrong issuer",
            hs256(
                SECRET,
                with(json!({"exp": now() + 600, "iss": "https://evil.example"})),
            ),
            "issuer",
        ),
        (
            "not yet valid",
            hs256(SECRET, with(json!({"exp": now() + 600, "nbf": now() + 300}))),
            "nbf",
        ),
        ("no exp", hs256(SECRET, base.clone()), "exp"),
        ("garbage", "not.a.token".into(), "malformed"),
    ];
    for (what, token, says) in cases {
        let got = get(&url, Some(&token)).await;
        eprintln!("{what}: {got:?}");
        assert_refused(got, 401, "unauthorized", says);
    }
    // alg: none, hand-made: {"alg":"none"} . claims . (no signature)
    let b64 = |v: &Value| {
        use base64::Engine;
        base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(v.to_string())
    };
    let none = format!(
        "{}.{}.",
        b64(&json!({"alg": "none", "typ": "JWT"})),
        b64(&with(json!({"exp": now() + 600})))
    );
    assert_refused(get(&url, Some(&none)).await, 401, "unauthorized", "malformed");
    // No token at all: 401 with a challenge.
    let resp = reqwest::get(&url).await.unwrap();
    assert_eq!(resp.status(), 401);
    assert_eq!(resp.headers()["www-authenticate"], "Bearer");
    assert_refused((401, resp.json().await.unwrap()), 401, "unauthorized", "no token");
}

#[tokio::test]
async fn grants_decide_which_channels_a_token_reads() {
    let redis = RedisServer::spawn();
    let node = secured_node(&redis, |_| {}).await;
    let token = reader(&["user:42", "room:*"]);
    for ok in [
        "/v1/stream/user:42",
        "/v1/stream/room:7",
        "/v1/stream?channel=room:1&channel=user:42",
    ] {
        assert_eq!(get(&node.url(ok), Some(&token)).await.0, 200, "{ok}");
    }
    assert_refused(
        get(&node.url("/v1/stream/user:43"), Some(&token)).await,
        403,
        "forbidden",
        "user:43",
    );
    assert_refused(
        get(&node.url("/v1/stream/roo"), Some(&token)).await,
        403,
        "forbidden",
        "roo",
    );
    // One channel not granted refuses the whole request, and subscribes nothing.
    let url = node.url("/v1/stream?channel=room:9&channel=admin");
    assert_refused(get(&url, Some(&token)).await, 403, "forbidden", "admin");
    eventually("no stream left on the node", || async {
        node.state.hub().channel_count() == 0
    })
    .await;
    let mut conn = redis.conn().await;
    let subscribed: Vec<String> = redis::cmd("PUBSUB")
        .arg("CHANNELS")
        .query_async(&mut conn)
        .await
        .unwrap();
    assert!(!subscribed.iter().any(|c| c.contains("room:9")), "{subscribed:?}");
}

#[tokio::test]
async fn tokens_are_read_from_the_query_and_from_the_cookie() {
    let redis = RedisServer::spawn();
    let node = secured_node(&redis, |c| c.jwt_cookie = "sess".into()).await;
    let token = reader(&["c"]);
    assert_eq!(
        get(&node.url(&format!("/v1/stream/c?token={token}")), None)
            .await
            .0,
        200
    );
    let resp = reqwest::Client::new()
        .get(node.url("/v1/stream/c"))
        .header("Cookie", format!("theme=dark; sess={token}"))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
}

#[tokio::test]
async fn publishing_needs_a_publish_grant_or_an_api_key() {
    let redis = RedisServer::spawn();
    let dir = tempfile::tempdir().unwrap();
    let keys = dir.path().join("keys");
    std::fs::write(&keys, "# backend keys\nbackend-key-1\n").unwrap();
    let node = secured_node(&redis, |c| c.publish_keys_file = Some(keys)).await;
    let post = |token: Option<String>| {
        let mut req = reqwest::Client::new()
            .post(node.url("/v1/stream/orders"))
            .body("x");
        if let Some(t) = token {
            req = req.bearer_auth(t);
        }
        async move {
            let resp = req.send().await.unwrap();
            let status = resp.status().as_u16();
            (status, resp.json::<Value>().await.unwrap())
        }
    };
    let subscriber = reader(&["orders", "*"]);
    assert_refused(
        post(Some(subscriber)).await,
        403,
        "forbidden",
        "publishing to channel \"orders\"",
    );
    assert_refused(post(None).await, 401, "unauthorized", "no token");
    assert_refused(
        post(Some("wrong-key".into())).await,
        401,
        "unauthorized",
        "malformed",
    );
    let publisher = hs256(SECRET, json!({"exp": now() + 600, "publish": ["order*"]}));
    assert_eq!(post(Some(publisher)).await.0, 201);
    assert_eq!(post(Some("backend-key-1".into())).await.0, 201);
    // An API key reads nothing.
    assert_refused(
        get(&node.url("/v1/stream/orders"), Some("backend-key-1")).await,
        401,
        "unauthorized",
        "malformed",
    );
}

#[tokio::test]
async fn public_keys_from_pem_and_jwks_verify_tokens_and_cannot_be_used_as_secrets() {
    let redis = RedisServer::spawn();
    let node = secured_node(&redis, |c| {
        c.jwt_secret = None;
        c.jwt_public_key = Some(fixture("rsa-public.pem"));
        c.jwks_file = Some(fixture("jwks.json"));
    })
    .await;
    let url = node.url("/v1/stream/c");
    let claims = json!({"exp": now() + 600, "channels": ["c"]});
    let rsa = EncodingKey::from_rsa_pem(&std::fs::read(fixture("rsa-private.pem")).unwrap()).unwrap();
    let rs256 = encode(&Header::new(Algorithm::RS256), &claims, &rsa).unwrap();
    assert_eq!(get(&url, Some(&rs256)).await.0, 200);
    let ec = EncodingKey::from_ec_pem(&std::fs::read(fixture("ec-private.pem")).unwrap()).unwrap();
    let mut header = Header::new(Algorithm::ES256);
    header.kid = Some("ec-1".into());
    let es256 = encode(&header, &claims, &ec).unwrap();
    assert_eq!(get(&url, Some(&es256)).await.0, 200);
    header.kid = Some("unknown".into());
    let unknown_kid = encode(&header, &claims, &ec).unwrap();
    assert_refused(
        get(&url, Some(&unknown_kid)).await,
        401,
        "unauthorized",
        "not accepted",
    );
    // The classic confusion: HS256 "signed" with the public key as the secret.
    let public = std::fs::read(fixture("rsa-public.pem")).unwrap();
    let confused = encode(
        &Header::new(Algorithm::HS256),
        &claims,
        &EncodingKey::from_secret(&public),
    )
    .unwrap();
    assert_refused(get(&url, Some(&confused)).await, 401, "unauthorized", "HS256");
}

#[tokio::test]
async fn a_stream_closes_when_its_token_expires() {
    let redis = RedisServer::spawn();
    let node = secured_node(&redis, |_| {}).await;
    let token = hs256(SECRET, json!({"exp": now() + 2, "channels": ["c"]}));
    let resp = reqwest::Client::new()
        .get(node.url("/v1/stream/c"))
        .bearer_auth(&token)
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    let mut s = Sse::from_response(resp);
    // The first event is the expiry (Sse waits long enough for it), then
    // the node ends the stream cleanly.
    let ev = s.next().await.unwrap();
    assert_eq!(ev.event, "ssegate.token_expired");
    assert!(s.next().await.is_none(), "the stream ends after the expiry event");
}

#[tokio::test]
async fn with_redis_and_no_keys_a_node_refuses_to_start_unless_anonymous_is_allowed() {
    let redis = RedisServer::spawn();
    let out = std::process::Command::new(binary())
        .args(["--listen", "127.0.0.1:0", "--redis-url", &redis.url()])
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("--allow-anonymous"), "{err}");
    // The embedded default is open, and says so when it starts.
    let mut node = NodeProcess::spawn(&[]);
    let logs = node.logs().join("\n");
    assert!(
        logs.contains("embedded in-process broker") && logs.contains("anonymous access"),
        "{logs}"
    );
}

#[tokio::test]
async fn cors_allows_the_configured_origins_with_credentials_only() {
    let node = Node::spawn({
        let mut c = config(None);
        c.cors_origin = vec!["https://app.example".into()];
        c
    })
    .await;
    let preflight = |origin: &'static str| {
        reqwest::Client::new()
            .request(reqwest::Method::OPTIONS, node.url("/v1/stream/c"))
            .header("Origin", origin)
            .header("Access-Control-Request-Method", "GET")
            .header("Access-Control-Request-Headers", "last-event-id")
            .send()
    };
    let ok = preflight("https://app.example").await.unwrap();
    assert_eq!(ok.headers()["access-control-allow-origin"], "https://app.example");
    assert_eq!(ok.headers()["access-control-allow-credentials"], "true");
    let other = preflight("https://evil.example").await.unwrap();
    assert!(other.headers().get("access-control-allow-origin").is_none());
}
