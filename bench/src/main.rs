//! ssegate-bench: a load generator for SSE and WebSocket servers fed by
//! Redis (ssegate over SSE and WebSocket, Nchan, rawfan, Socket.IO with its
//! Redis adapter, a plain `ws` server). It opens N streams over S channels from worker
//! processes (several loopback source addresses, so the ephemeral port
//! range and the per-process file limit are no ceiling), publishes at a
//! fixed rate through Redis PUBLISH, a Redis Function or HTTP, and reports
//! delivery (expected/delivered/lost/duplicated), publish-to-parse latency
//! percentiles, and the server's memory per stream and CPU time.
//!
//! A run: spawn workers → connect every stream → settle (memory per
//! stream is read here) → publish: warmup, then the measured window →
//! stop → drain → count. With `--storm` the publisher runs before the
//! streams connect, all at once, and the run also reports how long until
//! every stream was receiving and how many SUBSCRIBE commands Redis saw.
//!
//! Two modes of their own measure ssegate's history and presence:
//! `history` (pages of `GET /v1/history` per second) and `presence` (what
//! presence costs Redis and the node at rest and with clients coming and
//! going).

mod client;
mod costs;
mod emitter;
mod history;
mod http1;
mod presence;
mod procs;
mod publisher;
mod report;
mod stages;
mod stats;
mod tail_log;
mod target;
mod track;
mod worker;
mod ws;

use std::collections::BTreeMap;
use std::net::{IpAddr, Ipv4Addr, SocketAddr, ToSocketAddrs};
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::{Duration, Instant};

use clap::{Args, Parser, Subcommand, ValueEnum};
use serde::Serialize;

use crate::procs::{WorkerProc, Workers, collect};
use crate::publisher::{Method, Publisher};
use crate::report::{
    BenchOut, ConfigOut, ConnectOut, EventsOut, Output, RedisOut, ServerOut, StreamsOut, delta, table,
};
use crate::stats::{CLIENT_NAME, RedisSample, ServerProcs, add_pairs, new_histogram, now_us, percentiles_ms};
use crate::target::{Protocol, Target, Transport};
use crate::worker::{Command, WorkerConfig, WorkerReport};

#[derive(Debug, Parser)]
#[command(
    name = "ssegate-bench",
    version,
    about = "Load generator for SSE and WebSocket servers fed by Redis: ssegate, Nchan, rawfan, Socket.IO, ws.",
    args_conflicts_with_subcommands = true
)]
struct Cli {
    #[command(subcommand)]
    command: Option<Sub>,
    #[command(flatten)]
    run: RunArgs,
}

#[derive(Debug, Subcommand)]
enum Sub {
    /// Internal: one worker process, driven over stdin/stdout.
    #[command(hide = true)]
    Worker,
    /// Pages of GET /v1/history per second on a filled channel.
    History(history::HistoryArgs),
    /// What presence costs Redis and the node, at rest and with clients coming and going.
    Presence(presence::PresenceArgs),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum, Serialize)]
