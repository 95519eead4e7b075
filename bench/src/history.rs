//! `ssegate-bench history`: how many `GET /v1/history/{channel}` pages a
//! node answers. The channel is filled first (`--events` durable events of
//! about `--payload-bytes`, by `POST`), then `--concurrency` kept-alive
//! connections ask for pages of `--limit` events after ids taken in turn
//! along the channel (every page full) for `--duration`, after a warmup.
//! Prints requests/s, events/s, latency, and the node's and Redis's cost.

use std::cell::{Cell, RefCell};
use std::net::IpAddr;
use std::path::PathBuf;
use std::rc::Rc;
use std::time::{Duration, Instant};

use clap::Args;
use serde::Serialize;

use crate::costs::{Probe, Rates, rates};
use crate::http1::Conn;
use crate::stats::{Percentiles, ServerProcs, new_histogram, now_us, percentiles_ms};

#[derive(Debug, Clone, Args)]
pub struct HistoryArgs {
    /// The node (`http://127.0.0.1:8080`).
    #[arg(long, default_value = "http://127.0.0.1:8080")]
    url: String,
    /// The channel (default: a new one per run).
    #[arg(long)]
    channel: Option<String>,
    /// Events published to the channel first.
    #[arg(long, default_value_t = 1000)]
    events: usize,
    /// Size of each event's data, bytes.
    #[arg(long, default_value_t = 100)]
    payload_bytes: usize,
    /// Events per page (`limit`).
    #[arg(long, default_value_t = 100)]
    limit: usize,
    /// Connections asking at the same time.
    #[arg(long, default_value_t = 4)]
    concurrency: usize,
    /// Measured window.
    #[arg(long, default_value = "10s", value_parser = crate::duration)]
    duration: Duration,
    /// Asking before the window (not measured).
    #[arg(long, default_value = "2s", value_parser = crate::duration)]
    warmup: Duration,
    /// A token for `Authorization: Bearer` (publish and read), when the node checks tokens.
    #[arg(long)]
    token: Option<String>,
    /// Redis, for its command counts and CPU (none: not read).
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
    channel: String,
    events: usize,
    payload_bytes: usize,
    limit: usize,
    concurrency: usize,
    requests: u64,
    errors: u64,
    requests_per_s: f64,
    events_per_s: f64,
    response_mib_per_s: f64,
    latency_ms: Percentiles,
    costs: Rates,
}

/// Data of event `i`: its number, padded to `bytes`.
fn payload(i: usize, bytes: usize) -> Vec<u8> {
    let mut p = format!("{i:06} ").into_bytes();
    p.resize(bytes.max(p.len()), b'x');
    p
}

fn id_of(body: &[u8]) -> Result<String, String> {
    let v: serde_json::Value = serde_json::from_slice(body).map_err(|e| format!("not JSON: {e}"))?;
    v["id"]
        .as_str()
        .map(str::to_owned)
        .ok_or_else(|| format!("no id in {v}"))
}

pub fn main(a: HistoryArgs) -> Result<(), String> {
    if a.events <= a.limit {
        return Err("--events must be more than --limit (every page is full)".into());
    }
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("tokio runtime");
    tokio::task::LocalSet::new().block_on(&rt, run(a))
}

