//! Configuration: one typed `Config`, parsed once from flags and their
//! `SSEGATE_*` environment variables, validated at start. A bad value exits
//! with a message that names the flag, the variable and the rule.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use clap::{Args, Parser, Subcommand, ValueEnum};
use ipnet::IpNet;

mod mercure;
pub use mercure::{MercureAlg, MercureConfig};

#[derive(Debug, Parser)]
#[command(
    name = "ssegate",
    version,
    about = "Server-Sent Events gateway: any node streams any channel's events from Redis pub/sub.",
    args_conflicts_with_subcommands = true
)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Option<Command>,
    #[command(flatten)]
    pub serve: Config,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run a gateway node (the default when no subcommand is given).
    Serve(Box<Config>),
    /// Publish one durable event and print its id.
    Publish(PublishArgs),
}

/// Whether `GET /` serves the demo page.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Demo {
    /// On with the embedded broker, off with Redis.
    Auto,
    On,
    Off,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum LogFormat {
    Text,
    Json,
}

fn duration(s: &str) -> Result<Duration, String> {
    humantime::parse_duration(s).map_err(|e| format!("{e} (use a unit: 500ms, 15s, 2m, 1h)"))
}

/// A network (`10.0.0.0/8`, `fd00::/8`) or one address (`192.0.2.7`,
/// `::1`).
pub fn cidr(s: &str) -> Result<IpNet, String> {
    let t = s.trim();
    if t.is_empty() {
        return Err("an empty entry: list CIDRs or addresses, or leave it unset to trust no proxy".into());
    }
    if let Ok(net) = t.parse::<IpNet>() {
        // `10.1.2.3/8` means the network it lies in.
        return Ok(net.trunc());
    }
    t.parse::<std::net::IpAddr>()
        .map(IpNet::from)
        .map_err(|_| format!("`{s}` is not an address or a CIDR (e.g. 10.0.0.0/8, 192.0.2.7, fd00::/8)"))
}

/// Byte sizes: a number with an optional unit (`64KiB`, `1MiB`, `512`).
pub fn byte_size(s: &str) -> Result<usize, String> {
    let t = s.trim();
    let split = t.find(|c: char| !c.is_ascii_digit()).unwrap_or(t.len());
    let (num, unit) = t.split_at(split);
    let n: usize = num
        .parse()
        .map_err(|_| format!("`{s}` is not a size (e.g. 512, 64KiB, 1MiB)"))?;
    let mult = match unit.trim().to_ascii_lowercase().as_str() {
        "" | "b" => 1,
        "k" | "kb" | "kib" => 1 << 10,
        "m" | "mb" | "mib" => 1 << 20,
        "g" | "gb" | "gib" => 1 << 30,
        other => {
            return Err(format!("unknown size unit `{other}` (use B, KiB, MiB, GiB)"));
        }
    };
    n.checked_mul(mult).ok_or_else(|| format!("`{s}` is too large"))
}

/// Everything a node needs. Every flag has an `SSEGATE_*` variable.
#[derive(Debug, Clone, Args)]
pub struct Config {
    /// Address to listen on.
    #[arg(long, env = "SSEGATE_LISTEN", default_value = "0.0.0.0:8080")]
    pub listen: SocketAddr,

    /// Redis URL (redis://host:port/db or rediss://). With --redis-cluster,
    /// seed nodes; with --redis-sentinel-master, the Sentinels
    /// (comma-separated URLs). Without it, the embedded in-process broker
    /// serves a single node.
    #[arg(long, env = "SSEGATE_REDIS_URL")]
    pub redis_url: Option<String>,

    /// --redis-url names Redis Cluster nodes: sharded pub/sub (SSUBSCRIBE/SPUBLISH).
    #[arg(long, env = "SSEGATE_REDIS_CLUSTER", value_parser = clap::builder::BoolishValueParser::new(), default_value_t = false, num_args = 0..=1, default_missing_value = "true")]
    pub redis_cluster: bool,

    /// --redis-url names Sentinels that monitor this master.
    #[arg(long, env = "SSEGATE_REDIS_SENTINEL_MASTER", conflicts_with = "redis_cluster")]
    pub redis_sentinel_master: Option<String>,

