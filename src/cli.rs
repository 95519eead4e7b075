//! The subcommands behind `main`: `serve` and `publish`.

use std::process::ExitCode;
use std::time::Duration;

use bytes::Bytes;

use crate::app::Application;
use crate::broker::redis::{Publisher, RedisSettings};
use crate::broker::{BrokerError, IdempotencyKey, Retention};
use crate::config::{Config, PublishArgs};
use crate::sse::{Channel, parse_payload};

pub async fn serve(config: Config) -> ExitCode {
    crate::telemetry::init(config.log_format);
    let app = match Application::build(config).await {
        Ok(app) => app,
        Err(e) => {
            tracing::error!(error = %e, "cannot start");
            eprintln!("ssegate: {e}");
            return ExitCode::FAILURE;
        }
    };
    match app.run_until(crate::shutdown::signal()).await {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("ssegate: {e}");
            ExitCode::FAILURE
        }
    }
}

/// Why one attempt failed, and whether another may succeed.
enum Failure {
    /// Nothing happened, or maybe it did: the same key makes a retry safe.
    Retry(String),
    Final(String),
}

/// `ssegate publish <channel> <data>`: through Redis when `--redis-url` is
/// given (the same Redis Function as every other durable publish), else by
/// POST to a running node. Every attempt carries the same idempotency key,
/// so retrying after a timeout publishes at most once.
pub async fn publish(args: PublishArgs) -> ExitCode {
    match publish_with_retries(&args).await {
        Ok(id) => {
            println!("{id}");
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("ssegate publish: {e}");
            ExitCode::FAILURE
        }
    }
}

async fn publish_with_retries(args: &PublishArgs) -> Result<String, String> {
    let channel = Channel::parse(&args.channel).map_err(|e| format!("invalid channel: {e}"))?;
    let payload = Bytes::from(args.data.clone().into_bytes());
    parse_payload(payload.clone()).map_err(|e| format!("invalid envelope: {e}"))?;
    let key = match &args.idempotency_key {
        Some(k) => IdempotencyKey::parse(k.as_bytes())
            .ok_or("invalid --idempotency-key: 1 to 255 visible ASCII characters")?,
        None => random_key(),
    };
    let attempts = args.attempts.max(1);
    let mut delay = Duration::from_millis(200);
    let mut publisher = None;
    for attempt in 1..=attempts {
        let outcome = match &args.redis_url {
            Some(url) => through_redis(args, url, &mut publisher, &channel, &payload, &key).await,
            None => through_node(&args.url, &channel, payload.clone(), &key, args.redis_timeout).await,
        };
        match outcome {
            Ok(id) => return Ok(id),
            Err(Failure::Final(e)) => return Err(e),
            Err(Failure::Retry(e)) if attempt == attempts => {
                return Err(format!("{e} (after {attempts} attempts)"));
            }
            Err(Failure::Retry(e)) => {
                eprintln!("ssegate publish: attempt {attempt} failed ({e}); retrying with the same key");
                tokio::time::sleep(delay).await;
                delay = (delay * 2).min(Duration::from_secs(5));
            }
        }
    }
    unreachable!("the last attempt returns")
}

fn random_key() -> IdempotencyKey {
    let key = format!("ssegate-cli-{:032x}", rand::random::<u128>());
    IdempotencyKey::parse(key.as_bytes()).expect("a valid key")
}

async fn through_redis(
    args: &PublishArgs,
    url: &str,
    publisher: &mut Option<Publisher>,
    channel: &Channel,
    payload: &[u8],
    key: &IdempotencyKey,
) -> Result<String, Failure> {
    if publisher.is_none() {
        crate::tls::install_crypto_provider();
        let settings = RedisSettings {
            url: url.to_owned(),
            cluster: args.redis_cluster,
            sentinel_master: args.redis_sentinel_master.clone(),
            pool_size: 1,
            prefix: args.channel_prefix.clone(),
            retention: Retention {
                size: 1,
                ttl: Duration::ZERO,
            },
            timeout: args.redis_timeout,
        };
        *publisher = Some(Publisher::connect(&settings).await.map_err(failure)?);
    }
    let p = publisher.as_ref().expect("connected above");
    match p.publish(channel, payload, Some(key)).await {
        Ok(published) => Ok(published.id.to_string()),
        Err(e) => Err(failure(e)),
    }
}

fn failure(e: BrokerError) -> Failure {
    match e {
        BrokerError::Unavailable(_) | BrokerError::OutcomeUnknown(_) => Failure::Retry(e.to_string()),
        e => Failure::Final(e.to_string()),
    }
}

async fn through_node(
    base: &str,
    channel: &Channel,
    payload: Bytes,
    key: &IdempotencyKey,
    timeout: Duration,
) -> Result<String, Failure> {
    use http_body_util::{BodyExt, Full};
    use hyper_util::client::legacy::Client;
    let uri: hyper::Uri = format!("{}/v1/stream/{channel}", base.trim_end_matches('/'))
        .parse()
        .map_err(|e| Failure::Final(format!("invalid --url: {e}")))?;
    let client = Client::builder(hyper_util::rt::TokioExecutor::new()).build_http::<Full<Bytes>>();
    let req = hyper::Request::post(uri)
        .header(crate::http::IDEMPOTENCY_KEY, key.as_str())
        .body(Full::new(payload))
        .map_err(|e| Failure::Final(e.to_string()))?;
    let exchange = async {
        let resp = client
            .request(req)
            .await
            .map_err(|e| Failure::Retry(format!("cannot reach {base}: {e}")))?;
        let status = resp.status();
        let body = resp
            .into_body()
            .collect()
            .await
            .map_err(|e| Failure::Retry(e.to_string()))?
            .to_bytes();
        Ok::<_, Failure>((status, body))
    };
    let (status, body) = tokio::time::timeout(timeout, exchange)
        .await
        .map_err(|_| Failure::Retry(format!("no answer from {base} within {timeout:?}")))??;
    let json: serde_json::Value = serde_json::from_slice(&body).unwrap_or_default();
    match status.as_u16() {
        201 => json["id"]
            .as_str()
            .map(str::to_owned)
            .ok_or_else(|| Failure::Final("no id in the answer".into())),
        502..=504 => Err(Failure::Retry(format!(
            "{status}: {}",
            String::from_utf8_lossy(&body)
        ))),
        _ => Err(Failure::Final(format!(
            "{status}: {}",
            String::from_utf8_lossy(&body)
        ))),
    }
}
