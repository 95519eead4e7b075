//! Measurements: latency histograms (and how workers ship them), the
//! server's memory and CPU from `/proc`, and what Redis says about its
//! clients and subscribe commands.

use std::collections::BTreeMap;
use std::time::{SystemTime, UNIX_EPOCH};

use hdrhistogram::Histogram;
use serde::{Deserialize, Serialize};

/// µs since the epoch: the clock of payload stamps, shared by all processes.
pub fn now_us() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_micros() as u64)
        .unwrap_or(0)
}

/// Microseconds from 1 µs to one hour, three significant digits.
pub fn new_histogram() -> Histogram<u64> {
    Histogram::new_with_bounds(1, 3_600_000_000, 3).expect("valid histogram bounds")
}

/// A histogram as (value, count) pairs of its recorded buckets: enough to
/// rebuild it exactly in another process.
pub fn to_pairs(h: &Histogram<u64>) -> Vec<(u64, u64)> {
    h.iter_recorded()
        .map(|v| (v.value_iterated_to(), v.count_since_last_iteration()))
        .collect()
}

pub fn add_pairs(h: &mut Histogram<u64>, pairs: &[(u64, u64)]) {
    for &(v, n) in pairs {
        h.saturating_record_n(v, n);
    }
}

/// Percentiles in milliseconds.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct Percentiles {
    pub count: u64,
    pub mean: f64,
    pub p50: f64,
    pub p90: f64,
    pub p99: f64,
    pub p999: f64,
    pub max: f64,
}

pub fn percentiles_ms(h: &Histogram<u64>) -> Percentiles {
    if h.is_empty() {
        return Percentiles::default();
    }
    let ms = |us: u64| us as f64 / 1000.0;
    Percentiles {
        count: h.len(),
        mean: h.mean() / 1000.0,
        p50: ms(h.value_at_quantile(0.50)),
        p90: ms(h.value_at_quantile(0.90)),
        p99: ms(h.value_at_quantile(0.99)),
        p999: ms(h.value_at_quantile(0.999)),
        max: ms(h.max()),
    }
}

/// Linux reports utime/stime in USER_HZ ticks, which is 100 on every
/// architecture this runs on.
pub const TICKS_PER_SEC: f64 = 100.0;

/// The processes that make up the server.
#[derive(Debug, Clone)]
pub struct ServerProcs {
    pub roots: Vec<u32>,
    pub with_children: bool,
}

/// Memory and CPU of a set of processes at one instant.
#[derive(Debug, Clone, Copy, Default, Serialize, Deserialize)]
pub struct ProcSample {
    pub rss_kib: u64,
    /// Proportional set size: shared pages split between the processes
    /// (so nginx's master and workers don't count shared memory twice).
    pub pss_kib: u64,
    pub cpu_ticks: u64,
    pub processes: u32,
}

impl ProcSample {
    pub fn cpu_secs_since(&self, before: &ProcSample) -> f64 {
        self.cpu_ticks.saturating_sub(before.cpu_ticks) as f64 / TICKS_PER_SEC
    }
}

impl ServerProcs {
    pub fn is_empty(&self) -> bool {
        self.roots.is_empty()
    }

    pub fn pids(&self) -> Vec<u32> {
        let mut pids = self.roots.clone();
        if self.with_children {
            for &root in &self.roots {
                for c in children_of(root) {
                    if !pids.contains(&c) {
                        pids.push(c);
                    }
                }
            }
        }
        pids
    }

    /// Resident memory only, KiB: cheap enough to poll during a window
    /// (`sample` reads `smaps_rollup` for PSS, which walks the server's
    /// page tables under its memory-map lock for a millisecond or more).
    pub fn rss_kib(&self) -> u64 {
        self.pids()
            .into_iter()
            .filter_map(|pid| status_kib(pid, "VmRSS:"))
            .sum()
    }

    pub fn sample(&self) -> ProcSample {
        let mut s = ProcSample::default();
        for pid in self.pids() {
            if let Some(rss) = status_kib(pid, "VmRSS:") {
                s.rss_kib += rss;
                s.pss_kib += pss_kib(pid).unwrap_or(rss);
                s.cpu_ticks += cpu_ticks(pid).unwrap_or(0);
                s.processes += 1;
            }
        }
        s
    }
}

fn status_kib(pid: u32, field: &str) -> Option<u64> {
    let text = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    kib_field(&text, field)
}

fn pss_kib(pid: u32) -> Option<u64> {
    let text = std::fs::read_to_string(format!("/proc/{pid}/smaps_rollup")).ok()?;
    kib_field(&text, "Pss:")
}

fn kib_field(text: &str, field: &str) -> Option<u64> {
    text.lines()
        .find(|l| l.starts_with(field))?
        .split_whitespace()
        .nth(1)?
        .parse()
        .ok()
}

/// The fields of /proc/<pid>/stat after the command name.
fn stat_fields(pid: u32) -> Option<Vec<String>> {
    let text = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let after = &text[text.rfind(')')? + 1..];
    Some(after.split_whitespace().map(str::to_owned).collect())
}

