//! A WebSocket whose token comes from the cookie is taken only from the
//! node's own origin and the origins of `--cors-origin`: a browser sends
//! the cookie with a WebSocket opened by any page of the site, and
//! WebSocket has no CORS to stop the page from reading. Tokens a page
//! sends itself (the `token` parameter, `Authorization`) and requests
//! without `Origin` (not a browser's) are not ambient and pass.

use jsonwebtoken::{Algorithm, EncodingKey, Header, encode};
use serde_json::{Value, json};

use super::raw::upgrade_answer;
use crate::helpers::*;

const SECRET: &str = "ws-origin-test-secret";

fn token(ch: &str) -> String {
    let exp = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs()
        + 600;
    encode(
        &Header::new(Algorithm::HS256),
        &json!({"exp": exp, "channels": [ch]}),
        &EncodingKey::from_secret(SECRET.as_bytes()),
    )
    .unwrap()
}

#[tokio::test]
async fn a_cookie_opens_a_websocket_only_from_the_nodes_own_and_the_allowed_origins() {
    let node = NodeProcess::spawn(&[
        "--jwt-secret",
        SECRET,
        "--cors-origin",
        "https://app.example.com",
        "--ip-rate",
        "0",
    ]);
    let ch = unique("origin");
    let path = format!("/v1/ws?channel={ch}");
    let t = token(&ch);
    let cookie = format!("ssegate_token={t}");
    let own = format!("http://{}", node.addr);
    let status = |headers: Vec<(&'static str, String)>| {
        let path = path.clone();
        let addr = node.addr;
        async move {
            let h: Vec<(&str, &str)> = headers.iter().map(|(k, v)| (*k, v.as_str())).collect();
            upgrade_answer(addr, &path, &h).await
        }
    };

    let allowed = [
        vec![
            ("Cookie", cookie.clone()),
            ("Origin", "https://app.example.com".into()),
        ],
        vec![("Cookie", cookie.clone()), ("Origin", own.clone())],
        vec![("Cookie", cookie.clone())],
        vec![
            ("Authorization", format!("Bearer {t}")),
            ("Origin", "https://evil.example.com".into()),
        ],
    ];
    for headers in allowed {
        let what = format!("{headers:?}");
        assert_eq!(status(headers).await.0, 101, "{what}");
    }
    let (code, body) = upgrade_answer(
        node.addr,
        &format!("{path}&token={t}"),
        &[("Origin", "https://evil.example.com")],
    )
    .await;
    assert_eq!(code, 101, "{body}");

    for origin in ["https://evil.example.com", "http://app.example.com", "null"] {
        let (code, body) = status(vec![("Cookie", cookie.clone()), ("Origin", origin.into())]).await;
        assert_eq!(code, 403, "{origin}: {body}");
        let v: Value = serde_json::from_str(&body).unwrap();
        assert_eq!(v["error"], "origin_not_allowed", "{body}");
    }
    // No token at all is a 401, whatever the origin.
    let (code, _) = status(vec![("Origin", "https://evil.example.com".into())]).await;
    assert_eq!(code, 401);

    // `*` lets any origin read without credentials: not with the cookie.
    let open = NodeProcess::spawn(&["--jwt-secret", SECRET, "--cors-origin", "*", "--ip-rate", "0"]);
    let (code, body) = upgrade_answer(
        open.addr,
        &path,
        &[("Cookie", &cookie), ("Origin", "https://app.example.com")],
    )
    .await;
    assert_eq!(code, 403, "{body}");
    let own = format!("http://{}", open.addr);
    assert_eq!(
        upgrade_answer(open.addr, &path, &[("Cookie", &cookie), ("Origin", &own)])
            .await
            .0,
        101
    );
}
