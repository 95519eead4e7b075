//! Token claims. The signature is what keeps strangers out, so the target
//! signs whatever bytes it is given with the gateway's own secret: the
//! claims parser and everything after it then see input that only a
//! holder of the secret could send, yet any input at all.

use std::sync::OnceLock;

use futures_util::FutureExt;
use std::time::UNIX_EPOCH;

use axum::http::{HeaderMap, HeaderValue, header::AUTHORIZATION};
use jsonwebtoken::{Algorithm, EncodingKey};
use serde::Deserialize;

use crate::auth::{Access, Auth, AuthError};
use crate::config::Config;
use crate::sse::Channel;

const SECRET: &str = "ssegate-fuzzing-secret";
/// `{"alg":"HS256","typ":"JWT"}`, base64url.
const HEADER: &str = "eyJhbGciOiJIUzI1NiIsInR5cCI6IkpXVCJ9";
/// Channels every accepted token is asked about, besides its own.
const PROBES: [&str; 5] = ["a", "room:1", "room:", "admin", "session-42"];

fn auth() -> &'static Auth {
    static AUTH: OnceLock<Auth> = OnceLock::new();
    AUTH.get_or_init(|| {
        let mut cfg = Config::default_for_tests();
        // Only the secret, whatever the environment says.
        cfg.jwt_secret = Some(SECRET.into());
        cfg.jwt_public_key = None;
        cfg.jwks_file = None;
        cfg.publish_keys_file = None;
        cfg.jwt_audience.clear();
        cfg.jwt_issuer.clear();
        cfg.allow_anonymous = false;
        // Without a key URL nothing here waits: it completes when first polled.
        Auth::from_config(&cfg, &crate::metrics::Metrics::new())
            .now_or_never()
            .expect("no key to fetch")
            .expect("an HS256 secret is a valid configuration")
    })
}

fn base64url(bytes: &[u8]) -> String {
    const ALPHABET: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";
    let mut out = String::with_capacity(bytes.len().div_ceil(3) * 4);
    for chunk in bytes.chunks(3) {
        let n = chunk
            .iter()
            .enumerate()
            .fold(0u32, |n, (i, &b)| n | (u32::from(b) << (16 - 8 * i)));
        for i in 0..=chunk.len() {
            out.push(char::from(ALPHABET[((n >> (18 - 6 * i)) & 63) as usize]));
        }
    }
    out
}

/// An HS256 token whose payload is `claims`, byte for byte.
fn token(claims: &[u8]) -> String {
    let message = format!("{HEADER}.{}", base64url(claims));
    let key = EncodingKey::from_secret(SECRET.as_bytes());
    let signature =
        jsonwebtoken::crypto::sign(message.as_bytes(), &key, Algorithm::HS256).expect("HS256 signs");
    format!("{message}.{signature}")
}

/// What a reader presenting a token with these claims may do.
fn access(claims: &[u8]) -> Result<Access, AuthError> {
    let mut headers = HeaderMap::new();
    let bearer =
        HeaderValue::from_str(&format!("Bearer {}", token(claims))).expect("base64url is a header value");
    headers.insert(AUTHORIZATION, bearer);
    auth()
        .reader(&headers, None)
        .now_or_never()
        .expect("a token checked with a secret needs no fetch")
}

/// The claims the gateway reads, and nothing else: fields it ignores are
/// skipped unread by serde (invalid UTF-8 in a string, numbers out of any
/// range), so an oracle reading the whole JSON would refuse tokens that
/// are rightly accepted.
#[derive(Deserialize)]
struct Claims {
    exp: serde_json::Number,
    #[serde(default)]
    channels: Vec<String>,
    #[serde(default)]
    publish: Vec<String>,
}

/// Whether a grant list covers `channel`: an exact name, or `prefix*`.
fn granted(list: &[String], channel: &str) -> bool {
    list.iter().any(|p| match p.strip_suffix('*') {
        Some(prefix) => channel.starts_with(prefix),
        None => p == channel,
    })
}

/// Any claims: verification answers without panicking; an accepted token
/// expires when its `exp` says, and grants exactly the channels its
/// `channels` and `publish` lists cover.
pub fn jwt_claims(data: &[u8]) {
    let Ok(access) = access(data) else {
        return;
    };
    // A repeated claim name: the last one counts (RFC 7519 section 4), as
    // a JSON object read into a map keeps it.
    let object: serde_json::Value = serde_json::from_slice(data).expect("accepted claims are JSON");
    let claims: Claims = serde_json::from_value(object).expect("accepted claims hold exp and grant lists");
    let at = access.expires_at().expect("a token expires");
    let secs = at.duration_since(UNIX_EPOCH).ok().map(|d| d.as_secs());
    // A fraction is rounded, and no date lies past the last second of 9999.
    let exp = match (claims.exp.as_u64(), claims.exp.as_f64()) {
        (Some(n), _) => n,
        (None, Some(f)) => f.round() as u64,
        (None, None) => unreachable!("a JSON number"),
    };
    let want = exp.min(crate::auth::MAX_EXPIRY_SECS);
    assert_eq!(
        secs,
        Some(want),
        "the stream would close at another time than exp"
    );
    let own = claims
        .channels
        .iter()
        .chain(&claims.publish)
        .map(|p| p.strip_suffix('*').unwrap_or(p));
    let mut channels: Vec<Channel> = PROBES.iter().filter_map(|c| Channel::parse(c).ok()).collect();
    for name in own {
        channels.extend(Channel::parse(name).ok());
        channels.extend(Channel::parse(&format!("{name}x")).ok());
    }
    for c in &channels {
        let read = granted(&claims.channels, c.as_str());
        assert_eq!(
            access.check_read(std::slice::from_ref(c)).is_ok(),
            read,
            "reading {c}"
        );
        let publish = granted(&claims.publish, c.as_str());
        assert_eq!(access.check_publish(c).is_ok(), publish, "publishing to {c}");
    }
    let all_read = channels.iter().all(|c| granted(&claims.channels, c.as_str()));
    assert_eq!(
        access.check_read(&channels).is_ok(),
        all_read,
        "reading them all at once"
    );
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn base64url_has_no_padding() {
        assert_eq!(base64url(b""), "");
        assert_eq!(base64url(b"f"), "Zg");
        assert_eq!(base64url(b"fo"), "Zm8");
        assert_eq!(base64url(b"foo"), "Zm9v");
        assert_eq!(base64url(b"\xfb\xff"), "-_8");
        assert_eq!(base64url(br#"{"alg":"HS256","typ":"JWT"}"#), HEADER);
    }

    /// The target reaches the grants only if its tokens verify: a valid
    /// token must, and an expired or unsigned-looking one must not.
    #[test]
    fn tokens_signed_here_verify() {
        let a = access(br#"{"exp":4102444800,"channels":["room:*"],"publish":["a"]}"#).unwrap();
        assert!(a.check_read(&[Channel::parse("room:7").unwrap()]).is_ok());
        assert_eq!(access(br#"{"exp":1}"#).unwrap_err(), AuthError::Expired);
        assert_eq!(
            access(br#"{"channels":[]}"#).unwrap_err(),
            AuthError::MissingClaim("exp".into())
        );
        jwt_claims(br#"{"exp":4102444800,"channels":["*"],"publish":["room:*","b"]}"#);
        // Fields the gateway ignores are skipped unread, whatever they hold.
        jwt_claims(b"{\"exp\":4102444800,\"sub\":\"\xff\",\"iat\":1E999,\"channels\":[\"a\"]}");
    }
}
