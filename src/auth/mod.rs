//! Who may read and publish which channel. Tokens are JWTs verified with
//! `jsonwebtoken` (HS256 secret, RS256/ES256/EdDSA public key from a PEM
//! file, keys from a JWKS file or URL); publishers may also use static API
//! keys.
//!
//! Every key is tried only with its own algorithm, so a token cannot
//! choose how it is checked (no `alg: none`, no HS256 signed with a public
//! key). Error messages say what is wrong with the token, never anything
//! about the keys. No claim value, however large or oddly typed, can panic:
//! the claims are read by hand (`claims`) with a clear error for each.

mod claims;
mod jwks_url;
mod keys;

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use axum::http::HeaderMap;
use axum::http::header::{AUTHORIZATION, COOKIE};
use jsonwebtoken::errors::ErrorKind;
use jsonwebtoken::{Algorithm, Header, Validation};
use serde_json::{Map, Value};

pub use claims::{MAX_EXPIRY_SECS, MAX_PATTERNS};
use jwks_url::RemoteKeys;
use keys::{ApiKeys, Key, jwks_keys, pem_key, read_file};

use crate::config::Config;
use crate::metrics::Metrics;
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
    #[error("--jwks-url: {0}")]
    JwksUrl(String),
    #[error("--publish-keys-file: {0} holds no key")]
    NoApiKeys(String),
    #[error(
        "refusing to start: Redis is configured but no authentication is (--jwt-secret, --jwt-public-key, \
         --jwks-file, --jwks-url or --publish-keys-file); pass --allow-anonymous to let everyone read and \
         publish every channel"
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
    #[error("token claim `{0}` is not a date: it must be a number of seconds since the epoch")]
    NotADate(&'static str),
    #[error("the token's `sub` claim must be a string of at most 200 bytes")]
    NotASubject,
    #[error("token claim `{0}` must be an array of strings (channel names or patterns)")]
    NotPatterns(&'static str),
    #[error("token claim `{0}` holds more than {MAX_PATTERNS} patterns, the most one token may carry")]
    TooManyPatterns(&'static str),
    #[error("token algorithm {0} is not accepted here")]
    Algorithm(String),
    #[error("token key id (kid) is not accepted here")]
    UnknownKey,
    #[error("malformed token")]
    Malformed,
    #[error("the token does not grant reading channel {0:?}")]
    ReadForbidden(String),
    #[error("the token does not grant publishing to channel {0:?}")]
    PublishForbidden(String),
    #[error("the token does not grant reading the presence of channel {0:?}")]
    PresenceForbidden(String),
}

impl AuthError {
    /// 403 for a valid token without the grant, 401 for everything else.
    pub fn is_forbidden(&self) -> bool {
        matches!(
            self,
            AuthError::ReadForbidden(_) | AuthError::PublishForbidden(_) | AuthError::PresenceForbidden(_)
        )
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
        /// `presence`: channels whose presence the token may read.
        presence: Vec<Pattern>,
        /// `sub`: who the client is, as presence shows it.
        subject: Option<String>,
        /// `exp`, seconds since the epoch.
        expires: u64,
    },
}

impl Access {
    /// Every channel must be granted, or the request is refused whole.
    pub fn check_read(&self, channels: &[Channel]) -> Result<(), AuthError> {
        let forbidden = |c: &Channel| Err(AuthError::ReadForbidden(c.to_string()));
        match self {
            Access::Anonymous => Ok(()),
            Access::ApiKey => channels.first().map_or(Ok(()), forbidden),
            Access::Token { read, .. } => channels
                .iter()
                .find(|c| !read.iter().any(|p| p.matches(c.as_str())))
                .map_or(Ok(()), forbidden),
        }
    }

    pub fn check_publish(&self, channel: &Channel) -> Result<(), AuthError> {
        match self {
            Access::Anonymous | Access::ApiKey => Ok(()),
            Access::Token { publish, .. } if publish.iter().any(|p| p.matches(channel.as_str())) => Ok(()),
            Access::Token { .. } => Err(AuthError::PublishForbidden(channel.to_string())),
        }
    }

    /// Whether presence of `channel` may be read (the `presence` claim;
    /// everyone in anonymous mode).
    pub fn check_presence(&self, channel: &Channel) -> Result<(), AuthError> {
        match self {
            Access::Anonymous => Ok(()),
            Access::Token { presence, .. } if presence.iter().any(|p| p.matches(channel.as_str())) => Ok(()),
            _ => Err(AuthError::PresenceForbidden(channel.to_string())),
        }
    }

    /// Who the client is in presence: the token's `sub`, else "anonymous".
    pub fn client_id(&self) -> &str {
        match self {
            Access::Token { subject: Some(s), .. } => s,
            _ => "anonymous",
        }
    }

    /// When a stream opened with this access must close. Expiry dates past
    /// `MAX_EXPIRY_SECS` (which no clock may represent) are that date.
    pub fn expires_at(&self) -> Option<SystemTime> {
        match self {
            Access::Token { expires, .. } => {
                let secs = (*expires).min(MAX_EXPIRY_SECS);
                Some(
                    UNIX_EPOCH
                        .checked_add(Duration::from_secs(secs))
                        .unwrap_or(UNIX_EPOCH),
                )
            }
            _ => None,
        }
    }
}

pub struct Auth {
    enforced: bool,
    keys: Vec<Key>,
    remote: Option<RemoteKeys>,
    api_keys: ApiKeys,
    audience: Vec<String>,
    issuer: Vec<String>,
    cookie: String,
}

impl Auth {
    /// Loads the configured keys; with `--jwks-url`, fetches the provider's
    /// set first (a node that cannot get it does not start) and keeps it
    /// fresh in the background, counted in `metrics`.
    pub async fn from_config(cfg: &Config, metrics: &Metrics) -> Result<Auth, SetupError> {
        let mut keys = Vec::new();
        if let Some(secret) = &cfg.jwt_secret {
            keys.push(Key {
                kid: None,
                alg: Algorithm::HS256,
                key: jsonwebtoken::DecodingKey::from_secret(secret.as_bytes()),
            });
        }
        if let Some(path) = &cfg.jwt_public_key {
            keys.push(pem_key(
                &read_file("--jwt-public-key", path)?,
                &path.display().to_string(),
            )?);
        }
        if let Some(path) = &cfg.jwks_file {
            keys.extend(jwks_keys(&read_file("--jwks-file", path)?).map_err(SetupError::Jwks)?);
        }
        let api_keys = match &cfg.publish_keys_file {
            Some(path) => ApiKeys::load(path)?,
            None => ApiKeys::none(),
        };
        let configured = !keys.is_empty() || cfg.jwks_url.is_some() || !api_keys.is_empty();
        if !configured && cfg.redis_url.is_some() && !cfg.allow_anonymous {
            return Err(SetupError::NoAuthWithRedis);
        }
        let remote = match &cfg.jwks_url {
            Some(_) if cfg.allow_anonymous => None,
            Some(url) => Some(RemoteKeys::start(url, cfg.jwks_min_refresh, metrics).await?),
            None => None,
        };
        if configured && cfg.allow_anonymous {
            tracing::warn!("--allow-anonymous is set: the configured keys are ignored and access is open");
        }
        Ok(Auth {
            enforced: configured && !cfg.allow_anonymous,
            keys,
            remote,
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
    pub async fn reader(&self, headers: &HeaderMap, query_token: Option<&str>) -> Result<Access, AuthError> {
        if !self.enforced {
            return Ok(Access::Anonymous);
        }
        let token = bearer(headers)
            .or(query_token)
            .or_else(|| cookie(headers, &self.cookie))
            .ok_or_else(|| AuthError::Missing(self.cookie.clone()))?;
        self.verify(token).await
    }

    /// A publisher's access: `Authorization: Bearer` with an API key or a
    /// token.
    pub async fn publisher(&self, headers: &HeaderMap) -> Result<Access, AuthError> {
        if !self.enforced {
            return Ok(Access::Anonymous);
        }
        let token = bearer(headers).ok_or(AuthError::MissingPublisher)?;
        if self.api_keys.contains(token.as_bytes()) {
            return Ok(Access::ApiKey);
        }
        self.verify(token).await
    }

    /// Verifies with the keys at hand; a token that fails and names a key
    /// id the provider's set lacks may be signed with a key the provider
    /// has just published: the set is fetched again (rate-limited, waited
    /// for within bounds) and the token verified once more.
    async fn verify(&self, token: &str) -> Result<Access, AuthError> {
        let header = jsonwebtoken::decode_header(token).map_err(|_| AuthError::Malformed)?;
        let Some(remote) = &self.remote else {
            return self.verify_with(token, &header, &[]);
        };
        let set = remote.current();
        let first = self.verify_with(token, &header, &set.keys);
        let rotated = matches!(
            first,
            Err(AuthError::UnknownKey | AuthError::Algorithm(_) | AuthError::Signature)
        );
        match &header.kid {
            Some(kid) if rotated && !set.has_kid(kid) => match remote.refresh_for_unknown_kid(&set).await {
                Some(newer) => self.verify_with(token, &header, &newer.keys),
                None => first,
            },
            _ => first,
        }
    }

    fn verify_with(&self, token: &str, header: &Header, remote: &[Key]) -> Result<Access, AuthError> {
        let of_alg: Vec<&Key> = self
            .keys
            .iter()
            .chain(remote)
            .filter(|k| k.alg == header.alg)
            .collect();
        let candidates: Vec<&Key> = of_alg
            .iter()
            .copied()
            .filter(|k| match (&header.kid, &k.kid) {
                (Some(want), Some(have)) => want == have,
                _ => true,
            })
            .collect();
        if candidates.is_empty() {
            return Err(if of_alg.is_empty() {
                AuthError::Algorithm(format!("{:?}", header.alg))
            } else {
                AuthError::UnknownKey
            });
        }
        let mut last = AuthError::Signature;
        for k in candidates {
            match jsonwebtoken::decode::<Map<String, Value>>(token, &k.key, &self.validation(k.alg)) {
                // A signature that verified means the key was right: its
                // verdict on the claims stands.
                Ok(data) => return claims::access(&data.claims),
                Err(e) => {
                    last = match e.kind() {
                        ErrorKind::ExpiredSignature => AuthError::Expired,
                        ErrorKind::ImmatureSignature => AuthError::NotYetValid,
                        ErrorKind::InvalidAudience => AuthError::Audience,
                        ErrorKind::InvalidIssuer => AuthError::Issuer,
                        ErrorKind::InvalidSignature => AuthError::Signature,
                        ErrorKind::MissingRequiredClaim(c) => AuthError::MissingClaim(c.clone()),
                        ErrorKind::InvalidClaimFormat(c) if c == "exp" => AuthError::NotADate("exp"),
                        ErrorKind::InvalidClaimFormat(c) if c == "nbf" => AuthError::NotADate("nbf"),
                        ErrorKind::InvalidAlgorithm => AuthError::Algorithm(format!("{:?}", header.alg)),
                        ErrorKind::Json(_) => claims_problem(token),
                        _ => AuthError::Malformed,
                    };
                    if !matches!(last, AuthError::Signature | AuthError::Malformed) {
                        return Err(last);
                    }
                }
            }
        }
        Err(last)
    }

    fn validation(&self, alg: Algorithm) -> Validation {
        let mut v = Validation::new(alg);
        v.leeway = LEEWAY_SECS;
        v.validate_nbf = true;
        // `exp` is required, but by `claims::access`: here a wrong type would
        // read as a missing claim, there it gets its own message.
        v.set_required_spec_claims::<&str>(&[]);
        v.validate_exp = true;
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
        v
    }
}

/// The claims of a token whose signature verified (`jsonwebtoken` checks
/// it before it reads them) did not read: names the claim at fault when it
/// is a date of the wrong type, such as an object.
fn claims_problem(token: &str) -> AuthError {
    let Ok(claims) = jsonwebtoken::dangerous::insecure_decode_claims::<Map<String, Value>>(token) else {
        return AuthError::Malformed;
    };
    ["exp", "nbf"]
        .into_iter()
        .find(|c| claims.get(*c).is_some_and(|v| claims::numeric_date(v).is_none()))
        .map_or(AuthError::Malformed, AuthError::NotADate)
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
mod tests;
