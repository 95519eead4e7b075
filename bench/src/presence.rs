//! `ssegate-bench presence`: what presence costs. It opens `--streams` SSE
//! streams over `--channels` channels (by default each with `?presence=1`,
//! and with `--jwt-secret` each with a token of its own `sub`, so that every
//! stream is a client of its own), then measures two windows of the same
//! length: at rest (only the nodes' refreshes write presence), and with
//! `--churn` streams a second closing and coming back `--away` later (a
//! leave and a join each). For both: Redis commands per second (`FCALL`,
//! the commands the functions run, Redis CPU), the node's CPU and its
//! `ssegate_presence_reports_total` per second, and the joins and leaves
//! the streams received.

use std::cell::Cell;
use std::net::IpAddr;
use std::path::PathBuf;
use std::rc::Rc;
use std::time::{Duration, Instant};

use clap::Args;
use memchr::memmem;
use serde::Serialize;
use tokio::sync::{Notify, Semaphore};

use crate::costs::{Probe, Rates, rates, top};
use crate::http1::Conn;
use crate::stats::{ServerProcs, now_us};

#[derive(Debug, Clone, Args)]
pub struct PresenceArgs {
    /// The node (`http://127.0.0.1:8080`).
    #[arg(long, default_value = "http://127.0.0.1:8080")]
    url: String,
    /// Streams to open.
    #[arg(long, default_value_t = 15_000)]
    streams: usize,
    /// Channels; stream i reads channel i mod C (default: streams/10).
    #[arg(long)]
    channels: Option<usize>,
    /// Stream path; `%c` is the channel.
    #[arg(long, default_value = "/v1/stream/%c?presence=1")]
    path: String,
    /// Mint each stream a token (HS256 with this secret) with `sub` user-<i>,
    /// and `channels` and `presence` granting every channel. Without it the
    /// streams are anonymous (one client per node and channel).
    #[arg(long)]
    jwt_secret: Option<String>,
    /// Streams leaving (and coming back) per second in the second window.
    #[arg(long, default_value_t = 100.0)]
    churn: f64,
    /// How long a stream that left stays away.
    #[arg(long, default_value = "1s", value_parser = crate::duration)]
    away: Duration,
    /// Length of each measured window (a multiple of the node's refresh,
    /// a third of --presence-ttl, keeps the two comparable).
    #[arg(long, default_value = "30s", value_parser = crate::duration)]
    window: Duration,
    /// Wait after all streams are open before the first window.
    #[arg(long, default_value = "5s", value_parser = crate::duration)]
    settle: Duration,
    /// Connects in flight while opening.
    #[arg(long, default_value_t = 64)]
    connect_concurrency: usize,
    /// Source addresses: a count N (127.0.0.1 ... 127.0.0.N), a comma list, or 0.
    #[arg(long, default_value = "8")]
    source_addrs: String,
    /// Redis, for its command counts and CPU.
    #[arg(long)]
    redis_url: Option<String>,
    /// The node's process id(s), for its CPU.
    #[arg(long, value_delimiter = ',')]
    server_pid: Vec<u32>,
    /// Write the result as JSON here (`-` for stdout).
    #[arg(long)]
    json: Option<PathBuf>,
}

#[derive(Debug, Serialize)]
struct Output {
    url: String,
    streams: usize,
    channels: usize,
    path: String,
    own_tokens: bool,
    churn_per_s: f64,
    away_s: f64,
    opened: u64,
    failed: u64,
    closed_by_server: u64,
    at_rest: Phase,
    churning: Phase,
}

#[derive(Debug, Serialize)]
struct Phase {
    /// Streams that left (and came back) per second.
    left_per_s: f64,
    /// `ssegate.join` and `ssegate.leave` events the streams received per second.
    notices_per_s: f64,
    costs: Rates,
}

#[derive(Default)]
struct Counters {
    open: Cell<u64>,
    opened: Cell<u64>,
    failed: Cell<u64>,
    closed: Cell<u64>,
    left: Cell<u64>,
    notices: Cell<u64>,
}

fn bump(c: &Cell<u64>, by: u64) {
    c.set(c.get() + by);
}

struct Plan {
    server: std::net::SocketAddr,
    host: String,
    paths: Vec<String>,
    sources: Vec<IpAddr>,
    away: Duration,
}

