//! Command connections (durable publish, history, tips, function loading),
//! a fixed few per node whatever the number of clients:
//!
//! - standalone: `--redis-pool-size` multiplexed connections, used in
//!   turn. Each carries any number of commands at once (the redis crate
//!   pipelines them), so none is checked out per command: a checking pool
//!   (deadpool-redis sends `UNWATCH` and `PING` as it hands a connection
//!   out) added a round trip and two Redis commands to every publish;
//! - Sentinel: one multiplexed connection to the current master, dropped
//!   and resolved again through the Sentinels after an I/O or `READONLY`
//!   error (a failover);
//! - Cluster: the redis crate's cluster connection, which routes `FCALL`
//!   by key (the channel's hash tag) and follows slot moves.

use std::time::Duration;

use std::future::Future;
use std::sync::atomic::{AtomicUsize, Ordering};

use redis::aio::MultiplexedConnection;
use redis::cluster_async::ClusterConnection;
use redis::cluster_routing::{MultipleNodeRoutingInfo, ResponsePolicy, RoutingInfo};
use redis::io::tcp::TcpSettings;
use redis::sentinel::{SentinelClient, SentinelNodeConnectionInfo, SentinelServerType};
use redis::{
    AsyncConnectionConfig, Cmd, ConnectionInfo, FromRedisValue, IntoConnectionInfo, RedisError, RedisResult,
    Value,
};

use super::Topology;
use crate::broker::BrokerError;
use crate::runtime::spawn_on_request_thread;

pub(crate) enum Commands {
    Standalone(Box<Standalone>),
    Sentinel(Box<SentinelCommands>),
    Cluster(ClusterConnection),
}

/// A multiplexed connection made on first use and made again after it
/// failed; callers that find none wait for one connect.
#[derive(Default)]
struct Slot {
    conn: parking_lot::Mutex<Option<MultiplexedConnection>>,
    connecting: tokio::sync::Mutex<()>,
}

impl Slot {
    async fn get<F, Fut>(&self, connect: F) -> RedisResult<MultiplexedConnection>
    where
        F: FnOnce() -> Fut,
        Fut: Future<Output = RedisResult<MultiplexedConnection>>,
    {
        if let Some(c) = self.conn.lock().clone() {
            return Ok(c);
        }
        let _one = self.connecting.lock().await;
        if let Some(c) = self.conn.lock().clone() {
            return Ok(c);
        }
        let c = connect().await?;
        *self.conn.lock() = Some(c.clone());
        Ok(c)
    }

    /// Runs `request` on the slot's connection; a connection that failed
    /// as `drop_on` says is dropped, and the next command connects again.
    async fn query<T, F, Fut>(
        &self,
        connect: F,
        request: Request<'_>,
        drop_on: fn(&RedisError) -> bool,
    ) -> Result<T, BrokerError>
    where
        T: FromRedisValue,
        F: FnOnce() -> Fut,
        Fut: Future<Output = RedisResult<MultiplexedConnection>>,
    {
        let mut c = self.get(connect).await.map_err(unavailable)?;
        let answer = match request {
            Request::One(cmd) => cmd.query_async(&mut c).await,
            Request::Pipeline(pipe) => pipe.query_async(&mut c).await,
        };
        answer.map_err(|e| {
            if drop_on(&e) {
                self.conn.lock().take();
            }
            classify(e)
        })
    }
}

