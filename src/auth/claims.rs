//! A verified token's claims, read by hand from the JSON object so that
//! every wrong type or size gets an error that names the claim, and no
//! value can overflow a clock or a buffer later on. `jsonwebtoken` has
//! already checked `exp`, `nbf`, `aud` and `iss` against the time and the
//! configuration; `iat` is not used.

use serde_json::{Map, Value};

use super::{Access, AuthError, Pattern};

/// Most patterns one token may carry in `channels`, and in `publish`: a
/// grant is checked against every pattern on every request, so a token
/// cannot make that cost grow without bound.
pub const MAX_PATTERNS: usize = 256;

/// Latest expiry kept: 9999-12-31T23:59:59Z. Later dates (up to 2^64 - 1
/// seconds) are valid claims, but no clock can represent them: they mean
/// "never" and are capped here.
pub const MAX_EXPIRY_SECS: u64 = 253_402_300_799;

pub(super) fn access(claims: &Map<String, Value>) -> Result<Access, AuthError> {
    let exp = claims
        .get("exp")
        .ok_or_else(|| AuthError::MissingClaim("exp".into()))?;
    let subject = match claims.get("sub") {
        None | Some(Value::Null) => None,
        // As long as a channel name at most: it is shown in presence.
        Some(Value::String(s)) if s.len() <= 200 => Some(s.clone()),
        Some(_) => return Err(AuthError::NotASubject),
    };
    Ok(Access::Token {
        read: patterns(claims, "channels")?,
        publish: patterns(claims, "publish")?,
        presence: patterns(claims, "presence")?,
        subject,
        expires: numeric_date(exp).ok_or(AuthError::NotADate("exp"))?,
    })
}

/// Seconds since the epoch (RFC 7519 NumericDate: an integer or a
/// fraction, rounded as `jsonwebtoken` does), capped at `MAX_EXPIRY_SECS`.
pub(super) fn numeric_date(v: &Value) -> Option<u64> {
    let Value::Number(n) = v else { return None };
    let secs = match (n.as_u64(), n.as_f64()) {
        (Some(u), _) => u,
        // `as` saturates: values past u64::MAX become u64::MAX, then capped.
        (None, Some(f)) if f.is_finite() && f >= 0.0 => f.round() as u64,
        _ => return None,
    };
    Some(secs.min(MAX_EXPIRY_SECS))
}

/// An absent or `null` claim grants nothing; anything but an array of at
/// most `MAX_PATTERNS` strings is refused.
fn patterns(claims: &Map<String, Value>, claim: &'static str) -> Result<Vec<Pattern>, AuthError> {
    let items = match claims.get(claim) {
        None | Some(Value::Null) => return Ok(Vec::new()),
        Some(Value::Array(items)) => items,
        Some(_) => return Err(AuthError::NotPatterns(claim)),
    };
    if items.len() > MAX_PATTERNS {
        return Err(AuthError::TooManyPatterns(claim));
    }
    items
        .iter()
        .map(|v| {
            v.as_str()
                .map(Pattern::parse)
                .ok_or(AuthError::NotPatterns(claim))
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn parse(v: Value) -> Result<Access, AuthError> {
        access(v.as_object().unwrap())
    }

    fn expires(v: Value) -> u64 {
        match parse(json!({ "exp": v })).unwrap() {
            Access::Token { expires, .. } => expires,
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn expiry_dates_are_capped_and_fractions_rounded() {
        assert_eq!(expires(json!(1_700_000_000u64)), 1_700_000_000);
        assert_eq!(expires(json!(1_700_000_000.6)), 1_700_000_001);
        assert_eq!(expires(json!(1u64 << 63)), MAX_EXPIRY_SECS);
        assert_eq!(expires(json!(u64::MAX)), MAX_EXPIRY_SECS);
        assert_eq!(expires(json!(1e300)), MAX_EXPIRY_SECS);
    }

    #[test]
    fn an_expiry_that_is_not_a_date_is_named() {
        for bad in [
            json!("tomorrow"),
            json!(-1),
            json!(-0.5),
            json!(null),
            json!([1]),
            json!({}),
        ] {
            assert_eq!(
                parse(json!({ "exp": bad })).unwrap_err(),
                AuthError::NotADate("exp"),
                "{bad}"
            );
        }
        assert_eq!(
            parse(json!({"channels": ["c"]})).unwrap_err(),
            AuthError::MissingClaim("exp".into())
        );
    }

    #[test]
    fn a_far_expiry_is_a_time_far_ahead() {
        let far = std::time::UNIX_EPOCH + std::time::Duration::from_secs(MAX_EXPIRY_SECS);
        for expires in [MAX_EXPIRY_SECS, 1 << 63, u64::MAX] {
            let a = Access::Token {
                read: vec![],
                publish: vec![],
                presence: vec![],
                subject: None,
                expires,
            };
            assert_eq!(a.expires_at(), Some(far), "{expires}");
        }
    }

    #[test]
    fn patterns_must_be_an_array_of_at_most_256_strings() {
        let exp = 1_700_000_000u64;
        let ok: Vec<String> = (0..MAX_PATTERNS).map(|i| format!("c{i}")).collect();
        let Access::Token { read, publish, .. } = parse(json!({"exp": exp, "channels": ok})).unwrap() else {
            panic!()
        };
        assert_eq!((read.len(), publish.len()), (MAX_PATTERNS, 0));
        let too_many: Vec<String> = (0..=MAX_PATTERNS).map(|i| format!("c{i}")).collect();
        for claim in ["channels", "publish"] {
            assert_eq!(
                parse(json!({"exp": exp, claim: too_many})).unwrap_err(),
                AuthError::TooManyPatterns(claim)
            );
            for bad in [
                json!("c"),
                json!([1]),
                json!(["c", null]),
                json!([["c"]]),
                json!({"c": 1}),
            ] {
                assert_eq!(
                    parse(json!({"exp": exp, claim: bad})).unwrap_err(),
                    AuthError::NotPatterns(claim),
                    "{claim}: {bad}"
                );
            }
        }
        assert!(parse(json!({"exp": exp, "channels": null, "publish": []})).is_ok());
    }

    #[test]
    fn the_messages_name_the_claim_and_the_rule() {
        let msg = AuthError::TooManyPatterns("channels").to_string();
        assert!(msg.contains("`channels`") && msg.contains("256"), "{msg}");
        let msg = AuthError::NotPatterns("publish").to_string();
        assert!(
            msg.contains("`publish`") && msg.contains("array of strings"),
            "{msg}"
        );
        let msg = AuthError::NotADate("nbf").to_string();
        assert!(msg.contains("`nbf`") && msg.contains("seconds"), "{msg}");
    }
}