    /// Time Redis has to answer a command, and to answer the pub/sub
    /// connection's pings, before the node gives up on it. A publish that
    /// times out after it was sent has an unknown outcome (504).
    #[arg(long, env = "SSEGATE_REDIS_TIMEOUT", default_value = "5s", value_parser = duration)]
    pub redis_timeout: Duration,

    /// Command connections to Redis per node (pub/sub uses one more).
    #[arg(long, env = "SSEGATE_REDIS_POOL_SIZE", default_value_t = 4)]
    pub redis_pool_size: usize,

    /// Prefix of Redis names: channel C is `<prefix>{C}`, its history `<prefix>{C}:log`.
    #[arg(long, env = "SSEGATE_CHANNEL_PREFIX", default_value = "sse:")]
    pub channel_prefix: String,

    /// Events kept per channel for resume (Redis trims approximately: at least this many).
    #[arg(long, env = "SSEGATE_HISTORY_SIZE", default_value_t = 1000)]
    pub history_size: usize,

    /// A channel's history expires after this long without a durable publish, plus at
    /// most a sixteenth (capped at 60 s) in Redis (0s keeps it).
    #[arg(long, env = "SSEGATE_HISTORY_TTL", default_value = "1h", value_parser = duration)]
    pub history_ttl: Duration,

    /// How long a node's presence report of a channel stays valid: a node
    /// that dies leaves the counts within this (refreshed every third).
    #[arg(long, env = "SSEGATE_PRESENCE_TTL", default_value = "30s", value_parser = duration)]
    pub presence_ttl: Duration,

    /// This node's name in presence (default: the host name and a random suffix).
    #[arg(long, env = "SSEGATE_NODE_ID")]
    pub node_id: Option<String>,

    /// Interval of the comment heartbeat on every stream.
    #[arg(long, env = "SSEGATE_HEARTBEAT", default_value = "15s", value_parser = duration)]
    pub heartbeat: Duration,

    /// Reconnect delay suggested to browsers (the stream's `retry:` hint).
    #[arg(long, env = "SSEGATE_RETRY", default_value = "2s", value_parser = duration)]
    pub retry: Duration,

    /// Most channels one stream may read.
    #[arg(long, env = "SSEGATE_MAX_CHANNELS", default_value_t = 16)]
    pub max_channels: usize,

    /// Most channels one WebSocket may subscribe.
    #[arg(long, env = "SSEGATE_WS_MAX_CHANNELS", default_value_t = 1000)]
    pub ws_max_channels: usize,

    /// Bytes a stream may have queued before it counts as a slow client and is closed.
    #[arg(long, env = "SSEGATE_CLIENT_QUEUE", default_value = "256KiB", value_parser = byte_size)]
    pub client_queue: usize,

    /// Memory all resuming streams of a node may hold in history pages not
    /// yet written to their sockets; a resume waits for room beyond it.
    #[arg(long, env = "SSEGATE_REPLAY_MEMORY", default_value = "64MiB", value_parser = byte_size)]
    pub replay_memory: usize,

    /// Embedded broker only: bytes of history kept over all channels
    /// (the oldest events go first).
    #[arg(long, env = "SSEGATE_HISTORY_MEMORY", default_value = "256MiB", value_parser = byte_size)]
    pub history_memory: usize,

    /// Largest publish body.
    #[arg(long, env = "SSEGATE_MAX_PAYLOAD", default_value = "64KiB", value_parser = byte_size)]
    pub max_payload: usize,

    /// How long a new stream waits for its channels' subscriptions before a 503.
    #[arg(long, env = "SSEGATE_SUBSCRIBE_TIMEOUT", default_value = "10s", value_parser = duration)]
    pub subscribe_timeout: Duration,

    /// On SIGTERM/SIGINT: time `/readyz` answers 503 before streams are closed.
    #[arg(long, env = "SSEGATE_DRAIN_DELAY", default_value = "1s", value_parser = duration)]
    pub drain_delay: Duration,

    /// Window over which streams are closed at shutdown, so reconnects spread out.
    #[arg(long, env = "SSEGATE_CLOSE_SPREAD", default_value = "1s", value_parser = duration)]
    pub close_spread: Duration,

    /// Hard limit from the signal to exit.
    #[arg(long, env = "SSEGATE_SHUTDOWN_GRACE", default_value = "10s", value_parser = duration)]
    pub shutdown_grace: Duration,

    /// HS256 secret that signs tokens.
    #[arg(long, env = "SSEGATE_JWT_SECRET", hide_env_values = true)]
    pub jwt_secret: Option<String>,

