//! Event backbones as child processes on free ports, each with its own data
//! directory so that a restart keeps what it stored: `nats-server` with
//! JetStream, `rabbitmq-server` (its own node name, ports, cookie and
//! Mnesia directory per test) and `tansu` (a Kafka-protocol broker, with
//! SQLite storage). Each waits for the server's own "ready" log line.

use std::io::{BufRead, BufReader};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use super::{free_port, require_tool};

/// Starts `cmd`, waiting until a line of its output contains `ready`.
fn start_until(mut cmd: Command, ready: &'static str, what: &str) -> Child {
    let mut child = cmd
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("{what} starts: {e}"));
    let (tx, rx) = std::sync::mpsc::channel();
    for out in [
        Box::new(child.stdout.take().unwrap()) as Box<dyn std::io::Read + Send>,
        Box::new(child.stderr.take().unwrap()),
    ] {
        let tx = tx.clone();
        std::thread::spawn(move || {
            let mut tx = Some(tx);
            for line in BufReader::new(out).lines() {
                let Ok(line) = line else { break };
                if std::env::var_os("SSEGATE_TEST_BACKBONE_LOG").is_some() {
                    eprintln!("{line}");
                }
                if line.contains(ready)
                    && let Some(tx) = tx.take()
                {
                    let _ = tx.send(());
                }
            }
        });
    }
    if rx.recv_timeout(Duration::from_secs(60)).is_err() {
        let _ = child.kill();
        let _ = child.wait();
        panic!("{what} did not log {ready:?}");
    }
    child
}

fn stop(child: &mut Option<Child>) {
    if let Some(mut c) = child.take() {
        let _ = c.kill();
        let _ = c.wait();
    }
}

/// `nats-server -js` on a free port, its store in a temporary directory.
pub struct NatsServer {
    pub port: u16,
    dir: tempfile::TempDir,
    program: PathBuf,
    child: Option<Child>,
}

impl NatsServer {
    pub fn spawn() -> Option<NatsServer> {
        let program = require_tool("nats-server")?;
        let mut s = NatsServer {
            port: free_port(),
            dir: tempfile::tempdir().unwrap(),
            program,
            child: None,
        };
        s.start();
        Some(s)
    }

    fn start(&mut self) {
        let mut cmd = Command::new(&self.program);
        cmd.args(["-a", "127.0.0.1", "-p", &self.port.to_string(), "-js", "-sd"])
            .arg(self.dir.path());
        self.child = Some(start_until(cmd, "Server is ready", "nats-server"));
    }

    pub fn url(&self) -> String {
        format!("nats://127.0.0.1:{}", self.port)
    }

    pub fn kill(&mut self) {
        stop(&mut self.child);
    }

    /// Killed and started again on the same port and store.
    pub fn restart(&mut self) {
        self.kill();
        self.start();
    }

    pub async fn jetstream(&self) -> async_nats::jetstream::Context {
        let c = async_nats::connect(self.url())
            .await
            .expect("connect to nats-server");
        async_nats::jetstream::new(c)
    }
}

impl Drop for NatsServer {
    fn drop(&mut self) {
        self.kill();
    }
}

/// A RabbitMQ node of its own (name, ports, cookie, data) on loopback.
pub struct RabbitServer {
    pub port: u16,
    dist_port: u16,
    name: String,
    dir: tempfile::TempDir,
    program: PathBuf,
    child: Option<Child>,
}

