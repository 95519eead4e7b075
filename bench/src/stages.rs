//! ssegate's own latency histograms over the measured window: the
//! publish-to-write histogram and its split by stage (receive, dispatch,
//! queue), read from every node's `/metrics` at the start and the end of
//! the window; each node's difference, summed over the nodes.
//!
//! The quantiles are estimated from bucket counts the way Prometheus's
//! `histogram_quantile` does (linear within the bucket), so they are only
//! as fine as the buckets: 50, 100, 250, 500 µs, 1, 2.5, 5, 10 ms...

use std::collections::BTreeMap;
use std::net::SocketAddr;

use serde::Serialize;

use crate::http1::scrape;

const PUBLISH_TO_WRITE: &str = "ssegate_publish_to_write_seconds";
const STAGE: &str = "ssegate_delivery_stage_seconds";

/// Cumulative bucket counts (upper bound in seconds, count) and the sum, per series.
#[derive(Debug, Default, Clone)]
pub struct Snapshot(BTreeMap<String, Series>);

#[derive(Debug, Default, Clone)]
struct Series {
    buckets: Vec<(f64, u64)>,
    sum_s: f64,
}

#[derive(Debug, Serialize, PartialEq)]
pub struct StageOut {
    pub count: u64,
    pub mean_ms: f64,
    pub p50_ms: f64,
    pub p90_ms: f64,
    pub p99_ms: f64,
}

/// Every node's histograms; `None` for a node that did not answer.
#[derive(Debug, Default)]
pub struct Nodes(Vec<Option<Snapshot>>);

pub async fn snapshot(servers: &[(SocketAddr, String)]) -> Nodes {
    let mut nodes = Vec::with_capacity(servers.len());
    for (addr, host) in servers {
        nodes.push(scrape(*addr, host).await.ok().map(|text| parse(&text)));
    }
    Nodes(nodes)
}

impl Nodes {
    /// The figures of the window from `before` to `self`: each node's
    /// difference, summed; a node missing from either scrape is left out
    /// (its samples are then missing from the counts).
    pub fn since(&self, before: &Nodes) -> BTreeMap<String, StageOut> {
        let mut window = Snapshot::default();
        for (after, before) in self.0.iter().zip(&before.0) {
            if let (Some(a), Some(b)) = (after, before) {
                window.add(&a.minus(b));
            }
        }
        window.figures()
    }
}

impl Snapshot {
    fn add(&mut self, other: &Snapshot) {
        for (name, s) in &other.0 {
            let mine = self.0.entry(name.clone()).or_default();
            if mine.buckets.is_empty() {
                mine.buckets = s.buckets.iter().map(|&(le, _)| (le, 0)).collect();
            }
            for (m, o) in mine.buckets.iter_mut().zip(&s.buckets) {
                m.1 += o.1;
            }
            mine.sum_s += s.sum_s;
        }
    }

    /// What one node counted since `before`.
    fn minus(&self, before: &Snapshot) -> Snapshot {
        let empty = Series::default();
        let series = self.0.iter().map(|(name, s)| {
            let b = before.0.get(name).unwrap_or(&empty);
            let buckets = s
                .buckets
                .iter()
                .enumerate()
                .map(|(i, &(le, n))| (le, n.saturating_sub(b.buckets.get(i).map_or(0, |x| x.1))))
                .collect();
            let sum_s = s.sum_s - b.sum_s;
            (name.clone(), Series { buckets, sum_s })
        });
        Snapshot(series.collect())
    }

    /// The figures by series (`publish_to_write`, `receive`, `dispatch`,
    /// `queue`), for the series with samples.
    fn figures(&self) -> BTreeMap<String, StageOut> {
        let mut out = BTreeMap::new();
        for (name, s) in &self.0 {
            let count = s.buckets.last().map_or(0, |b| b.1);
            if count == 0 {
                continue;
            }
            let q = |q: f64| round(quantile(&s.buckets, q) * 1e3);
            out.insert(
                name.clone(),
                StageOut {
                    count,
                    mean_ms: round(s.sum_s * 1e3 / count as f64),
                    p50_ms: q(0.5),
                    p90_ms: q(0.9),
                    p99_ms: q(0.99),
                },
            );
        }
        out
    }
}

fn round(ms: f64) -> f64 {
    (ms * 1000.0).round() / 1000.0
}

/// Prometheus's estimate: the bucket holding the rank, linear inside it;
/// a rank in the `+Inf` bucket gives the last finite bound.
fn quantile(buckets: &[(f64, u64)], q: f64) -> f64 {
    let total = buckets.last().map_or(0, |b| b.1) as f64;
    let rank = q * total;
    let mut lower = (0.0, 0.0);
    for &(le, n) in buckets {
        if n as f64 >= rank {
            if le.is_infinite() {
                return lower.0;
            }
            let inside = n as f64 - lower.1;
            let frac = if inside > 0.0 {
                (rank - lower.1) / inside
            } else {
                1.0
            };
            return lower.0 + (le - lower.0) * frac;
        }
        lower = (le, n as f64);
    }
    lower.0
}

