//! The Redis broker: standalone, Sentinel or Cluster. Commands (durable
//! publish through the `ssegate` Redis Function, history reads, tips) go
//! through a fixed few command connections ([`commands`]); events arrive on
//! one pub/sub connection per node, or one per shard in a cluster
//! ([`pubsub`], [`cluster`]), whatever the number of clients.
//!
//! Redis names are in [`names`]: channel C is published on `<prefix>{C}`,
//! its history is `<prefix>{C}:log`. In a cluster the function publishes
//! with SPUBLISH and the nodes listen with SSUBSCRIBE.

mod backoff;
mod cluster;
mod commands;
mod library;
mod names;
mod pubsub;
pub mod resp;
mod sentinel;
mod settings;

pub use names::Names;
pub use settings::{RedisSettings, Topology, redact};

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicI64, Ordering};

use bytes::Bytes;
use futures_util::future::BoxFuture;
use redis::{IntoConnectionInfo, Value};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use super::{
    Broker, BrokerError, History, IdempotencyKey, Lease, NodePresence, Page, PresenceReport, Published,
    RegistryOp, Snapshot,
};
use crate::hub::{Hub, SubCommand};
use crate::metrics::Metrics;
use crate::sse::mercure::MERCURE_CHANNEL;
use crate::sse::{Channel, EventId};
use commands::Commands;
use library::{fcall, parse_history, parse_id, parse_presence, parse_snapshot};
use pubsub::{Kind, PubSub, Target};

/// What the broker's tasks share: the command connections and the
/// deployment's names.
pub(crate) struct Inner {
    commands: Commands,
    /// The function library, for reloading where it went missing.
    library: String,
    names: Names,
    connected: AtomicBool,
    metrics: Metrics,
    /// Time Redis has to answer (commands, pub/sub pings).
    timeout: std::time::Duration,
    /// Redis's clock minus this node's, in ms, measured at each pub/sub
    /// connect: durable ids are Redis times, so an id far ahead of it was
    /// not made by the function.
    clock_offset_us: AtomicI64,
}

pub struct RedisBroker(Arc<Inner>);

impl Inner {
    /// Runs an FCALL; where the library is missing (a replica promoted
    /// before it had it, a flushed or restarted Redis without persistence),
    /// loads it again and retries once.
    async fn fcall<T: redis::FromRedisValue>(&self, cmd: &redis::Cmd) -> Result<T, BrokerError> {
        self.reloading(|| self.commands.query(cmd)).await
    }

    /// Runs `run`, and once more after loading the library again if Redis
    /// answered that a function is missing.
    async fn reloading<T, F>(&self, run: impl Fn() -> F) -> Result<T, BrokerError>
    where
        F: std::future::Future<Output = Result<T, BrokerError>>,
    {
        match run().await {
            Err(BrokerError::FunctionMissing) => {
                self.reload_library().await?;
                run().await
            }
            other => other,
        }
    }

    async fn reload_library(&self) -> Result<(), BrokerError> {
        tracing::warn!("the ssegate function library is missing in Redis; loading it again");
        self.commands
            .on_every_master(&library::load_command(&self.library))
            .await
    }

    fn set_connected(&self, up: bool) {
        self.connected.store(up, Ordering::Relaxed);
        self.metrics.broker_up.set(if up { 1.0 } else { 0.0 });
    }

    pub(crate) async fn history(&self, channel: &str, page: Page) -> Result<History, BrokerError> {
        let upto = page.until.map(|u| u.to_string()).unwrap_or_else(|| "+".into());
        let mut cmd = fcall("ssegate_history", self.names.log(channel));
        cmd.arg(page.after.to_string())
            .arg(upto)
            .arg(page.limit)
            .arg(page.max_bytes)
            .arg(if page.lenient { "1" } else { "0" });
        Ok(parse_history(self.fcall(&cmd).await?)?.limited_by(&page))
    }

    async fn put_state(&self, channel: &str, body: &[u8]) -> Result<EventId, BrokerError> {
        let mut cmd = fcall("ssegate_state_put", self.names.log(channel));
        cmd.arg(body);
        parse_id(&self.fcall::<Value>(&cmd).await?)
    }

    async fn get_state(&self, channel: &str) -> Result<Option<Snapshot>, BrokerError> {
        let cmd = fcall("ssegate_state_get", self.names.log(channel));
        parse_snapshot(self.fcall(&cmd).await?)
    }

    async fn put_presence(&self, channel: &str, report: &PresenceReport) -> Result<(), BrokerError> {
        let cmd = presence_command(&self.names, channel, report);
        self.fcall::<Value>(&cmd).await.map(drop)
    }

