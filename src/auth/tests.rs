use super::*;
use jsonwebtoken::{EncodingKey, encode};
use serde_json::json;

async fn auth(secret: &str) -> Auth {
    let mut cfg = Config::default_for_tests();
    cfg.jwt_secret = Some(secret.into());
    Auth::from_config(&cfg, &Metrics::new()).await.unwrap()
}

fn token(secret: &str, claims: Value) -> String {
    encode(
        &Header::new(Algorithm::HS256),
        &claims,
        &EncodingKey::from_secret(secret.as_bytes()),
    )
    .unwrap()
}

fn bearer_of(t: &str) -> HeaderMap {
    let mut h = HeaderMap::new();
    h.insert(AUTHORIZATION, format!("Bearer {t}").parse().unwrap());
    h
}

fn now() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).unwrap().as_secs()
}

fn chans(names: &[&str]) -> Vec<Channel> {
    names.iter().map(|n| Channel::parse(n).unwrap()).collect()
}

#[tokio::test]
async fn patterns_grant_exact_names_and_prefixes() {
    let a = auth("s").await;
    let t = token("s", json!({"exp": now() + 60, "channels": ["user:42", "room:*"]}));
    let access = a.reader(&bearer_of(&t), None).await.unwrap();
    assert!(access.check_read(&chans(&["user:42", "room:1", "room:"])).is_ok());
    assert_eq!(
        access.check_read(&chans(&["room:1", "user:43"])),
        Err(AuthError::ReadForbidden("user:43".into()))
    );
    assert_eq!(
        access.check_publish(&Channel::parse("user:42").unwrap()),
        Err(AuthError::PublishForbidden("user:42".into()))
    );
}

#[tokio::test]
async fn tokens_come_from_header_query_or_cookie() {
    let a = auth("s").await;
    let t = token("s", json!({"exp": now() + 60}));
    let mut h = HeaderMap::new();
    h.insert(COOKIE, format!("other=1; ssegate_token={t}").parse().unwrap());
    assert!(a.reader(&h, None).await.is_ok());
    assert!(a.reader(&HeaderMap::new(), Some(&t)).await.is_ok());
    assert_eq!(
        a.reader(&HeaderMap::new(), None).await.unwrap_err(),
        AuthError::Missing("ssegate_token".into())
    );
}

#[tokio::test]
async fn an_expiry_past_any_clock_verifies_and_means_far_ahead() {
    let a = auth("s").await;
    let far = UNIX_EPOCH + Duration::from_secs(MAX_EXPIRY_SECS);
    for exp in [json!(1u64 << 63), json!(u64::MAX), json!(1.8e19)] {
        let t = token(
            "s",
            json!({"exp": exp, "iat": u64::MAX, "nbf": 0, "channels": ["c"]}),
        );
        let access = a.reader(&bearer_of(&t), None).await.unwrap();
        assert_eq!(access.expires_at(), Some(far), "exp {exp}");
    }
}

#[tokio::test]
async fn claims_of_the_wrong_type_get_an_error_that_names_them() {
    let a = auth("s").await;
    let exp = now() + 60;
    let cases = [
        (json!({"exp": "tomorrow"}), AuthError::NotADate("exp")),
        (json!({"exp": -1}), AuthError::NotADate("exp")),
        (json!({"exp": 1e300}), AuthError::NotADate("exp")),
        (json!({"exp": exp, "nbf": "now"}), AuthError::NotADate("nbf")),
        (json!({"exp": {"at": exp}}), AuthError::NotADate("exp")),
        (json!({"exp": exp, "nbf": [1]}), AuthError::NotADate("nbf")),
        (json!({"exp": exp, "nbf": 1u64 << 63}), AuthError::NotYetValid),
        (
            json!({"exp": exp, "channels": [7]}),
            AuthError::NotPatterns("channels"),
        ),
        (
            json!({"exp": exp, "publish": "c"}),
            AuthError::NotPatterns("publish"),
        ),
        (
            json!({"exp": exp, "channels": vec!["c"; MAX_PATTERNS + 1]}),
            AuthError::TooManyPatterns("channels"),
        ),
        (json!([exp]), AuthError::Malformed),
    ];
    for (claims, want) in cases {
        let got = a.reader(&bearer_of(&token("s", claims.clone())), None).await;
        assert_eq!(got.unwrap_err(), want, "{claims}");
    }
    let fractional = token("s", json!({"exp": exp as f64 + 0.25}));
    assert!(a.reader(&bearer_of(&fractional), None).await.is_ok());
}

