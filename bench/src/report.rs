//! The run's results: the JSON written by `--json` and the table printed
//! for people.

use std::collections::BTreeMap;
use std::net::IpAddr;

use serde::Serialize;

use crate::Scenario;
use crate::publisher;
use crate::stats::{Percentiles, RedisSample};
use crate::target::Target;

#[derive(Debug, Serialize)]
pub(crate) struct Output {
    pub(crate) label: String,
    pub(crate) name: String,
    pub(crate) target: Target,
    pub(crate) scenario: Scenario,
    pub(crate) started_unix: u64,
    pub(crate) config: ConfigOut,
    pub(crate) streams: StreamsOut,
    pub(crate) connect: ConnectOut,
    pub(crate) events: EventsOut,
    pub(crate) delivered_per_sec: f64,
    pub(crate) offered_per_sec: f64,
    pub(crate) latency_ms: Percentiles,
    pub(crate) publisher: Option<publisher::Report>,
    pub(crate) server: ServerOut,
    pub(crate) redis: Option<RedisOut>,
    pub(crate) load_generator: BenchOut,
}

#[derive(Debug, Serialize)]
pub(crate) struct ConfigOut {
    pub(crate) url: String,
    pub(crate) sub_path: String,
    pub(crate) publish: Option<String>,
    /// Where the publishes went (a Redis URL, or an HTTP server's address).
    pub(crate) publish_to: Option<String>,
    pub(crate) streams: usize,
    pub(crate) channels: usize,
    pub(crate) rate: f64,
    pub(crate) duration_s: f64,
    pub(crate) warmup_s: f64,
    pub(crate) drain_s: f64,
    pub(crate) settle_s: f64,
    pub(crate) payload_bytes: usize,
    pub(crate) storm: bool,
    pub(crate) connect_concurrency: usize,
    pub(crate) workers: usize,
    pub(crate) source_addrs: Vec<IpAddr>,
}

#[derive(Debug, Serialize)]
pub(crate) struct StreamsOut {
    pub(crate) requested: usize,
    pub(crate) opened: u64,
    pub(crate) failed: u64,
    pub(crate) failures: BTreeMap<String, u64>,
    pub(crate) closed_by_server: u64,
    pub(crate) closures: BTreeMap<String, u64>,
    pub(crate) receiving: u64,
}

#[derive(Debug, Serialize)]
pub(crate) struct ConnectOut {
    /// From the first connect until every stream was open or had failed.
    pub(crate) all_open_s: f64,
    /// --storm: until every open stream had received an event (None if it timed out).
    pub(crate) all_receiving_s: Option<f64>,
    /// From the start of the connect phase to status 200, per stream.
    pub(crate) open_time_ms: Percentiles,
    /// From the start of the connect phase to the first event, per stream.
    pub(crate) first_event_ms: Percentiles,
}

#[derive(Debug, Serialize)]
pub(crate) struct EventsOut {
    pub(crate) measured_streams: u64,
    pub(crate) expected: u64,
    pub(crate) delivered: u64,
    pub(crate) lost: u64,
    pub(crate) lost_pct: f64,
    pub(crate) duplicated: u64,
    pub(crate) reordered: u64,
    pub(crate) stale: u64,
    pub(crate) streams_with_loss: u64,
    /// Every benchmark event parsed, warmup included.
    pub(crate) parsed_total: u64,
    pub(crate) other_events: u64,
    pub(crate) comments: u64,
    pub(crate) bytes: u64,
}

#[derive(Debug, Serialize)]
pub(crate) struct ServerOut {
    pub(crate) pids: Vec<u32>,
    pub(crate) processes: u32,
    pub(crate) rss_before_kib: u64,
    pub(crate) rss_open_kib: u64,
    pub(crate) rss_peak_kib: u64,
    pub(crate) rss_end_kib: u64,
    pub(crate) pss_before_kib: u64,
    pub(crate) pss_open_kib: u64,
    /// (PSS after all streams are open and settled - before) / streams opened.
    pub(crate) mem_per_stream_kib: Option<f64>,
    /// The same from VmRSS.
    pub(crate) rss_per_stream_kib: Option<f64>,
    pub(crate) cpu_connect_s: f64,
    pub(crate) cpu_settle_s: f64,
    /// utime + stime over the window and the drain.
    pub(crate) cpu_window_s: f64,
    /// cpu_window_s as a share of one core.
    pub(crate) cpu_window_pct: f64,
    /// cpu_window_s / measured deliveries, ns: the server's cost of one
    /// delivered event (all its processes, every thread).
    pub(crate) cpu_ns_per_delivery: Option<f64>,
    /// The machine's kernel slab memory (`Slab:` in /proc/meminfo) before
    /// the first connect and once every stream is open and settled.
    pub(crate) slab_before_kib: u64,
    pub(crate) slab_open_kib: u64,
    /// Slab growth / streams opened: the kernel's memory per stream, both
    /// ends of its TCP connection when the generator runs on this machine.
    pub(crate) kernel_per_stream_kib: Option<f64>,
    /// ssegate's own latency histograms over the window and the drain, all
    /// nodes summed: publish-to-write and its stages (`stages.rs`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(crate) stages_ms: Option<BTreeMap<String, crate::stages::StageOut>>,
}

#[derive(Debug, Serialize)]
pub(crate) struct RedisOut {
    /// Subscribe-family calls Redis counted while the streams connected and settled.
    pub(crate) subscribe_calls_connect: BTreeMap<String, u64>,
    /// Over the whole run.
    pub(crate) subscribe_calls_total: BTreeMap<String, u64>,
    pub(crate) clients_before: u64,
    pub(crate) clients_open: u64,
    pub(crate) clients_end: u64,
    /// Redis's CPU seconds from the last stream open to the end of the
    /// drain (the publishing phase: warmup, window, drain).
    pub(crate) cpu_publish_s: f64,
}

