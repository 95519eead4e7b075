//! Who may read and publish which channel. Tokens are JWTs verified with
//! `jsonwebtoken` (HS256 secret, RS256/ES256/EdDSA public key from a PEM
//! file, keys from a JWKS file); publishers may also use static API keys.
//!
//! Every key is tried only with its own algorithm, so a token cannot
//! choose how it is checked (no `alg: none`, no HS256 signed with a public
//! key). Error messages say what is wrong with the token, never anything
//! about the keys.

use std::path::Path;
use std::str::FromStr;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use axum::http::HeaderMap;
use axum::http::header::{AUTHORIZATION, COOKIE};
use jsonwebtoken::errors::ErrorKind;
use jsonwebtoken::jwk::{AlgorithmParameters, EllipticCurve, JwkSet, KeyAlgorithm};
use jsonwebtoken::{Algorithm, DecodingKey, Validation};
use serde::Deserialize;

use crate::config::Config;
use crate::sse::Channel;

/// Allowed clock skew for `exp` and `nbf`.
const LEEWAY_SECS: u64 = 5;

#[derive(Debug, thiserror::Error)]
pub enum SetupError {
    #[error("cannot read {flag} file {path}: {source}")]
    Read {
        flag: &'static str,
        path: String,
        source: std::io::Error,
    },
    #[error("--jwt-public-key: {0} holds no RSA, EC or Ed25519 public key in PEM form")]
    Pem(String),
    #[error("--jwks-file: {0}")]
    Jwks(String),
    #[error("--publish-keys-file: {0} holds no key")]
    NoApiKeys(String),
    #[error(
        "refusing to start: Redis is configured but no authentication is (--jwt-secret, --jwt-public-key, \
         --jwks-file or --publish-keys-file); pass --allow-anonymous to let everyone read and publish every channel"
    )]
    NoAuthWithRedis,
}

/// Why a request is not allowed. Messages are safe to show to clients.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AuthError {
    #[error("no token: send `Authorization: Bearer <jwt>`, a `token` query parameter or the `{0}` cookie")]
    Missing(String),
    #[error("no token: send `Authorization: Bearer <token or API key>`")]
    MissingPublisher,
    #[error("token expired")]
    Expired,
    #[error("token not valid yet (nbf)")]
    NotYetValid,
    #[error("token audience is not accepted")]
    Audience,
    #[error("token issuer is not accepted")]
    Issuer,
    #[error("token signature does not verify")]
    Signature,
    #[error("token lacks the required `{0}` claim")]
    MissingClaim(String),
    #[error("token algorithm {0} is not accepted here")]
    Algorithm(String),
    #[error("malformed token")]
    Malformed,
    #[error("the token does not grant reading channel {0:?}")]
    ReadForbidden(String),
    #[error("the token does not grant publishing to channel {0:?}")]
    PublishForbidden(String),
}

impl AuthError {
    /// 403 for a valid token without the grant, 401 for everything else.
    pub fn is_forbidden(&self) -> bool {
        matches!(self, AuthError::ReadForbidden(_) | AuthError::PublishForbidden(_))
    }
}

/// A channel grant: an exact name, `prefix*`, or `*` for every channel.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Pattern {
    Exact(String),
    Prefix(String),
}

impl Pattern {
    fn parse(s: &str) -> Pattern {
        match s.strip_suffix('*') {
            Some(prefix) => Pattern::Prefix(prefix.to_owned()),
            None => Pattern::Exact(s.to_owned()),
        }
    }

    fn matches(&self, channel: &str) -> bool {
        match self {
            Pattern::Exact(e) => e == channel,
            Pattern::Prefix(p) => channel.starts_with(p.as_str()),
        }
    }
}

#[derive(Deserialize)]
struct Claims {
    /// Required; optional here so that a token without it gets a clear error.
    exp: Option<u64>,
    #[serde(default)]
    channels: Vec<String>,
    #[serde(default)]
    publish: Vec<String>,
}

/// What a request may do.
#[derive(Debug, Clone)]
pub enum Access {
    /// Authentication is off (`--allow-anonymous`, or the embedded default).
    Anonymous,
    /// A static publisher key: publish to every channel, read nothing.
    ApiKey,
    Token {
        read: Vec<Pattern>,
        publish: Vec<Pattern>,
        /// `exp`, seconds since the epoch.
        expires: u64,
    },
}