#[serde(rename_all = "lowercase")]
enum Scenario {
    /// Open and hold: memory per stream, idle CPU.
    Idle,
    /// streams/10 channels x 10 streams, 10,000 publishes/s.
    Sessions,
    /// One channel, every stream on it, 20 publishes/s.
    Broadcast,
    /// Every stream connects at once while the publisher runs.
    Storm,
    /// Only what the flags say.
    Custom,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
enum PublishVia {
    /// Redis PUBLISH (ephemeral).
    Redis,
    /// Redis FCALL of the publish function (ssegate's durable path).
    Fcall,
    /// HTTP POST.
    Http,
    /// Redis PUBLISH of @socket.io/redis-emitter's message (Socket.IO servers
    /// with the Redis adapter).
    Emitter,
    /// Do not publish.
    None,
}

fn duration(s: &str) -> Result<Duration, String> {
    humantime::parse_duration(s).map_err(|e| format!("{e} (use a unit: 500ms, 15s, 2m)"))
}

#[derive(Debug, Clone, Args)]
struct RunArgs {
    /// Kind of server: sets the subscribe path, the protocol and how to publish.
    #[arg(long, value_enum, default_value = "ssegate")]
    target: Target,
    /// sse or ws; `--target ssegate --transport ws` is `--target ssegate-ws`.
    /// Default: what the target speaks.
    #[arg(long, value_enum)]
    transport: Option<Transport>,
    /// The server's address (`http://127.0.0.1:8080` or `127.0.0.1:8080`).
    /// Several, comma-separated, spread the streams: stream i connects to
    /// the (i mod N)-th (one server process holds at most about 20,000).
    #[arg(long, value_delimiter = ',', default_value = "http://127.0.0.1:8080")]
    url: Vec<String>,
    /// Subscribe path; `%c` is the channel, `%m` its number modulo 100 (for
    /// 100 distinct Mercure template selectors). Default: ssegate `/v1/stream/%c`,
    /// nchan, rawfan and ws `/sub/%c`, ssegate-ws `/v1/ws?channel=%c`,
    /// socketio `/socket.io/?EIO=4&transport=websocket&channel=%c`.
    #[arg(long)]
    sub_path: Option<String>,
    /// Preset that fills in the flags not given.
    #[arg(long, value_enum, default_value = "custom")]
    scenario: Scenario,
    /// Name of this run in the output (default: the scenario).
    #[arg(long)]
    name: Option<String>,
    /// Name of the system in the output (default: the target).
    #[arg(long)]
    label: Option<String>,
    /// Streams to open.
    #[arg(long, default_value_t = 1000)]
    streams: usize,
    /// Channels; stream i reads channel i mod S. Default: 1 for broadcast
    /// and custom, streams/10 otherwise.
    #[arg(long)]
    channels: Option<usize>,
    /// Publishes per second, over all channels (round-robin). Default:
    /// idle 0, sessions and storm 10000, broadcast 20, custom 10.
    #[arg(long)]
    rate: Option<f64>,
    /// How to publish. Default: http for nchan, emitter for socketio, redis otherwise.
    #[arg(long, value_enum)]
    publish: Option<PublishVia>,
    /// Redis (publishing, and INFO/CLIENT LIST for the report).
    #[arg(long, default_value = "redis://127.0.0.1:6379")]
    redis_url: String,
    /// Redis channel or key published to; `%c` is the channel. Default:
    /// ssegate `sse:{%c}` (fcall: `sse:{%c}:log`), rawfan and ws `lim:%c`,
    /// socketio `socket.io#/#%c#`.
    #[arg(long)]
    pub_key: Option<String>,
    /// Redis Function called with --publish fcall.
    #[arg(long, default_value = "ssegate_publish")]
    pub_function: String,
    /// Server for HTTP publishes (default: --url).
    #[arg(long)]
    pub_url: Option<String>,
    /// Path of HTTP publishes; `%c` is the channel. Default: ssegate
    /// `/v1/stream/%c`, nchan `/pub/%c`.
    #[arg(long)]
    pub_path: Option<String>,
    /// Publisher connections (each channel always uses the same one).
    #[arg(long, default_value_t = 4)]
    publish_conns: usize,
    /// Most publishes in one pipeline.
    #[arg(long, default_value_t = 512)]
    publish_batch: usize,
    /// Batches one Redis publisher connection has in flight: 1 waits for a
    /// batch's replies before sending the next (a slow round trip then
    /// sends the publishes due meanwhile as one burst); more sends each
    /// batch when it is due, as a client pipelining on a multiplexed
    /// connection does (1 to 1024). HTTP publishes always go one at a time.
    #[arg(long, default_value_t = 1,
          value_parser = clap::builder::RangedU64ValueParser::<usize>::new().range(1..=1024))]
    publish_pipeline: usize,
    /// Pad payloads to this many bytes.
    #[arg(long, default_value_t = 0)]
    payload_bytes: usize,
    /// Extra request header (`Name: value`), on subscribes and HTTP publishes.
    #[arg(long = "header")]
    headers: Vec<String>,
    /// Measured publishing window.
    #[arg(long, default_value = "10s", value_parser = duration)]
    duration: Duration,
    /// Publishing before the window (not measured).
    #[arg(long, default_value = "2s", value_parser = duration)]
    warmup: Duration,
    /// Wait after the last publish before counting.
    #[arg(long, default_value = "3s", value_parser = duration)]
    drain: Duration,
    /// Wait after all streams are open before reading memory (default: idle 10s, else 3s).
    #[arg(long, value_parser = duration)]
    settle: Option<Duration>,
    /// Connect every stream at once with the publisher already running.
    #[arg(long)]
    storm: bool,
    /// With --storm: how long to wait for every stream to receive.
    #[arg(long, default_value = "60s", value_parser = duration)]
    receive_timeout: Duration,
    /// Connects in flight per worker (0: all at once). Default: storm 0, else 64
    /// (below the 128 listen backlog that tokio servers get).
    #[arg(long)]
    connect_concurrency: Option<usize>,
    /// Limit for connect + response head, per stream.
    #[arg(long, default_value = "30s", value_parser = duration)]
    connect_timeout: Duration,
    /// Source addresses: a count N (127.0.0.1 ... 127.0.0.N), a comma
    /// list of addresses, or 0 to let the kernel choose.
    #[arg(long, default_value = "4")]
    source_addrs: String,
    /// Most streams per worker process (each needs a file descriptor).
    #[arg(long, default_value_t = 18_000)]
    per_process: usize,
    /// Worker processes (default: enough for --per-process).
    #[arg(long)]
    workers: Option<usize>,
    /// Shared read buffer of each worker, bytes.
    #[arg(long, default_value_t = 64 * 1024)]
    read_buffer: usize,
    /// Server process(es) to measure (RSS, PSS, CPU); comma-separated.
    #[arg(long, value_delimiter = ',')]
    server_pid: Vec<u32>,
    /// Read the server's pid from this file (nginx's pid file).
    #[arg(long)]
    server_pidfile: Option<PathBuf>,
    /// Also measure the direct children of the server pids (nginx workers).
    #[arg(long)]
    server_children: bool,
    /// Channel names are this prefix plus a number (default: unique per run).
    #[arg(long)]
    channel_prefix: Option<String>,
    /// Write the JSON result here (`-` for stdout; the table then goes to stderr).
    #[arg(long)]
    json: Option<PathBuf>,
    /// No progress lines.
    #[arg(long)]
    quiet: bool,
}