    /// Several channels' reports in one pipeline (a refresh writes one per
    /// channel with local subscribers: 15,000 channels sent one by one
    /// cost the node more than their streams' heartbeats).
    async fn put_presences(&self, reports: &[(Channel, PresenceReport)]) -> Vec<Result<(), BrokerError>> {
        let cmds = || {
            reports
                .iter()
                .map(|(channel, report)| presence_command(&self.names, channel.as_str(), report))
                .collect::<Vec<_>>()
        };
        let mut answers = self.commands.query_each(cmds()).await;
        if answers
            .iter()
            .any(|a| matches!(a, Err(BrokerError::FunctionMissing)))
        {
            if let Err(e) = self.reload_library().await {
                return reports.iter().map(|_| Err(e.clone())).collect();
            }
            answers = self.commands.query_each(cmds()).await;
        }
        answers.into_iter().map(|a| a.map(drop)).collect()
    }

    async fn get_presence(&self, channel: &str) -> Result<Vec<NodePresence>, BrokerError> {
        let cmd = fcall("ssegate_presence_get", self.names.log(channel));
        parse_presence(self.fcall(&cmd).await?)
    }

    /// Newest ids of several channels.
    pub(crate) async fn tips(&self, channels: &[String]) -> Result<Vec<EventId>, BrokerError> {
        let cmds: Vec<redis::Cmd> = channels
            .iter()
            .map(|c| fcall("ssegate_tip", self.names.log(c)))
            .collect();
        let vals: Vec<Value> = self.reloading(|| self.commands.query_many(cmds.clone())).await?;
        vals.iter().map(parse_id).collect()
    }

    async fn publish(
        &self,
        channel: &str,
        payload: &[u8],
        key: Option<&IdempotencyKey>,
    ) -> Result<Published, BrokerError> {
        let cmd = publish_command(&self.names, channel, payload, key);
        parse_published(&self.fcall(&cmd).await?)
    }
}

/// Loads the function library on every master (idempotent: same code,
/// REPLACE). Functions are persisted and replicated, so they normally
/// survive restarts and failovers; `Inner::fcall` covers the rest.
async fn load_functions(commands: &Commands, code: &str) -> Result<(), BrokerError> {
    match commands.on_every_master(&library::load_command(code)).await {
        Err(BrokerError::Refused(e)) if e.to_ascii_lowercase().contains("unknown command") => {
            Err(BrokerError::Config(
                "Redis 7.0 or newer is required (FUNCTION LOAD is unknown to this server)".into(),
            ))
        }
        other => other,
    }
}

impl RedisBroker {
    /// Connects, loads the functions and opens the pub/sub connection(s);
    /// any failure here is an error (fail fast at start). Later losses are
    /// retried in the background.
    pub async fn start(
        settings: &RedisSettings,
        hub: Hub,
        control: mpsc::UnboundedReceiver<SubCommand>,
        metrics: Metrics,
        cancel: CancellationToken,
    ) -> Result<RedisBroker, BrokerError> {
        let url = settings.redacted_url();
        let topology = settings.topology()?;
        let fail = |e: BrokerError| BrokerError::Unavailable(format!("cannot connect to {url}: {e}"));
        let commands = Commands::connect(&topology, settings.pool_size, settings.timeout)
            .await
            .map_err(fail)?;
        let publish_cmd = if topology.is_cluster() {
            "SPUBLISH"
        } else {
            "PUBLISH"
        };
        let retention = settings.retention;
        let library = library::text(retention.size, retention.ttl, publish_cmd);
        load_functions(&commands, &library).await.map_err(fail)?;
        let inner = Arc::new(Inner {
            commands,
            library,
            names: Names::new(&settings.prefix),
            connected: AtomicBool::new(false),
            metrics,
            timeout: settings.timeout,
            clock_offset_us: AtomicI64::new(0),
        });
        let pubsub_fail =
            |e: pubsub::ConnError| BrokerError::Unavailable(format!("pub/sub connection to {url}: {e}"));
        match topology {
            Topology::Standalone(url) => {
                let info = url
                    .as_str()
                    .into_connection_info()
                    .map_err(|e| BrokerError::Config(e.to_string()))?;
                let target = Target::Resolve {
                    resolve: Box::new(move || Box::pin(std::future::ready(Ok(info.clone())))),
                    switched: None,
                };
                PubSub::new(Kind::Classic, target, inner.clone(), hub, control, cancel)
                    .start()
                    .await
                    .map_err(pubsub_fail)?;
            }
            Topology::Sentinel {
                sentinels, master, ..
            } => {
                let switched = Arc::new(tokio::sync::Notify::new());
                tokio::spawn(sentinel::watch_switches(
                    sentinels,
                    master,
                    switched.clone(),
                    cancel.clone(),
                ));
                let me = Arc::downgrade(&inner);
                let target = Target::Resolve {
                    resolve: Box::new(move || {
                        let me = me.clone();
                        Box::pin(async move {
                            let me = me.upgrade().ok_or(pubsub::ConnError::Stopped)?;
                            let s = me.commands.sentinel().expect("sentinel commands");
                            s.master()
                                .await
                                .map_err(|e| pubsub::ConnError::Resolve(e.to_string()))
                        })
                    }),
                    switched: Some(switched),
                };
                PubSub::new(Kind::Classic, target, inner.clone(), hub, control, cancel)
                    .start()
                    .await
                    .map_err(pubsub_fail)?;
            }
            Topology::Cluster { node, .. } => {
                let manager = cluster::ClusterPubSub::start(inner.clone(), node, hub, control, cancel)
                    .await
                    .map_err(|e| BrokerError::Unavailable(format!("cluster at {url}: {e}")))?;
                tokio::spawn(manager.run());
            }
        }
        tracing::info!(redis = %url, "connected to Redis");
        Ok(RedisBroker(inner))
    }
}