    /// PEM file with the public key (RSA: RS256, EC P-256: ES256, Ed25519: EdDSA) that verifies tokens.
    #[arg(long, env = "SSEGATE_JWT_PUBLIC_KEY")]
    pub jwt_public_key: Option<PathBuf>,

    /// JWKS file (a JSON Web Key Set) with the keys that verify tokens, chosen by `kid`.
    #[arg(long, env = "SSEGATE_JWKS_FILE")]
    pub jwks_file: Option<PathBuf>,

    /// JWKS URL (an identity provider's `jwks_uri`) with the keys that verify
    /// tokens: fetched at start, then kept fresh. https://, or http:// to a
    /// loopback address.
    #[arg(long, env = "SSEGATE_JWKS_URL")]
    pub jwks_url: Option<String>,

    /// Shortest time between two fetches of --jwks-url caused by unknown
    /// `kid`s; also the floor of its max-age and the retry delay after a
    /// failed fetch.
    #[arg(long, env = "SSEGATE_JWKS_MIN_REFRESH", default_value = "30s", value_parser = duration)]
    pub jwks_min_refresh: Duration,

    /// Accepted token audiences (`aud` then required); comma-separated.
    #[arg(long, env = "SSEGATE_JWT_AUDIENCE", value_delimiter = ',')]
    pub jwt_audience: Vec<String>,

    /// Accepted token issuers (`iss` then required); comma-separated.
    #[arg(long, env = "SSEGATE_JWT_ISSUER", value_delimiter = ',')]
    pub jwt_issuer: Vec<String>,

    /// Cookie that may carry a reader's token.
    #[arg(long, env = "SSEGATE_JWT_COOKIE", default_value = "ssegate_token")]
    pub jwt_cookie: String,

    /// File of static publisher API keys, one per line (`#` comments).
    #[arg(long, env = "SSEGATE_PUBLISH_KEYS_FILE")]
    pub publish_keys_file: Option<PathBuf>,

    /// Let everyone read and publish every channel (required with Redis and no keys).
    #[arg(long, env = "SSEGATE_ALLOW_ANONYMOUS", value_parser = clap::builder::BoolishValueParser::new(), default_value_t = false, num_args = 0..=1, default_missing_value = "true")]
    pub allow_anonymous: bool,

    /// Origins allowed by CORS (`*` for any, without credentials); comma-separated.
    #[arg(long, env = "SSEGATE_CORS_ORIGIN", value_delimiter = ',')]
    pub cors_origin: Vec<String>,

    /// Most open connections (default: the open-file limit, raised to its hard limit, minus 64).
    #[arg(long, env = "SSEGATE_MAX_CONNECTIONS")]
    pub max_connections: Option<usize>,

    /// New connections per second per client IP (0: no limit).
    #[arg(long, env = "SSEGATE_IP_RATE", default_value_t = 100)]
    pub ip_rate: u32,

    /// Burst of new connections allowed per client IP above --ip-rate.
    #[arg(long, env = "SSEGATE_IP_BURST", default_value_t = 1000)]
    pub ip_burst: u32,

    /// Balancers and proxies (CIDRs or addresses, comma-separated) whose
    /// word on the client's address is taken: a PROXY protocol header
    /// (v1 or v2) before the request, and `X-Forwarded-For` / `Forwarded`.
    /// From any other peer both are ignored.
    #[arg(long, env = "SSEGATE_TRUSTED_PROXIES", value_delimiter = ',', value_parser = cidr)]
    pub trusted_proxies: Vec<IpNet>,

    /// Largest request head (request line and headers); 431 above.
    #[arg(long, env = "SSEGATE_MAX_HEADER_BYTES", default_value = "16KiB", value_parser = byte_size)]
    pub max_header_bytes: usize,

    /// Time a client has to send a request head: on a new connection (the
    /// TLS handshake and the HTTP/2 preface included), and on a kept-alive
    /// or HTTP/2 connection with no request in progress. Past it the
    /// connection is closed.
    #[arg(long, env = "SSEGATE_HEADER_TIMEOUT", default_value = "10s", value_parser = duration)]
    pub header_timeout: Duration,

    /// Time a client has to send a request body once its head arrived (408 after).
    #[arg(long, env = "SSEGATE_BODY_TIMEOUT", default_value = "10s", value_parser = duration)]
    pub body_timeout: Duration,

