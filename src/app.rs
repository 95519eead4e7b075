//! The application factory: builds the state (metrics, hub, broker, auth),
//! binds the listener, hands it to the server until a shutdown future
//! fires, then stops the background tasks. Tests start real nodes with
//! `Application::build` on port 0.

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;

use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

use crate::auth::Auth;
use crate::broker::memory::MemoryBroker;
use crate::broker::redis::{RedisBroker, RedisSettings};
use crate::broker::{Retention, SharedBroker};
use crate::config::Config;
use crate::http::server::{Gate, Server};
use crate::hub::Hub;
use crate::limits::IpRate;
use crate::metrics::Metrics;
use crate::state::{AppState, Occupancy};

#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error(transparent)]
    Config(#[from] crate::config::ConfigError),
    #[error("cannot listen on {addr}: {source}")]
    Bind {
        addr: SocketAddr,
        source: std::io::Error,
    },
    #[error("cannot start the Redis broker: {0}")]
    Redis(crate::broker::BrokerError),
    #[error(transparent)]
    Auth(#[from] crate::auth::SetupError),
    #[error(transparent)]
    Tls(#[from] crate::tls::TlsError),
    #[error(transparent)]
    Mercure(#[from] crate::mercure::KeyError),
    #[error(transparent)]
    Source(#[from] crate::sources::SpecError),
    #[error("cannot start {0}")]
    SourceStart(crate::sources::SourceError),
    #[error(
        "invalid --max-connections (SSEGATE_MAX_CONNECTIONS): {max_connections} connections need {needed} open \
         files (Redis, refusals and files take the rest), and this process may open {file_limit}: lower it \
         or raise the hard limit (ulimit -Hn)"
    )]
    FileLimit {
        max_connections: usize,
        needed: u64,
        file_limit: u64,
    },
}

pub struct Application {
    server: Server,
    state: AppState,
    /// Stops the node's background tasks (broker, heartbeats).
    tasks: CancellationToken,
}

impl Application {
    pub async fn build(config: Config) -> Result<Application, StartError> {
        config.validate()?;
        let sources = crate::sources::parse_all(&config.sources)?;
        crate::tls::install_crypto_provider();
        let metrics = Metrics::new();
        let auth = Auth::from_config(&config, &metrics).await?;
        let tls = match (&config.tls_cert, &config.tls_key) {
            (Some(cert), Some(key)) => Some(crate::tls::acceptor(cert, key)?),
            _ => None,
        };
        let file_limit = crate::http::server::raise_file_limit();
        let max_connections = config
            .max_connections
            .unwrap_or_else(|| crate::http::server::default_max_connections(file_limit));
        let needed = max_connections as u64 + crate::http::server::RESERVED_FDS;
        if needed > file_limit {
            return Err(StartError::FileLimit {
                max_connections,
                needed,
                file_limit,
            });
        }
        let occupancy = Arc::new(Occupancy::new(max_connections));
        let ip_rate = Arc::new(IpRate::new(config.ip_rate, config.ip_burst));
        let gate = Gate::new(occupancy.clone(), ip_rate.clone(), metrics.clone());
        let (hub, control) = Hub::new(metrics.clone());
        let tasks = CancellationToken::new();
        let retention = Retention {
            size: config.history_size,
            ttl: config.history_ttl,
        };
        if let Err(e) = crate::runtime::start_request_threads(config.request_threads.into()) {
            tracing::warn!(error = %e, "cannot start the request threads: requests are served on the workers");
        }
        let broker: SharedBroker = match RedisSettings::from_config(&config) {
            None => {
                tracing::info!(
                    "no --redis-url: using the embedded in-process broker (single node, history in memory)"
                );
                Arc::new(MemoryBroker::start(
                    hub.clone(),
                    control,
                    metrics.clone(),
                    retention,
                    config.history_memory,
                    tasks.clone(),
                ))
            }
            Some(settings) => Arc::new(
                RedisBroker::start(&settings, hub.clone(), control, metrics.clone(), tasks.clone())
                    .await
                    .map_err(StartError::Redis)?,
            ),
        };
        let listener = TcpListener::bind(config.listen)
            .await
            .map_err(|source| StartError::Bind {
                addr: config.listen,
                source,
            })?;
        tokio::spawn(
            hub.clone()
                .run_heartbeats(config.heartbeat, config.write_timeout, tasks.clone()),
        );
        tokio::spawn(ip_rate.clone().run_cleanup(tasks.clone()));
        if auth.is_enforced() {
            tracing::info!(max_connections, file_limit, "tokens required to read and publish");
        } else {
            tracing::warn!(
                max_connections,
                file_limit,
                "anonymous access: anyone may read and publish every channel \
                 (configure --jwt-secret, --jwt-public-key, --jwks-file or --publish-keys-file to require tokens)"
            );
        }
        if !config.trusted_proxies.is_empty() {
            let trusted: Vec<String> = config.trusted_proxies.iter().map(|n| n.to_string()).collect();
            tracing::info!(
                trusted_proxies = %trusted.join(","),
                "client addresses from PROXY headers and X-Forwarded-For / Forwarded of these peers"
            );
            if config.trusted_proxies.iter().any(|n| n.prefix_len() == 0) {
                tracing::warn!(
                    "--trusted-proxies trusts every address: any peer may name any client; \
                     fine only where nothing but the balancers can reach the node"
                );
            }
        }
        let node = crate::presence::node_id(config.node_id.as_deref());
        let presence = crate::presence::Presence::new(
            hub.clone(),
            broker.clone(),
            node,
            config.presence_ttl,
            metrics.clone(),
        );
        tokio::spawn(presence.run(tasks.clone()));
        let mercure = match config.mercure.enabled {
            true => Some(crate::mercure::Mercure::start(
                &config,
                hub.clone(),
                broker.clone(),
                metrics.clone(),
                tasks.clone(),
            )?),
            false => None,
        };
        let state = AppState::new(config, occupancy, auth, hub, broker, metrics, ip_rate);
        if let Some(m) = mercure {
            state.set_mercure(m);
        }
        crate::sources::start(&state, sources, tasks.clone())
            .await
            .map_err(StartError::SourceStart)?;
        let server = Server::new(listener, tls, state.clone(), gate);
        Ok(Application { server, state, tasks })
    }

    pub fn local_addr(&self) -> SocketAddr {
        self.server.local_addr()
    }

    pub fn state(&self) -> &AppState {
        &self.state
    }

    /// Serves until `shutdown` resolves, then drains (see
    /// `Server::run_until`) and stops the node's background tasks.
    pub async fn run_until(self, shutdown: impl Future<Output = ()>) -> std::io::Result<()> {
        let Application { server, state, tasks } = self;
        let cfg = state.config();
        tracing::info!(
            listen = %server.local_addr(),
            broker = state.broker().name(),
            tls = server.has_tls(),
            demo = cfg.demo_enabled(),
            "ssegate ready"
        );
        server.run_until(shutdown).await;
        tasks.cancel();
        tracing::info!("stopped");
        Ok(())
    }
}
