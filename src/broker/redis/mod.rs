//! The Redis broker: standalone, Sentinel or Cluster. Commands (durable
//! publish through the `ssegate` Redis Function, history reads, tips) go
//! through a fixed few command connections ([`commands`]); events arrive on
//! one pub/sub connection per node, or one per shard in a cluster
//! ([`pubsub`], [`cluster`]), whatever the number of clients.
//!
//! Redis names: channel C is published on `<prefix>{C}`, its history is the
//! stream `<prefix>{C}:log` (the braces keep both in one cluster slot). A
//! durable event is published as `\0<id>\0<payload>`; any other message on
//! the channel is an ephemeral event. In a cluster the function publishes
//! with SPUBLISH and the nodes listen with SSUBSCRIBE.

mod cluster;
mod commands;
mod pubsub;
pub mod resp;
mod sentinel;

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use bytes::Bytes;
use futures_util::future::BoxFuture;
use redis::{ConnectionAddr, ConnectionInfo, IntoConnectionInfo, Value};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use super::{Broker, BrokerError, History, HistoryEntry};
use crate::config::Config;
use crate::hub::{Hub, SubCommand};
use crate::metrics::Metrics;
use crate::sse::{Channel, StreamId};
use commands::{Commands, parse_urls};
use pubsub::{Kind, PubSub, Target};

const FUNCTIONS: &str = include_str!("functions.lua");

/// How the Redis deployment is laid out.
pub enum Topology {
    Standalone(String),
    /// `node` carries the credentials for the master.
    Sentinel {
        sentinels: Vec<ConnectionInfo>,
        master: String,
        node: ConnectionInfo,
    },
    /// `node` carries the credentials for every cluster node.
    Cluster {
        seeds: Vec<ConnectionInfo>,
        node: ConnectionInfo,
    },
}

impl Topology {
    /// From `--redis-url` (one URL, or several comma-separated with
    /// `--redis-cluster` or `--redis-sentinel-master`).
    pub fn new(url: &str, cluster: bool, sentinel_master: Option<&str>) -> Result<Topology, BrokerError> {
        let infos = parse_urls(url)?;
        let first = infos
            .first()
            .cloned()
            .ok_or_else(|| BrokerError::Unavailable("--redis-url is empty".into()))?;
        Ok(match (cluster, sentinel_master) {
            (true, _) => Topology::Cluster {
                seeds: infos,
                node: first,
            },
            (false, Some(master)) => {
                // Sentinels are reached without the master's credentials.
                let mut sentinels = Vec::new();
                for i in &infos {
                    let ConnectionAddr::Tcp(h, p) = i.addr() else {
                        return Err(BrokerError::Unavailable(
                            "Sentinels must be plain redis:// addresses".into(),
                        ));
                    };
                    sentinels.push(format!("redis://{h}:{p}").into_connection_info()?);
                }
                Topology::Sentinel {
                    sentinels,
                    master: master.to_owned(),
                    node: first,
                }
            }
            (false, None) if infos.len() > 1 => {
                return Err(BrokerError::Unavailable(
                    "several --redis-url addresses need --redis-cluster or --redis-sentinel-master".into(),
                ));
            }
            (false, None) => Topology::Standalone(url.trim().to_owned()),
        })
    }

    pub fn is_cluster(&self) -> bool {
        matches!(self, Topology::Cluster { .. })
    }
}

/// Redis names of one deployment.
#[derive(Debug, Clone)]
pub struct Names {
    prefix: String,
}

impl Names {
    pub fn new(prefix: &str) -> Names {
        Names {
            prefix: prefix.to_owned(),
        }
    }

    pub fn channel(&self, c: &str) -> String {
        format!("{}{{{c}}}", self.prefix)
    }

    pub fn log(&self, c: &str) -> String {
        format!("{}{{{c}}}:log", self.prefix)
    }

    /// The channel name inside a Redis pub/sub channel name, if it is ours.
    pub fn parse_channel<'a>(&self, redis_channel: &'a [u8]) -> Option<&'a str> {
        let rest = redis_channel.strip_prefix(self.prefix.as_bytes())?;
        let inner = rest.strip_prefix(b"{")?.strip_suffix(b"}")?;
        Channel::validate(inner).ok()?;
        std::str::from_utf8(inner).ok()
    }
}