    /// /readyz answers 503 while the node is at --max-connections (by
    /// default a full node is ready: it is healthy, just full).
    #[arg(long, env = "SSEGATE_NOT_READY_WHEN_FULL", value_parser = clap::builder::BoolishValueParser::new(), default_value_t = false, num_args = 0..=1, default_missing_value = "true")]
    pub not_ready_when_full: bool,

    /// Threads that serve publishing connections (plain-TCP connections
    /// whose first request is a POST) and the Redis command connections,
    /// apart from the worker threads that write event streams (0: none,
    /// everything on the workers).
    #[arg(long, env = "SSEGATE_REQUEST_THREADS", default_value_t = 1, value_parser = clap::value_parser!(u16).range(0..=256))]
    pub request_threads: u16,

    /// Drop a connection whose written data stays unacknowledged this long
    /// (TCP_USER_TIMEOUT: clients that vanished without closing), and a
    /// stream that has not taken anything from its queue for this long
    /// (a client that stopped reading). 0s: the kernel's default, and no
    /// stall check.
    #[arg(long, env = "SSEGATE_WRITE_TIMEOUT", default_value = "60s", value_parser = duration)]
    pub write_timeout: Duration,

    /// PEM certificate chain: serve HTTPS, with HTTP/2 (ALPN) and HTTP/1.1.
    #[arg(long, env = "SSEGATE_TLS_CERT", requires = "tls_key")]
    pub tls_cert: Option<PathBuf>,

    /// PEM private key of --tls-cert.
    #[arg(long, env = "SSEGATE_TLS_KEY", requires = "tls_cert")]
    pub tls_key: Option<PathBuf>,

    /// Serve the demo page at `/` (auto: only with the embedded broker).
    #[arg(long, env = "SSEGATE_DEMO", value_enum, default_value = "auto")]
    pub demo: Demo,

    /// Event source to consume, repeatable: `kafka://`, `amqp://`, `nats://`,
    /// `sse+http://` or `sse+https://` URLs (see the README); each message
    /// becomes one durable event. SSEGATE_SOURCES separates URLs with spaces.
    #[arg(long = "source", env = "SSEGATE_SOURCES", value_delimiter = ' ')]
    pub sources: Vec<String>,

    /// Log format (the level comes from RUST_LOG, default `info`).
    #[arg(long, env = "SSEGATE_LOG_FORMAT", value_enum, default_value = "text")]
    pub log_format: LogFormat,

    #[command(flatten)]
    pub mercure: MercureConfig,
}

#[derive(Debug, Clone, Args)]
pub struct PublishArgs {
    /// Channel to publish to.
    pub channel: String,
    /// The payload: an envelope (`{"event":..,"data":..}`) or plain data.
    pub data: String,
    /// Publish through this Redis (FCALL ssegate_publish).
    #[arg(long, env = "SSEGATE_REDIS_URL")]
    pub redis_url: Option<String>,
    /// --redis-url names Redis Cluster nodes.
    #[arg(long, env = "SSEGATE_REDIS_CLUSTER", value_parser = clap::builder::BoolishValueParser::new(), default_value_t = false, num_args = 0..=1, default_missing_value = "true")]
    pub redis_cluster: bool,
    /// --redis-url names Sentinels that monitor this master.
    #[arg(long, env = "SSEGATE_REDIS_SENTINEL_MASTER", conflicts_with = "redis_cluster")]
    pub redis_sentinel_master: Option<String>,
    /// Without --redis-url: the node to POST to.
    #[arg(long, env = "SSEGATE_URL", default_value = "http://127.0.0.1:8080")]
    pub url: String,
    /// Prefix of Redis names.
    #[arg(long, env = "SSEGATE_CHANNEL_PREFIX", default_value = "sse:")]
    pub channel_prefix: String,
    /// Time Redis (or the node) has to answer one attempt.
    #[arg(long, env = "SSEGATE_REDIS_TIMEOUT", default_value = "5s", value_parser = duration)]
    pub redis_timeout: Duration,
    /// The idempotency key of this publish (default: a random one). Every
    /// attempt uses it, so a retry after an unknown outcome publishes at
    /// most once.
    #[arg(long)]
    pub idempotency_key: Option<String>,
    /// Attempts before giving up when the outcome is unknown or the broker
    /// unavailable.
    #[arg(long, default_value_t = 5)]
    pub attempts: u32,
}

