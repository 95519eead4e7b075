//! The shared state of a node, as the HTTP handlers and the server see it:
//! configuration, auth, the hub, the broker, metrics and whether the node
//! is draining. A cheap `Clone` handle; it depends on nothing of `http`
//! or `app`, so both can depend on it.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use crate::auth::Auth;
use crate::broker::SharedBroker;
use crate::config::Config;
use crate::hub::Hub;
use crate::metrics::Metrics;

struct Inner {
    config: Config,
    auth: Auth,
    hub: Hub,
    broker: SharedBroker,
    metrics: Metrics,
    draining: AtomicBool,
}

/// Shared state of a node; a cheap clone.
#[derive(Clone)]
pub struct AppState(Arc<Inner>);

impl AppState {
    pub fn new(config: Config, auth: Auth, hub: Hub, broker: SharedBroker, metrics: Metrics) -> AppState {
        AppState(Arc::new(Inner {
            config,
            auth,
            hub,
            broker,
            metrics,
            draining: AtomicBool::new(false),
        }))
    }

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
    /// From now on `/readyz` answers 503 and new streams are refused.
    pub fn start_draining(&self) {
        self.0.draining.store(true, Ordering::Relaxed);
    }
}
