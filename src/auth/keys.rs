//! Keys that verify tokens (from a PEM file or a JSON Web Key Set) and the
//! static publisher API keys. Parsing only: which key checks which token is
//! decided in `mod.rs`.

use std::path::Path;
use std::str::FromStr;

use jsonwebtoken::jwk::{AlgorithmParameters, EllipticCurve, Jwk, KeyAlgorithm, PublicKeyUse};
use jsonwebtoken::{Algorithm, DecodingKey};
use serde::Deserialize;
use sha2::{Digest, Sha256};
use subtle::{Choice, ConstantTimeEq};

use super::SetupError;

/// One verification key, tried only with its own algorithm.
pub(super) struct Key {
    pub kid: Option<String>,
    pub alg: Algorithm,
    pub key: DecodingKey,
}

pub(super) fn read_file(flag: &'static str, path: &Path) -> Result<Vec<u8>, SetupError> {
    std::fs::read(path).map_err(|source| SetupError::Read {
        flag,
        path: path.display().to_string(),
        source,
    })
}

pub(super) fn pem_key(pem: &[u8], path: &str) -> Result<Key, SetupError> {
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

/// The set's outline: its keys are parsed one by one, so that one key of a
/// type this version does not know (a provider may publish a new kind
/// beside the ones it signs with) does not cost the others.
#[derive(Deserialize)]
struct RawSet {
    keys: Vec<serde_json::Value>,
}

/// The signing keys of a JSON Web Key Set. Keys that cannot verify tokens
/// here (encryption keys, unknown types or algorithms, bad values) are
/// skipped with a warning; a set left with no key is an error.
pub(super) fn jwks_keys(json: &[u8]) -> Result<Vec<Key>, String> {
    let set: RawSet = serde_json::from_slice(json).map_err(|e| format!("not a JWK set: {e}"))?;
    let mut keys = Vec::new();
    for raw in set.keys {
        let kid = raw.get("kid").and_then(|k| k.as_str()).map(str::to_owned);
        match jwk_key(raw) {
            Ok(Some(key)) => keys.push(key),
            Ok(None) => tracing::debug!(?kid, "skipping a JWK meant for encryption"),
            Err(why) => tracing::warn!(?kid, why, "skipping a JWK that cannot verify tokens"),
        }
    }
    if keys.is_empty() {
        return Err("no usable key in the set".into());
    }
    Ok(keys)
}

fn jwk_key(raw: serde_json::Value) -> Result<Option<Key>, String> {
    let jwk: Jwk = serde_json::from_value(raw).map_err(|e| format!("not a JWK: {e}"))?;
    if matches!(jwk.common.public_key_use, Some(PublicKeyUse::Encryption)) {
        return Ok(None);
    }
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
    }
    .ok_or("unsupported algorithm")?;
    let key = DecodingKey::from_jwk(&jwk).map_err(|e| format!("bad key: {e}"))?;
    Ok(Some(Key {
        kid: jwk.common.key_id.clone(),
        alg,
        key,
    }))
}

fn key_algorithm(ka: &KeyAlgorithm) -> Option<Algorithm> {
    Algorithm::from_str(&format!("{ka:?}")).ok()
}

/// Static publisher keys, kept as SHA-256 digests: a candidate is hashed
/// and compared in constant time with every key, so neither the time taken
/// nor the lengths involved say how much of a key a guess got right.
pub(super) struct ApiKeys(Vec<[u8; 32]>);

impl ApiKeys {
    pub fn none() -> ApiKeys {
        ApiKeys(Vec::new())
    }

    /// One key per line; blank lines and `#` comments are skipped.
    pub fn load(path: &Path) -> Result<ApiKeys, SetupError> {
        let text = read_file("--publish-keys-file", path)?;
        let keys: Vec<[u8; 32]> = String::from_utf8_lossy(&text)
            .lines()
            .map(str::trim)
            .filter(|l| !l.is_empty() && !l.starts_with('#'))
            .map(|l| digest(l.as_bytes()))
            .collect();
        if keys.is_empty() {
            return Err(SetupError::NoApiKeys(path.display().to_string()));
        }
        Ok(ApiKeys(keys))
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// Compares against every key without stopping at a match.
    pub fn contains(&self, candidate: &[u8]) -> bool {
        let wanted = digest(candidate);
        let found = self
            .0
            .iter()
            .fold(Choice::from(0), |found, k| found | k.ct_eq(&wanted));
        found.into()
    }
}

fn digest(b: &[u8]) -> [u8; 32] {
    Sha256::digest(b).into()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn api_keys(text: &str) -> ApiKeys {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("keys");
        std::fs::write(&path, text).unwrap();
        ApiKeys::load(&path).unwrap()
    }

    #[test]
    fn api_keys_compare_whole_keys() {
        let a = api_keys("# backends\nkey-one\n\nkey-two\n");
        assert!(a.contains(b"key-one") && a.contains(b"key-two"));
        assert!(!a.contains(b"key-on") && !a.contains(b"key-one1") && !a.contains(b""));
    }

    #[test]
    fn a_key_followed_by_any_number_of_bytes_is_not_the_key() {
        let a = api_keys("key-one\n");
        for extra in [1, 255, 256, 257, 512, 65536] {
            let mut longer = b"key-one".to_vec();
            longer.extend(std::iter::repeat_n(b'A', extra));
            assert!(!a.contains(&longer), "key-one followed by {extra} bytes");
            let mut zeros = b"key-one".to_vec();
            zeros.extend(std::iter::repeat_n(0u8, extra));
            assert!(!a.contains(&zeros), "key-one followed by {extra} NUL bytes");
        }
    }

    #[test]
    fn a_file_of_comments_holds_no_key() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("keys");
        std::fs::write(&path, "# nothing\n\n").unwrap();
        assert!(matches!(ApiKeys::load(&path), Err(SetupError::NoApiKeys(_))));
    }

    #[test]
    fn a_key_set_keeps_its_signing_keys_and_skips_the_others() {
        let set = serde_json::json!({"keys": [
            {"kty": "oct", "kid": "h", "k": "c2VjcmV0", "alg": "HS256"},
            {"kty": "oct", "kid": "enc", "k": "c2VjcmV0", "use": "enc"},
            {"kty": "future-kind", "kid": "new"},
            {"kty": "EC", "kid": "bad", "crv": "P-256", "x": "!!", "y": "!!"},
            "not even an object"
        ]});
        let keys = jwks_keys(set.to_string().as_bytes()).unwrap();
        let kids: Vec<_> = keys.iter().map(|k| k.kid.as_deref()).collect();
        assert_eq!(kids, [Some("h")]);
        assert_eq!(keys[0].alg, Algorithm::HS256);
    }

    #[test]
    fn a_set_without_a_usable_key_is_refused() {
        for bad in [
            &b"<html>down for maintenance</html>"[..],
            br#"{"keys": []}"#,
            br#"{"keys": [{"kty": "oct", "use": "enc", "k": "c2VjcmV0"}]}"#,
            br#"{"no": "keys"}"#,
        ] {
            assert!(jwks_keys(bad).is_err(), "{}", String::from_utf8_lossy(bad));
        }
    }
}
