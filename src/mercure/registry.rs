//! The subscriptions API's data, cluster-wide, and subscription events.
//!
//! Each subscriber's subscriptions (one per topic selector) are announced
//! as private updates on `/.well-known/mercure/subscriptions/{topic}/{subscriber}`
//! when it connects (`active: true`) and leaves (`active: false`), and kept
//! in the broker's registry (Redis: a hash of every node's entries, each
//! node holding a lease that it renews; a node that dies stops renewing,
//! and its entries go with its lease). The embedded broker keeps them here.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use parking_lot::Mutex;
use serde_json::{Value, json};
use tokio_util::sync::CancellationToken;

use super::Inner;
use crate::broker::{RegistryOp, SharedBroker};
use crate::sse::mercure::Update;

pub const PREFIX: &str = "/.well-known/mercure/subscriptions";
pub const CONTEXT: &str = "https://mercure.rocks/";

/// How long a node's entries outlive its last renewal.
const LEASE: Duration = Duration::from_secs(30);
const RENEW_EVERY: Duration = Duration::from_secs(10);

#[derive(Clone)]
pub(super) struct Registry(Arc<RegInner>);

struct RegInner {
    broker: SharedBroker,
    node: String,
    local: Mutex<HashMap<String, Bytes>>,
}

/// What a subscriber announced, to take back when it leaves.
pub(super) struct Announced {
    subscriber: String,
    topics: Vec<String>,
    payload: Option<Value>,
}

/// Go's `url.QueryEscape`: everything but `A-Za-z0-9-_.~` percent-encoded,
/// spaces as `+`.
pub fn escape(s: &str) -> String {
    let mut out = String::with_capacity(s.len() * 3);
    for b in s.bytes() {
        match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => out.push(b as char),
            b' ' => out.push('+'),
            _ => out.push_str(&format!("%{b:02X}")),
        }
    }
    out
}

/// The IRI of one subscription (its update topic and JSON-LD `id`).
pub fn subscription_iri(topic: &str, subscriber: &str) -> String {
    format!("{PREFIX}/{}/{}", escape(topic), escape(subscriber))
}

pub fn subscription(topic: &str, subscriber: &str, active: bool, payload: Option<&Value>) -> Value {
    let mut v = json!({
        "id": subscription_iri(topic, subscriber),
        "type": "Subscription",
        "topic": topic,
        "subscriber": subscriber,
        "active": active,
    });
    if let Some(p) = payload {
        v["payload"] = p.clone();
    }
    v
}

impl Registry {
    pub(super) fn new(broker: SharedBroker) -> Registry {
        Registry(Arc::new(RegInner {
            broker,
            node: format!("urn:uuid:{}", uuid::Uuid::new_v4()),
            local: Mutex::new(HashMap::new()),
        }))
    }

    fn shared(&self) -> bool {
        self.0.broker.name() == "redis"
    }

    /// Keeps this node's lease on its entries.
    pub(super) async fn run_lease(self, cancel: CancellationToken) {
        if !self.shared() {
            return;
        }
        loop {
            let op = RegistryOp::Renew {
                node: self.0.node.clone(),
                ttl: LEASE,
            };
            if let Err(e) = self.0.broker.mercure_registry(op).await {
                tracing::warn!(error = %e, "renewing the Mercure subscriptions lease failed");
            }
            tokio::select! {
                _ = cancel.cancelled() => return,
                _ = tokio::time::sleep(RENEW_EVERY) => {}
            }
        }
    }

    async fn add(&self, entries: Vec<(String, Bytes)>) {
        self.0.local.lock().extend(entries.iter().cloned());
        if self.shared() {
            let op = RegistryOp::Add {
                node: self.0.node.clone(),
                entries,
            };
            if let Err(e) = self.0.broker.mercure_registry(op).await {
                tracing::warn!(error = %e, "recording a Mercure subscription failed");
            }
        }
    }

    async fn remove(&self, fields: Vec<String>) {
        {
            let mut local = self.0.local.lock();
            for f in &fields {
                local.remove(f);
            }
        }
        if self.shared()
            && let Err(e) = self
                .0
                .broker
                .mercure_registry(RegistryOp::Remove { fields })
                .await
        {
            tracing::warn!(error = %e, "removing a Mercure subscription failed");
        }
    }

    /// Every active subscription of the cluster (of this node with the
    /// embedded broker).
    pub(super) async fn list(&self) -> Result<Vec<Value>, crate::broker::BrokerError> {
        let raw = if self.shared() {
            self.0.broker.mercure_registry(RegistryOp::List).await?
        } else {
            self.0.local.lock().values().cloned().collect()
        };
        Ok(raw
            .iter()
            .filter_map(|b| serde_json::from_slice(b).ok())
            .collect())
    }
}

/// Publishes one subscription event per topic selector.
async fn announce(inner: &Inner, a: &Announced, active: bool) -> Vec<(String, Bytes)> {
    let mut entries = Vec::with_capacity(a.topics.len());
    for topic in &a.topics {
        let v = subscription(topic, &a.subscriber, active, a.payload.as_ref());
        let iri = subscription_iri(topic, &a.subscriber);
        let update = Update {
            id: format!("urn:uuid:{}", uuid::Uuid::new_v4()),
            topics: vec![iri.clone()],
            data: v.to_string(),
            private: true,
            kind: None,
            retry: None,
        };
        if let Err(e) = inner.publish_update(&update).await {
            tracing::warn!(error = %e, "publishing a Mercure subscription event failed");
        }
        entries.push((iri, Bytes::from(v.to_string())));
    }
    entries
}

/// A subscriber connected: its subscriptions are announced and recorded.
pub(super) async fn join(
    inner: &Inner,
    subscriber: String,
    topics: Vec<String>,
    payload: Option<Value>,
) -> Announced {
    let a = Announced {
        subscriber,
        topics,
        payload,
    };
    let entries = announce(inner, &a, true).await;
    inner.registry.add(entries).await;
    a
}

/// A subscriber left: its subscriptions are announced inactive and removed.
pub(super) fn leave(inner: Arc<Inner>, a: Announced) {
    tokio::spawn(async move {
        let fields = a
            .topics
            .iter()
            .map(|t| subscription_iri(t, &a.subscriber))
            .collect();
        inner.registry.remove(fields).await;
        announce(&inner, &a, false).await;
    });
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn subscription_iris_escape_like_a_query_component() {
        assert_eq!(
            subscription_iri("https://example.com/{id}", "urn:uuid:1"),
            "/.well-known/mercure/subscriptions/https%3A%2F%2Fexample.com%2F%7Bid%7D/urn%3Auuid%3A1"
        );
        assert_eq!(escape("a b~"), "a+b~");
    }
}
