//! The shared state of a node, as the HTTP handlers and the server see it:
//! configuration, auth, the hub, the broker, metrics, the per-IP rate and
//! the trusted proxies, and whether the node is draining. A cheap `Clone` handle; it depends on nothing of `http`
//! or `app`, so both can depend on it.

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, OnceLock};

use crate::auth::Auth;
use crate::broker::SharedBroker;
use crate::config::Config;
use crate::hub::Hub;
use crate::limits::IpRate;
use crate::mercure::Mercure;
use crate::metrics::Metrics;
use crate::peer::TrustedProxies;
use crate::stream::ReplayBudget;

/// How many connections the node holds, against `--max-connections`:
/// counted by the server's admission, read by `/readyz`.
#[derive(Debug)]
pub struct Occupancy {
    open: AtomicUsize,
    max: usize,
}

impl Occupancy {
    pub fn new(max: usize) -> Occupancy {
        Occupancy {
            open: AtomicUsize::new(0),
            max,
        }
    }

    /// Takes a place if one is free.
    pub fn try_take(&self) -> bool {
        if self.open.fetch_add(1, Ordering::Relaxed) >= self.max {
            self.open.fetch_sub(1, Ordering::Relaxed);
            return false;
        }
        true
    }

    pub fn release(&self) {
        self.open.fetch_sub(1, Ordering::Relaxed);
    }

    pub fn is_full(&self) -> bool {
        self.open.load(Ordering::Relaxed) >= self.max
    }

    pub fn max(&self) -> usize {
        self.max
    }
}

struct Inner {
    config: Config,
    occupancy: Arc<Occupancy>,
    auth: Auth,
    hub: Hub,
    broker: SharedBroker,
    metrics: Metrics,
    replay: ReplayBudget,
    ip_rate: Arc<IpRate>,
    trusted: TrustedProxies,
    draining: AtomicBool,
    mercure: OnceLock<Mercure>,
    /// Event sources that cannot reach their backbone, with the reason
    /// (`/readyz` answers 503 while any is listed). A short critical
    /// section, never held across an await.
    sources_down: parking_lot::Mutex<std::collections::BTreeMap<String, String>>,
}

/// Shared state of a node; a cheap clone.
#[derive(Clone)]
pub struct AppState(Arc<Inner>);

impl AppState {
    pub fn new(
        config: Config,
        occupancy: Arc<Occupancy>,
        auth: Auth,
        hub: Hub,
        broker: SharedBroker,
        metrics: Metrics,
        ip_rate: Arc<IpRate>,
    ) -> AppState {
        let replay = ReplayBudget::new(config.replay_memory, config.client_queue);
        let trusted = TrustedProxies::new(&config.trusted_proxies);
        AppState(Arc::new(Inner {
            replay,
            ip_rate,
            trusted,
            config,
            occupancy,
            auth,
            hub,
            broker,
            metrics,
            draining: AtomicBool::new(false),
            mercure: OnceLock::new(),
            sources_down: Default::default(),
        }))
    }

    pub fn config(&self) -> &Config {
        &self.0.config
    }
    pub fn occupancy(&self) -> &Arc<Occupancy> {
        &self.0.occupancy
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
    /// The node's budget for history pages of resuming streams.
    pub fn replay_budget(&self) -> &ReplayBudget {
        &self.0.replay
    }
    /// The per-client-IP rate (`--ip-rate`, `--ip-burst`).
    pub fn ip_rate(&self) -> &Arc<IpRate> {
        &self.0.ip_rate
    }
    /// `--trusted-proxies`.
    pub fn trusted_proxies(&self) -> &TrustedProxies {
        &self.0.trusted
    }
    /// The node's Mercure hub (`--mercure`), once set at build.
    pub fn mercure(&self) -> Option<&Mercure> {
        self.0.mercure.get()
    }
    pub fn set_mercure(&self, m: Mercure) {
        let _ = self.0.mercure.set(m);
    }
    pub fn is_draining(&self) -> bool {
        self.0.draining.load(Ordering::Relaxed)
    }
    /// Marks the event source `name` as unable to reach its backbone.
    pub fn source_down(&self, name: &str, reason: String) {
        self.0.sources_down.lock().insert(name.to_owned(), reason);
    }
    /// The event source `name` reaches its backbone again.
    pub fn source_up(&self, name: &str) {
        self.0.sources_down.lock().remove(name);
    }
    /// The first source that cannot reach its backbone, and why.
    pub fn source_problem(&self) -> Option<(String, String)> {
        let down = self.0.sources_down.lock();
        down.iter().next().map(|(n, r)| (n.clone(), r.clone()))
    }
    /// From now on `/readyz` answers 503 and new streams are refused.
    pub fn start_draining(&self) {
        self.0.draining.store(true, Ordering::Relaxed);
    }
}
