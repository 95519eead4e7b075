//! Test helpers: real `redis-server` processes on free ports, real gateway
//! nodes (in-process on port 0, or the `ssegate` binary), and an SSE client
//! that parses streams with the `eventsource-stream` crate.

use std::io::{BufRead, BufReader};
use std::net::{SocketAddr, TcpListener};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use eventsource_stream::{Event, Eventsource};
use futures::{Stream, StreamExt};
use ssegate::{Application, Config};
use tokio::sync::oneshot;

pub const WAIT: Duration = Duration::from_secs(15);

/// Whether the tests run under CI (`CI` set, and not to `false` or `0`).
pub fn in_ci() -> bool {
    std::env::var("CI").is_ok_and(|v| !v.is_empty() && v != "false" && v != "0")
}

/// A program on PATH, or `None`.
fn on_path(name: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path)
        .map(|dir| dir.join(name))
        .find(|p| p.is_file())
}

/// A program a test needs, found on PATH (scripts/test.sh installs them all).
/// When it is missing, the test fails under CI with a message naming it;
/// elsewhere it prints that the test is skipped and returns `None`, and the
/// caller returns.
pub fn require_tool(name: &str) -> Option<PathBuf> {
    let found = on_path(name);
    if found.is_none() {
        unavailable(&format!(
            "{name} is missing (not on PATH); scripts/test.sh installs it"
        ));
    }
    found
}

/// Something a test needs cannot be had (`why`): the test fails under CI;
/// elsewhere this prints that it is skipped, and the caller returns.
pub fn unavailable(why: &str) {
    let test = std::thread::current().name().unwrap_or("this test").to_owned();
    assert!(!in_ci(), "{test} cannot run: {why}");
    eprintln!("SKIPPED {test}: {why}");
}

/// A program nearly every test needs (`redis-server`, `redis-cli`): a test
/// that cannot find it fails, in CI or not, naming it.
pub fn essential_tool(name: &str) -> PathBuf {
    on_path(name).unwrap_or_else(|| panic!("{name} is missing (not on PATH); scripts/test.sh installs it"))
}

/// A channel name no other test uses.
pub fn unique(prefix: &str) -> String {
    static N: AtomicU64 = AtomicU64::new(0);
    format!(
        "{prefix}-{}-{}",
        std::process::id(),
        N.fetch_add(1, Ordering::Relaxed)
    )
}

pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// A `redis-server` child process, killed on drop.
pub struct RedisServer {
    pub port: u16,
    dir: tempfile::TempDir,
    child: Option<Child>,
    extra: Vec<String>,
}

impl RedisServer {
    pub fn spawn() -> RedisServer {
        Self::spawn_with(&[])
    }

    /// With extra `redis-server` arguments (e.g. `--appendonly yes`).
    pub fn spawn_with(extra: &[&str]) -> RedisServer {
        Self::spawn_at(free_port(), extra)
    }

    /// On a given port.
    pub fn spawn_at(port: u16, extra: &[&str]) -> RedisServer {
        let mut r = RedisServer {
            port,
            dir: tempfile::tempdir().unwrap(),
            child: None,
            extra: extra.iter().map(|s| s.to_string()).collect(),
        };
        r.start();
        r
    }

    fn start(&mut self) {
        let mut child = Command::new(essential_tool("redis-server"))
            .args([
                "--port",
                &self.port.to_string(),
                "--bind",
                "127.0.0.1",
                "--save",
                "",
                "--logfile",
                "",
            ])
            .arg("--dir")
            .arg(self.dir.path())
            .args(&self.extra)
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .expect("redis-server starts");
        // Wait for the server's own "ready" line rather than polling.
        let out = child.stdout.take().unwrap();
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            let mut tx = Some(tx);
            for line in BufReader::new(out).lines() {
                let Ok(line) = line else { break };
                if line.contains("Ready to accept connections")
                    && let Some(tx) = tx.take()
                {
                    let _ = tx.send(());
                }
            }
        });
        rx.recv_timeout(WAIT).expect("redis-server did not become ready");
        self.child = Some(child);
    }

    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}", self.port)
    }

    pub fn is_running(&self) -> bool {
        self.child.is_some()
    }

    pub fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// Kills the server and starts it again on the same port and data dir.
    pub fn restart(&mut self) {
        self.kill();
        self.start();
    }

    pub async fn conn(&self) -> redis::aio::MultiplexedConnection {
        redis::Client::open(self.url())
            .unwrap()
            .get_multiplexed_async_connection()
            .await
            .unwrap()
    }

    /// Runs redis-cli, as an operator would.
    pub fn cli(&self, args: &[&str]) -> String {
        let out = Command::new(essential_tool("redis-cli"))
            .args(["-p", &self.port.to_string()])
            .args(args)
            .output()
            .expect("redis-cli runs");
        String::from_utf8_lossy(&out.stdout).into_owned()
    }
}

impl Drop for RedisServer {
    fn drop(&mut self) {
        self.kill();
    }
}

