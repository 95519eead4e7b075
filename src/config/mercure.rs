//! The Mercure hub's flags (`--mercure*`), flattened into `Config`.

use clap::{Args, ValueEnum};

use super::{ConfigError, bad};

/// How a Mercure JWT key verifies tokens.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum MercureAlg {
    /// The key is a shared secret.
    #[value(name = "HS256")]
    Hs256,
    /// The key is an RSA public key (PEM).
    #[value(name = "RS256")]
    Rs256,
    /// The key is a P-256 public key (PEM).
    #[value(name = "ES256")]
    Es256,
}

#[derive(Debug, Clone, Args)]
pub struct MercureConfig {
    /// Serve a Mercure hub at /.well-known/mercure beside the native API.
    #[arg(long = "mercure", env = "SSEGATE_MERCURE", value_parser = clap::builder::BoolishValueParser::new(), default_value_t = false, num_args = 0..=1, default_missing_value = "true")]
    pub enabled: bool,

    /// Key that verifies publishers' JWTs: an HS256 secret, or with
    /// --mercure-publisher-jwt-alg RS256/ES256 a PEM public key (the PEM
    /// text, or a path to a PEM file). Required with --mercure.
    #[arg(long, env = "SSEGATE_MERCURE_PUBLISHER_JWT_KEY", hide_env_values = true)]
    pub mercure_publisher_jwt_key: Option<String>,

    /// Algorithm of --mercure-publisher-jwt-key.
    #[arg(
        long,
        env = "SSEGATE_MERCURE_PUBLISHER_JWT_ALG",
        value_enum,
        default_value = "HS256"
    )]
    pub mercure_publisher_jwt_alg: MercureAlg,

    /// Key that verifies subscribers' JWTs (default: the publisher key).
    #[arg(long, env = "SSEGATE_MERCURE_SUBSCRIBER_JWT_KEY", hide_env_values = true)]
    pub mercure_subscriber_jwt_key: Option<String>,

    /// Algorithm of --mercure-subscriber-jwt-key (default: the publisher key's
    /// when that key is used).
    #[arg(long, env = "SSEGATE_MERCURE_SUBSCRIBER_JWT_ALG", value_enum)]
    pub mercure_subscriber_jwt_alg: Option<MercureAlg>,

    /// Subscribers without a JWT receive public updates.
    #[arg(long, env = "SSEGATE_MERCURE_ANONYMOUS", value_parser = clap::builder::BoolishValueParser::new(), default_value_t = false, num_args = 0..=1, default_missing_value = "true")]
    pub mercure_anonymous: bool,

    /// The subscriptions API and subscription events.
    #[arg(long, env = "SSEGATE_MERCURE_SUBSCRIPTIONS", value_parser = clap::builder::BoolishValueParser::new(), default_value_t = false, num_args = 0..=1, default_missing_value = "true")]
    pub mercure_subscriptions: bool,

    /// Origins allowed by CORS on the hub (`*` for any), with credentials;
    /// comma-separated.
    #[arg(long, env = "SSEGATE_MERCURE_CORS_ORIGINS", value_delimiter = ',')]
    pub mercure_cors_origins: Vec<String>,

    /// Origins allowed to publish with the `mercureAuthorization` cookie
    /// (`*` for any); comma-separated. Without it cookie publishes are refused.
    #[arg(long, env = "SSEGATE_MERCURE_PUBLISH_ORIGINS", value_delimiter = ',')]
    pub mercure_publish_origins: Vec<String>,

    /// Updates kept in the shared Mercure log for resume; Redis trims
    /// approximately, and the embedded broker keeps --history-size updates.
    #[arg(long, env = "SSEGATE_MERCURE_HISTORY_SIZE", default_value_t = 10_000)]
    pub mercure_history_size: usize,
}

impl MercureConfig {
    pub fn validate(&self) -> Result<(), ConfigError> {
        if !self.enabled {
            return Ok(());
        }
        if self
            .mercure_publisher_jwt_key
            .as_deref()
            .is_none_or(str::is_empty)
        {
            return Err(bad(
                "mercure-publisher-jwt-key",
                "is required with --mercure (publishers need a JWT)",
            ));
        }
        if self.mercure_history_size == 0 {
            return Err(bad("mercure-history-size", "must be at least 1"));
        }
        for (flag, list) in [
            ("mercure-cors-origins", &self.mercure_cors_origins),
            ("mercure-publish-origins", &self.mercure_publish_origins),
        ] {
            for o in list.iter().filter(|o| *o != "*") {
                if !(o.starts_with("http://") || o.starts_with("https://")) || o.ends_with('/') {
                    return Err(bad(
                        flag,
                        format!("{o:?} is not an origin like https://app.example.com"),
                    ));
                }
            }
        }
        Ok(())
    }
}