/// Raises the open-file limit to the hard limit.
pub fn raise_nofile() -> u64 {
    let hard = rlimit::Resource::NOFILE
        .get()
        .map(|(_, hard)| hard)
        .unwrap_or(1024);
    rlimit::increase_nofile_limit(hard).unwrap_or(1024)
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let mode = match cli.command {
        Some(Sub::Worker) => return worker::main(),
        Some(Sub::History(a)) => Some(history::main(a)),
        Some(Sub::Presence(a)) => Some(presence::main(a)),
        None => None,
    };
    if let Some(result) = mode {
        return match result {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => {
                eprintln!("ssegate-bench: {e}");
                ExitCode::FAILURE
            }
        };
    }
    let plan = match Plan::from_args(cli.run) {
        Ok(p) => p,
        Err(e) => {
            eprintln!("ssegate-bench: {e}");
            return ExitCode::from(2);
        }
    };
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("tokio runtime");
    let local = tokio::task::LocalSet::new();
    match local.block_on(&rt, coordinate(&plan)) {
        Ok(out) => {
            let json = serde_json::to_string_pretty(&out).expect("serializable");
            let to_stdout = plan.json.as_deref() == Some(std::path::Path::new("-"));
            if to_stdout {
                eprintln!("{}", table(&out));
                println!("{json}");
            } else {
                println!("{}", table(&out));
                if let Some(path) = &plan.json
                    && let Err(e) = std::fs::write(path, json + "\n")
                {
                    eprintln!("ssegate-bench: cannot write {}: {e}", path.display());
                    return ExitCode::FAILURE;
                }
            }
            if out.streams.opened == 0 && out.streams.requested > 0 {
                eprintln!("ssegate-bench: no stream opened");
                return ExitCode::FAILURE;
            }
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("ssegate-bench: {e}");
            ExitCode::FAILURE
        }
    }
}

/// The flags with every default worked out.
#[derive(Debug)]
struct Plan {
    label: String,
    name: String,
    target: Target,
    protocol: Protocol,
    scenario: Scenario,
    /// Host header of the first server (the HTTP publisher's default).
    host: String,
    /// Every server the streams are spread over.
    servers: Vec<(SocketAddr, String)>,
    sub_path: String,
    publish: Option<Method>,
    redis_url: String,
    channel_names: Vec<String>,
    streams: usize,
    rate: f64,
    duration: Duration,
    warmup: Duration,
    drain: Duration,
    settle: Duration,
    payload_bytes: usize,
    publish_conns: usize,
    publish_batch: usize,
    publish_pipeline: usize,
    storm: bool,
    receive_timeout: Duration,
    connect_concurrency: usize,
    connect_timeout: Duration,
    sources: Vec<IpAddr>,
    workers: usize,
    read_buffer: usize,
    headers: Vec<String>,
    procs: ServerProcs,
    json: Option<PathBuf>,
    quiet: bool,
}

/// The kernel's slab memory, KiB (0 where /proc/meminfo cannot be read).
fn slab_kib() -> u64 {
    std::fs::read_to_string("/proc/meminfo")
        .ok()
        .and_then(|m| {
            m.lines()
                .find_map(|l| l.strip_prefix("Slab:"))
                .and_then(|v| v.split_whitespace().next()?.parse().ok())
        })
        .unwrap_or(0)
}