/// A config for a test node on an ephemeral port.
pub fn config(redis: Option<&RedisServer>) -> Config {
    let mut c = Config::default_for_tests();
    c.redis_url = redis.map(RedisServer::url);
    c.allow_anonymous = true;
    c.drain_delay = Duration::ZERO;
    c.close_spread = Duration::ZERO;
    c.shutdown_grace = Duration::from_secs(5);
    c
}

/// An in-process gateway node on a real socket.
pub struct Node {
    pub addr: SocketAddr,
    stop: Option<oneshot::Sender<()>>,
    task: Option<tokio::task::JoinHandle<()>>,
    pub state: ssegate::app::AppState,
}

impl Node {
    pub async fn spawn(config: Config) -> Node {
        // SSEGATE_TEST_LOG=ssegate=debug shows the nodes' logs.
        if let Ok(filter) = std::env::var("SSEGATE_TEST_LOG") {
            let _ = tracing_subscriber::fmt()
                .with_env_filter(filter)
                .with_test_writer()
                .try_init();
        }
        let app = Application::build(config).await.expect("node starts");
        let addr = app.local_addr();
        let state = app.state().clone();
        let (tx, rx) = oneshot::channel();
        let task = tokio::spawn(async move {
            app.run_until(async {
                let _ = rx.await;
            })
            .await
            .unwrap();
        });
        Node {
            addr,
            stop: Some(tx),
            task: Some(task),
            state,
        }
    }

    pub fn url(&self, path: &str) -> String {
        format!("http://{}{}", self.addr, path)
    }

    /// Drains and stops the node, waiting until it has.
    pub async fn stop(mut self) {
        if let Some(tx) = self.stop.take() {
            let _ = tx.send(());
        }
        if let Some(t) = self.task.take() {
            tokio::time::timeout(WAIT, t)
                .await
                .expect("node stops in time")
                .unwrap();
        }
    }

    pub async fn publish(&self, channel: &str, body: impl Into<String>) -> String {
        let resp = reqwest::Client::new()
            .post(self.url(&format!("/v1/stream/{channel}")))
            .body(body.into())
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status(), 201);
        let v: serde_json::Value = resp.json().await.unwrap();
        v["id"].as_str().unwrap().to_owned()
    }

    pub async fn metric(&self, name: &str) -> f64 {
        metric_at(&self.url(""), name).await
    }
}

impl Drop for Node {
    fn drop(&mut self) {
        if let Some(tx) = self.stop.take() {
            let _ = tx.send(());
        }
    }
}

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

type EventStream = std::pin::Pin<Box<dyn Stream<Item = Result<Event, String>> + Send>>;

/// An open SSE stream, parsed by a real SSE parser.
pub struct Sse {
    events: EventStream,
    /// The last `id:` seen, as a browser would remember it.
    pub last_id: String,
}

impl Sse {
    /// Opens a stream; returns once the node answered 200 (its channels are
    /// then subscribed on that node).
    pub async fn open(url: &str) -> Sse {
        Self::open_with(url, None).await
    }

    pub async fn open_owned(url: String) -> Sse {
        Self::open_with(&url, None).await
    }

    pub async fn open_with(url: &str, last_event_id: Option<&str>) -> Sse {
        let mut req = reqwest::Client::new().get(url);
        if let Some(id) = last_event_id {
            req = req.header("Last-Event-ID", id);
        }
        let resp = tokio::time::timeout(WAIT, req.send())
            .await
            .expect("stream opens in time")
            .unwrap();
        assert_eq!(resp.status(), 200, "opening {url}");
        let mut s = Self::from_response(resp);
        s.last_id = last_event_id.unwrap_or_default().to_owned();
        s
    }

    pub fn from_response(resp: reqwest::Response) -> Sse {
        let events = resp
            .bytes_stream()
            .eventsource()
            .map(|r| r.map_err(|e| e.to_string()))
            .boxed();
        Sse {
            events,
            last_id: String::new(),
        }
    }

    /// The next event, or `None` once the server has ended the stream
    /// cleanly. A read error (a connection cut mid-stream) fails the test.
    /// Data-less blocks, which only set the id, update `last_id` as in a
    /// browser and are skipped.
    pub async fn next(&mut self) -> Option<Event> {
        self.next_or_cut()
            .await
            .unwrap_or_else(|e| panic!("the stream broke instead of ending cleanly: {e}"))
    }

    /// Like `next`, with a read error (the connection cut without the end
    /// of the body, as when a node is killed) returned as `Err`.
    pub async fn next_or_cut(&mut self) -> Result<Option<Event>, String> {
        loop {
            let Some(ev) = tokio::time::timeout(WAIT, self.events.next())
                .await
                .expect("an event or the end within the wait")
            else {
                return Ok(None);
            };
            let ev = ev?;
            self.last_id = ev.id.clone();
            if !ev.data.is_empty() || ev.event != "message" {
                return Ok(Some(ev));
            }
        }
    }

