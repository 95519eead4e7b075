//! The application factory: builds the state (metrics, hub, broker), binds
//! the listener, serves until a shutdown future fires, then drains. Tests
//! start real nodes with `Application::build` on port 0.

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use hyper_util::rt::{TokioExecutor, TokioTimer};
use hyper_util::server::conn::auto;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

use crate::auth::Auth;
use crate::broker::memory::MemoryBroker;
use crate::broker::redis::RedisBroker;
use crate::broker::{Retention, SharedBroker};
use crate::config::Config;
use crate::hub::Hub;
use crate::limits::{Gate, Verdict};
use crate::metrics::Metrics;

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
    Redis(String),
    #[error(transparent)]
    Auth(#[from] crate::auth::SetupError),
    #[error(transparent)]
    Tls(#[from] crate::tls::TlsError),
}

struct Inner {
    config: Config,
    auth: Auth,
    gate: Arc<Gate>,
    hub: Hub,
    broker: SharedBroker,
    metrics: Metrics,
    draining: AtomicBool,
}

/// Shared state of a node; a cheap clone.
#[derive(Clone)]
pub struct AppState(Arc<Inner>);

impl AppState {
    pub fn config(&self) -> &Config {
        &self.0.config
    }
    pub fn auth(&self) -> &Auth {
        &self.0.auth
    }
    pub fn hub(&self) -> &Hub {
        &self.0.hub
    }
    pub fn broker(&self) -> &SharedBroker {
        &self.0.broker
    }
    pub fn metrics(&self) -> &Metrics {
        &self.0.metrics
    }
    pub fn is_draining(&self) -> bool {
        self.0.draining.load(Ordering::Relaxed)
    }
}

pub struct Application {
    listener: TcpListener,
    tls: Option<tokio_rustls::TlsAcceptor>,
    state: AppState,
    /// Stops the node's background tasks (broker, heartbeats).
    tasks: CancellationToken,
}

impl Application {
    pub async fn build(config: Config) -> Result<Application, StartError> {
        config.validate()?;
        crate::tls::install_crypto_provider();
        let metrics = Metrics::new();
        let auth = Auth::from_config(&config, &metrics).await?;
        let tls = match (&config.tls_cert, &config.tls_key) {
            (Some(cert), Some(key)) => Some(crate::tls::acceptor(cert, key)?),
            _ => None,
        };
        let file_limit = crate::limits::raise_file_limit();
        let max_connections = config
            .max_connections
            .unwrap_or_else(|| crate::limits::default_max_connections(file_limit));
        let gate = Gate::new(max_connections, config.ip_rate, config.ip_burst, metrics.clone());
        let (hub, control) = Hub::new(metrics.clone());
        let tasks = CancellationToken::new();
        let retention = Retention {
            size: config.history_size,
            ttl: config.history_ttl,
        };
        let broker: SharedBroker = match &config.redis_url {
            None => {
                tracing::info!(
                    "no --redis-url: using the embedded in-process broker (single node, history in memory)"
                );
                Arc::new(MemoryBroker::start(
                    hub.clone(),
                    control,
                    metrics.clone(),
                    retention,
                    tasks.clone(),
                ))
            }
            Some(_) => Arc::new(
                RedisBroker::start(&config, hub.clone(), control, metrics.clone(), tasks.clone())
                    .await
                    .map_err(|e| StartError::Redis(e.to_string()))?,
            ),
        };
        let listener = TcpListener::bind(config.listen)
            .await
            .map_err(|source| StartError::Bind {
                addr: config.listen,
                source,
            })?;
        tokio::spawn(hub.clone().run_heartbeats(config.heartbeat, tasks.clone()));
        tokio::spawn(gate.clone().run_cleanup(tasks.clone()));
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
        let state = AppState(Arc::new(Inner {
            config,
            auth,
            gate,
            hub,
            broker,
            metrics,
            draining: AtomicBool::new(false),
        }));
        Ok(Application {
            listener,
            tls,
            state,
            tasks,
        })
    }

    pub fn local_addr(&self) -> SocketAddr {
        self.listener.local_addr().expect("bound listener has an address")
    }

    pub fn state(&self) -> &AppState {
        &self.state
    }

    /// Serves until `shutdown` resolves, then drains: `/readyz` answers 503
    /// for `--drain-delay`, the listener closes, streams are closed over
    /// `--close-spread`, and the call returns once every connection is done
    /// or `--shutdown-grace` has passed since the signal.
    pub async fn run_until(self, shutdown: impl Future<Output = ()>) -> std::io::Result<()> {
        let Application {
            listener,
            tls,
            state,
            tasks,
        } = self;
        let cfg = state.config().clone();
        tracing::info!(
            listen = %listener.local_addr()?,
            broker = state.broker().name(),
            tls = tls.is_some(),
            demo = cfg.demo_enabled(),
            "ssegate ready"
        );
        let router = crate::http::router(state.clone());
        let mut builder = auto::Builder::new(TokioExecutor::new());
        builder
            .http1()
            .timer(TokioTimer::new())
            .header_read_timeout(cfg.header_timeout)
            .max_buf_size(cfg.max_header_bytes.max(8192));
        let graceful = hyper_util::server::graceful::GracefulShutdown::new();
        let front = Arc::new(crate::http::h1::Front {
            router,
            hyper: builder,
            max_head: cfg.max_header_bytes,
            head_timeout: cfg.header_timeout,
        });
        let connections = tokio_util::task::TaskTracker::new();
        // The node keeps accepting while it drains, so that a balancer's
        // health checks see /readyz answer 503 before streams close.
        let deadline = std::sync::OnceLock::new();
        let draining = async {
            shutdown.await;
            let _ = deadline.set(tokio::time::Instant::now() + cfg.shutdown_grace);
            tracing::info!(drain_delay = ?cfg.drain_delay, "shutdown signal: draining");
            state.0.draining.store(true, Ordering::Relaxed);
            tokio::time::sleep(cfg.drain_delay).await;
        };
        tokio::pin!(draining);
        loop {
            let (stream, peer) = tokio::select! {
                _ = &mut draining => break,
                r = listener.accept() => match r {
                    Ok(x) => x,
                    Err(e) => {
                        // Out of file descriptors and the like: back off briefly.
                        tracing::warn!(error = %e, "accept failed");
                        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
                        continue;
                    }
                },
            };
            let admitted = match state.0.gate.admit(peer.ip()) {
                Verdict::Admit(a) => a,
                refused => {
                    tokio::spawn(crate::limits::refuse(stream, refused));
                    continue;
                }
            };
            let _ = stream.set_nodelay(true);
            if !cfg.write_timeout.is_zero() {
                // Bounds the life of sockets whose peer vanished without a
                // FIN or RST (heartbeats then stay unacknowledged).
                let _ = socket2::SockRef::from(&stream).set_tcp_user_timeout(Some(cfg.write_timeout));
            }
            let (front, watcher, tracker) = (front.clone(), graceful.watcher(), connections.clone());
            if let Some(acceptor) = &tls {
                let acceptor = acceptor.clone();
                connections.spawn(async move {
                    let handshake = tokio::time::timeout(front.head_timeout, acceptor.accept(stream)).await;
                    if let Ok(Ok(tls)) = handshake {
                        front.serve_hyper(tls, watcher).await;
                    }
                    drop(admitted);
                });
                continue;
            }
            connections.spawn(async move {
                if let Some(writer) = Box::pin(front.serve(stream, watcher)).await {
                    tracker.spawn(async move {
                        writer.await;
                        drop(admitted);
                    });
                }
            });
        }
        let deadline = *deadline.get().expect("set when draining began");
        drop(listener);
        let hub = state.hub().clone();
        connections.close();
        let closing = async move {
            tokio::join!(
                hub.close_all(cfg.close_spread),
                graceful.shutdown(),
                connections.wait()
            );
        };
        if tokio::time::timeout_at(deadline, closing).await.is_err() {
            tracing::warn!("shutdown grace period over with connections still open");
        }
        tasks.cancel();
        tracing::info!("stopped");
        Ok(())
    }
}