/// The two histograms of one node's `/metrics`.
fn parse(text: &str) -> Snapshot {
    let mut snap = Snapshot::default();
    for line in text.lines() {
        let Some((series, rest)) = series_of(line) else {
            continue;
        };
        let Some(value) = rest.split_whitespace().next().and_then(|v| v.parse::<f64>().ok()) else {
            continue;
        };
        let s = snap.0.entry(series.name).or_default();
        match series.le {
            Some(le) => s.buckets.push((le, value as u64)),
            None => s.sum_s = value,
        }
    }
    snap
}

struct SeriesLine {
    name: String,
    /// The bucket's bound; `None` for the `_sum` line.
    le: Option<f64>,
}

/// `ssegate_delivery_stage_seconds_bucket{stage="queue",le="0.001"} 5` →
/// ("queue", Some(0.001)) and the rest of the line.
fn series_of(line: &str) -> Option<(SeriesLine, &str)> {
    let (metric, rest) = line.split_once(['{', ' '])?;
    let (base, part) = [PUBLISH_TO_WRITE, STAGE]
        .iter()
        .find_map(|b| Some((*b, metric.strip_prefix(b)?)))?;
    let (labels, value) = match line.as_bytes()[metric.len()] {
        b'{' => rest.split_once("} ")?,
        _ => ("", rest),
    };
    let label = |key: &str| {
        labels.split(',').find_map(|kv| {
            let (k, v) = kv.split_once('=')?;
            (k == key).then(|| v.trim_matches('"').to_owned())
        })
    };
    let name = if base == STAGE {
        label("stage")?
    } else {
        "publish_to_write".to_owned()
    };
    let le = match part {
        "_bucket" => Some(match label("le")?.as_str() {
            "+Inf" => f64::INFINITY,
            v => v.parse().ok()?,
        }),
        "_sum" => None,
        _ => return None,
    };
    Some((SeriesLine { name, le }, value))
}

#[cfg(test)]
mod tests {
    use super::*;

    const BEFORE: &str = "\
# TYPE ssegate_delivery_stage_seconds histogram
ssegate_delivery_stage_seconds_bucket{stage=\"queue\",le=\"0.0001\"} 10
ssegate_delivery_stage_seconds_bucket{stage=\"queue\",le=\"0.001\"} 10
ssegate_delivery_stage_seconds_bucket{stage=\"queue\",le=\"+Inf\"} 10
ssegate_delivery_stage_seconds_sum{stage=\"queue\"} 0.0005
ssegate_delivery_stage_seconds_count{stage=\"queue\"} 10
ssegate_publish_to_write_seconds_bucket{le=\"0.0001\"} 0
ssegate_publish_to_write_seconds_bucket{le=\"+Inf\"} 0
ssegate_publish_to_write_seconds_sum 0
";

    const AFTER: &str = "\
ssegate_delivery_stage_seconds_bucket{stage=\"queue\",le=\"0.0001\"} 60
ssegate_delivery_stage_seconds_bucket{stage=\"queue\",le=\"0.001\"} 108
ssegate_delivery_stage_seconds_bucket{stage=\"queue\",le=\"+Inf\"} 110
ssegate_delivery_stage_seconds_sum{stage=\"queue\"} 0.0505
ssegate_delivery_stage_seconds_count{stage=\"queue\"} 110
ssegate_delivery_stage_seconds_bucket{stage=\"receive\",le=\"0.0001\"} 0
ssegate_delivery_stage_seconds_bucket{stage=\"receive\",le=\"+Inf\"} 0
ssegate_publish_to_write_seconds_bucket{le=\"0.0001\"} 0
ssegate_publish_to_write_seconds_bucket{le=\"+Inf\"} 0
ssegate_streams_open 5
";

    #[test]
    fn the_window_is_the_difference_of_two_scrapes_with_interpolated_quantiles() {
        let out = Nodes(vec![Some(parse(AFTER))]).since(&Nodes(vec![Some(parse(BEFORE))]));
        assert_eq!(
            out.keys().collect::<Vec<_>>(),
            ["queue"],
            "empty series are left out"
        );
        let q = &out["queue"];
        assert_eq!(q.count, 100);
        assert_eq!(q.mean_ms, 0.5);
        // Rank 50 of 100: all 50 within the first bucket, at its bound.
        assert_eq!(q.p50_ms, 0.1);
        // Rank 90: 40 into the second bucket's 48, linear from 0.1 to 1 ms.
        assert_eq!(q.p90_ms, round((0.0001 + 0.0009 * 40.0 / 48.0) * 1e3));
        // Rank 99 lands in +Inf: the last finite bound.
        assert_eq!(q.p99_ms, 1.0);
    }

    #[test]
    fn each_nodes_window_is_its_own_difference_and_the_windows_add_up() {
        let (before, after) = (Some(parse(BEFORE)), Some(parse(AFTER)));
        let two =
            Nodes(vec![after.clone(), after.clone()]).since(&Nodes(vec![before.clone(), before.clone()]));
        assert_eq!(two["queue"].count, 200);
        // A node that missed the first scrape: its lifetime counts are not
        // taken for the window's.
        let one = Nodes(vec![after.clone(), after]).since(&Nodes(vec![before, None]));
        assert_eq!(one["queue"].count, 100);
    }
}
