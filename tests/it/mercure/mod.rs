//! The Mercure hub (`--mercure`) against real nodes: every bad input with
//! the reference hub's status and body, updates across nodes through
//! Redis in order with resume from history, and the subscriptions API with
//! its events. The browser tests are in tests/it/browser/mercure.rs.

mod api;
mod cluster;

use serde_json::Value;
use ssegate::Config;

use crate::helpers::*;

pub const KEY: &str = "!ChangeThisMercureHubJWTSecretKey!";
pub const HUB: &str = "/.well-known/mercure";

/// An HS256 token signed with `KEY`.
pub fn token(claims: Value) -> String {
    jsonwebtoken::encode(
        &jsonwebtoken::Header::default(),
        &claims,
        &jsonwebtoken::EncodingKey::from_secret(KEY.as_bytes()),
    )
    .unwrap()
}

pub fn publisher() -> String {
    token(serde_json::json!({"mercure": {"publish": ["*"]}}))
}

/// A node config with the hub on, keyed with `KEY`.
pub fn mercure_config(redis: Option<&RedisServer>) -> Config {
    let mut c = config(redis);
    c.mercure.enabled = true;
    c.mercure.mercure_publisher_jwt_key = Some(KEY.into());
    c.mercure.mercure_anonymous = true;
    c
}

/// A raw publish: status, content type and body.
pub async fn publish_raw(url: &str, form: &[(&str, &str)], bearer: Option<&str>) -> (u16, String, String) {
    let mut req = reqwest::Client::new().post(url).form(form);
    if let Some(t) = bearer {
        req = req.bearer_auth(t);
    }
    let resp = req.send().await.unwrap();
    let status = resp.status().as_u16();
    let ct = resp
        .headers()
        .get("content-type")
        .map(|v| v.to_str().unwrap().to_owned())
        .unwrap_or_default();
    (status, ct, resp.text().await.unwrap())
}

/// Publishes an update; returns its id.
pub async fn publish(node: &str, form: &[(&str, &str)]) -> String {
    let (status, _, body) = publish_raw(&format!("{node}{HUB}"), form, Some(&publisher())).await;
    assert_eq!(status, 200, "publish: {body}");
    body
}

/// The hub's URL on `node` with these query pairs.
pub fn hub_url(node: &str, query: &[(&str, &str)]) -> String {
    let q: String = form_urlencoded::Serializer::new(String::new())
        .extend_pairs(query)
        .finish();
    format!("{node}{HUB}?{q}")
}
