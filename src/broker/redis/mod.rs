//! The Redis broker (standalone). Commands (durable publish through the
//! `ssegate` Redis Function, history reads, tips) go through a small
//! deadpool of multiplexed connections; events arrive on one pub/sub
//! connection per node ([`pubsub`]), whatever the number of clients.
//!
//! Redis names: channel C is published on `<prefix>{C}`, its history is the
//! stream `<prefix>{C}:log` (the braces keep both in one cluster slot). A
//! durable event is published as `\0<id>\0<payload>`; any other message on
//! the channel is an ephemeral event.

mod pubsub;
pub mod resp;

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use bytes::Bytes;
use deadpool_redis::{Pool, Runtime};
use futures_util::future::BoxFuture;
use redis::Value;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use super::{Broker, BrokerError, History, HistoryEntry};
use crate::config::Config;
use crate::hub::{Hub, SubCommand};
use crate::metrics::Metrics;
use crate::sse::{Channel, StreamId};

const FUNCTIONS: &str = include_str!("functions.lua");

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
    pool: Pool,
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

impl Inner {
    async fn conn(&self) -> Result<deadpool_redis::Connection, BrokerError> {
        self.pool
            .get()
            .await
            .map_err(|e| BrokerError::Unavailable(e.to_string()))
    }

    pub(crate) async fn history(
        &self,
        channel: &str,
        after: StreamId,
        until: Option<StreamId>,
        limit: usize,
    ) -> Result<History, BrokerError> {
        let mut conn = self.conn().await?;
        let upto = until.map(|u| u.to_string()).unwrap_or_else(|| "+".into());
        let v: Value = redis::cmd("FCALL_RO")
            .arg("ssegate_history")
            .arg(1)
            .arg(self.names.log(channel))
            .arg(after.to_string())
            .arg(upto)
            .arg(limit)
            .query_async(&mut conn)
            .await?;
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

    /// Newest ids of several channels, in one round trip.
    pub(crate) async fn tips(&self, channels: &[String]) -> Result<Vec<StreamId>, BrokerError> {
        let mut conn = self.conn().await?;
        let mut pipe = redis::pipe();
        for c in channels {
            pipe.cmd("FCALL_RO")
                .arg("ssegate_tip")
                .arg(1)
                .arg(self.names.log(c));
        }
        let vals: Vec<Value> = pipe.query_async(&mut conn).await?;
        vals.iter().map(parse_id).collect()
    }
}

fn pool(url: &str, size: usize) -> Result<Pool, BrokerError> {
    deadpool_redis::Config::from_url(url)
        .builder()
        .map_err(|e| BrokerError::Unavailable(e.to_string()))?
        .max_size(size)
        .runtime(Runtime::Tokio1)
        .wait_timeout(Some(Duration::from_secs(5)))
        .create_timeout(Some(Duration::from_secs(5)))
        .recycle_timeout(Some(Duration::from_secs(5)))
        .build()
        .map_err(|e| BrokerError::Unavailable(e.to_string()))
}

/// Loads the function library (idempotent: same code, REPLACE).
async fn load_functions(conn: &mut deadpool_redis::Connection, cfg: &Config) -> Result<(), BrokerError> {
    let code = functions_library(cfg.history_size, cfg.history_ttl, "PUBLISH");
    let r: Result<String, _> = redis::cmd("FUNCTION")
        .arg("LOAD")
        .arg("REPLACE")
        .arg(code)
        .query_async(conn)
        .await;
    match r {
        Ok(_) => Ok(()),
        Err(e) if e.to_string().to_ascii_lowercase().contains("unknown command") => {
            Err(BrokerError::Unavailable(
                "Redis 7.0 or newer is required (FUNCTION LOAD is unknown to this server)".into(),
            ))
        }
        Err(e) => Err(e.into()),
    }
}

impl RedisBroker {
    /// Connects, loads the functions and opens the pub/sub connection; any
    /// failure here is an error (fail fast at start). Later losses are
    /// retried in the background.
    pub async fn start(
        url: &str,
        cfg: &Config,
        hub: Hub,
        control: mpsc::UnboundedReceiver<SubCommand>,
        metrics: Metrics,
        cancel: CancellationToken,
    ) -> Result<RedisBroker, BrokerError> {
        let info = redis::IntoConnectionInfo::into_connection_info(url)
            .map_err(|e| BrokerError::Unavailable(format!("invalid --redis-url: {e}")))?;
        let pool = pool(url, cfg.redis_pool_size)?;
        let mut conn = pool
            .get()
            .await
            .map_err(|e| BrokerError::Unavailable(format!("cannot connect to {}: {e}", redact(url))))?;
        load_functions(&mut conn, cfg).await?;
        drop(conn);
        let inner = Arc::new(Inner {
            pool,
            names: Names::new(&cfg.channel_prefix),
            connected: AtomicBool::new(false),
            metrics,
        });
        let task = pubsub::PubSub::connect(info, inner.clone(), hub, control, cancel)
            .await
            .map_err(|e| BrokerError::Unavailable(format!("pub/sub connection to {}: {e}", redact(url))))?;
        tokio::spawn(task.run());
        tracing::info!(redis = %redact(url), "connected to Redis");
        Ok(RedisBroker(inner))
    }
}

/// The URL without its password, for logs and errors.
pub fn redact(url: &str) -> String {
    match (url.find("://"), url.rfind('@')) {
        (Some(s), Some(at)) if at > s => format!("{}://***@{}", &url[..s], &url[at + 1..]),
        _ => url.to_owned(),
    }
}

impl Broker for RedisBroker {
    fn name(&self) -> &'static str {
        "redis"
    }

    fn publish(&self, channel: &Channel, payload: Bytes) -> BoxFuture<'_, Result<StreamId, BrokerError>> {
        let key = self.0.names.log(channel.as_str());
        Box::pin(async move {
            let mut conn = self.0.conn().await?;
            let v: Value = redis::cmd("FCALL")
                .arg("ssegate_publish")
                .arg(1)
                .arg(key)
                .arg(payload.as_ref())
                .query_async(&mut conn)
                .await?;
            parse_id(&v)
        })
    }

    fn publish_ephemeral(&self, channel: &Channel, payload: Bytes) -> BoxFuture<'_, Result<(), BrokerError>> {
        let name = self.0.names.channel(channel.as_str());
        Box::pin(async move {
            let mut conn = self.0.conn().await?;
            let _: i64 = redis::cmd("PUBLISH")
                .arg(name)
                .arg(payload.as_ref())
                .query_async(&mut conn)
                .await?;
            Ok(())
        })
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
    url: &str,
    prefix: &str,
    channel: &Channel,
    payload: Bytes,
) -> Result<StreamId, BrokerError> {
    let client = redis::Client::open(url)?;
    let mut conn = client.get_multiplexed_async_connection().await?;
    let v: Value = redis::cmd("FCALL")
        .arg("ssegate_publish")
        .arg(1)
        .arg(Names::new(prefix).log(channel.as_str()))
        .arg(payload.as_ref())
        .query_async(&mut conn)
        .await
        .map_err(|e| {
            if e.to_string().contains("Function not found") {
                BrokerError::Unavailable(
                    "the ssegate function is not loaded: start a node on this Redis first".into(),
                )
            } else {
                e.into()
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
    }

    #[test]
    fn the_library_is_filled_in() {
        let lib = functions_library(10, Duration::from_secs(2), "PUBLISH");
        assert!(lib.starts_with("#!lua name=ssegate"));
        assert!(lib.contains("local MAXLEN = 10\n") && lib.contains("local TTL_MS = 2000\n"));
        assert!(!lib.contains("__"));
    }
}