/// `http://host:port/...` or `host:port` → (address, Host header).
fn parse_url(url: &str) -> Result<(SocketAddr, String), String> {
    let rest = url
        .strip_prefix("http://")
        .unwrap_or(url)
        .split('/')
        .next()
        .unwrap_or_default();
    let addr = rest
        .to_socket_addrs()
        .map_err(|e| format!("cannot resolve {url}: {e}"))?
        .next()
        .ok_or_else(|| format!("{url} resolves to no address"))?;
    Ok((addr, rest.to_owned()))
}

fn parse_sources(s: &str) -> Result<Vec<IpAddr>, String> {
    if let Ok(n) = s.trim().parse::<u8>() {
        if n == 0 {
            return Ok(vec![IpAddr::V4(Ipv4Addr::UNSPECIFIED)]);
        }
        return Ok((1..=n).map(|i| IpAddr::V4(Ipv4Addr::new(127, 0, 0, i))).collect());
    }
    s.split(',')
        .map(|a| {
            a.trim()
                .parse()
                .map_err(|_| format!("--source-addrs: `{a}` is not an address"))
        })
        .collect()
}

impl Plan {
    fn from_args(a: RunArgs) -> Result<Plan, String> {
        let servers = a
            .url
            .iter()
            .map(|u| parse_url(u))
            .collect::<Result<Vec<_>, _>>()?;
        let host = servers
            .first()
            .map(|s| s.1.clone())
            .ok_or("--url: no server given")?;
        let target = a.target.with_transport(a.transport)?;
        let sub_path = a.sub_path.clone().unwrap_or_else(|| target.sub_path().to_owned());
        let tenth = (a.streams / 10).max(1);
        let (channels, rate, storm) = match a.scenario {
            Scenario::Idle => (tenth, 0.0, false),
            Scenario::Sessions => (tenth, 10_000.0, false),
            Scenario::Broadcast => (1, 20.0, false),
            Scenario::Storm => (tenth, 10_000.0, true),
            Scenario::Custom => (1, 10.0, false),
        };
        let channels = a.channels.unwrap_or(channels).max(1);
        let rate = a.rate.unwrap_or(rate);
        let storm = storm || a.storm;
        let via = a.publish.unwrap_or(match target {
            Target::Nchan => PublishVia::Http,
            Target::Socketio => PublishVia::Emitter,
            _ => PublishVia::Redis,
        });
        let publish = if rate <= 0.0 {
            None
        } else {
            match via {
                PublishVia::None => None,
                PublishVia::Redis | PublishVia::Fcall => {
                    let fcall = via == PublishVia::Fcall;
                    let key = match (&a.pub_key, target.redis_key(fcall)) {
                        (Some(k), _) => k.clone(),
                        (None, Some(k)) => k.into(),
                        (None, None) => {
                            return Err(format!(
                                "no default Redis key for {} with --publish {via:?}; give --pub-key",
                                target.name()
                            ));
                        }
                    };
                    if fcall {
                        Some(Method::RedisFunction {
                            url: a.redis_url.clone(),
                            key_template: key,
                            function: a.pub_function.clone(),
                        })
                    } else {
                        Some(Method::RedisPublish {
                            url: a.redis_url.clone(),
                            key_template: key,
                        })
                    }
                }
                PublishVia::Emitter => Some(Method::RedisEmit {
                    url: a.redis_url.clone(),
                    key_template: a.pub_key.clone().unwrap_or_else(|| "socket.io#/#%c#".into()),
                }),
                PublishVia::Http => {
                    let path = match (&a.pub_path, target.http_pub_path()) {
                        (Some(p), _) => p.clone(),
                        (None, Some(p)) => p.into(),
                        (None, None) => {
                            return Err(format!(
                                "{} has no HTTP publish; use --publish redis",
                                target.name()
                            ));
                        }
                    };
                    let (addr, host) = parse_url(a.pub_url.as_deref().unwrap_or(&a.url[0]))?;
                    Some(Method::Http {
                        addr,
                        host,
                        path_template: path,
                        headers: a.headers.clone(),
                    })
                }
            }
        };
        let prefix = a.channel_prefix.clone().unwrap_or_else(|| {
            format!(
                "bench.{}.{}.",
                now_us() / 1_000_000 % 1_000_000,
                std::process::id()
            )
        });
        let channel_names = (0..channels).map(|i| format!("{prefix}{i}")).collect();
        let workers = a
            .workers
            .unwrap_or_else(|| a.streams.div_ceil(a.per_process.max(1)))
            .clamp(1, a.streams.max(1));
        let mut roots = a.server_pid.clone();
        if let Some(f) = &a.server_pidfile {
            let text = std::fs::read_to_string(f).map_err(|e| format!("cannot read {}: {e}", f.display()))?;
            roots.push(
                text.trim()
                    .parse()
                    .map_err(|_| format!("{} holds no pid", f.display()))?,
            );
        }
        let settle = a.settle.unwrap_or(if a.scenario == Scenario::Idle {
            Duration::from_secs(10)
        } else {
            Duration::from_secs(3)
        });
        Ok(Plan {
            label: a.label.clone().unwrap_or_else(|| target.name()),
            name: a
                .name
                .clone()
                .unwrap_or_else(|| format!("{:?}", a.scenario).to_lowercase()),
            target,
            protocol: target.protocol(),
            scenario: a.scenario,
            host,
            servers,
            sub_path,
            publish,
            redis_url: a.redis_url.clone(),
            channel_names,
            streams: a.streams,
            rate,
            duration: a.duration,
            warmup: a.warmup,
            drain: a.drain,
            settle,
            payload_bytes: a.payload_bytes,
            publish_conns: a.publish_conns,
            publish_batch: a.publish_batch,
            publish_pipeline: a.publish_pipeline,
            storm,
            receive_timeout: a.receive_timeout,
            connect_concurrency: a.connect_concurrency.unwrap_or(if storm { 0 } else { 64 }),
            connect_timeout: a.connect_timeout,
            sources: parse_sources(&a.source_addrs)?,
            workers,
            read_buffer: a.read_buffer,
            headers: a.headers.clone(),
            procs: ServerProcs {
                roots,
                with_children: a.server_children,
            },
            json: a.json.clone(),
            quiet: a.quiet,
        })
    }
}

