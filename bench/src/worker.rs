//! Worker processes: each holds a share of the streams (one process may
//! not open more than its file limit allows), on one thread. The
//! coordinator talks to a worker in JSON lines: commands on its stdin,
//! progress and the final report on its stdout.

use std::collections::BTreeMap;
use std::io::Write;
use std::net::{IpAddr, SocketAddr};
use std::rc::Rc;
use std::time::Duration;

use serde::{Deserialize, Serialize};
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::sync::Semaphore;

use crate::client::{Shared, run_stream};
use crate::stats::{cpu_ticks, to_pairs};
use crate::target::Protocol;
use crate::ws::run_ws_stream;

/// Everything a worker needs to know about its share.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct WorkerConfig {
    pub worker: usize,
    /// Stream i (global) connects to servers[i mod N]: (address, Host).
    pub servers: Vec<(SocketAddr, String)>,
    pub path_template: String,
    pub channel_names: Vec<String>,
    pub headers: Vec<String>,
    pub sources: Vec<IpAddr>,
    /// Global indices of this worker's streams: `first..first + count`.
    pub first: usize,
    pub count: usize,
    pub connect_timeout_ms: u64,
    pub read_buffer: usize,
    /// How the streams speak: SSE, or a WebSocket protocol.
    #[serde(default)]
    pub protocol: Protocol,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(tag = "cmd", rename_all = "snake_case")]
