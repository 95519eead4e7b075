//! Mercure JWTs, by Mercure's rules: the token comes from
//! `Authorization: Bearer`, the `authorization` query parameter or the
//! `mercureAuthorization` cookie (in that order); its `mercure.publish` and
//! `mercure.subscribe` claims hold topic selectors; `exp` is checked when
//! present and not required. A publish authorized by the cookie alone must
//! come from one of `--mercure-publish-origins` (`Origin`, else the origin
//! of `Referer`), against cross-site request forgery.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use axum::http::{HeaderMap, header};
use jsonwebtoken::{Algorithm, DecodingKey, Validation};
use serde::Deserialize;
use serde_json::Value;

use crate::config::{MercureAlg, MercureConfig};

pub const COOKIE: &str = "mercureAuthorization";

#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct KeyError(pub String);

/// One verification key and its algorithm.
pub struct Key {
    key: DecodingKey,
    validation: Validation,
}

impl Key {
    fn new(flag: &str, text: &str, alg: MercureAlg) -> Result<Key, KeyError> {
        let pem = || -> Result<Vec<u8>, KeyError> {
            if text.trim_start().starts_with("-----BEGIN") {
                return Ok(text.as_bytes().to_vec());
            }
            std::fs::read(text)
                .map_err(|e| KeyError(format!("--{flag}: not a PEM key nor a readable file: {e}")))
        };
        let bad = |e: jsonwebtoken::errors::Error| KeyError(format!("--{flag}: {e}"));
        let (key, alg) = match alg {
            MercureAlg::Hs256 => (DecodingKey::from_secret(text.as_bytes()), Algorithm::HS256),
            MercureAlg::Rs256 => (DecodingKey::from_rsa_pem(&pem()?).map_err(bad)?, Algorithm::RS256),
            MercureAlg::Es256 => (DecodingKey::from_ec_pem(&pem()?).map_err(bad)?, Algorithm::ES256),
        };
        let mut validation = Validation::new(alg);
        validation.set_required_spec_claims::<&str>(&[]);
        validation.validate_exp = true;
        validation.validate_aud = false;
        validation.leeway = 0;
        Ok(Key { key, validation })
    }
}

pub struct Keys {
    pub publisher: Key,
    pub subscriber: Key,
}

impl Keys {
    pub fn from_config(cfg: &MercureConfig) -> Result<Keys, KeyError> {
        let pub_key = cfg.mercure_publisher_jwt_key.as_deref().unwrap_or_default();
        let publisher = Key::new(
            "mercure-publisher-jwt-key",
            pub_key,
            cfg.mercure_publisher_jwt_alg,
        )?;
        let subscriber = match &cfg.mercure_subscriber_jwt_key {
            Some(k) => Key::new(
                "mercure-subscriber-jwt-key",
                k,
                cfg.mercure_subscriber_jwt_alg.unwrap_or(MercureAlg::Hs256),
            )?,
            None => Key::new(
                "mercure-publisher-jwt-key",
                pub_key,
                cfg.mercure_subscriber_jwt_alg
                    .unwrap_or(cfg.mercure_publisher_jwt_alg),
            )?,
        };
        Ok(Keys {
            publisher,
            subscriber,
        })
    }
}

#[derive(Debug, Default, Deserialize)]
struct Raw {
    #[serde(default)]
    mercure: Option<MercureClaims>,
    #[serde(default)]
    exp: Option<Value>,
}

#[derive(Debug, Default, Clone, Deserialize)]
pub struct MercureClaims {
    #[serde(default)]
    pub publish: Option<Vec<String>>,
    #[serde(default)]
    pub subscribe: Option<Vec<String>>,
    #[serde(default)]
    pub payload: Option<Value>,
}

/// A verified token's Mercure claims and expiry.
#[derive(Debug, Default, Clone)]
pub struct Claims {
    pub mercure: MercureClaims,
    pub expires: Option<SystemTime>,
}

/// Why a request is not authorized (all answered 401).
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum AuthError {
    #[error("invalid Authorization header")]
    Header,
    #[error("invalid authorization query parameter")]
    Query,
    #[error("invalid JWT")]
    Token,
    #[error("cookie-authorized publish without Origin or Referer")]
    NoOrigin,
    #[error("origin {0:?} may not publish with a cookie")]
    Origin(String),
}

fn verify(token: &str, key: &Key) -> Result<Claims, AuthError> {
    let data = jsonwebtoken::decode::<Raw>(token, &key.key, &key.validation).map_err(|_| AuthError::Token)?;
    let expires = data
        .claims
        .exp
        .and_then(|v| v.as_f64())
        .filter(|s| *s >= 0.0)
        .map(|s| UNIX_EPOCH + Duration::from_secs_f64(s.min(1e12)));
    Ok(Claims {
        mercure: data.claims.mercure.unwrap_or_default(),
        expires,
    })
}