async fn redis_stats_connection(url: &str) -> Option<redis::aio::MultiplexedConnection> {
    let client = redis::Client::open(url).ok()?;
    let mut con = match client.get_multiplexed_async_connection().await {
        Ok(c) => c,
        Err(e) => {
            eprintln!("ssegate-bench: no Redis statistics ({url}: {e})");
            return None;
        }
    };
    let _: redis::RedisResult<()> = redis::cmd("CLIENT")
        .arg("SETNAME")
        .arg(CLIENT_NAME)
        .query_async(&mut con)
        .await;
    Some(con)
}

async fn redis_sample(con: &mut Option<redis::aio::MultiplexedConnection>) -> Option<RedisSample> {
    match con {
        Some(c) => stats::redis_sample(c).await.ok(),
        None => None,
    }
}

fn log(plan: &Plan, msg: impl AsRef<str>) {
    if !plan.quiet {
        eprintln!("[{} {}] {}", plan.label, plan.name, msg.as_ref());
    }
}

async fn coordinate(plan: &Plan) -> Result<Output, String> {
    raise_nofile();
    let started_unix = now_us() / 1_000_000;
    let mut redis = redis_stats_connection(&plan.redis_url).await;
    let redis_start = redis_sample(&mut redis).await;

    // Workers, each with a contiguous share of the streams.
    let mut procs = Vec::new();
    let share = plan.streams.div_ceil(plan.workers);
    for w in 0..plan.workers {
        let first = w * share;
        let count = share.min(plan.streams.saturating_sub(first));
        let mut p = WorkerProc::spawn()?;
        let cfg = WorkerConfig {
            worker: w,
            servers: plan.servers.clone(),
            path_template: plan.sub_path.clone(),
            channel_names: plan.channel_names.clone(),
            headers: plan.headers.clone(),
            sources: plan.sources.clone(),
            first,
            count,
            connect_timeout_ms: plan.connect_timeout.as_millis() as u64,
            read_buffer: plan.read_buffer,
            protocol: plan.protocol,
        };
        p.send(&Command::Start(cfg)).await?;
        procs.push(p);
    }
    let mut workers = Workers(procs);
    if !workers
        .until(Duration::from_secs(30), |w| w.0.iter().all(|p| p.ready.get()))
        .await?
    {
        return Err("workers did not start".into());
    }
    log(plan, format!("{} worker(s) ready", plan.workers));

    let publisher_cfg = |m: &Method| publisher::Config {
        method: m.clone(),
        channel_names: plan.channel_names.clone(),
        rate: plan.rate,
        connections: plan.publish_conns,
        max_batch: plan.publish_batch,
        pipeline: plan.publish_pipeline,
        payload_bytes: plan.payload_bytes,
    };
    let mut publisher = None;
    if plan.storm
        && let Some(m) = &plan.publish
    {
        publisher = Some(Publisher::start(publisher_cfg(m)).await?);
        // Let it reach its rate before the storm.
        tokio::time::sleep(Duration::from_millis(500)).await;
    }

    // Connect.
    let server_before = plan.procs.sample();
    let slab_before_kib = slab_kib();
    let t0 = Instant::now();
    workers
        .send_all(&Command::Connect {
            concurrency: plan.connect_concurrency,
            t0_us: now_us(),
        })
        .await?;
    let n = plan.streams as u64;
    let mut last_log = Instant::now();
    let progress_log = |w: &Workers, last: &mut Instant| {
        if last.elapsed() >= Duration::from_secs(1) {
            *last = Instant::now();
            let p = w.progress();
            log(
                plan,
                format!(
                    "{:.1}s: opened {}/{n}, failed {}, receiving {}, closed {}",
                    t0.elapsed().as_secs_f64(),
                    p.opened,
                    p.failed,
                    p.receiving,
                    p.closed
                ),
            );
        }
    };
    workers
        .until(Duration::from_secs(24 * 3600), |w| {
            progress_log(w, &mut last_log);
            let p = w.progress();
            p.opened + p.failed >= n
        })
        .await?;
    let all_open_s = t0.elapsed().as_secs_f64();
    let mut all_receiving_s = None;
    if plan.storm && publisher.is_some() {
        let got = workers
            .until(plan.receive_timeout, |w| {
                progress_log(w, &mut last_log);
                let p = w.progress();
                p.receiving >= p.opened.saturating_sub(p.closed)
            })
            .await?;
        if got {
            all_receiving_s = Some(t0.elapsed().as_secs_f64());
        }
    }
    let server_connected = plan.procs.sample();
    let p = workers.progress();
    log(
        plan,
        format!(
            "connect phase: {} opened, {} failed in {all_open_s:.2}s{}",
            p.opened,
            p.failed,
            all_receiving_s
                .map(|s| format!(", all receiving after {s:.2}s"))
                .unwrap_or_default()
        ),
    );

    if p.opened == 0 {
        let reports = collect(&mut workers, vec![0; plan.channel_names.len()]).await?;
        let mut failures: BTreeMap<String, u64> = BTreeMap::new();
        for r in &reports {
            for (k, v) in &r.failures {
                *failures.entry(k.clone()).or_insert(0) += v;
            }
        }
        return Err(format!("no stream opened: {failures:?}"));
    }

    // Settle: memory per stream is read after it.
    tokio::time::sleep(plan.settle).await;
    workers.check()?;
    let server_open = plan.procs.sample();
    let slab_open_kib = slab_kib();
    let redis_open = redis_sample(&mut redis).await;
    let opened = workers.progress().opened;

    // Publish: warmup, window, drain.
    let mut rss_peak = server_open.rss_kib;
    let mut publisher_report = None;
    let mut published = vec![0u64; plan.channel_names.len()];
    let mut server_w0 = server_open;
    let own_histograms = matches!(plan.target, Target::Ssegate | Target::SsegateWs);
    let mut stages_w0 = stages::Nodes::default();
    let mut window_secs = 0.0;
    if let Some(m) = &plan.publish {
        if publisher.is_none() {
            publisher = Some(Publisher::start(publisher_cfg(m)).await?);
        }
        let p = publisher.as_mut().expect("started");
        let window_start_us = now_us() + plan.warmup.as_micros() as u64;
        workers
            .send_all(&Command::Window {
                start_us: window_start_us,
            })
            .await?;
        let stop_at = Instant::now() + plan.warmup + plan.duration;
        p.set_window(window_start_us, stop_at);
        log(
            plan,
            format!(
                "publishing {}/s over {} channel(s): {:?} warmup, {:?} measured",
                plan.rate,
                plan.channel_names.len(),
                plan.warmup,
                plan.duration
            ),
        );
        tokio::time::sleep(plan.warmup).await;
        server_w0 = plan.procs.sample();
        if own_histograms {
            stages_w0 = stages::snapshot(&plan.servers).await;
        }
        let mut last = Instant::now();
        while Instant::now() < stop_at {
            tokio::time::sleep(Duration::from_millis(250).min(stop_at - Instant::now())).await;
            rss_peak = rss_peak.max(plan.procs.rss_kib());
            workers.check()?;
            if last.elapsed() >= Duration::from_secs(5) {
                last = Instant::now();
                let pr = workers.progress();
                log(plan, format!("open {}, closed {}", pr.opened, pr.closed));
            }
        }
        let report = p.finish(plan.duration).await;
        log(
            plan,
            format!(
                "published {} measured ({:.0}/s){}; draining {:?}",
                report.measured,
                report.achieved_rate,
                if report.fell_behind { ", FELL BEHIND" } else { "" },
                plan.drain
            ),
        );
        published = p.measured_per_channel();
        publisher_report = Some(report);
        let drain_end = Instant::now() + plan.drain;
        while Instant::now() < drain_end {
            tokio::time::sleep(Duration::from_millis(250).min(drain_end - Instant::now())).await;
            rss_peak = rss_peak.max(plan.procs.rss_kib());
        }
        window_secs = plan.duration.as_secs_f64() + plan.drain.as_secs_f64();
    }
    let server_end = plan.procs.sample();
    let stages_ms = if own_histograms && plan.publish.is_some() {
        Some(stages::snapshot(&plan.servers).await.since(&stages_w0))
    } else {
        None
    };
    let redis_end = redis_sample(&mut redis).await;

    let reports = collect(&mut workers, published).await?;
    workers.shutdown().await;

    let mut latency = new_histogram();
    let mut open_time = new_histogram();
    let mut first_event = new_histogram();
    let mut failures = BTreeMap::new();
    let mut closures = BTreeMap::new();
    let mut t = WorkerReport::default();
    for r in &reports {
        add_pairs(&mut latency, &r.latency);
        add_pairs(&mut open_time, &r.open_time);
        add_pairs(&mut first_event, &r.first_event_time);
        for (k, v) in &r.failures {
            *failures.entry(k.clone()).or_insert(0) += v;
        }
        for (k, v) in &r.closures {
            *closures.entry(k.clone()).or_insert(0) += v;
        }
        t.opened += r.opened;
        t.failed += r.failed;
        t.closed += r.closed;
        t.receiving += r.receiving;
        t.measured_streams += r.measured_streams;
        t.expected += r.expected;
        t.delivered += r.delivered;
        t.duplicated += r.duplicated;
        t.lost += r.lost;
        t.reordered += r.reordered;
        t.stale += r.stale;
        t.streams_with_loss += r.streams_with_loss;
        t.events += r.events;
        t.other_events += r.other_events;
        t.comments += r.comments;
        t.bytes += r.bytes;
        t.cpu_ticks += r.cpu_ticks;
        t.rss_kib += r.rss_kib;
    }

    let per_stream =
        |after: u64, before: u64| (opened > 0).then(|| (after as f64 - before as f64) / opened as f64);
    let cpu_window = server_end.cpu_secs_since(&server_w0);
    let server_out = ServerOut {
        pids: plan.procs.pids(),
        processes: server_open.processes,
        rss_before_kib: server_before.rss_kib,
        rss_open_kib: server_open.rss_kib,
        rss_peak_kib: rss_peak,
        rss_end_kib: server_end.rss_kib,
        pss_before_kib: server_before.pss_kib,
        pss_open_kib: server_open.pss_kib,
        mem_per_stream_kib: if plan.procs.is_empty() {
            None
        } else {
            per_stream(server_open.pss_kib, server_before.pss_kib)
        },
        rss_per_stream_kib: if plan.procs.is_empty() {
            None
        } else {
            per_stream(server_open.rss_kib, server_before.rss_kib)
        },
        cpu_connect_s: server_connected.cpu_secs_since(&server_before),
        cpu_settle_s: server_open.cpu_secs_since(&server_connected),
        cpu_window_s: cpu_window,
        cpu_window_pct: if window_secs > 0.0 {
            100.0 * cpu_window / window_secs
        } else {
            0.0
        },
        cpu_ns_per_delivery: (!plan.procs.is_empty() && t.delivered > 0)
            .then(|| cpu_window * 1e9 / t.delivered as f64),
        slab_before_kib,
        slab_open_kib,
        kernel_per_stream_kib: per_stream(slab_open_kib, slab_before_kib),
        stages_ms,
    };
    let redis_out = match (&redis_start, &redis_open, &redis_end) {
        (Some(a), Some(b), Some(c)) => Some(RedisOut {
            subscribe_calls_connect: delta(a, b),
            subscribe_calls_total: delta(a, c),
            clients_before: a.clients,
            clients_open: b.clients,
            clients_end: c.clients,
            cpu_publish_s: ((c.cpu_s - b.cpu_s) * 100.0).round() / 100.0,
        }),
        _ => None,
    };
    let channels = plan.channel_names.len();
    let secs = plan.duration.as_secs_f64().max(1e-9);
    let offered = if plan.publish.is_some() {
        plan.rate * (plan.streams as f64 / channels as f64)
    } else {
        0.0
    };
    let coordinator_cpu = stats::cpu_ticks(std::process::id()).unwrap_or(0) as f64 / stats::TICKS_PER_SEC;
    Ok(Output {
        label: plan.label.clone(),
        name: plan.name.clone(),
        target: plan.target,
        scenario: plan.scenario,
        started_unix,
        config: ConfigOut {
            url: format!("http://{}", plan.host),
            sub_path: plan.sub_path.clone(),
            publish: plan.publish.as_ref().map(|m| m.name().to_owned()),
            publish_to: plan.publish.as_ref().map(|m| m.target()),
            streams: plan.streams,
            channels,
            rate: plan.rate,
            duration_s: plan.duration.as_secs_f64(),
            warmup_s: plan.warmup.as_secs_f64(),
            drain_s: plan.drain.as_secs_f64(),
            settle_s: plan.settle.as_secs_f64(),
            payload_bytes: plan.payload_bytes,
            storm: plan.storm,
            connect_concurrency: plan.connect_concurrency,
            workers: plan.workers,
            source_addrs: plan.sources.clone(),
        },
        streams: StreamsOut {
            requested: plan.streams,
            opened: t.opened,
            failed: t.failed,
            failures,
            closed_by_server: t.closed,
            closures,
            receiving: t.receiving,
        },
        connect: ConnectOut {
            all_open_s,
            // The exact instant: the last stream's first event, since the start.
            all_receiving_s: all_receiving_s.map(|_| first_event.max() as f64 / 1e6),
            open_time_ms: percentiles_ms(&open_time),
            first_event_ms: percentiles_ms(&first_event),
        },
        events: EventsOut {
            measured_streams: t.measured_streams,
            expected: t.expected,
            delivered: t.delivered,
            lost: t.lost,
            lost_pct: if t.expected > 0 {
                100.0 * t.lost as f64 / t.expected as f64
            } else {
                0.0
            },
            duplicated: t.duplicated,
            reordered: t.reordered,
            stale: t.stale,
            streams_with_loss: t.streams_with_loss,
            parsed_total: t.events,
            other_events: t.other_events,
            comments: t.comments,
            bytes: t.bytes,
        },
        delivered_per_sec: t.delivered as f64 / secs,
        offered_per_sec: offered,
        latency_ms: percentiles_ms(&latency),
        publisher: publisher_report,
        server: server_out,
        redis: redis_out,
        load_generator: BenchOut {
            worker_cpu_s: t.cpu_ticks as f64 / stats::TICKS_PER_SEC,
            coordinator_cpu_s: coordinator_cpu,
            worker_rss_kib: t.rss_kib,
        },
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sources() {
        assert_eq!(
            parse_sources("3").unwrap(),
            vec![
                IpAddr::from([127, 0, 0, 1]),
                IpAddr::from([127, 0, 0, 2]),
                IpAddr::from([127, 0, 0, 3])
            ]
        );
        assert_eq!(
            parse_sources("127.0.0.9, 127.0.0.7").unwrap(),
            vec![IpAddr::from([127, 0, 0, 9]), IpAddr::from([127, 0, 0, 7])]
        );
        assert!(parse_sources("x").is_err());
    }

    #[test]
    fn urls() {
        let (a, h) = parse_url("http://127.0.0.1:8080/x").unwrap();
        assert_eq!(a, "127.0.0.1:8080".parse().unwrap());
        assert_eq!(h, "127.0.0.1:8080");
    }

    #[test]
    fn scenario_defaults() {
        let cli = Cli::parse_from([
            "ssegate-bench",
            "--scenario",
            "sessions",
            "--streams",
            "15000",
            "--target",
            "rawfan",
        ]);
        let p = Plan::from_args(cli.run).unwrap();
        assert_eq!(p.channel_names.len(), 1500);
        assert_eq!(p.rate, 10_000.0);
        assert!(matches!(
            p.publish,
            Some(Method::RedisPublish { ref key_template, .. }) if key_template == "lim:%c"
        ));
        assert_eq!(p.workers, 1);
        let cli = Cli::parse_from([
            "ssegate-bench",
            "--scenario",
            "storm",
            "--streams",
            "40000",
            "--target",
            "nchan",
        ]);
        let p = Plan::from_args(cli.run).unwrap();
        assert_eq!(p.workers, 3);
        assert_eq!(p.connect_concurrency, 0);
        assert!(matches!(p.publish, Some(Method::Http { .. })));
    }
}