    /// The next `n` events' data.
    pub async fn take(&mut self, n: usize) -> Vec<String> {
        let mut out = Vec::with_capacity(n);
        while out.len() < n {
            let ev = self
                .next()
                .await
                .unwrap_or_else(|| panic!("stream ended after {} of {n} events", out.len()));
            out.push(ev.data);
        }
        out
    }

    /// Whether the server ends the stream cleanly within the wait (events
    /// before the end are skipped); a read error fails the test.
    pub async fn ends(&mut self) -> bool {
        loop {
            match tokio::time::timeout(WAIT, self.events.next()).await {
                Err(_) => return false,
                Ok(None) => return true,
                Ok(Some(Err(e))) => panic!("the stream broke instead of ending cleanly: {e}"),
                Ok(Some(Ok(_))) => {}
            }
        }
    }
}

/// The `ssegate` binary as a child process.
pub struct NodeProcess {
    pub child: Child,
    pub addr: SocketAddr,
    /// Lines read while waiting for the ready line.
    early: Vec<String>,
    /// The node's log lines (reading them keeps its stderr pipe drained).
    pub stderr: std::sync::mpsc::Receiver<String>,
}

pub fn binary() -> PathBuf {
    PathBuf::from(env!("CARGO_BIN_EXE_ssegate"))
}

impl NodeProcess {
    /// Starts the binary with `args` (plus a port-0 listener and JSON logs)
    /// and waits for its "ready" line, which carries the bound address.
    pub fn spawn(args: &[&str]) -> NodeProcess {
        Self::spawn_env(args, &[])
    }

    /// With extra environment variables.
    pub fn spawn_env(args: &[&str], env: &[(&str, &str)]) -> NodeProcess {
        Self::spawn_on("127.0.0.1:0", args, env)
    }

    /// Listening on `listen` rather than on a loopback port.
    pub fn spawn_on(listen: &str, args: &[&str], env: &[(&str, &str)]) -> NodeProcess {
        let mut child = Command::new(binary())
            .args(["--listen", listen, "--log-format", "json"])
            .args(args)
            .envs(env.iter().copied())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let err = child.stderr.take().unwrap();
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(err).lines() {
                let Ok(line) = line else { break };
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        let deadline = std::time::Instant::now() + WAIT;
        let mut early = Vec::new();
        loop {
            let Ok(line) = rx.recv_timeout(deadline.saturating_duration_since(std::time::Instant::now()))
            else {
                let _ = child.kill();
                let _ = child.wait();
                panic!("the node did not log its ready line");
            };
            let ready = serde_json::from_str::<serde_json::Value>(&line)
                .ok()
                .filter(|v| v["message"] == "ssegate ready");
            early.push(line);
            if let Some(v) = ready {
                let addr = v["listen"].as_str().unwrap().parse().unwrap();
                return NodeProcess {
                    child,
                    addr,
                    early,
                    stderr: rx,
                };
            }
        }
    }

    pub fn url(&self, path: &str) -> String {
        format!("http://{}{}", self.addr, path)
    }

    pub async fn metric(&self, name: &str) -> f64 {
        metric_at(&self.url(""), name).await
    }

    /// Log lines written so far.
    pub fn logs(&mut self) -> Vec<String> {
        self.early.extend(self.stderr.try_iter());
        self.early.clone()
    }

    pub fn signal(&self, sig: &str) {
        let ok = Command::new("kill")
            .args([sig, &self.child.id().to_string()])
            .status()
            .unwrap()
            .success();
        assert!(ok, "kill {sig}");
    }
}

impl Drop for NodeProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Gives a child `grace` to exit by itself, then kills it; always reaps it.
pub fn wait_or_kill(child: &mut Child, grace: Duration) {
    let deadline = std::time::Instant::now() + grace;
    while std::time::Instant::now() < deadline {
        if let Ok(Some(_)) = child.try_wait() {
            return;
        }
        // Polling: a child's exit offers no other notification here.
        std::thread::sleep(Duration::from_millis(20));
    }
    let _ = child.kill();
    let _ = child.wait();
}

/// Waits for a child to exit by itself (within the wait); its status.
pub async fn exited(child: &mut Child) -> std::process::ExitStatus {
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        if let Some(status) = child.try_wait().unwrap() {
            return status;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "the process did not exit within {WAIT:?}"
        );
        // Polling: a child's exit offers no other notification here.
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Waits until `f` holds, checking every few milliseconds: for state that
/// offers no notification (Redis's subscription tables, a process's RSS).
pub async fn eventually<F, Fut>(what: &str, f: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    eventually_within(what, WAIT, f).await;
}

/// Like `eventually`, failing after `limit`.
pub async fn eventually_within<F, Fut>(what: &str, limit: Duration, mut f: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let deadline = tokio::time::Instant::now() + limit;
    while !f().await {
        assert!(
            tokio::time::Instant::now() < deadline,
            "not within {limit:?}: {what}"
        );
        // The poll interval.
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}