#[tokio::test]
async fn an_unknown_key_id_is_named_as_such() {
    let mut cfg = Config::default_for_tests();
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("jwks.json");
    let set = json!({"keys": [{"kty": "oct", "kid": "k1", "alg": "HS256", "k": "c2VjcmV0"}]});
    std::fs::write(&path, set.to_string()).unwrap();
    cfg.jwks_file = Some(path);
    let a = Auth::from_config(&cfg, &Metrics::new()).await.unwrap();
    let claims = json!({"exp": now() + 60});
    let mut header = Header::new(Algorithm::HS256);
    let key = EncodingKey::from_secret(b"secret");
    header.kid = Some("k1".into());
    let good = encode(&header, &claims, &key).unwrap();
    assert!(a.reader(&bearer_of(&good), None).await.is_ok());
    header.kid = Some("k2".into());
    let unknown = encode(&header, &claims, &key).unwrap();
    assert_eq!(
        a.reader(&bearer_of(&unknown), None).await.unwrap_err(),
        AuthError::UnknownKey
    );
}

#[tokio::test]
async fn publishers_use_api_keys_or_tokens() {
    let mut cfg = Config::default_for_tests();
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("keys");
    std::fs::write(&path, "key-one\n").unwrap();
    cfg.publish_keys_file = Some(path);
    let a = Auth::from_config(&cfg, &Metrics::new()).await.unwrap();
    assert!(matches!(
        a.publisher(&bearer_of("key-one")).await,
        Ok(Access::ApiKey)
    ));
    let longer = format!("key-one{}", "x".repeat(256));
    assert_eq!(
        a.publisher(&bearer_of(&longer)).await.unwrap_err(),
        AuthError::Malformed
    );
    assert!(
        Access::ApiKey.check_read(&[]).is_ok(),
        "no channel, nothing to refuse"
    );
}

#[tokio::test]
async fn redis_without_auth_needs_allow_anonymous() {
    let mut cfg = Config::default_for_tests();
    cfg.redis_url = Some("redis://127.0.0.1:1".into());
    let m = Metrics::new();
    assert!(matches!(
        Auth::from_config(&cfg, &m).await,
        Err(SetupError::NoAuthWithRedis)
    ));
    cfg.allow_anonymous = true;
    assert!(!Auth::from_config(&cfg, &m).await.unwrap().is_enforced());
    cfg.redis_url = None;
    cfg.allow_anonymous = false;
    assert!(
        !Auth::from_config(&cfg, &m).await.unwrap().is_enforced(),
        "the embedded default is open"
    );
}

#[tokio::test]
async fn a_jwks_url_that_cannot_be_fetched_stops_the_start_with_its_reason() {
    let closed = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = closed.local_addr().unwrap().port();
    drop(closed);
    let mut cfg = Config::default_for_tests();
    cfg.jwks_url = Some(format!("http://127.0.0.1:{port}/jwks.json"));
    let e = Auth::from_config(&cfg, &Metrics::new())
        .await
        .err()
        .unwrap()
        .to_string();
    assert!(
        e.starts_with("--jwks-url: cannot fetch the key set from http://127.0.0.1:") && e.contains("onnect"),
        "{e}"
    );
    cfg.jwks_url = Some("http://idp.example/jwks.json".into());
    let e = Auth::from_config(&cfg, &Metrics::new())
        .await
        .err()
        .unwrap()
        .to_string();
    assert!(e.contains("https://"), "{e}");
}
