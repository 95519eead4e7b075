//! What a window of the `history` and `presence` modes cost: Redis
//! commands (`INFO commandstats`: calls and time per command, commands run
//! by functions included), Redis CPU (`INFO cpu`), the server's CPU
//! (`/proc`) and, when the server is ssegate, a counter of its `/metrics`.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::Path;
use std::time::Instant;

use serde::Serialize;

use crate::http1::{metric, scrape};
use crate::stats::{ProcSample, ServerProcs};

/// One reading.
pub struct Sample {
    at: Instant,
    /// command -> (calls, usec), from `cmdstat_<command>:calls=..,usec=..`.
    commands: BTreeMap<String, (u64, u64)>,
    redis_cpu_s: Option<f64>,
    server: ProcSample,
    counter: Option<f64>,
}

/// Where the readings come from.
pub struct Probe {
    pub redis: Option<redis::aio::MultiplexedConnection>,
    pub procs: ServerProcs,
    /// The server and its Host, and the `/metrics` counter to read.
    pub metrics: Option<(SocketAddr, String, &'static str)>,
}

/// A window's rates.
#[derive(Debug, Clone, Default, Serialize)]
pub struct Rates {
    pub window_s: f64,
    /// `FCALL` commands per second (the gateway's Redis Functions).
    pub fcall_per_s: f64,
    /// Redis time per `FCALL`, µs (the commands it runs included).
    pub fcall_us: f64,
    /// Every command Redis counted per second, functions' own commands included.
    pub commands_per_s: f64,
    /// The same by command, the busiest first (at most 10).
    pub top_commands_per_s: Vec<(String, f64)>,
    /// Redis CPU (user + system) as % of a core.
    pub redis_cpu_pct: Option<f64>,
    /// The server's CPU as % of a core.
    pub server_cpu_pct: Option<f64>,
    /// The `/metrics` counter per second.
    pub counter_per_s: Option<f64>,
}

impl Probe {
    pub async fn connect_redis(url: Option<&str>) -> Option<redis::aio::MultiplexedConnection> {
        let client = redis::Client::open(url?).ok()?;
        match client.get_multiplexed_async_connection().await {
            Ok(c) => Some(c),
            Err(e) => {
                eprintln!("ssegate-bench: no Redis statistics ({e})");
                None
            }
        }
    }

    pub async fn sample(&mut self) -> Sample {
        let mut commands = BTreeMap::new();
        let mut redis_cpu_s = None;
        if let Some(c) = &mut self.redis {
            let stats: redis::RedisResult<String> =
                redis::cmd("INFO").arg("commandstats").query_async(c).await;
            if let Ok(text) = stats {
                commands = commandstats(&text);
            }
            let cpu: redis::RedisResult<String> = redis::cmd("INFO").arg("cpu").query_async(c).await;
            if let Ok(text) = cpu {
                let field = |name: &str| -> Option<f64> {
                    text.lines()
                        .find_map(|l| l.strip_prefix(name)?.strip_prefix(':'))
                        .and_then(|v| v.trim().parse().ok())
                };
                if let (Some(user), Some(sys)) = (field("used_cpu_user"), field("used_cpu_sys")) {
                    redis_cpu_s = Some(user + sys);
                }
            }
        }
        let counter = match &self.metrics {
            Some((addr, host, name)) => scrape(*addr, host).await.ok().and_then(|t| metric(&t, name)),
            None => None,
        };
        Sample {
            at: Instant::now(),
            commands,
            redis_cpu_s,
            server: self.procs.sample(),
            counter,
        }
    }
}

/// `cmdstat_<command>:calls=N,usec=M,...` lines.
fn commandstats(text: &str) -> BTreeMap<String, (u64, u64)> {
    let mut out = BTreeMap::new();
    for line in text.lines() {
        let Some((name, rest)) = line.strip_prefix("cmdstat_").and_then(|l| l.split_once(':')) else {
            continue;
        };
        let field = |key: &str| -> u64 {
            rest.split(',')
                .find_map(|kv| kv.strip_prefix(key)?.strip_prefix('='))
                .and_then(|v| v.parse().ok())
                .unwrap_or(0)
        };
        out.insert(name.to_owned(), (field("calls"), field("usec")));
    }
    out
}

/// The rates between two samples.
pub fn rates(a: &Sample, b: &Sample, measured_server: bool) -> Rates {
    let secs = b.at.duration_since(a.at).as_secs_f64().max(1e-9);
    let delta = |name: &str| -> (u64, u64) {
        let (c1, u1) = b.commands.get(name).copied().unwrap_or_default();
        let (c0, u0) = a.commands.get(name).copied().unwrap_or_default();
        (c1.saturating_sub(c0), u1.saturating_sub(u0))
    };
    let mut by: Vec<(String, f64)> = b
        .commands
        .keys()
        // The probe's own INFO calls are not the server's.
        .filter(|k| k.as_str() != "info")
        .map(|k| (k.clone(), delta(k).0 as f64 / secs))
        .filter(|(_, r)| *r > 0.0)
        .collect();
    by.sort_by(|x, y| y.1.total_cmp(&x.1));
    let (fcalls, fcall_usec) = delta("fcall");
    Rates {
        window_s: secs,
        fcall_per_s: fcalls as f64 / secs,
        fcall_us: if fcalls > 0 {
            fcall_usec as f64 / fcalls as f64
        } else {
            0.0
        },
        commands_per_s: by.iter().map(|(_, r)| r).sum(),
        top_commands_per_s: by.into_iter().take(10).collect(),
        redis_cpu_pct: match (a.redis_cpu_s, b.redis_cpu_s) {
            (Some(x), Some(y)) => Some(100.0 * (y - x) / secs),
            _ => None,
        },
        server_cpu_pct: measured_server.then(|| 100.0 * b.server.cpu_secs_since(&a.server) / secs),
        counter_per_s: match (a.counter, b.counter) {
            (Some(x), Some(y)) => Some((y - x) / secs),
            _ => None,
        },
    }
}

/// `name n/s, ...`, for a table.
pub fn top(by: &[(String, f64)]) -> String {
    by.iter()
        .map(|(name, r)| format!("{name} {r:.0}"))
        .collect::<Vec<_>>()
        .join(", ")
}

/// Prints the table (on stderr when the JSON goes to stdout) and writes
/// the JSON where asked.
pub fn emit(rows: &[(&str, String)], out: &impl Serialize, json: Option<&Path>) -> Result<(), String> {
    let w = rows.iter().map(|(k, _)| k.len()).max().unwrap_or(0);
    let table = rows
        .iter()
        .map(|(k, v)| format!("{k:>w$}  {v}"))
        .collect::<Vec<_>>()
        .join("\n");
    let text = serde_json::to_string_pretty(out).expect("serializable");
    match json {
        Some(p) if p == Path::new("-") => {
            eprintln!("{table}");
            println!("{text}");
        }
        Some(p) => {
            println!("{table}");
            std::fs::write(p, text + "\n").map_err(|e| format!("cannot write {}: {e}", p.display()))?;
        }
        None => println!("{table}"),
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn commandstats_lines() {
        let text = "# Commandstats\r\ncmdstat_fcall:calls=12,usec=340,usec_per_call=28.33,rejected_calls=0,failed_calls=0\r\n\
                    cmdstat_hset:calls=12,usec=40,usec_per_call=3.33\r\n";
        let c = commandstats(text);
        assert_eq!(c["fcall"], (12, 340));
        assert_eq!(c["hset"], (12, 40));
        assert_eq!(c.len(), 2);
    }
}