/// The library text with this node's retention filled in.
fn functions_library(history_size: usize, ttl: Duration, publish_cmd: &str) -> String {
    FUNCTIONS
        .replace("__MAXLEN__", &history_size.to_string())
        .replace("__TTL_MS__", &ttl.as_millis().to_string())
        .replace("__PUBLISH__", publish_cmd)
}

pub(crate) struct Inner {
    commands: Commands,
    /// The function library, for reloading where it went missing.
    library: String,
    names: Names,
    connected: AtomicBool,
    metrics: Metrics,
}

pub struct RedisBroker(Arc<Inner>);

fn proto(msg: impl Into<String>) -> BrokerError {
    BrokerError::Protocol(msg.into())
}

fn parse_id(v: &Value) -> Result<StreamId, BrokerError> {
    match v {
        Value::BulkString(b) => StreamId::parse(b),
        Value::SimpleString(s) => StreamId::parse(s.as_bytes()),
        _ => None,
    }
    .ok_or_else(|| proto(format!("expected a stream id, got {v:?}")))
}

fn fcall(function: &str, key: String) -> redis::Cmd {
    let mut cmd = redis::cmd(if function == "ssegate_publish" {
        "FCALL"
    } else {
        "FCALL_RO"
    });
    cmd.arg(function).arg(1).arg(key);
    cmd
}

fn function_missing(e: &BrokerError) -> bool {
    e.to_string().contains("Function not found")
}

impl Inner {
    /// Runs an FCALL; where the library is missing (a replica promoted
    /// before it had it, a flushed or restarted Redis without persistence),
    /// loads it again and retries once.
    async fn fcall<T: redis::FromRedisValue>(&self, cmd: &redis::Cmd) -> Result<T, BrokerError> {
        match self.commands.query(cmd).await {
            Err(e) if function_missing(&e) => {
                self.reload_library().await?;
                self.commands.query(cmd).await
            }
            other => other,
        }
    }

    async fn reload_library(&self) -> Result<(), BrokerError> {
        tracing::warn!("the ssegate function library is missing in Redis; loading it again");
        let mut load = redis::cmd("FUNCTION");
        load.arg("LOAD").arg("REPLACE").arg(&self.library);
        self.commands.on_every_master(&load).await
    }

    fn set_connected(&self, up: bool) {
        self.connected.store(up, Ordering::Relaxed);
        self.metrics.broker_up.set(if up { 1.0 } else { 0.0 });
    }

    pub(crate) async fn history(
        &self,
        channel: &str,
        after: StreamId,
        until: Option<StreamId>,
        limit: usize,
    ) -> Result<History, BrokerError> {
        let upto = until.map(|u| u.to_string()).unwrap_or_else(|| "+".into());
        let mut cmd = fcall("ssegate_history", self.names.log(channel));
        cmd.arg(after.to_string()).arg(upto).arg(limit);
        let v: Value = self.fcall(&cmd).await?;
        let Value::Array(parts) = v else {
            return Err(proto("ssegate_history: not an array"));
        };
        let [trimmed, tip, entries] =
            <[Value; 3]>::try_from(parts).map_err(|_| proto("ssegate_history: 3 items"))?;
        let trimmed = matches!(trimmed, Value::Int(1));
        let tip = parse_id(&tip)?;
        let Value::Array(raw) = entries else {
            return Err(proto("ssegate_history: entries"));
        };
        let mut entries = Vec::with_capacity(raw.len());
        for e in raw {
            // [id, [field, value]]
            let Value::Array(mut pair) = e else {
                return Err(proto("history entry"));
            };
            if pair.len() != 2 {
                return Err(proto("history entry shape"));
            }
            let fields = pair.pop().expect("two");
            let id = parse_id(&pair[0])?;
            let payload = match fields {
                Value::Array(mut kv) if kv.len() == 2 => match kv.pop() {
                    Some(Value::BulkString(p)) => Bytes::from(p),
                    _ => return Err(proto("history payload")),
                },
                _ => return Err(proto("history fields")),
            };
            entries.push(HistoryEntry { id, payload });
        }
        Ok(History {
            entries,
            trimmed,
            tip,
        })
    }