/// What a slot sends: a command, or a pipeline (with `ignore_errors`: an
/// answer per command).
#[derive(Clone, Copy)]
enum Request<'a> {
    One(&'a Cmd),
    Pipeline(&'a redis::Pipeline),
}

pub(crate) struct Standalone {
    client: redis::Client,
    config: AsyncConnectionConfig,
    slots: Box<[Slot]>,
    next: AtomicUsize,
}

impl Standalone {
    fn slot(&self) -> &Slot {
        &self.slots[self.next.fetch_add(1, Ordering::Relaxed) % self.slots.len()]
    }

    /// A new connection, its task on the request thread (`crate::runtime`).
    fn connect(&self) -> impl Future<Output = RedisResult<MultiplexedConnection>> + use<> {
        multiplexed_on_request_thread(self.client.clone(), self.config.clone())
    }

    async fn query<T: FromRedisValue>(&self, cmd: &Cmd) -> Result<T, BrokerError> {
        self.slot()
            .query(|| self.connect(), Request::One(cmd), broken)
            .await
    }

    async fn query_pipeline(&self, pipe: &redis::Pipeline) -> Result<Vec<RedisResult<Value>>, BrokerError> {
        self.slot()
            .query(|| self.connect(), Request::Pipeline(pipe), broken)
            .await
    }
}

/// A multiplexed connection to `client`, its driver task on the request
/// thread (`crate::runtime`) so that a publish's command and answer stay
/// on the thread that serves the publish.
fn multiplexed_on_request_thread(
    client: redis::Client,
    config: AsyncConnectionConfig,
) -> impl Future<Output = RedisResult<MultiplexedConnection>> {
    spawn_on_request_thread(async move { client.get_multiplexed_async_connection_with_config(&config).await })
}

pub(crate) struct SentinelCommands {
    client: tokio::sync::Mutex<SentinelClient>,
    slot: Slot,
    config: AsyncConnectionConfig,
}

/// A reply that says the connection no longer reaches a usable master
/// (behind Sentinels a master that stops answering may have been replaced).
fn stale(e: &RedisError) -> bool {
    e.is_io_error()
        || e.is_connection_dropped()
        || e.is_connection_refusal()
        || e.is_timeout()
        || e.code() == Some("READONLY")
}

/// A connection to a single server that is broken. A timeout is not: the
/// command may still be carried out (a paused server), and closing the
/// connection would make Redis discard it; later commands wait on the same
/// connection.
fn broken(e: &RedisError) -> bool {
    !e.is_timeout() && stale(e)
}

impl SentinelCommands {
    async fn connect(&self) -> RedisResult<MultiplexedConnection> {
        let client = self.client.lock().await.async_get_client().await?;
        multiplexed_on_request_thread(client, self.config.clone()).await
    }

    async fn query<T: FromRedisValue>(&self, cmd: &Cmd) -> Result<T, BrokerError> {
        self.slot.query(|| self.connect(), Request::One(cmd), stale).await
    }

    async fn query_pipeline(&self, pipe: &redis::Pipeline) -> Result<Vec<RedisResult<Value>>, BrokerError> {
        self.slot
            .query(|| self.connect(), Request::Pipeline(pipe), stale)
            .await
    }

    /// The current master's address, asked of the Sentinels.
    pub(crate) async fn master(&self) -> RedisResult<ConnectionInfo> {
        let client = self.client.lock().await.async_get_client().await?;
        Ok(client.get_connection_info().clone())
    }
}

/// `TCP_NODELAY` on every command connection. A multiplexed connection
/// carries several callers' commands; with Nagle's algorithm a command
/// written while an earlier one is unacknowledged waits for that ACK
/// (Redis sets the option on its side; the redis crate leaves it off).
fn no_delay() -> TcpSettings {
    TcpSettings::default().set_nodelay(true)
}

fn unavailable(e: impl std::fmt::Display) -> BrokerError {
    BrokerError::Unavailable(e.to_string())
}

/// What a failed command means for its caller. Redis reports a missing
/// function only in the text of its error reply; this is the one place
/// that reads it.
pub(crate) fn classify(e: RedisError) -> BrokerError {
    if e.is_connection_refusal() {
        return BrokerError::Unavailable(e.to_string());
    }
    if e.is_timeout() || e.is_io_error() || e.is_connection_dropped() || e.is_unrecoverable_error() {
        return BrokerError::OutcomeUnknown(e.to_string());
    }
    let text = e.to_string();
    match e.into_server_errors() {
        Some(errors) if errors.iter().any(|(_, s)| is_function_missing(s)) => BrokerError::FunctionMissing,
        Some(_) => BrokerError::Refused(text),
        None => BrokerError::Protocol(text),
    }
}

/// `ERR Function not found`, alone or inside a pipeline's failures.
fn is_function_missing(e: &redis::ServerError) -> bool {
    e.code() == "ERR" && e.details().is_some_and(|d| d.starts_with("Function not found"))
}

impl Commands {
    /// `timeout` bounds connecting and every command's answer: a command
    /// sent and not answered in time fails as `OutcomeUnknown`.
    pub(crate) async fn connect(
        topology: &Topology,
        pool_size: usize,
        timeout: Duration,
    ) -> Result<Commands, BrokerError> {
        let config = AsyncConnectionConfig::new()
            .set_connection_timeout(Some(timeout))
            .set_response_timeout(Some(timeout));
        match topology {
            Topology::Standalone(url) => {
                let info = url
                    .as_str()
                    .into_connection_info()
                    .map_err(|e| BrokerError::Config(e.to_string()))?
                    .set_tcp_settings(no_delay());
                let client = redis::Client::open(info).map_err(|e| BrokerError::Config(e.to_string()))?;
                Ok(Commands::Standalone(Box::new(Standalone {
                    client,
                    config,
                    slots: (0..pool_size.max(1)).map(|_| Slot::default()).collect(),
                    next: AtomicUsize::new(0),
                })))
            }
            Topology::Sentinel {
                sentinels,
                master,
                node,
            } => {
                let node_info = SentinelNodeConnectionInfo::default()
                    .set_redis_connection_info(node.redis_settings().clone())
                    .set_tcp_settings(no_delay());
                let client = SentinelClient::build(
                    sentinels.clone(),
                    master.clone(),
                    Some(node_info),
                    SentinelServerType::Master,
                )
                .map_err(|e| BrokerError::Config(e.to_string()))?;
                Ok(Commands::Sentinel(Box::new(SentinelCommands {
                    client: tokio::sync::Mutex::new(client),
                    slot: Slot::default(),
                    config,
                })))
            }
            Topology::Cluster { seeds, .. } => {
                let client = redis::cluster::ClusterClient::builder(seeds.clone())
                    .connection_timeout(timeout)
                    .response_timeout(timeout)
                    .tcp_settings(no_delay())
                    .build()
                    .map_err(|e| BrokerError::Config(e.to_string()))?;
                let conn = spawn_on_request_thread(async move { client.get_async_connection().await })
                    .await
                    .map_err(unavailable)?;
                Ok(Commands::Cluster(conn))
            }
        }
    }

    pub(crate) async fn query<T: FromRedisValue>(&self, cmd: &Cmd) -> Result<T, BrokerError> {
        match self {
            Commands::Standalone(s) => s.query(cmd).await,
            Commands::Sentinel(s) => s.query(cmd).await,
            Commands::Cluster(c) => cmd.query_async(&mut c.clone()).await.map_err(classify),
        }
    }

    /// Several commands at once (each multiplexed connection pipelines
    /// them).
    pub(crate) async fn query_many<T: FromRedisValue>(&self, cmds: Vec<Cmd>) -> Result<Vec<T>, BrokerError> {
        futures_util::future::try_join_all(cmds.iter().map(|c| self.query(c))).await
    }

    /// Several commands with an answer each, for batches of small writes:
    /// on one server they go as one pipeline (one message to the
    /// connection's task, one write, one wake-up for the whole batch,
    /// where `query_many` pays each per command); a cluster routes each
    /// command by its key. A failure to send fails every command.
    pub(crate) async fn query_each(&self, cmds: Vec<Cmd>) -> Vec<Result<Value, BrokerError>> {
        let pipeline = |cmds: Vec<Cmd>| {
            let mut pipe = redis::pipe();
            pipe.ignore_errors();
            for cmd in cmds {
                pipe.add_command(cmd);
            }
            pipe
        };
        let n = cmds.len();
        let answers = match self {
            Commands::Standalone(s) => s.query_pipeline(&pipeline(cmds)).await,
            Commands::Sentinel(s) => s.query_pipeline(&pipeline(cmds)).await,
            Commands::Cluster(_) => {
                return futures_util::future::join_all(cmds.iter().map(|c| self.query(c))).await;
            }
        };
        match answers {
            Ok(answers) if answers.len() == n => answers.into_iter().map(|a| a.map_err(classify)).collect(),
            Ok(answers) => {
                let e = BrokerError::Protocol(format!("{} answers to {n} commands", answers.len()));
                (0..n).map(|_| Err(e.clone())).collect()
            }
            Err(e) => (0..n).map(|_| Err(e.clone())).collect(),
        }
    }

    /// Runs `cmd` on every master (function loading).
    pub(crate) async fn on_every_master(&self, cmd: &Cmd) -> Result<(), BrokerError> {
        match self {
            Commands::Cluster(c) => {
                let routing = RoutingInfo::MultiNode((
                    MultipleNodeRoutingInfo::AllMasters,
                    Some(ResponsePolicy::AllSucceeded),
                ));
                c.clone()
                    .route_command(cmd.clone(), routing)
                    .await
                    .map_err(classify)?;
                Ok(())
            }
            _ => self.query::<Value>(cmd).await.map(drop),
        }
    }

    /// A cluster command sent to any node (topology queries).
    pub(crate) async fn cluster_any<T: FromRedisValue>(&self, cmd: &Cmd) -> Result<T, BrokerError> {
        match self {
            Commands::Cluster(c) => {
                let routing = RoutingInfo::SingleNode(redis::cluster_routing::SingleNodeRoutingInfo::Random);
                let v = c
                    .clone()
                    .route_command(cmd.clone(), routing)
                    .await
                    .map_err(classify)?;
                T::from_redis_value(v).map_err(|e| BrokerError::Protocol(e.to_string()))
            }
            _ => self.query(cmd).await,
        }
    }

    pub(crate) fn sentinel(&self) -> Option<&SentinelCommands> {
        match self {
            Commands::Sentinel(s) => Some(s),
            _ => None,
        }
    }
}