#[derive(Debug, Serialize)]
pub(crate) struct BenchOut {
    pub(crate) worker_cpu_s: f64,
    pub(crate) coordinator_cpu_s: f64,
    pub(crate) worker_rss_kib: u64,
}

pub(crate) fn delta(a: &RedisSample, b: &RedisSample) -> BTreeMap<String, u64> {
    b.calls
        .iter()
        .map(|(k, v)| (k.clone(), v.saturating_sub(*a.calls.get(k).unwrap_or(&0))))
        .collect()
}

// ---------------------------------------------------------------- table

pub(crate) fn fmt_rate(x: f64) -> String {
    if x >= 1e6 {
        format!("{:.2}M", x / 1e6)
    } else if x >= 1e3 {
        format!("{:.1}k", x / 1e3)
    } else {
        format!("{x:.1}")
    }
}

pub(crate) fn table(o: &Output) -> String {
    let mut rows: Vec<(String, String)> = Vec::new();
    let mut row = |k: &str, v: String| rows.push((k.to_owned(), v));
    row(
        "run",
        format!(
            "{} / {} ({} streams, {} channels, {} publishes/s{})",
            o.label,
            o.name,
            o.config.streams,
            o.config.channels,
            o.config.rate,
            if o.config.storm { ", storm" } else { "" }
        ),
    );
    row(
        "streams",
        format!(
            "opened {} / {}, failed {}{}, closed by server {}",
            o.streams.opened,
            o.streams.requested,
            o.streams.failed,
            if o.streams.failures.is_empty() {
                String::new()
            } else {
                format!(" {:?}", o.streams.failures)
            },
            o.streams.closed_by_server
        ),
    );
    row(
        "connect",
        format!(
            "all open after {:.2}s (p50 {:.1} ms, p99 {:.1} ms, max {:.1} ms){}",
            o.connect.all_open_s,
            o.connect.open_time_ms.p50,
            o.connect.open_time_ms.p99,
            o.connect.open_time_ms.max,
            match (o.config.storm, o.connect.all_receiving_s) {
                (true, Some(s)) => format!("; all receiving after {s:.2}s"),
                (true, None) => "; NOT all receiving".into(),
                _ => String::new(),
            }
        ),
    );
    if let Some(p) = &o.publisher {
        row(
            "publisher",
            format!(
                "{} x{}: target {}/s, achieved {}/s, errors {}, max backlog {}{}",
                p.method,
                p.connections,
                fmt_rate(p.target_rate),
                fmt_rate(p.achieved_rate),
                p.errors,
                p.max_backlog,
                if p.fell_behind { ", FELL BEHIND" } else { "" }
            ),
        );
        let e = &o.events;
        row(
            "events",
            format!(
                "expected {}, delivered {}, lost {} ({:.3}%), duplicated {}, reordered {}",
                e.expected, e.delivered, e.lost, e.lost_pct, e.duplicated, e.reordered
            ),
        );
        row(
            "delivered",
            format!(
                "{}/s (offered {}/s)",
                fmt_rate(o.delivered_per_sec),
                fmt_rate(o.offered_per_sec)
            ),
        );
        let l = &o.latency_ms;
        row(
            "latency ms",
            format!(
                "p50 {:.2}  p90 {:.2}  p99 {:.2}  p99.9 {:.2}  max {:.2}",
                l.p50, l.p90, l.p99, l.p999, l.max
            ),
        );
    }
    let s = &o.server;
    if !s.pids.is_empty() {
        row(
            "server memory",
            format!(
                "{:.2} KiB/stream (PSS), {:.2} KiB/stream (RSS); RSS {} -> {} KiB open, peak {} KiB",
                s.mem_per_stream_kib.unwrap_or(0.0),
                s.rss_per_stream_kib.unwrap_or(0.0),
                s.rss_before_kib,
                s.rss_open_kib,
                s.rss_peak_kib
            ),
        );
        row(
            "server cpu",
            format!(
                "connect {:.2}s, settle {:.2}s, window {:.2}s ({:.0}% of a core){}",
                s.cpu_connect_s,
                s.cpu_settle_s,
                s.cpu_window_s,
                s.cpu_window_pct,
                s.cpu_ns_per_delivery
                    .map(|ns| format!(", {ns:.0} ns per delivered event"))
                    .unwrap_or_default()
            ),
        );
    }
    if let Some(k) = s.kernel_per_stream_kib {
        row(
            "kernel memory",
            format!(
                "{k:.2} KiB/stream (slab {} -> {} KiB; both ends of each connection)",
                s.slab_before_kib, s.slab_open_kib
            ),
        );
    }
    if let Some(r) = &o.redis {
        row(
            "redis",
            format!(
                "subscribe calls while connecting {:?}; clients {} -> {} -> {}; cpu while publishing {:.2}s",
                r.subscribe_calls_connect, r.clients_before, r.clients_open, r.clients_end, r.cpu_publish_s
            ),
        );
    }
    row(
        "load generator",
        format!(
            "workers cpu {:.2}s, rss {} KiB",
            o.load_generator.worker_cpu_s, o.load_generator.worker_rss_kib
        ),
    );
    let w = rows.iter().map(|(k, _)| k.len()).max().unwrap_or(0);
    rows.iter()
        .map(|(k, v)| format!("{k:>w$}  {v}"))
        .collect::<Vec<_>>()
        .join("\n")
}