fn cookie<'a>(headers: &'a HeaderMap, name: &str) -> Option<&'a str> {
    headers
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .filter_map(|kv| kv.trim().split_once('='))
        .find_map(|(k, v)| (k == name).then_some(v))
}

/// The origin of a request: `Origin`, else the scheme and host of `Referer`.
fn origin(headers: &HeaderMap) -> Option<String> {
    if let Some(o) = headers.get(header::ORIGIN).and_then(|v| v.to_str().ok()) {
        return Some(o.to_owned());
    }
    let referer = headers.get(header::REFERER)?.to_str().ok()?;
    let (scheme, rest) = referer.split_once("://")?;
    let host = rest.split(['/', '?', '#']).next()?;
    Some(format!("{scheme}://{host}"))
}

/// The request's claims: `Ok(None)` when it carries no token at all.
/// `publish_origins` is `Some` for a publish (a state-changing request).
pub fn authorize(
    headers: &HeaderMap,
    query_tokens: &[String],
    key: &Key,
    publish_origins: Option<&[String]>,
) -> Result<Option<Claims>, AuthError> {
    let mut auth = headers.get_all(header::AUTHORIZATION).iter();
    if let Some(first) = auth.next() {
        let v = first.to_str().map_err(|_| AuthError::Header)?;
        if auth.next().is_some() || !v.starts_with("Bearer ") {
            return Err(AuthError::Header);
        }
        return verify(v[7..].trim(), key).map(Some);
    }
    match query_tokens {
        [] => {}
        [one] => return verify(one, key).map(Some),
        _ => return Err(AuthError::Query),
    }
    let Some(token) = cookie(headers, COOKIE) else {
        return Ok(None);
    };
    if let Some(allowed) = publish_origins {
        let origin = origin(headers).ok_or(AuthError::NoOrigin)?;
        if !allowed.iter().any(|a| a == "*" || *a == origin) {
            return Err(AuthError::Origin(origin));
        }
    }
    verify(token, key).map(Some)
}

#[cfg(test)]
mod tests {
    use super::*;
    use jsonwebtoken::{EncodingKey, Header};

    fn key() -> Key {
        Key::new("k", "secret", MercureAlg::Hs256).unwrap()
    }

    fn token(claims: Value) -> String {
        jsonwebtoken::encode(&Header::default(), &claims, &EncodingKey::from_secret(b"secret")).unwrap()
    }

    fn headers(pairs: &[(&str, &str)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (k, v) in pairs {
            h.append(
                axum::http::HeaderName::from_bytes(k.as_bytes()).unwrap(),
                v.parse().unwrap(),
            );
        }
        h
    }

    #[test]
    fn exp_is_checked_when_present_and_not_required() {
        let ok = token(serde_json::json!({"mercure": {"publish": ["*"]}}));
        let c = authorize(
            &headers(&[("authorization", &format!("Bearer {ok}"))]),
            &[],
            &key(),
            None,
        )
        .unwrap()
        .unwrap();
        assert_eq!(c.mercure.publish.unwrap(), ["*"]);
        let old = token(serde_json::json!({"mercure": {"publish": ["*"]}, "exp": 1000}));
        assert_eq!(
            authorize(&headers(&[]), &[old], &key(), None).unwrap_err(),
            AuthError::Token
        );
    }

    #[test]
    fn sources_in_order_and_the_cookie_publish_origin_check() {
        let t = token(serde_json::json!({"mercure": {"subscribe": ["a"]}}));
        assert!(authorize(&headers(&[]), &[], &key(), None).unwrap().is_none());
        assert_eq!(
            authorize(
                &headers(&[("authorization", "Basic x")]),
                std::slice::from_ref(&t),
                &key(),
                None
            )
            .unwrap_err(),
            AuthError::Header
        );
        let cookie = format!("a=b; {COOKIE}={t}");
        let h = headers(&[("cookie", &cookie)]);
        assert!(authorize(&h, &[], &key(), None).unwrap().is_some());
        let allowed = ["https://app.example".to_string()];
        assert_eq!(
            authorize(&h, &[], &key(), Some(&allowed)).unwrap_err(),
            AuthError::NoOrigin
        );
        let from = headers(&[("cookie", &cookie), ("referer", "https://app.example/page?x")]);
        assert!(authorize(&from, &[], &key(), Some(&allowed)).unwrap().is_some());
        let evil = headers(&[("cookie", &cookie), ("origin", "https://evil.example")]);
        assert!(matches!(
            authorize(&evil, &[], &key(), Some(&allowed)),
            Err(AuthError::Origin(_))
        ));
    }
}
