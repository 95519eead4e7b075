//! Gateway nodes: in-process on a real socket, or the `ssegate` binary as
//! a child process.

use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use ssegate::{Application, Config};
use tokio::sync::oneshot;

use super::{RedisServer, WAIT, metric_at};

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
    pub state: ssegate::state::AppState,
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
        post_event(&self.url(&format!("/v1/stream/{channel}")), body.into()).await
    }

    pub async fn metric(&self, name: &str) -> f64 {
        metric_at(&self.url(""), name).await
    }
}

/// `POST`s one event; returns its id.
async fn post_event(url: &str, body: String) -> String {
    let resp = reqwest::Client::new().post(url).body(body).send().await.unwrap();
    assert_eq!(resp.status(), 201);
    let v: serde_json::Value = resp.json().await.unwrap();
    v["id"].as_str().unwrap().to_owned()
}

impl Drop for Node {
    fn drop(&mut self) {
        if let Some(tx) = self.stop.take() {
            let _ = tx.send(());
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

/// The gateway binary: this build's, or `SSEGATE_TEST_BINARY` (to run the
/// process tests against another build, e.g. to see a new test fail on the
/// code before a fix).
pub fn binary() -> PathBuf {
    std::env::var_os("SSEGATE_TEST_BINARY")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_BIN_EXE_ssegate")))
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
        let mut cmd = Command::new(binary());
        cmd.args(["--listen", listen, "--log-format", "json"])
            .args(args)
            .envs(env.iter().copied());
        Self::start(cmd)
    }

    /// Run by another program (`wrapper` is its command line up to the
    /// binary), e.g. `prlimit --nofile=300:300 --`.
    pub fn spawn_wrapped(wrapper: &[&str], args: &[&str]) -> NodeProcess {
        let mut cmd = Command::new(wrapper[0]);
        cmd.args(&wrapper[1..])
            .arg(binary())
            .args(["--listen", "127.0.0.1:0", "--log-format", "json"])
            .args(args);
        Self::start(cmd)
    }

    fn start(mut cmd: Command) -> NodeProcess {
        let mut child = cmd.stdout(Stdio::null()).stderr(Stdio::piped()).spawn().unwrap();
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

    /// A durable publish through `POST`; returns the event's id.
    pub async fn publish(&self, channel: &str, body: impl Into<String>) -> String {
        post_event(&self.url(&format!("/v1/stream/{channel}")), body.into()).await
    }

    /// Log lines written so far.
    pub fn logs(&mut self) -> Vec<String> {
        self.early.extend(self.stderr.try_iter());
        self.early.clone()
    }

    /// The next log line, awaited for up to `limit`; it stays in `logs()`.
    pub fn next_log(&mut self, limit: Duration) -> Option<String> {
        // One line at a time, the queued ones first: every line is seen.
        let line = self.stderr.recv_timeout(limit).ok()?;
        self.early.push(line.clone());
        Some(line)
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