fn token(secret: &str, i: usize) -> String {
    let claims = serde_json::json!({
        "sub": format!("user-{i}"),
        "exp": now_us() / 1_000_000 + 24 * 3600,
        "channels": ["*"],
        "presence": ["*"],
    });
    jsonwebtoken::encode(
        &jsonwebtoken::Header::default(),
        &claims,
        &jsonwebtoken::EncodingKey::from_secret(secret.as_bytes()),
    )
    .expect("HS256 signs")
}

pub fn main(a: PresenceArgs) -> Result<(), String> {
    crate::raise_nofile();
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("tokio runtime");
    tokio::task::LocalSet::new().block_on(&rt, run(a))
}

/// Opens stream `i`: the head must say 200.
async fn open(plan: &Plan, i: usize) -> Result<tokio::net::TcpStream, String> {
    let source = plan.sources[i % plan.sources.len()];
    let mut c = Conn::connect(plan.server, source, &plan.host).await?;
    c.send("GET", &plan.paths[i], &["Accept: text/event-stream".into()], &[])
        .await?;
    let head = c.head().await?;
    if head.status != 200 {
        return Err(format!("status {}", head.status));
    }
    Ok(c.into_stream())
}

/// Reads a stream until the server ends it, counting joins and leaves (a
/// name cut by a read boundary is missed: a rare undercount).
async fn drain(stream: &tokio::net::TcpStream, counters: &Counters) {
    let mut buf = [0u8; 2048];
    loop {
        if stream.readable().await.is_err() {
            return;
        }
        match stream.try_read(&mut buf) {
            Ok(0) => return,
            Ok(n) => bump(
                &counters.notices,
                memmem::find_iter(&buf[..n], b"event: ssegate.").count() as u64,
            ),
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {}
            Err(_) => return,
        }
    }
}

/// Stream `i`: open, hold, leave when told and come back after `away`.
async fn hold(plan: Rc<Plan>, i: usize, leave: Rc<Notify>, gate: Rc<Semaphore>, counters: Rc<Counters>) {
    let mut first = true;
    loop {
        let permit = if first { gate.acquire().await.ok() } else { None };
        let opened = tokio::time::timeout(Duration::from_secs(30), open(&plan, i)).await;
        drop(permit);
        let stream = match opened {
            Ok(Ok(s)) => s,
            Ok(Err(e)) => {
                if counters.failed.get() < 5 {
                    eprintln!("[presence] stream {i}: {e}");
                }
                return bump(&counters.failed, 1);
            }
            Err(_) => return bump(&counters.failed, 1),
        };
        if first {
            bump(&counters.opened, 1);
        }
        first = false;
        bump(&counters.open, 1);
        tokio::select! {
            _ = leave.notified() => {
                drop(stream);
                counters.open.set(counters.open.get() - 1);
                bump(&counters.left, 1);
                tokio::time::sleep(plan.away).await;
            }
            _ = drain(&stream, &counters) => {
                counters.open.set(counters.open.get() - 1);
                return bump(&counters.closed, 1);
            }
        }
    }
}