impl Access {
    /// Every channel must be granted, or the request is refused whole.
    pub fn check_read(&self, channels: &[Channel]) -> Result<(), AuthError> {
        match self {
            Access::Anonymous => Ok(()),
            Access::ApiKey => Err(AuthError::ReadForbidden(channels[0].to_string())),
            Access::Token { read, .. } => channels
                .iter()
                .find(|c| !read.iter().any(|p| p.matches(c.as_str())))
                .map_or(Ok(()), |c| Err(AuthError::ReadForbidden(c.to_string()))),
        }
    }

    pub fn check_publish(&self, channel: &Channel) -> Result<(), AuthError> {
        match self {
            Access::Anonymous | Access::ApiKey => Ok(()),
            Access::Token { publish, .. } if publish.iter().any(|p| p.matches(channel.as_str())) => Ok(()),
            Access::Token { .. } => Err(AuthError::PublishForbidden(channel.to_string())),
        }
    }

    /// When a stream opened with this access must close.
    pub fn expires_at(&self) -> Option<SystemTime> {
        match self {
            Access::Token { expires, .. } => Some(UNIX_EPOCH + Duration::from_secs(*expires)),
            _ => None,
        }
    }
}

struct Key {
    kid: Option<String>,
    alg: Algorithm,
    key: DecodingKey,
}

pub struct Auth {
    enforced: bool,
    keys: Vec<Key>,
    api_keys: Vec<Vec<u8>>,
    audience: Vec<String>,
    issuer: Vec<String>,
    cookie: String,
}

fn read_file(flag: &'static str, path: &Path) -> Result<Vec<u8>, SetupError> {
    std::fs::read(path).map_err(|source| SetupError::Read {
        flag,
        path: path.display().to_string(),
        source,
    })
}

fn pem_key(pem: &[u8], path: &str) -> Result<Key, SetupError> {
    let (key, alg) = if let Ok(k) = DecodingKey::from_rsa_pem(pem) {
        (k, Algorithm::RS256)
    } else if let Ok(k) = DecodingKey::from_ec_pem(pem) {
        (k, Algorithm::ES256)
    } else if let Ok(k) = DecodingKey::from_ed_pem(pem) {
        (k, Algorithm::EdDSA)
    } else {
        return Err(SetupError::Pem(path.to_owned()));
    };
    Ok(Key { kid: None, alg, key })
}

fn jwks_keys(json: &[u8]) -> Result<Vec<Key>, SetupError> {
    let set: JwkSet =
        serde_json::from_slice(json).map_err(|e| SetupError::Jwks(format!("not a JWK set: {e}")))?;
    let mut keys = Vec::new();
    for jwk in &set.keys {
        let alg = match (&jwk.common.key_algorithm, &jwk.algorithm) {
            (Some(ka), _) => key_algorithm(ka),
            (None, AlgorithmParameters::RSA(_)) => Some(Algorithm::RS256),
            (None, AlgorithmParameters::EllipticCurve(p)) => match p.curve {
                EllipticCurve::P256 => Some(Algorithm::ES256),
                EllipticCurve::P384 => Some(Algorithm::ES384),
                _ => None,
            },
            (None, AlgorithmParameters::OctetKeyPair(_)) => Some(Algorithm::EdDSA),
            (None, AlgorithmParameters::OctetKey(_)) => Some(Algorithm::HS256),
            (None, _) => None,
        };
        let Some(alg) = alg else {
            tracing::warn!(kid = ?jwk.common.key_id, "skipping a JWK of an unsupported algorithm");
            continue;
        };
        let key = DecodingKey::from_jwk(jwk).map_err(|e| SetupError::Jwks(format!("bad key: {e}")))?;
        keys.push(Key {
            kid: jwk.common.key_id.clone(),
            alg,
            key,
        });
    }
    if keys.is_empty() {
        return Err(SetupError::Jwks("no usable key in the set".into()));
    }
    Ok(keys)
}

fn key_algorithm(ka: &KeyAlgorithm) -> Option<Algorithm> {
    Algorithm::from_str(&format!("{ka:?}")).ok()
}

