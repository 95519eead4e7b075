//! The subcommands behind `main`: `serve` and `publish`.

use std::process::ExitCode;

use bytes::Bytes;

use crate::app::Application;
use crate::broker::redis::{Topology, publish_once};
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

/// `ssegate publish <channel> <data>`: through Redis when `--redis-url` is
/// given (the same Redis Function as every other durable publish), else by
/// POST to a running node.
pub async fn publish(args: PublishArgs) -> ExitCode {
    let result = async {
        let channel = Channel::parse(&args.channel).map_err(|e| format!("invalid channel: {e}"))?;
        let payload = Bytes::from(args.data.into_bytes());
        parse_payload(payload.clone()).map_err(|e| format!("invalid envelope: {e}"))?;
        match &args.redis_url {
            Some(url) => {
                crate::tls::install_crypto_provider();
                let topology = Topology::new(url, args.redis_cluster, args.redis_sentinel_master.as_deref())
                    .map_err(|e| e.to_string())?;
                publish_once(&topology, &args.channel_prefix, &channel, payload)
                    .await
                    .map(|id| id.to_string())
                    .map_err(|e| e.to_string())
            }
            None => post(&args.url, &channel, payload).await,
        }
    }
    .await;
    match result {
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

async fn post(base: &str, channel: &Channel, payload: Bytes) -> Result<String, String> {
    use http_body_util::{BodyExt, Full};
    use hyper_util::client::legacy::Client;
    let uri: hyper::Uri = format!("{}/v1/stream/{channel}", base.trim_end_matches('/'))
        .parse()
        .map_err(|e| format!("invalid --url: {e}"))?;
    let client = Client::builder(hyper_util::rt::TokioExecutor::new()).build_http::<Full<Bytes>>();
    let req = hyper::Request::post(uri)
        .body(Full::new(payload))
        .map_err(|e| e.to_string())?;
    let resp = client
        .request(req)
        .await
        .map_err(|e| format!("cannot reach {base}: {e}"))?;
    let status = resp.status();
    let body = resp
        .into_body()
        .collect()
        .await
        .map_err(|e| e.to_string())?
        .to_bytes();
    let json: serde_json::Value = serde_json::from_slice(&body).unwrap_or_default();
    if status.as_u16() == 201 {
        json["id"]
            .as_str()
            .map(str::to_owned)
            .ok_or_else(|| "no id in the answer".into())
    } else {
        Err(format!("{status}: {}", String::from_utf8_lossy(&body)))
    }
}