#[derive(Debug, thiserror::Error)]
#[error("invalid --{flag} (SSEGATE_{env}): {rule}")]
pub struct ConfigError {
    pub flag: &'static str,
    pub env: String,
    pub rule: String,
}

fn bad(flag: &'static str, rule: impl Into<String>) -> ConfigError {
    ConfigError {
        flag,
        env: flag.replace('-', "_").to_ascii_uppercase(),
        rule: rule.into(),
    }
}

impl Config {
    /// Rules clap cannot express on one value.
    pub fn validate(&self) -> Result<(), ConfigError> {
        if self.presence_ttl < Duration::from_secs(1) {
            return Err(bad("presence-ttl", "must be at least 1s"));
        }
        if self
            .node_id
            .as_ref()
            .is_some_and(|n| n.is_empty() || n.len() > 100 || n.contains('|'))
        {
            return Err(bad("node-id", "must be 1 to 100 characters, without '|'"));
        }
        if self.heartbeat < Duration::from_millis(10) {
            return Err(bad("heartbeat", "must be at least 10ms"));
        }
        if self.history_size == 0 {
            return Err(bad("history-size", "must be at least 1"));
        }
        if !(1..=65_535).contains(&self.ws_max_channels) {
            return Err(bad("ws-max-channels", "must be between 1 and 65535"));
        }
        if !(1..=1024).contains(&self.max_channels) {
            return Err(bad("max-channels", "must be between 1 and 1024"));
        }
        if self.client_queue < 1024 {
            return Err(bad("client-queue", "must be at least 1KiB"));
        }
        if self.client_queue < self.max_payload {
            return Err(bad(
                "client-queue",
                format!(
                    "must be at least --max-payload ({} bytes): a stream must be able to queue the largest event",
                    self.max_payload
                ),
            ));
        }
        if self.replay_memory < self.client_queue {
            return Err(bad("replay-memory", "must be at least --client-queue"));
        }
        if self.history_memory < self.max_payload {
            return Err(bad("history-memory", "must be at least --max-payload"));
        }
        if self.redis_timeout < Duration::from_millis(100) {
            return Err(bad("redis-timeout", "must be at least 100ms"));
        }
        if self.body_timeout.is_zero() {
            return Err(bad("body-timeout", "must be more than 0s"));
        }
        if self.redis_pool_size == 0 {
            return Err(bad("redis-pool-size", "must be at least 1"));
        }
        if self
            .channel_prefix
            .bytes()
            .any(|b| matches!(b, b'{' | b'}') || b.is_ascii_whitespace())
        {
            return Err(bad("channel-prefix", "may not contain braces or whitespace"));
        }
        if !(Duration::from_secs(1)..=Duration::from_secs(3600)).contains(&self.jwks_min_refresh) {
            return Err(bad("jwks-min-refresh", "must be between 1s and 1h"));
        }
        if self.max_header_bytes < 1024 {
            return Err(bad("max-header-bytes", "must be at least 1KiB"));
        }
        if self.header_timeout.is_zero() {
            return Err(bad("header-timeout", "must be more than 0s"));
        }
        if self.cors_origin.len() > 1 && self.cors_origin.iter().any(|o| o == "*") {
            return Err(bad("cors-origin", "`*` cannot be combined with other origins"));
        }
        for o in self.cors_origin.iter().filter(|o| *o != "*") {
            if !(o.starts_with("http://") || o.starts_with("https://")) || o.ends_with('/') {
                return Err(bad(
                    "cors-origin",
                    format!("{o:?} is not an origin like https://app.example.com"),
                ));
            }
        }
        if self.drain_delay + self.close_spread > self.shutdown_grace {
            return Err(bad(
                "shutdown-grace",
                "must be at least --drain-delay plus --close-spread",
            ));
        }
        self.mercure.validate()?;
        Ok(())
    }

    pub fn demo_enabled(&self) -> bool {
        match self.demo {
            Demo::On => true,
            Demo::Off => false,
            Demo::Auto => self.redis_url.is_none(),
        }
    }

    /// A config with every default, for tests and embedding.
    pub fn default_for_tests() -> Config {
        let cli = Cli::parse_from(["ssegate", "--listen", "127.0.0.1:0"]);
        cli.serve
    }
}

#[cfg(test)]
mod tests;