impl Auth {
    pub fn from_config(cfg: &Config) -> Result<Auth, SetupError> {
        let mut keys = Vec::new();
        if let Some(secret) = &cfg.jwt_secret {
            keys.push(Key {
                kid: None,
                alg: Algorithm::HS256,
                key: DecodingKey::from_secret(secret.as_bytes()),
            });
        }
        if let Some(path) = &cfg.jwt_public_key {
            keys.push(pem_key(
                &read_file("--jwt-public-key", path)?,
                &path.display().to_string(),
            )?);
        }
        if let Some(path) = &cfg.jwks_file {
            keys.extend(jwks_keys(&read_file("--jwks-file", path)?)?);
        }
        let mut api_keys = Vec::new();
        if let Some(path) = &cfg.publish_keys_file {
            let text = read_file("--publish-keys-file", path)?;
            api_keys = String::from_utf8_lossy(&text)
                .lines()
                .map(str::trim)
                .filter(|l| !l.is_empty() && !l.starts_with('#'))
                .map(|l| l.as_bytes().to_vec())
                .collect();
            if api_keys.is_empty() {
                return Err(SetupError::NoApiKeys(path.display().to_string()));
            }
        }
        let configured = !keys.is_empty() || !api_keys.is_empty();
        if !configured && cfg.redis_url.is_some() && !cfg.allow_anonymous {
            return Err(SetupError::NoAuthWithRedis);
        }
        if configured && cfg.allow_anonymous {
            tracing::warn!("--allow-anonymous is set: the configured keys are ignored and access is open");
        }
        Ok(Auth {
            enforced: configured && !cfg.allow_anonymous,
            keys,
            api_keys,
            audience: cfg.jwt_audience.clone(),
            issuer: cfg.jwt_issuer.clone(),
            cookie: cfg.jwt_cookie.clone(),
        })
    }

    pub fn is_enforced(&self) -> bool {
        self.enforced
    }

    /// A reader's access: from `Authorization: Bearer`, the `token` query
    /// parameter or the cookie, in that order.
    pub fn reader(&self, headers: &HeaderMap, query_token: Option<&str>) -> Result<Access, AuthError> {
        if !self.enforced {
            return Ok(Access::Anonymous);
        }
        let token = bearer(headers)
            .or(query_token)
            .or_else(|| cookie(headers, &self.cookie))
            .ok_or_else(|| AuthError::Missing(self.cookie.clone()))?;
        self.verify(token)
    }

    /// A publisher's access: `Authorization: Bearer` with an API key or a
    /// token.
    pub fn publisher(&self, headers: &HeaderMap) -> Result<Access, AuthError> {
        if !self.enforced {
            return Ok(Access::Anonymous);
        }
        let token = bearer(headers).ok_or(AuthError::MissingPublisher)?;
        if self.is_api_key(token.as_bytes()) {
            return Ok(Access::ApiKey);
        }
        self.verify(token)
    }

    /// Compares against every key without stopping at the first mismatch.
    fn is_api_key(&self, candidate: &[u8]) -> bool {
        let mut found = false;
        for k in &self.api_keys {
            let mut diff = (k.len() ^ candidate.len()) as u8;
            for (i, b) in k.iter().enumerate() {
                diff |= b ^ candidate.get(i).copied().unwrap_or(0);
            }
            found |= diff == 0;
        }
        found
    }

    fn verify(&self, token: &str) -> Result<Access, AuthError> {
        let header = jsonwebtoken::decode_header(token).map_err(|_| AuthError::Malformed)?;
        let candidates: Vec<&Key> = self
            .keys
            .iter()
            .filter(|k| k.alg == header.alg)
            .filter(|k| match (&header.kid, &k.kid) {
                (Some(want), Some(have)) => want == have,
                _ => true,
            })
            .collect();
        if candidates.is_empty() {
            return Err(AuthError::Algorithm(format!("{:?}", header.alg)));
        }
        let mut last = AuthError::Signature;
        for k in candidates {
            let mut v = Validation::new(k.alg);
            v.leeway = LEEWAY_SECS;
            v.validate_nbf = true;
            v.set_required_spec_claims(&["exp"]);
            if !self.audience.is_empty() {
                v.set_audience(&self.audience);
                v.required_spec_claims.insert("aud".into());
            } else {
                v.validate_aud = false;
            }
            if !self.issuer.is_empty() {
                v.set_issuer(&self.issuer);
                v.required_spec_claims.insert("iss".into());
            }
            match jsonwebtoken::decode::<Claims>(token, &k.key, &v) {
                Ok(data) => {
                    let c = data.claims;
                    return Ok(Access::Token {
                        read: c.channels.iter().map(|s| Pattern::parse(s)).collect(),
                        publish: c.publish.iter().map(|s| Pattern::parse(s)).collect(),
                        expires: c.exp.ok_or_else(|| AuthError::MissingClaim("exp".into()))?,
                    });
                }
                Err(e) => {
                    last = match e.kind() {
                        ErrorKind::ExpiredSignature => AuthError::Expired,
                        ErrorKind::ImmatureSignature => AuthError::NotYetValid,
                        ErrorKind::InvalidAudience => AuthError::Audience,
                        ErrorKind::InvalidIssuer => AuthError::Issuer,
                        ErrorKind::InvalidSignature => AuthError::Signature,
                        ErrorKind::MissingRequiredClaim(c) => AuthError::MissingClaim(c.clone()),
                        ErrorKind::InvalidAlgorithm => AuthError::Algorithm(format!("{:?}", header.alg)),
                        _ => AuthError::Malformed,
                    };
                    // A signature that verified means the key was right:
                    // its verdict on the claims stands.
                    if !matches!(last, AuthError::Signature | AuthError::Malformed) {
                        return Err(last);
                    }
                }
            }
        }
        Err(last)
    }
}

