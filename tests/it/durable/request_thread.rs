//! Publishing connections are served on the node's request threads
//! (`--request-threads`, one by default), apart from the workers that
//! write event streams.

use crate::helpers::*;

/// The node's threads named `name`.
fn threads_named(node: &NodeProcess, name: &str) -> Vec<u32> {
    let dir = format!("/proc/{}/task", node.child.id());
    std::fs::read_dir(dir)
        .unwrap()
        .filter_map(|e| e.ok()?.file_name().to_str()?.parse::<u32>().ok())
        .filter(|tid| {
            let comm = std::fs::read_to_string(format!("/proc/{}/task/{tid}/comm", node.child.id()));
            comm.is_ok_and(|c| c.trim_end() == name)
        })
        .collect()
}

/// How many times the thread has gone to sleep (given up the CPU to wait).
fn voluntary_switches(node: &NodeProcess, tid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{}/task/{tid}/status", node.child.id())).unwrap();
    status
        .lines()
        .find_map(|l| l.strip_prefix("voluntary_ctxt_switches:"))
        .expect("a voluntary_ctxt_switches line")
        .trim()
        .parse()
        .unwrap()
}

/// `n` durable publishes, one after the other on one kept-alive connection.
async fn post_in_turn(node: &NodeProcess, channel: &str, n: usize) {
    let http = reqwest::Client::new();
    for i in 0..n {
        let resp = http
            .post(node.url(&format!("/v1/stream/{channel}")))
            .body(format!("event {i}"))
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status(), 201);
    }
}

/// How many times the node's request threads went to sleep, in all.
fn request_threads_slept(node: &NodeProcess, threads: &[u32]) -> u64 {
    threads.iter().map(|t| voluntary_switches(node, *t)).sum()
}

/// Requires `threads` threads named as the request threads, and 200
/// publishes in turn to find them asleep at least half the time: the
/// client sends the next only once the answer came, so a thread that
/// serves them waits for most (the next may already have come when the
/// thread looks again after answering one: 178 sleeps in 200 were seen),
/// and one that serves none sleeps through them all, once.
async fn assert_publishes_served_by_request_threads(node: &NodeProcess, threads: usize) {
    let found = threads_named(node, "ssegate-request");
    assert_eq!(found.len(), threads, "request threads: found {found:?}");
    let before = request_threads_slept(node, &found);
    let n = 200;
    post_in_turn(node, &unique("on-thread"), n).await;
    let slept = request_threads_slept(node, &found) - before;
    assert!(
        slept >= n as u64 / 2,
        "the request threads slept {slept} times over {n} publishes: they were served elsewhere"
    );
}

/// A node on `redis` with `extra` flags.
fn node_on(redis: &RedisServer, extra: &[&str]) -> NodeProcess {
    let url = redis.url();
    let mut args = vec!["--redis-url", &url, "--allow-anonymous"];
    args.extend_from_slice(extra);
    NodeProcess::spawn(&args)
}

#[tokio::test]
async fn publishes_are_served_on_the_request_thread() {
    let redis = RedisServer::spawn();
    let node = node_on(&redis, &[]);
    // One by default.
    assert_publishes_served_by_request_threads(&node, 1).await;
}

#[tokio::test]
async fn several_request_threads_serve_publishes() {
    let redis = RedisServer::spawn();
    let node = node_on(&redis, &["--request-threads", "3"]);
    // Three workers, and the thread that keeps their runtime.
    assert_publishes_served_by_request_threads(&node, 4).await;
}

#[tokio::test]
async fn without_request_threads_publishes_are_served_by_the_workers() {
    let redis = RedisServer::spawn();
    let node = node_on(&redis, &["--request-threads", "0"]);
    assert!(threads_named(&node, "ssegate-request").is_empty());
    post_in_turn(&node, &unique("on-workers"), 20).await;
}

#[tokio::test]
async fn a_request_thread_count_out_of_range_stops_the_start() {
    let out = std::process::Command::new(binary())
        .args(["--listen", "127.0.0.1:0", "--request-threads", "1000"])
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("--request-threads") && err.contains("0..=256"),
        "{err}"
    );
}
