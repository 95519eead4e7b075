//! A node's metrics (Prometheus text) and a process's memory.

/// The value of metric `name` on the node at `base` (`http://host:port`).
pub async fn metric_at(base: &str, name: &str) -> f64 {
    let text = reqwest::get(format!("{base}/metrics"))
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    metric_value(&text, name)
}

/// A process's resident memory, from `/proc`.
pub fn rss_kib(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches(" kB").trim().parse().ok())
        .unwrap()
}

/// The value of a metric line `name value` (labels included in `name`).
/// A name the text does not have fails the test, listing the names it has
/// with the same stem: a typo must not read as zero.
pub fn metric_value(text: &str, name: &str) -> f64 {
    metric_lookup(text, name).unwrap_or_else(|| {
        let stem = name.split('{').next().unwrap_or(name);
        let stem = stem.strip_suffix("_total").unwrap_or(stem);
        let similar: Vec<&str> = sample_names(text).filter(|n| n.starts_with(stem)).collect();
        let listed = if similar.is_empty() {
            sample_names(text).collect()
        } else {
            similar
        };
        panic!("no metric {name}; the node has: {}", listed.join(", "))
    })
}

/// The value of metric `name`, or `None` when the text has no such line
/// (labelled counters appear on first use).
pub fn metric_lookup(text: &str, name: &str) -> Option<f64> {
    text.lines()
        .find_map(|l| l.strip_prefix(name).and_then(|r| r.strip_prefix(' ')))
        .map(|v| {
            v.trim()
                .parse()
                .unwrap_or_else(|e| panic!("metric {name} has value {v:?}: {e}"))
        })
}

/// The names (labels included) of the samples in a Prometheus text.
fn sample_names(text: &str) -> impl Iterator<Item = &str> {
    text.lines()
        .filter(|l| !l.starts_with('#') && !l.trim().is_empty())
        .filter_map(|l| l.rsplit_once(' ').map(|(name, _)| name))
}