    /// Newest ids of several channels.
    pub(crate) async fn tips(&self, channels: &[String]) -> Result<Vec<StreamId>, BrokerError> {
        let cmds: Vec<redis::Cmd> = channels
            .iter()
            .map(|c| fcall("ssegate_tip", self.names.log(c)))
            .collect();
        let vals: Vec<Value> = match self.commands.query_many(cmds.clone()).await {
            Err(e) if function_missing(&e) => {
                self.reload_library().await?;
                self.commands.query_many(cmds).await?
            }
            other => other?,
        };
        vals.iter().map(parse_id).collect()
    }

    async fn publish(&self, channel: &str, payload: &[u8]) -> Result<StreamId, BrokerError> {
        let mut cmd = fcall("ssegate_publish", self.names.log(channel));
        cmd.arg(payload);
        let v: Value = self.fcall(&cmd).await?;
        parse_id(&v)
    }
}

/// Loads the function library on every master (idempotent: same code,
/// REPLACE). Functions are persisted and replicated, so they normally
/// survive restarts and failovers; `Inner::fcall` covers the rest.
async fn load_functions(commands: &Commands, code: &str) -> Result<(), BrokerError> {
    let mut cmd = redis::cmd("FUNCTION");
    cmd.arg("LOAD").arg("REPLACE").arg(code);
    match commands.on_every_master(&cmd).await {
        Ok(()) => Ok(()),
        Err(e) if e.to_string().to_ascii_lowercase().contains("unknown command") => {
            Err(BrokerError::Unavailable(
                "Redis 7.0 or newer is required (FUNCTION LOAD is unknown to this server)".into(),
            ))
        }
        Err(e) => Err(e),
    }
}

impl RedisBroker {
    /// Connects, loads the functions and opens the pub/sub connection(s);
    /// any failure here is an error (fail fast at start). Later losses are
    /// retried in the background.
    pub async fn start(
        cfg: &Config,
        hub: Hub,
        control: mpsc::UnboundedReceiver<SubCommand>,
        metrics: Metrics,
        cancel: CancellationToken,
    ) -> Result<RedisBroker, BrokerError> {
        let url = cfg.redis_url.as_deref().unwrap_or_default();
        let topology = Topology::new(url, cfg.redis_cluster, cfg.redis_sentinel_master.as_deref())?;
        let fail =
            |e: BrokerError| BrokerError::Unavailable(format!("cannot connect to {}: {e}", redact(url)));
        let commands = Commands::connect(&topology, cfg.redis_pool_size)
            .await
            .map_err(fail)?;
        let publish_cmd = if topology.is_cluster() {
            "SPUBLISH"
        } else {
            "PUBLISH"
        };
        let library = functions_library(cfg.history_size, cfg.history_ttl, publish_cmd);
        load_functions(&commands, &library).await.map_err(fail)?;
        let inner = Arc::new(Inner {
            commands,
            library,
            names: Names::new(&cfg.channel_prefix),
            connected: AtomicBool::new(false),
            metrics,
        });
        let pubsub_fail =
            |e: String| BrokerError::Unavailable(format!("pub/sub connection to {}: {e}", redact(url)));
        match topology {
            Topology::Standalone(url) => {
                let info = url.as_str().into_connection_info()?;
                let target = Target::Resolve {
                    resolve: Box::new(move || Box::pin(std::future::ready(Ok(info.clone())))),
                    switched: None,
                };
                let mut ps = PubSub::new(Kind::Classic, target, inner.clone(), hub, control, cancel);
                let first = ps.connect_first().await.map_err(pubsub_fail)?;
                tokio::spawn(ps.run(Some(first)));
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
                            let me = me.upgrade().ok_or("the broker is gone")?;
                            let s = me.commands.sentinel().expect("sentinel commands");
                            s.master()
                                .await
                                .map_err(|e| format!("asking the Sentinels for the master: {e}"))
                        })
                    }),
                    switched: Some(switched),
                };
                let mut ps = PubSub::new(Kind::Classic, target, inner.clone(), hub, control, cancel);
                let first = ps.connect_first().await.map_err(pubsub_fail)?;
                tokio::spawn(ps.run(Some(first)));
            }
            Topology::Cluster { node, .. } => {
                let manager = cluster::ClusterPubSub::start(inner.clone(), node, hub, control, cancel)
                    .await
                    .map_err(pubsub_fail)?;
                tokio::spawn(manager.run());
            }
        }
        tracing::info!(redis = %redact(url), "connected to Redis");
        Ok(RedisBroker(inner))
    }
}