pub enum Command {
    Start(WorkerConfig),
    /// Open every stream; at most `concurrency` connects in flight (0: all at once).
    Connect {
        concurrency: usize,
        t0_us: u64,
    },
    /// Events stamped at or after `start_us` are measured.
    Window {
        start_us: u64,
    },
    /// Count against `published[c]` measured publishes per channel.
    Report {
        published: Vec<u64>,
    },
}

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct Progress {
    pub opened: u64,
    pub failed: u64,
    pub closed: u64,
    pub receiving: u64,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct WorkerReport {
    pub worker: usize,
    pub streams: u64,
    pub opened: u64,
    pub failed: u64,
    pub failures: BTreeMap<String, u64>,
    /// Streams the server ended after they opened.
    pub closed: u64,
    pub closures: BTreeMap<String, u64>,
    /// Streams that got at least one event.
    pub receiving: u64,
    /// Streams open at the window's start (the ones expected to deliver).
    pub measured_streams: u64,
    pub expected: u64,
    pub delivered: u64,
    pub duplicated: u64,
    pub lost: u64,
    pub reordered: u64,
    pub stale: u64,
    pub streams_with_loss: u64,
    pub events: u64,
    pub other_events: u64,
    pub comments: u64,
    pub bytes: u64,
    pub latency: Vec<(u64, u64)>,
    pub open_time: Vec<(u64, u64)>,
    pub first_event_time: Vec<(u64, u64)>,
    pub cpu_ticks: u64,
    pub rss_kib: u64,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(tag = "ev", rename_all = "snake_case")]
pub enum Event {
    Ready,
    Progress(Progress),
    Report(Box<WorkerReport>),
    Error { message: String },
}

fn emit(ev: &Event) {
    let mut out = std::io::stdout().lock();
    let _ = serde_json::to_writer(&mut out, ev);
    let _ = out.write_all(b"\n");
    let _ = out.flush();
}

/// The hidden `worker` subcommand.
pub fn main() -> std::process::ExitCode {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("tokio runtime");
    let local = tokio::task::LocalSet::new();
    match local.block_on(&rt, run()) {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(message) => {
            emit(&Event::Error {
                message: message.clone(),
            });
            eprintln!("ssegate-bench worker: {message}");
            std::process::ExitCode::FAILURE
        }
    }
}

async fn run() -> Result<(), String> {
    crate::raise_nofile();
    let mut lines = BufReader::new(tokio::io::stdin()).lines();
    let next = |l: Option<String>| -> Result<Option<Command>, String> {
        match l {
            None => Ok(None),
            Some(l) => serde_json::from_str(&l)
                .map(Some)
                .map_err(|e| format!("bad command {l:?}: {e}")),
        }
    };
    let cfg = match next(lines.next_line().await.map_err(|e| e.to_string())?)? {
        Some(Command::Start(cfg)) => cfg,
        other => return Err(format!("expected start, got {other:?}")),
    };
    let sh = Rc::new(Shared::new(
        cfg.servers.clone(),
        cfg.path_template.clone(),
        cfg.channel_names.clone(),
        cfg.headers.clone(),
        cfg.sources.clone(),
        Duration::from_millis(cfg.connect_timeout_ms),
        cfg.read_buffer,
        cfg.count,
    ));
    let channels = cfg.channel_names.len().max(1);
    emit(&Event::Ready);
    let mut progress = tokio::time::interval(Duration::from_millis(100));
    let mut last = None;
    loop {
        tokio::select! {
            line = lines.next_line() => {
                let Some(cmd) = next(line.map_err(|e| e.to_string())?)? else {
                    return Ok(());
                };
                match cmd {
                    Command::Start(_) => return Err("started twice".into()),
                    Command::Connect { concurrency, t0_us } => {
                        sh.t0_us.set(t0_us);
                        let gate = (concurrency > 0).then(|| Rc::new(Semaphore::new(concurrency)));
                        for local in 0..cfg.count {
                            let global = cfg.first + local;
                            let (sh, gate, channel) = (sh.clone(), gate.clone(), global % channels);
                            match cfg.protocol {
                                Protocol::Sse => {
                                    tokio::task::spawn_local(run_stream(sh, local, global, channel, gate))
                                }
                                p => tokio::task::spawn_local(run_ws_stream(
                                    sh, local, global, channel, gate, p,
                                )),
                            };
                        }
                    }
                    Command::Window { start_us } => sh.window_start_us.set(start_us),
                    Command::Report { published } => {
                        emit(&Event::Report(Box::new(report(&cfg, &sh, &published))));
                    }
                }
            }
            _ = progress.tick() => {
                let c = *sh.counters.borrow();
                let p = (c.opened, c.failed, c.closed, c.receiving);
                if last != Some(p) {
                    last = Some(p);
                    emit(&Event::Progress(Progress {
                        opened: c.opened,
                        failed: c.failed,
                        closed: c.closed,
                        receiving: c.receiving,
                    }));
                }
            }
        }
    }
}

fn report(cfg: &WorkerConfig, sh: &Shared, published: &[u64]) -> WorkerReport {
    let window_start = sh.window_start_us.get();
    let c = *sh.counters.borrow();
    let mut r = WorkerReport {
        worker: cfg.worker,
        streams: cfg.count as u64,
        opened: c.opened,
        failed: c.failed,
        failures: sh.failures.borrow().clone(),
        closed: c.closed,
        closures: sh.closures.borrow().clone(),
        receiving: c.receiving,
        events: c.events,
        other_events: c.other_events,
        comments: c.comments,
        bytes: c.bytes,
        latency: to_pairs(&sh.latency.borrow()),
        open_time: to_pairs(&sh.open_time.borrow()),
        first_event_time: to_pairs(&sh.first_event_time.borrow()),
        cpu_ticks: cpu_ticks(std::process::id()).unwrap_or(0),
        rss_kib: crate::stats::ServerProcs {
            roots: vec![std::process::id()],
            with_children: false,
        }
        .sample()
        .rss_kib,
        ..WorkerReport::default()
    };
    for s in sh.slots.borrow().iter() {
        r.duplicated += s.duplicates as u64;
        r.reordered += s.reordered as u64;
        r.stale += s.stale as u64;
        if s.opened_us == 0 || s.opened_us >= window_start {
            continue;
        }
        let expected = published.get(s.channel as usize).copied().unwrap_or(0);
        r.measured_streams += 1;
        r.expected += expected;
        r.delivered += s.delivered as u64;
        let lost = expected.saturating_sub(s.delivered as u64);
        r.lost += lost;
        if lost > 0 {
            r.streams_with_loss += 1;
        }
    }
    r
}