/// utime + stime in ticks (fields 14 and 15 of the stat line).
pub fn cpu_ticks(pid: u32) -> Option<u64> {
    let f = stat_fields(pid)?;
    // After the name: state is field 3, so field N is at index N - 3.
    let utime: u64 = f.get(11)?.parse().ok()?;
    let stime: u64 = f.get(12)?.parse().ok()?;
    Some(utime + stime)
}

/// Direct children of `pid`, found by scanning /proc.
pub fn children_of(pid: u32) -> Vec<u32> {
    let mut out = Vec::new();
    let Ok(dir) = std::fs::read_dir("/proc") else {
        return out;
    };
    for entry in dir.flatten() {
        let Some(child) = entry.file_name().to_str().and_then(|s| s.parse::<u32>().ok()) else {
            continue;
        };
        if let Some(f) = stat_fields(child)
            && f.get(1).and_then(|p| p.parse::<u32>().ok()) == Some(pid)
        {
            out.push(child);
        }
    }
    out
}

/// The name our own Redis connections carry, so that client counts leave
/// them out.
pub const CLIENT_NAME: &str = "ssegate-bench";

/// What Redis says at one instant.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct RedisSample {
    /// `calls` of each subscribe-family command (INFO commandstats).
    pub calls: BTreeMap<String, u64>,
    /// Connected clients other than ours (CLIENT LIST).
    pub clients: u64,
    /// Redis's own CPU so far, user + system seconds (INFO cpu).
    pub cpu_s: f64,
}

pub const SUBSCRIBE_COMMANDS: [&str; 3] = ["subscribe", "psubscribe", "ssubscribe"];

pub async fn redis_sample(con: &mut redis::aio::MultiplexedConnection) -> redis::RedisResult<RedisSample> {
    let info: String = redis::cmd("INFO").arg("commandstats").query_async(con).await?;
    let list: String = redis::cmd("CLIENT").arg("LIST").query_async(con).await?;
    let cpu: String = redis::cmd("INFO").arg("cpu").query_async(con).await?;
    let cpu_s = info_field(&cpu, "used_cpu_user") + info_field(&cpu, "used_cpu_sys");
    let mut calls = BTreeMap::new();
    for cmd in SUBSCRIBE_COMMANDS {
        calls.insert(cmd.to_owned(), command_calls(&info, cmd));
    }
    let ours = format!(" name={CLIENT_NAME} ");
    let clients = list
        .lines()
        .filter(|l| !l.trim().is_empty() && !l.contains(&ours))
        .count() as u64;
    Ok(RedisSample {
        calls,
        clients,
        cpu_s,
    })
}

/// `<name>:<number>` from an INFO section (0 when absent).
pub fn info_field(info: &str, name: &str) -> f64 {
    info.lines()
        .find_map(|l| l.strip_prefix(name)?.strip_prefix(':'))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or(0.0)
}

/// `cmdstat_<cmd>:calls=N,...` → N (0 when the command never ran).
pub fn command_calls(info: &str, cmd: &str) -> u64 {
    let prefix = format!("cmdstat_{cmd}:calls=");
    info.lines()
        .find_map(|l| l.strip_prefix(&prefix))
        .and_then(|rest| rest.split(',').next())
        .and_then(|n| n.trim().parse().ok())
        .unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn info_fields_are_read_by_exact_name() {
        let info = "# CPU\r\nused_cpu_sys:1.25\r\nused_cpu_user:2.5\r\nused_cpu_sys_children:9\r\n";
        assert_eq!(info_field(info, "used_cpu_sys"), 1.25);
        assert_eq!(info_field(info, "used_cpu_user"), 2.5);
        assert_eq!(info_field(info, "used_cpu_user_main_thread"), 0.0);
    }

    #[test]
    fn commandstats() {
        let info = "# Commandstats\r\ncmdstat_subscribe:calls=17,usec=40,usec_per_call=2.35,rejected_calls=0,failed_calls=0\r\ncmdstat_ping:calls=3,usec=1\r\n";
        assert_eq!(command_calls(info, "subscribe"), 17);
        assert_eq!(command_calls(info, "psubscribe"), 0);
    }

    #[test]
    fn histogram_pairs_round_trip() {
        let mut a = new_histogram();
        for v in [1u64, 10, 100, 1000, 12345, 999_999, 5_000_000] {
            a.record_n(v, v % 7 + 1).unwrap();
        }
        let mut b = new_histogram();
        add_pairs(&mut b, &to_pairs(&a));
        assert_eq!(a.len(), b.len());
        for q in [0.5, 0.9, 0.99, 0.999, 1.0] {
            assert_eq!(a.value_at_quantile(q), b.value_at_quantile(q));
        }
    }

    #[test]
    fn own_process() {
        let me = ServerProcs {
            roots: vec![std::process::id()],
            with_children: false,
        };
        let s = me.sample();
        assert_eq!(s.processes, 1);
        assert!(s.rss_kib > 0 && s.pss_kib > 0);
    }
}