impl RabbitServer {
    pub fn spawn() -> Option<RabbitServer> {
        require_tool("rabbitmq-server")?;
        // The wrapper on PATH switches to the rabbitmq user; the script it
        // runs starts the node as whoever runs it.
        let real = PathBuf::from("/usr/lib/rabbitmq/bin/rabbitmq-server");
        let program = if real.is_file() {
            real
        } else {
            require_tool("rabbitmq-server")?
        };
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("enabled_plugins"), "[].\n").unwrap();
        let cookie = dir.path().join(".erlang.cookie");
        std::fs::write(&cookie, format!("ssegate{}", free_port())).unwrap();
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&cookie, std::fs::Permissions::from_mode(0o600)).unwrap();
        let port = free_port();
        let mut s = RabbitServer {
            port,
            dist_port: free_port(),
            name: format!("ssegate-test-{}-{port}@localhost", std::process::id()),
            dir,
            program,
            child: None,
        };
        s.start();
        Some(s)
    }

    fn start(&mut self) {
        let d = self.dir.path();
        let mut cmd = Command::new(&self.program);
        cmd.current_dir(d)
            .env("HOME", d)
            .env("RABBITMQ_NODENAME", &self.name)
            .env("RABBITMQ_NODE_IP_ADDRESS", "127.0.0.1")
            .env("RABBITMQ_NODE_PORT", self.port.to_string())
            .env("RABBITMQ_DIST_PORT", self.dist_port.to_string())
            .env("RABBITMQ_BASE", d)
            .env("RABBITMQ_MNESIA_BASE", d.join("mnesia"))
            .env("RABBITMQ_LOG_BASE", d.join("log"))
            .env("RABBITMQ_LOGS", "-")
            .env("RABBITMQ_ENABLED_PLUGINS_FILE", d.join("enabled_plugins"))
            .env("RABBITMQ_CONFIG_FILE", d.join("rabbitmq"))
            .env("RABBITMQ_PID_FILE", d.join("pid"))
            // The script then execs the Erlang VM instead of running it
            // in the background: the child is the node, and a kill stops it.
            .env("RUNNING_UNDER_SYSTEMD", "true");
        self.child = Some(start_until(cmd, "Server startup complete", "rabbitmq-server"));
    }

    pub fn url(&self) -> String {
        format!("amqp://guest:guest@127.0.0.1:{}/%2f", self.port)
    }

    /// Stops the node the hard way (SIGKILL of the Erlang VM).
    pub fn kill(&mut self) {
        stop(&mut self.child);
    }

    /// Killed and started again on the same ports and data.
    pub fn restart(&mut self) {
        self.kill();
        self.start();
    }

    pub async fn channel(&self) -> lapin::Channel {
        let conn = lapin::Connection::connect(&self.url(), lapin::ConnectionProperties::default())
            .await
            .expect("connect to rabbitmq");
        let ch = conn.create_channel().await.unwrap();
        // The connection lives as long as its channel is used.
        std::mem::forget(conn);
        ch
    }
}

impl Drop for RabbitServer {
    fn drop(&mut self) {
        self.kill();
    }
}

/// `tansu broker`, a Kafka-protocol broker, storing in SQLite in a
/// temporary directory.
pub struct KafkaServer {
    pub port: u16,
    dir: tempfile::TempDir,
    program: PathBuf,
    child: Option<Child>,
}

impl KafkaServer {
    pub fn spawn() -> Option<KafkaServer> {
        let program = require_tool("tansu")?;
        let mut s = KafkaServer {
            port: free_port(),
            dir: tempfile::tempdir().unwrap(),
            program,
            child: None,
        };
        s.start();
        Some(s)
    }

    fn start(&mut self) {
        let mut cmd = Command::new(&self.program);
        // The SQLite path is relative to the working directory.
        cmd.current_dir(self.dir.path())
            .args(["broker", "--storage-engine", "sqlite://tansu.db"])
            .arg("--listener-url")
            .arg(format!("tcp://127.0.0.1:{}", self.port))
            .arg("--advertised-listener-url")
            .arg(format!("tcp://127.0.0.1:{}", self.port));
        self.child = Some(start_until(cmd, "ready in", "tansu"));
    }

    pub fn brokers(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }

    pub fn kill(&mut self) {
        stop(&mut self.child);
    }

    pub fn restart(&mut self) {
        self.kill();
        self.start();
    }
}

impl Drop for KafkaServer {
    fn drop(&mut self) {
        self.kill();
    }
}

/// How long to wait for a backbone's messages to land.
pub const INGEST_WAIT: Duration = Duration::from_secs(180);
