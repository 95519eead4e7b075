//! The deployment files (`deploy/`, `docker-compose.yml`) checked against the
//! binary they deploy: every YAML file parses; every `SSEGATE_*` variable and
//! every `--flag` they name is one `ssegate --help` lists; ports and probe
//! paths are the server's; the shutdown timings fit together; HAProxy and
//! nginx accept their configurations; and three real nodes behind HAProxy
//! (and behind nginx) stream, drain and resume as the files promise.
//!
//! The HAProxy and nginx checks need `haproxy` and `nginx` on PATH
//! (scripts/test.sh installs them); without one, its checks fail under CI
//! and are skipped with a printed line elsewhere (`require_tool`).

mod haproxy;
mod help;
mod manifests;
mod nginx;
mod proxy;

use std::path::{Path, PathBuf};
use std::time::Duration;

use serde_norway::Value;

pub(crate) use haproxy::{haproxy_column, haproxy_env, haproxy_in_front, haproxy_status};
pub(crate) use proxy::{Proxy, listening, three_nodes};

// ---------------------------------------------------------------------------
// The files

pub(crate) fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

fn read(rel: &str) -> String {
    let path = root().join(rel);
    std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

/// Every file under `deploy/`, plus `docker-compose.yml` and `.dockerignore`,
/// as paths relative to the repository root.
fn deploy_files() -> Vec<String> {
    fn walk(dir: &Path, out: &mut Vec<PathBuf>) {
        for entry in std::fs::read_dir(dir).unwrap() {
            let path = entry.unwrap().path();
            if path.is_dir() {
                walk(&path, out);
            } else {
                out.push(path);
            }
        }
    }
    let mut paths = Vec::new();
    walk(&root().join("deploy"), &mut paths);
    let mut files: Vec<String> = paths
        .iter()
        .map(|p| p.strip_prefix(root()).unwrap().to_string_lossy().into_owned())
        .collect();
    files.push("docker-compose.yml".into());
    files.push(".dockerignore".into());
    files.sort();
    files
}

fn yaml_files() -> Vec<String> {
    deploy_files()
        .into_iter()
        .filter(|f| f.ends_with(".yml") || f.ends_with(".yaml"))
        .collect()
}

/// All documents of a YAML file, merge keys (`<<`) applied.
fn yaml_documents(rel: &str) -> Vec<Value> {
    use serde::Deserialize;
    let text = read(rel);
    serde_norway::Deserializer::from_str(&text)
        .map(|doc| {
            let mut v = Value::deserialize(doc).unwrap_or_else(|e| panic!("{rel}: {e}"));
            v.apply_merge().unwrap_or_else(|e| panic!("{rel}: {e}"));
            v
        })
        .collect()
}

fn yaml(rel: &str) -> Value {
    let mut docs = yaml_documents(rel);
    assert_eq!(docs.len(), 1, "{rel} holds one document");
    docs.remove(0)
}

/// `v[a][b]..` as a string (numbers too), or `None`.
fn text_at(v: &Value, path: &[&str]) -> Option<String> {
    let mut cur = v;
    for key in path {
        cur = cur.get(*key)?;
    }
    match cur {
        Value::String(s) => Some(s.clone()),
        Value::Number(n) => Some(n.to_string()),
        Value::Bool(b) => Some(b.to_string()),
        _ => None,
    }
}

fn seq<'a>(v: &'a Value, key: &str) -> &'a [Value] {
    v.get(key)
        .and_then(Value::as_sequence)
        .map(Vec::as_slice)
        .unwrap_or(&[])
}

/// Non-comment lines of a `#`-commented configuration file.
fn config_lines(text: &str) -> Vec<&str> {
    text.lines()
        .map(|l| l.split('#').next().unwrap().trim())
        .filter(|l| !l.is_empty())
        .collect()
}

/// A duration as the server reads it (`2s`, `250ms`, `1h`), or a plain
/// number of milliseconds as HAProxy reads it.
fn duration(s: &str) -> Duration {
    let s = s.trim();
    if let Ok(ms) = s.parse::<u64>() {
        return Duration::from_millis(ms);
    }
    humantime::parse_duration(s).unwrap_or_else(|e| panic!("{s:?} is not a duration: {e}"))
}

fn port_of(addr: &str) -> u16 {
    addr.rsplit(':')
        .next()
        .and_then(|p| p.parse().ok())
        .unwrap_or_else(|| panic!("{addr:?} has no port"))
}

fn scalar(v: &Value) -> String {
    match v {
        Value::String(s) => s.clone(),
        Value::Number(n) => n.to_string(),
        Value::Bool(b) => b.to_string(),
        other => panic!("not a scalar: {other:?}"),
    }
}