/// The URL without its password, for logs and errors.
pub fn redact(url: &str) -> String {
    url.split(',')
        .map(|u| match (u.find("://"), u.rfind('@')) {
            (Some(s), Some(at)) if at > s => format!("{}://***@{}", &u[..s], &u[at + 1..]),
            _ => u.to_owned(),
        })
        .collect::<Vec<_>>()
        .join(",")
}

impl Broker for RedisBroker {
    fn name(&self) -> &'static str {
        "redis"
    }

    fn publish(&self, channel: &Channel, payload: Bytes) -> BoxFuture<'_, Result<StreamId, BrokerError>> {
        let channel = channel.clone();
        Box::pin(async move { self.0.publish(channel.as_str(), &payload).await })
    }

    fn history(
        &self,
        channel: &Channel,
        after: StreamId,
        until: Option<StreamId>,
        limit: usize,
    ) -> BoxFuture<'_, Result<History, BrokerError>> {
        let channel = channel.clone();
        Box::pin(async move { self.0.history(channel.as_str(), after, until, limit).await })
    }

    fn is_connected(&self) -> bool {
        self.0.connected.load(Ordering::Relaxed)
    }
}

/// One durable publish from outside a node (`ssegate publish`).
pub async fn publish_once(
    topology: &Topology,
    prefix: &str,
    channel: &Channel,
    payload: Bytes,
) -> Result<StreamId, BrokerError> {
    let commands = Commands::connect(topology, 1).await?;
    let mut cmd = fcall("ssegate_publish", Names::new(prefix).log(channel.as_str()));
    cmd.arg(payload.as_ref());
    let v: Value = commands.query(&cmd).await.map_err(|e| {
        if e.to_string().contains("Function not found") {
            BrokerError::Unavailable(
                "the ssegate function is not loaded: start a node on this Redis first".into(),
            )
        } else {
            e
        }
    })?;
    parse_id(&v)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_round_trip() {
        let n = Names::new("sse:");
        assert_eq!(n.channel("a.b"), "sse:{a.b}");
        assert_eq!(n.log("a.b"), "sse:{a.b}:log");
        assert_eq!(n.parse_channel(b"sse:{a.b}"), Some("a.b"));
        assert_eq!(n.parse_channel(b"sse:{a b}"), None);
        assert_eq!(n.parse_channel(b"other:{a}"), None);
        assert_eq!(n.parse_channel(b"sse:{a}:log"), None);
    }

    #[test]
    fn passwords_are_redacted() {
        assert_eq!(redact("redis://:secret@host:6379/0"), "redis://***@host:6379/0");
        assert_eq!(redact("redis://host:6379"), "redis://host:6379");
        assert_eq!(
            redact("redis://u:p@a:1,redis://b:2"),
            "redis://***@a:1,redis://b:2"
        );
    }

    #[test]
    fn the_library_is_filled_in() {
        let lib = functions_library(10, Duration::from_secs(2), "SPUBLISH");
        assert!(lib.starts_with("#!lua name=ssegate"));
        assert!(lib.contains("local MAXLEN = 10\n") && lib.contains("local TTL_MS = 2000\n"));
        assert!(lib.contains("local PUBLISH = 'SPUBLISH'"));
        assert!(!lib.contains("__"));
    }

    #[test]
    fn topologies_come_from_the_url_and_flags() {
        assert!(matches!(
            Topology::new("redis://a:1", false, None),
            Ok(Topology::Standalone(_))
        ));
        assert!(matches!(
            Topology::new("redis://a:1,redis://b:2", true, None),
            Ok(Topology::Cluster { seeds, .. }) if seeds.len() == 2
        ));
        assert!(matches!(
            Topology::new("redis://:pw@a:26379,redis://b:26379", false, Some("m")),
            Ok(Topology::Sentinel { sentinels, node, .. }) if sentinels.len() == 2 && node.redis_settings().password() == Some("pw")
        ));
        assert!(Topology::new("redis://a:1,redis://b:2", false, None).is_err());
    }
}