impl Broker for RedisBroker {
    fn name(&self) -> &'static str {
        "redis"
    }

    fn publish(
        &self,
        channel: &Channel,
        payload: Bytes,
        key: Option<&IdempotencyKey>,
    ) -> BoxFuture<'_, Result<Published, BrokerError>> {
        let channel = channel.clone();
        let key = key.cloned();
        Box::pin(async move { self.0.publish(channel.as_str(), &payload, key.as_ref()).await })
    }

    fn history(&self, channel: &Channel, page: Page) -> BoxFuture<'_, Result<History, BrokerError>> {
        let channel = channel.clone();
        Box::pin(async move { self.0.history(channel.as_str(), page).await })
    }

    fn put_state(&self, channel: &Channel, body: Bytes) -> BoxFuture<'_, Result<EventId, BrokerError>> {
        let channel = channel.clone();
        Box::pin(async move { self.0.put_state(channel.as_str(), &body).await })
    }

    fn get_state(&self, channel: &Channel) -> BoxFuture<'_, Result<Option<Snapshot>, BrokerError>> {
        let channel = channel.clone();
        Box::pin(async move { self.0.get_state(channel.as_str()).await })
    }

    fn put_presence(
        &self,
        channel: &Channel,
        report: PresenceReport,
    ) -> BoxFuture<'_, Result<(), BrokerError>> {
        let channel = channel.clone();
        Box::pin(async move { self.0.put_presence(channel.as_str(), &report).await })
    }

    fn put_presences(
        &self,
        reports: Vec<(Channel, PresenceReport)>,
    ) -> BoxFuture<'_, Vec<Result<(), BrokerError>>> {
        Box::pin(async move { self.0.put_presences(&reports).await })
    }

    fn get_presence(&self, channel: &Channel) -> BoxFuture<'_, Result<Vec<NodePresence>, BrokerError>> {
        let channel = channel.clone();
        Box::pin(async move { self.0.get_presence(channel.as_str()).await })
    }

    fn is_connected(&self) -> bool {
        self.0.connected.load(Ordering::Relaxed)
    }

    fn mercure_publish(
        &self,
        payload: Bytes,
        mercure_id: &str,
        max_len: usize,
    ) -> BoxFuture<'_, Result<EventId, BrokerError>> {
        let mut cmd = fcall("ssegate_mercure_publish", self.0.names.log(MERCURE_CHANNEL));
        cmd.arg(&payload[..]).arg(mercure_id).arg(max_len);
        Box::pin(async move { parse_id(&self.0.fcall(&cmd).await?) })
    }

    fn mercure_find(&self, after: Option<&str>) -> BoxFuture<'_, Result<Option<EventId>, BrokerError>> {
        let mut cmd = fcall("ssegate_mercure_find", self.0.names.log(MERCURE_CHANNEL));
        if let Some(id) = after {
            cmd.arg(id);
        }
        Box::pin(async move {
            match self.0.fcall::<Value>(&cmd).await? {
                Value::Nil => Ok(None),
                v => parse_id(&v).map(Some),
            }
        })
    }

    fn mercure_registry(&self, op: RegistryOp) -> BoxFuture<'_, Result<Vec<Bytes>, BrokerError>> {
        let mut cmd = fcall("ssegate_mercure_registry", self.0.names.log(MERCURE_CHANNEL));
        match op {
            RegistryOp::Add { node, entries } => {
                cmd.arg("add").arg(node);
                for (field, json) in entries {
                    cmd.arg(field).arg(&json[..]);
                }
            }
            RegistryOp::Remove { fields } => {
                cmd.arg("del").arg(fields);
            }
            RegistryOp::Renew { node, ttl } => {
                cmd.arg("renew").arg(node).arg(ttl.as_millis() as u64);
            }
            RegistryOp::List => {
                cmd.arg("list");
            }
        }
        Box::pin(async move {
            let v: Vec<Vec<u8>> = self.0.fcall(&cmd).await?;
            Ok(v.into_iter().map(Bytes::from).collect())
        })
    }

    fn lease(
        &self,
        name: &str,
        holder: &str,
        ttl: std::time::Duration,
        position: Option<&str>,
    ) -> BoxFuture<'_, Result<Lease, BrokerError>> {
        let mut cmd = redis::cmd("FCALL");
        cmd.arg("ssegate_lease")
            .arg(2)
            .arg(self.0.names.source(name, "lease"))
            .arg(self.0.names.source(name, "pos"))
            .arg(holder)
            .arg(ttl.as_millis() as u64)
            .arg(position.unwrap_or(""));
        Box::pin(async move {
            let v: Value = self.0.fcall(&cmd).await?;
            parse_lease(&v)
        })
    }
}