async fn run(a: HistoryArgs) -> Result<(), String> {
    let (server, host) = crate::parse_url(&a.url)?;
    let any = IpAddr::from([0, 0, 0, 0]);
    let channel = a.channel.clone().unwrap_or_else(|| {
        format!(
            "bench.history.{}.{}",
            now_us() / 1_000_000 % 1_000_000,
            std::process::id()
        )
    });
    let auth: Vec<String> = a
        .token
        .iter()
        .map(|t| format!("Authorization: Bearer {t}"))
        .collect();

    // Fill the channel.
    let mut c = Conn::connect(server, any, &host).await?;
    let mut ids = Vec::with_capacity(a.events);
    let mut headers = auth.clone();
    headers.push("Content-Type: text/plain".into());
    for i in 0..a.events {
        let (status, body) = c
            .call(
                "POST",
                &format!("/v1/stream/{channel}"),
                &headers,
                &payload(i, a.payload_bytes),
            )
            .await?;
        if status != 201 {
            return Err(format!(
                "POST: status {status}: {}",
                String::from_utf8_lossy(&body)
            ));
        }
        ids.push(id_of(&body)?);
    }
    // One page checked in full: the events after the first id, in order.
    let path = |k: usize| format!("/v1/history/{channel}?after={}&limit={}", ids[k], a.limit);
    let (status, body) = c.call("GET", &path(0), &auth, &[]).await?;
    let page: serde_json::Value = serde_json::from_slice(&body).map_err(|e| format!("GET: {e}"))?;
    let got: Vec<&str> = page["events"]
        .as_array()
        .map(|e| e.iter().filter_map(|e| e["id"].as_str()).collect())
        .unwrap_or_default();
    if status != 200 || got != ids[1..=a.limit].iter().map(String::as_str).collect::<Vec<_>>() {
        return Err(format!(
            "GET {}: status {status}, not the page expected: {page}",
            path(0)
        ));
    }
    eprintln!(
        "[history] {} events of {} bytes in {channel}; {} connection(s) asking for pages of {}",
        a.events, a.payload_bytes, a.concurrency, a.limit
    );

    let mut probe = Probe {
        redis: Probe::connect_redis(a.redis_url.as_deref()).await,
        procs: ServerProcs {
            roots: a.server_pid.clone(),
            with_children: false,
        },
        metrics: None,
    };
    let next = Rc::new(Cell::new(0usize));
    let measuring = Rc::new(Cell::new(false));
    let stop = Rc::new(Cell::new(false));
    let latency = Rc::new(RefCell::new(new_histogram()));
    let totals = Rc::new(Cell::new((0u64, 0u64, 0u64))); // requests, errors, bytes
    let pages = ids.len() - a.limit;
    let ids = Rc::new(ids);
    let mut tasks = Vec::new();
    for _ in 0..a.concurrency {
        let mut conn = Conn::connect(server, any, &host).await?;
        let (next, measuring, stop, latency, totals, ids) = (
            next.clone(),
            measuring.clone(),
            stop.clone(),
            latency.clone(),
            totals.clone(),
            ids.clone(),
        );
        let (channel, auth, limit) = (channel.clone(), auth.clone(), a.limit);
        tasks.push(tokio::task::spawn_local(async move {
            while !stop.get() {
                let k = next.get();
                next.set((k + 1) % pages);
                let path = format!("/v1/history/{channel}?after={}&limit={limit}", ids[k]);
                let t0 = Instant::now();
                let answer = conn.call("GET", &path, &auth, &[]).await;
                let us = t0.elapsed().as_micros() as u64;
                if !measuring.get() {
                    answer?;
                    continue;
                }
                let (mut n, mut errors, mut bytes) = totals.get();
                n += 1;
                match answer {
                    Ok((200, body)) => {
                        bytes += body.len() as u64;
                        latency.borrow_mut().saturating_record(us.max(1));
                    }
                    Ok(_) => errors += 1,
                    Err(e) => return Err(e),
                }
                totals.set((n, errors, bytes));
            }
            Ok::<(), String>(())
        }));
    }
    tokio::time::sleep(a.warmup).await;
    let before = probe.sample().await;
    measuring.set(true);
    tokio::time::sleep(a.duration).await;
    measuring.set(false);
    let after = probe.sample().await;
    stop.set(true);
    for t in tasks {
        t.await.map_err(|e| e.to_string())??;
    }
    let costs = rates(&before, &after, !a.server_pid.is_empty());
    let (requests, errors, bytes) = totals.get();
    let secs = costs.window_s;
    let ok = requests - errors;
    let out = Output {
        url: a.url.clone(),
        channel,
        events: a.events,
        payload_bytes: a.payload_bytes,
        limit: a.limit,
        concurrency: a.concurrency,
        requests,
        errors,
        requests_per_s: ok as f64 / secs,
        events_per_s: (ok * a.limit as u64) as f64 / secs,
        response_mib_per_s: bytes as f64 / secs / (1 << 20) as f64,
        latency_ms: percentiles_ms(&latency.borrow()),
        costs,
    };
    print(&out, a.json.as_deref())
}

fn print(o: &Output, json: Option<&std::path::Path>) -> Result<(), String> {
    let l = &o.latency_ms;
    let c = &o.costs;
    let mut rows = vec![
        (
            "run",
            format!(
                "GET /v1/history/{}?after=..&limit={}: {} events of {} bytes, {} connection(s), {:.1} s",
                o.channel, o.limit, o.events, o.payload_bytes, o.concurrency, c.window_s
            ),
        ),
        (
            "requests",
            format!(
                "{:.0}/s ({} in the window, {} errors); {:.0} events/s, {:.1} MiB/s of JSON",
                o.requests_per_s, o.requests, o.errors, o.events_per_s, o.response_mib_per_s
            ),
        ),
        (
            "latency ms",
            format!(
                "p50 {:.2}  p90 {:.2}  p99 {:.2}  max {:.2}",
                l.p50, l.p90, l.p99, l.max
            ),
        ),
    ];
    if let Some(cpu) = c.server_cpu_pct {
        rows.push(("node cpu", format!("{cpu:.0}% of a core")));
    }
    if !c.top_commands_per_s.is_empty() {
        rows.push((
            "redis",
            format!(
                "{:.0} FCALL/s ({:.1} µs each), {:.0} commands/s{}",
                c.fcall_per_s,
                c.fcall_us,
                c.commands_per_s,
                c.redis_cpu_pct
                    .map(|p| format!(", {p:.0}% of a core"))
                    .unwrap_or_default()
            ),
        ));
        rows.push(("redis commands/s", crate::costs::top(&c.top_commands_per_s)));
    }
    crate::costs::emit(&rows, o, json)
}