fn bearer(headers: &HeaderMap) -> Option<&str> {
    let v = headers.get(AUTHORIZATION)?.to_str().ok()?;
    let (scheme, token) = v.split_once(' ')?;
    scheme.eq_ignore_ascii_case("bearer").then(|| token.trim())
}

fn cookie<'a>(headers: &'a HeaderMap, name: &str) -> Option<&'a str> {
    headers
        .get_all(COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .filter_map(|kv| kv.trim().split_once('='))
        .find_map(|(k, v)| (k == name).then_some(v))
}

#[cfg(test)]
mod tests {
    use super::*;
    use jsonwebtoken::{EncodingKey, Header, encode};

    fn auth(secret: &str) -> Auth {
        let mut cfg = Config::default_for_tests();
        cfg.jwt_secret = Some(secret.into());
        Auth::from_config(&cfg).unwrap()
    }

    fn token(secret: &str, claims: serde_json::Value) -> String {
        encode(
            &Header::new(Algorithm::HS256),
            &claims,
            &EncodingKey::from_secret(secret.as_bytes()),
        )
        .unwrap()
    }

    fn now() -> u64 {
        SystemTime::now().duration_since(UNIX_EPOCH).unwrap().as_secs()
    }

    fn chans(names: &[&str]) -> Vec<Channel> {
        names.iter().map(|n| Channel::parse(n).unwrap()).collect()
    }

    #[test]
    fn patterns_grant_exact_names_and_prefixes() {
        let a = auth("s");
        let t = token(
            "s",
            serde_json::json!({"exp": now() + 60, "channels": ["user:42", "room:*"]}),
        );
        let mut h = HeaderMap::new();
        h.insert(AUTHORIZATION, format!("Bearer {t}").parse().unwrap());
        let access = a.reader(&h, None).unwrap();
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

    #[test]
    fn tokens_come_from_header_query_or_cookie() {
        let a = auth("s");
        let t = token("s", serde_json::json!({"exp": now() + 60}));
        let mut h = HeaderMap::new();
        h.insert(COOKIE, format!("other=1; ssegate_token={t}").parse().unwrap());
        assert!(a.reader(&h, None).is_ok());
        assert!(a.reader(&HeaderMap::new(), Some(&t)).is_ok());
        assert_eq!(
            a.reader(&HeaderMap::new(), None).unwrap_err(),
            AuthError::Missing("ssegate_token".into())
        );
    }

    #[test]
    fn api_keys_compare_whole_keys() {
        let mut cfg = Config::default_for_tests();
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("keys");
        std::fs::write(&path, "# backends\nkey-one\n\nkey-two\n").unwrap();
        cfg.publish_keys_file = Some(path);
        let a = Auth::from_config(&cfg).unwrap();
        assert!(a.is_api_key(b"key-one") && a.is_api_key(b"key-two"));
        assert!(!a.is_api_key(b"key-on") && !a.is_api_key(b"key-one1") && !a.is_api_key(b""));
    }

    #[test]
    fn redis_without_auth_needs_allow_anonymous() {
        let mut cfg = Config::default_for_tests();
        cfg.redis_url = Some("redis://127.0.0.1:1".into());
        assert!(matches!(
            Auth::from_config(&cfg),
            Err(SetupError::NoAuthWithRedis)
        ));
        cfg.allow_anonymous = true;
        assert!(!Auth::from_config(&cfg).unwrap().is_enforced());
        cfg.redis_url = None;
        cfg.allow_anonymous = false;
        assert!(
            !Auth::from_config(&cfg).unwrap().is_enforced(),
            "the embedded default is open"
        );
    }
}