/// `[held, position]`, the position `""` when none was stored.
fn parse_lease(v: &Value) -> Result<Lease, BrokerError> {
    let text = |v: &Value| match v {
        Value::BulkString(b) => Some(String::from_utf8_lossy(b).into_owned()),
        Value::SimpleString(s) => Some(s.clone()),
        _ => None,
    };
    match v {
        Value::Array(parts) if parts.len() == 2 => Ok(Lease {
            held: matches!(parts[0], Value::Int(1)),
            position: text(&parts[1]).filter(|p| !p.is_empty()),
        }),
        other => Err(BrokerError::Protocol(format!("ssegate_lease: {other:?}"))),
    }
}

/// `FCALL ssegate_publish 1 <log> <payload> [<key>]`.
fn publish_command(names: &Names, channel: &str, payload: &[u8], key: Option<&IdempotencyKey>) -> redis::Cmd {
    let mut cmd = fcall("ssegate_publish", names.log(channel));
    cmd.arg(payload);
    if let Some(k) = key {
        cmd.arg(k.as_str());
    }
    cmd
}

/// `FCALL ssegate_presence_put 1 <log> <node> <clients> <ttl ms> <joined> <left>`.
fn presence_command(names: &Names, channel: &str, report: &PresenceReport) -> redis::Cmd {
    fn json(v: &impl serde::Serialize) -> String {
        serde_json::to_string(v).expect("plain data serializes")
    }
    let mut cmd = fcall("ssegate_presence_put", names.log(channel));
    cmd.arg(&report.node)
        .arg(json(&report.clients))
        .arg(report.ttl.as_millis() as u64)
        .arg(json(&report.joined))
        .arg(json(&report.left));
    cmd
}

/// The id alone, or `[id, replayed]` when a key was given.
fn parse_published(v: &Value) -> Result<Published, BrokerError> {
    match v {
        Value::Array(parts) if parts.len() == 2 => Ok(Published {
            id: parse_id(&parts[0])?,
            replayed: matches!(parts[1], Value::Int(1)),
        }),
        other => Ok(Published {
            id: parse_id(other)?,
            replayed: false,
        }),
    }
}

/// A connection for durable publishes from outside a node (`ssegate
/// publish`).
pub struct Publisher {
    commands: Commands,
    names: Names,
}

impl Publisher {
    pub async fn connect(settings: &RedisSettings) -> Result<Publisher, BrokerError> {
        Ok(Publisher {
            commands: Commands::connect(&settings.topology()?, 1, settings.timeout).await?,
            names: Names::new(&settings.prefix),
        })
    }

    pub async fn publish(
        &self,
        channel: &Channel,
        payload: &[u8],
        key: Option<&IdempotencyKey>,
    ) -> Result<Published, BrokerError> {
        let cmd = publish_command(&self.names, channel.as_str(), payload, key);
        let v: Value = self.commands.query(&cmd).await.map_err(|e| match e {
            BrokerError::FunctionMissing => BrokerError::Config(
                "the ssegate function is not loaded: start a node on this Redis first".into(),
            ),
            e => e,
        })?;
        parse_published(&v)
    }
}
