//! A Mercure hub (`--mercure`) on every node, beside the native API.
//!
//! Every update travels as one durable event of the reserved channel
//! `$mercure` (`sse::mercure`): one shared log in the broker (in Redis
//! `<prefix>{$mercure}:log`, appended and published by the Function
//! `ssegate_mercure_publish`, which also maps each Mercure id to its log
//! position for resumes) and one pub/sub channel. Topics are arbitrary IRIs
//! and selectors may be URI templates, so updates are not routed by
//! channel: each node receives every update once, through the hub's
//! ordinary channel machinery (subscription, tip, gap repair after a broker
//! loss), decoded and encoded once (`broker::decode_on`), and the node's
//! tap (`run_tap`) matches it against the local subscribers (`index`) and
//! pushes the shared frame to the bounded queue of each one it reaches; a
//! full queue closes that subscriber, which resumes from history.
//!
//! `auth`: Mercure JWTs; `selector`: `*`, exact topics and URI templates;
//! `stream`: one subscriber's response (replay, then live); `registry`: the
//! cluster's subscriptions and their events; `http`: the routes.

mod auth;
pub mod http;
mod index;
mod registry;
mod selector;
mod stream;

pub use auth::KeyError;
pub use stream::{MercureHandoff, MercureStream};

use std::collections::{HashMap, VecDeque};
use std::sync::Arc;
use std::time::Duration;

use parking_lot::Mutex;
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

use crate::broker::{Page, SharedBroker, before};
use crate::config::{Config, MercureConfig};
use crate::hub::{Close, Hub, Item, Subscriber};
use crate::metrics::Metrics;
use crate::sse::mercure::Update;
use crate::sse::{Channel, EventId};
use index::{Index, Position};
use selector::Selector;

/// Bytes the tap may have queued before it counts as overflowed.
const TAP_QUEUE: usize = 256 << 20;
/// The kinds of `ssegate_mercure_events_total`.
const KINDS: [&str; 6] = [
    "published",
    "delivered",
    "replayed",
    "unauthorized",
    "forbidden",
    "last_event_id_unknown",
];
/// Claim selectors compiled and kept for reuse, at most.
const SELECTOR_CACHE: usize = 10_000;

pub(crate) struct Inner {
    cfg: MercureConfig,
    keys: auth::Keys,
    hub: Hub,
    broker: SharedBroker,
    metrics: Metrics,
    index: Mutex<Index>,
    live: watch::Sender<bool>,
    selectors: Mutex<HashMap<String, Arc<Selector>>>,
    registry: registry::Registry,
    queue_limit: usize,
    open_timeout: Duration,
    page_bytes: usize,
    max_payload: usize,
}

/// The node's Mercure hub; a cheap clone.
#[derive(Clone)]
pub struct Mercure(Arc<Inner>);

impl Mercure {
    /// Starts the hub's tap (and, with `--mercure-subscriptions`, the
    /// registry's lease) until `cancel`.
    pub fn start(
        cfg: &Config,
        hub: Hub,
        broker: SharedBroker,
        metrics: Metrics,
        cancel: CancellationToken,
    ) -> Result<Mercure, KeyError> {
        let keys = auth::Keys::from_config(&cfg.mercure)?;
        // Every series from the start, at zero.
        for kind in KINDS {
            metrics.mercure(kind).increment(0);
        }
        metrics.mercure_subscribers().set(0.0);
        let inner = Arc::new(Inner {
            cfg: cfg.mercure.clone(),
            keys,
            registry: registry::Registry::new(broker.clone()),
            hub,
            broker,
            metrics,
            index: Mutex::new(Index::default()),
            live: watch::Sender::new(false),
            selectors: Mutex::new(HashMap::new()),
            queue_limit: cfg.client_queue,
            open_timeout: cfg.subscribe_timeout,
            page_bytes: cfg.client_queue,
            max_payload: cfg.max_payload,
        });
        tokio::spawn(run_tap(inner.clone(), cancel.clone()));
        if inner.cfg.mercure_subscriptions {
            tokio::spawn(inner.registry.clone().run_lease(cancel));
        }
        tracing::info!(
            anonymous = inner.cfg.mercure_anonymous,
            subscriptions = inner.cfg.mercure_subscriptions,
            "Mercure hub at /.well-known/mercure"
        );
        Ok(Mercure(inner))
    }