async fn run(a: PresenceArgs) -> Result<(), String> {
    let (server, host) = crate::parse_url(&a.url)?;
    let channels = a.channels.unwrap_or(a.streams / 10).max(1);
    let prefix = format!(
        "bench.presence.{}.{}.",
        now_us() / 1_000_000 % 1_000_000,
        std::process::id()
    );
    let paths = (0..a.streams)
        .map(|i| {
            let mut p = a.path.replace("%c", &format!("{prefix}{}", i % channels));
            if let Some(secret) = &a.jwt_secret {
                p.push(if p.contains('?') { '&' } else { '?' });
                p.push_str("token=");
                p.push_str(&token(secret, i));
            }
            p
        })
        .collect();
    let plan = Rc::new(Plan {
        server,
        host: host.clone(),
        paths,
        sources: crate::parse_sources(&a.source_addrs)?,
        away: a.away,
    });
    let counters = Rc::new(Counters::default());
    let gate = Rc::new(Semaphore::new(a.connect_concurrency.max(1)));
    let leaves: Vec<Rc<Notify>> = (0..a.streams).map(|_| Rc::new(Notify::new())).collect();
    let t0 = Instant::now();
    for (i, leave) in leaves.iter().enumerate() {
        let (plan, leave, gate, counters) = (plan.clone(), leave.clone(), gate.clone(), counters.clone());
        tokio::task::spawn_local(hold(plan, i, leave, gate, counters));
    }
    let n = a.streams as u64;
    let mut last = Instant::now();
    while counters.opened.get() + counters.failed.get() < n {
        tokio::time::sleep(Duration::from_millis(100)).await;
        if last.elapsed() >= Duration::from_secs(2) {
            last = Instant::now();
            eprintln!(
                "[presence] {:.0}s: opened {}/{n}",
                t0.elapsed().as_secs_f64(),
                counters.opened.get()
            );
        }
    }
    eprintln!(
        "[presence] {} streams open over {channels} channels in {:.1}s ({} failed); settling {:?}",
        counters.opened.get(),
        t0.elapsed().as_secs_f64(),
        counters.failed.get(),
        a.settle
    );
    if counters.opened.get() == 0 {
        return Err("no stream opened".into());
    }
    tokio::time::sleep(a.settle).await;
    let mut probe = Probe {
        redis: Probe::connect_redis(a.redis_url.as_deref()).await,
        procs: ServerProcs {
            roots: a.server_pid.clone(),
            with_children: false,
        },
        metrics: Some((server, host, "ssegate_presence_reports_total")),
    };
    let measured = !a.server_pid.is_empty();
    let mut window = async |label: &str| -> Phase {
        eprintln!("[presence] {label}: {:?}", a.window);
        let (left0, notices0) = (counters.left.get(), counters.notices.get());
        let before = probe.sample().await;
        tokio::time::sleep(a.window).await;
        let after = probe.sample().await;
        let costs = rates(&before, &after, measured);
        Phase {
            left_per_s: (counters.left.get() - left0) as f64 / costs.window_s,
            notices_per_s: (counters.notices.get() - notices0) as f64 / costs.window_s,
            costs,
        }
    };
    let at_rest = window("at rest").await;

    // Churn: the next stream in turn leaves, at the asked rate.
    let stop = Rc::new(Cell::new(false));
    let churner = {
        let (stop, leaves, every) = (
            stop.clone(),
            leaves.clone(),
            Duration::from_secs_f64(1.0 / a.churn.max(0.001)),
        );
        tokio::task::spawn_local(async move {
            let mut tick = tokio::time::interval(every);
            let mut k = 0;
            while !stop.get() {
                tick.tick().await;
                leaves[k % leaves.len()].notify_one();
                k += 1;
            }
        })
    };
    // Until leaving and coming back are both in their steady state.
    tokio::time::sleep(a.away + Duration::from_secs(2)).await;
    let churning = window(&format!("{} leaving and coming back per second", a.churn)).await;
    stop.set(true);
    let _ = churner.await;
    let out = Output {
        url: a.url.clone(),
        streams: a.streams,
        channels,
        path: a.path.clone(),
        own_tokens: a.jwt_secret.is_some(),
        churn_per_s: a.churn,
        away_s: a.away.as_secs_f64(),
        opened: counters.opened.get(),
        failed: counters.failed.get(),
        closed_by_server: counters.closed.get(),
        at_rest,
        churning,
    };
    print(&out, a.json.as_deref())
}

fn print(o: &Output, json: Option<&std::path::Path>) -> Result<(), String> {
    let mut rows = vec![
        (
            "run",
            format!(
                "{} streams ({}) over {} channels, {}; churn {}/s, away {:.1}s",
                o.streams,
                o.path,
                o.channels,
                if o.own_tokens {
                    "a token and sub each"
                } else {
                    "anonymous"
                },
                o.churn_per_s,
                o.away_s
            ),
        ),
        (
            "streams",
            format!(
                "opened {}, failed {}, closed by the node {}",
                o.opened, o.failed, o.closed_by_server
            ),
        ),
    ];
    for (name, p) in [("at rest", &o.at_rest), ("churning", &o.churning)] {
        let c = &p.costs;
        let opt =
            |v: Option<f64>, unit: &str| v.map(|v| format!("{v:.1}{unit}")).unwrap_or_else(|| "–".into());
        rows.push((
            name,
            format!(
                "left {:.0}/s; {} FCALL/s ({:.1} µs each), {:.0} commands/s, Redis CPU {}; node CPU {}, {} reports/s; {:.0} joins+leaves received/s",
                p.left_per_s,
                format_args!("{:.0}", c.fcall_per_s),
                c.fcall_us,
                c.commands_per_s,
                opt(c.redis_cpu_pct, "%"),
                opt(c.server_cpu_pct, "%"),
                opt(c.counter_per_s, ""),
                p.notices_per_s
            ),
        ));
        rows.push(("  commands/s", top(&c.top_commands_per_s)));
    }
    crate::costs::emit(&rows, o, json)
}