    /// Local subscribers and the distinct templates among their selectors.
    pub fn counts(&self) -> (usize, usize) {
        let idx = self.0.index.lock();
        (idx.subscriber_count(), idx.template_count())
    }
}

impl Inner {
    /// A selector compiled once and shared.
    fn selector(&self, s: &str) -> Arc<Selector> {
        let mut cache = self.selectors.lock();
        if let Some(sel) = cache.get(s) {
            return sel.clone();
        }
        if cache.len() >= SELECTOR_CACHE {
            cache.clear();
        }
        let sel = Arc::new(Selector::compile(s));
        cache.insert(s.to_owned(), sel.clone());
        sel
    }

    /// Waits until the tap is live on this node.
    async fn wait_live(&self) -> bool {
        let mut rx = self.live.subscribe();
        tokio::time::timeout(self.open_timeout, rx.wait_for(|l| *l))
            .await
            .is_ok_and(|r| r.is_ok())
    }

    /// The Mercure id of the update at `at` in the log, if it is retained.
    async fn id_at(&self, at: EventId) -> Option<Box<str>> {
        if at == EventId::ZERO {
            return None;
        }
        let page = Page {
            after: before(at),
            until: Some(at),
            limit: 1,
            max_bytes: usize::MAX,
            lenient: true,
        };
        let h = self.broker.history(&Channel::mercure(), page).await.ok()?;
        let e = h.entries.into_iter().find(|e| e.id == at)?;
        Update::from_payload(&e.payload).map(|u| u.id.into_boxed_str())
    }

    async fn went_live(&self, at: EventId) {
        let last = self.id_at(at).await;
        {
            let mut idx = self.index.lock();
            if idx.position.at <= at {
                idx.position = Position { at, last_id: last };
            }
        }
        self.live.send_replace(true);
    }
}

/// Receives every update of the `$mercure` channel on this node, in log
/// order, and hands each to the local subscribers it reaches.
async fn run_tap(inner: Arc<Inner>, cancel: CancellationToken) {
    let delivered = inner.metrics.mercure("delivered");
    let slow = inner.metrics.slow_client_disconnects.clone();
    loop {
        let tap = Subscriber::new_dynamic(TAP_QUEUE);
        let _subscription = inner.hub.subscribe(&tap, Channel::mercure(), 0, false);
        let mut items = VecDeque::new();
        loop {
            let drained = tokio::select! {
                _ = cancel.cancelled() => return,
                r = std::future::poll_fn(|cx| tap.poll_drain(cx, &mut items)) => r,
            };
            if drained.is_err() {
                tracing::warn!(
                    "the Mercure hub fell behind its updates; closing its subscribers (they resume)"
                );
                inner.live.send_replace(false);
                inner.index.lock().close_all(Close::SlowClient);
                break;
            }
            for item in items.drain(..) {
                match item {
                    Item::Ready(_, at) => inner.went_live(at).await,
                    Item::Event(ev, _) => {
                        let (reached, overflowed) = inner.index.lock().dispatch(&ev);
                        delivered.increment(reached);
                        slow.increment(overflowed);
                    }
                    Item::Reset(_, tip) => {
                        tracing::warn!(
                            "Mercure updates were lost in a broker outage; closing subscribers (they resume)"
                        );
                        let mut idx = inner.index.lock();
                        idx.close_all(Close::SlowClient);
                        idx.position.at = idx.position.at.max(tip);
                    }
                    Item::Heartbeat => {}
                }
            }
        }
    }
}

impl Inner {
    /// Appends an update to the shared log (it reaches every node from there).
    async fn publish_update(&self, u: &Update) -> Result<EventId, crate::broker::BrokerError> {
        let id = self
            .broker
            .mercure_publish(u.to_payload().into(), &u.id, self.cfg.mercure_history_size)
            .await?;
        self.metrics.mercure("published").increment(1);
        Ok(id)
    }
}
