//! Network faults between a node and its clients, on a real link: the test
//! makes a network namespace joined to the host by a veth pair (a private
//! /30, one address at each end), runs the node on the host end, and reads
//! a stream with `curl` from inside the namespace, while a control stream
//! reads from the host itself.
//!
//! - A client whose host stops acknowledging (every packet it sends is
//!   dropped) is closed by the node after `--write-timeout`, which the node
//!   sets as `TCP_USER_TIMEOUT` on every accepted socket.
//! - A client that keeps acknowledging but never reads (its receive window
//!   closes: zero window) is closed by the node's bounded client queue.
//! - With a short `--write-timeout` and a queue that never fills, such a
//!   zero-window client is closed by the write timeout too: the kernel
//!   (Linux 5.11 and later) counts a window that stays shut against
//!   `TCP_USER_TIMEOUT` even though the client answers every probe.
//!
//! The peer stops acknowledging through an iptables `DROP` rule on the
//! namespace's output, not through `tc qdisc add .. netem loss 100%`: the
//! kernel these tests run on has no netem qdisc ("Specified qdisc kind is
//! unknown"), while iptables (nftables underneath) works in a namespace.
//!
//! They need root (to make namespaces and links), `ip` (iproute2),
//! `iptables`, `curl` and `kill`; scripts/test.sh installs them. Under CI a
//! missing program or a namespace that cannot be made fails the test;
//! elsewhere the test is skipped with a printed line. The namespace and its
//! link are deleted when the test ends, failed or not.

use std::path::PathBuf;
use std::process::{Child, Command, Output, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

use tokio::io::{AsyncBufReadExt, BufReader};

use crate::helpers::*;

/// Runs a command; fails the test with its output if it fails.
fn run(cmd: &mut Command) -> Output {
    let out = cmd.output().unwrap_or_else(|e| panic!("{cmd:?}: {e}"));
    assert!(
        out.status.success(),
        "{cmd:?}: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

/// A network namespace joined to the host by a veth pair; both deleted on
/// drop.
struct Netns {
    ip: PathBuf,
    name: String,
    /// The interface on the host.
    host_if: String,
    /// The host end's address, where the node listens.
    host_addr: String,
    /// The interface inside the namespace.
    peer_if: String,
}

impl Netns {
    /// A new namespace, or `None` (outside CI) when it cannot be made.
    fn create() -> Option<Netns> {
        let ip = require_tool("ip")?;
        static N: AtomicU32 = AtomicU32::new(0);
        let n = N.fetch_add(1, Ordering::Relaxed);
        let pid = std::process::id();
        let name = format!("ssegate-nf-{pid}-{n}");
        let add = Command::new(&ip).args(["netns", "add", &name]).output().unwrap();
        if !add.status.success() {
            unavailable(&format!(
                "cannot make a network namespace (root is needed): {}",
                String::from_utf8_lossy(&add.stderr).trim()
            ));
            return None;
        }
        // From here on, drop deletes the namespace.
        let mut ns = Netns {
            ip,
            name,
            host_if: format!("sgh{pid}x{n}"),
            host_addr: String::new(),
            peer_if: format!("sgp{pid}x{n}"),
        };
        let host_if = ns.host_if.clone();
        let (host, peer) = free_slash_30(&ns.ip, pid, n);
        let ip = ns.ip.clone();
        run(Command::new(&ip).args([
            "link",
            "add",
            &host_if,
            "type",
            "veth",
            "peer",
            "name",
            &ns.peer_if,
        ]));
        run(Command::new(&ip).args(["link", "set", &ns.peer_if, "netns", &ns.name]));
        run(Command::new(&ip).args(["addr", "add", &format!("{host}/30"), "dev", &host_if]));
        run(Command::new(&ip).args(["link", "set", &host_if, "up"]));
        let inside = ["-n", ns.name.as_str()];
        run(Command::new(&ip)
            .args(inside)
            .args(["addr", "add", &format!("{peer}/30"), "dev", &ns.peer_if]));
        run(Command::new(&ip)
            .args(inside)
            .args(["link", "set", &ns.peer_if, "up"]));
        run(Command::new(&ip).args(inside).args(["link", "set", "lo", "up"]));
        ns.host_addr = host;
        Some(ns)
    }

    /// `ip netns exec <ns> <program> <args..>`, not yet started.
    fn exec(&self, program: &std::path::Path, args: &[&str]) -> Command {
        let mut cmd = Command::new(&self.ip);
        cmd.args(["netns", "exec", &self.name]).arg(program).args(args);
        cmd
    }

    /// From now on the namespace sends nothing: no acknowledgement reaches
    /// the node.
    fn stop_acknowledging(&self, iptables: &std::path::Path) {
        run(&mut self.exec(iptables, &["-A", "OUTPUT", "-o", &self.peer_if, "-j", "DROP"]));
    }
}

impl Drop for Netns {
    /// Deletes the link first: a socket still closing inside the namespace
    /// (its packets dropped) keeps the namespace, and so the pair, alive
    /// after `ip netns del`.
    fn drop(&mut self) {
        let _ = Command::new(&self.ip)
            .args(["link", "del", &self.host_if])
            .stderr(Stdio::null())
            .status();
        let out = Command::new(&self.ip).args(["netns", "del", &self.name]).output();
        if !out.is_ok_and(|o| o.status.success()) {
            eprintln!("could not delete network namespace {}", self.name);
        }
    }
}

/// A /30 in 10.213.0.0/16 that no interface of the host uses, picked from
/// the process id: (host address, namespace address).
fn free_slash_30(ip: &std::path::Path, pid: u32, n: u32) -> (String, String) {
    for attempt in 0..64u32 {
        let block = (pid.wrapping_mul(8) + n + attempt * 977) % 16384;
        let base = block * 4;
        let net = format!("10.213.{}.{}", base / 256, base % 256);
        let used = run(Command::new(ip).args(["-4", "-o", "addr", "show", "to", &format!("{net}/30")]));
        if used.stdout.is_empty() {
            let host = format!("10.213.{}.{}", base / 256, base % 256 + 1);
            let peer = format!("10.213.{}.{}", base / 256, base % 256 + 2);
            return (host, peer);
        }
    }
    panic!("no free /30 in 10.213.0.0/16");
}

/// `curl -N` reading a stream inside the namespace; killed on drop.
struct Curl {
    child: Child,
    lines: tokio::sync::mpsc::UnboundedReceiver<String>,
}

impl Curl {
    fn open(ns: &Netns, curl: &std::path::Path, url: &str) -> Curl {
        let mut child = ns
            .exec(curl, &["--silent", "--no-buffer", url])
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        let out = tokio::process::ChildStdout::from_std(child.stdout.take().unwrap()).unwrap();
        let (tx, lines) = tokio::sync::mpsc::unbounded_channel();
        tokio::spawn(async move {
            let mut out = BufReader::new(out).lines();
            while let Ok(Some(line)) = out.next_line().await {
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        Curl { child, lines }
    }

    /// Waits for a `data:` line; fails if the stream ends first.
    async fn data(&mut self) -> String {
        loop {
            let line = tokio::time::timeout(WAIT, self.lines.recv())
                .await
                .expect("curl printed an event within the wait")
                .expect("curl's stream stays open");
            if let Some(data) = line.strip_prefix("data: ") {
                return data.to_owned();
            }
        }
    }

    /// SIGSTOP: curl reads nothing more, while its kernel still
    /// acknowledges what arrives until the receive window is shut.
    fn stop_reading(&self, kill: &std::path::Path) {
        run(Command::new(kill).args(["-STOP", &self.child.id().to_string()]));
    }
}

impl Drop for Curl {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The programs the tests need, or `None` (outside CI) when one is missing.
struct Programs {
    curl: PathBuf,
    iptables: PathBuf,
    kill: PathBuf,
}

fn programs() -> Option<Programs> {
    Some(Programs {
        curl: require_tool("curl")?,
        iptables: require_tool("iptables")?,
        kill: require_tool("kill")?,
    })
}

/// A node on the namespace link's host end, with a control stream read
/// from the host and a stream read by curl inside the namespace; both have
/// received a first event.
struct Setup {
    node: NodeProcess,
    channel: String,
    control: Sse,
    curl: Curl,
}

async fn setup(ns: &Netns, curl: &std::path::Path, args: &[&str]) -> Setup {
    let node = NodeProcess::spawn_on(&format!("{}:0", ns.host_addr), args, &[]);
    let channel = unique("netfault");
    let url = node.url(&format!("/v1/stream/{channel}"));
    let mut control = Sse::open(&url).await;
    let mut curl = Curl::open(ns, curl, &url);
    eventually("the namespace's stream is open", || async {
        node.metric("ssegate_streams_open").await == 2.0
    })
    .await;
    publish(&node, &channel, "first").await;
    assert_eq!(curl.data().await, "first", "the stream in the namespace");
    assert_eq!(control.take(1).await, ["first"], "the control stream");
    Setup {
        node,
        channel,
        control,
        curl,
    }
}

async fn publish(node: &NodeProcess, channel: &str, body: impl Into<String>) {
    let resp = reqwest::Client::new()
        .post(node.url(&format!("/v1/stream/{channel}")))
        .body(body.into())
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 201);
}

/// After the fault: the control stream is the node's only stream and still
/// receives.
async fn control_still_serves(s: &mut Setup) {
    assert_eq!(s.node.metric("ssegate_streams_open").await, 1.0);
    publish(&s.node, &s.channel, "after").await;
    assert_eq!(s.control.take(1).await, ["after"]);
}

#[tokio::test]
async fn a_client_that_stops_acknowledging_is_closed_after_the_write_timeout() {
    let Some(tools) = programs() else { return };
    let Some(ns) = Netns::create() else { return };
    let write_timeout = Duration::from_secs(2);
    let mut s = setup(
        &ns,
        &tools.curl,
        &["--write-timeout", "2s", "--ip-rate", "0", "--heartbeat", "1h"],
    )
    .await;

    ns.stop_acknowledging(&tools.iptables);
    // One more event: the node sends it and no acknowledgement comes back.
    let sent = Instant::now();
    publish(&s.node, &s.channel, "unacknowledged").await;
    assert_eq!(s.control.take(1).await, ["unacknowledged"]);
    eventually_within(
        "the node closes the stream whose data stays unacknowledged",
        write_timeout + Duration::from_secs(3),
        || async { s.node.metric("ssegate_streams_open").await == 1.0 },
    )
    .await;
    // The timeout closed it, not the drop itself, and not the queue.
    let closed_after = sent.elapsed();
    assert!(
        closed_after >= write_timeout - Duration::from_millis(250),
        "closed {closed_after:?} after the unacknowledged send, before the {write_timeout:?} write timeout"
    );
    assert_eq!(s.node.metric("ssegate_slow_client_disconnects_total").await, 0.0);
    control_still_serves(&mut s).await;
}

/// Publishes 60 KiB events until the node has closed a slow client, at
/// most `limit` of them, reading each from the control stream before the
/// next is published (the control stream must never be the slow one, even
/// on a loaded machine); returns how many were published.
async fn publish_until_a_slow_client_is_closed(mut s: Setup, limit: usize) -> (Setup, usize) {
    let payload = "x".repeat(60 * 1024);
    let mut published = 0;
    while published < limit {
        publish(&s.node, &s.channel, payload.clone()).await;
        published += 1;
        let ev = s.control.next().await.expect("the control stream stays open");
        assert_eq!(ev.data.len(), 60 * 1024);
        if published % 8 == 0 && s.node.metric("ssegate_slow_client_disconnects_total").await >= 1.0 {
            break;
        }
    }
    (s, published)
}

#[tokio::test]
async fn a_client_that_acknowledges_but_never_reads_is_closed_by_its_queue() {
    let Some(tools) = programs() else { return };
    let Some(ns) = Netns::create() else { return };
    // A write timeout far beyond the test: only the queue can close it.
    let s = setup(
        &ns,
        &tools.curl,
        &[
            "--client-queue",
            "64KiB",
            "--write-timeout",
            "1h",
            "--ip-rate",
            "0",
        ],
    )
    .await;
    s.curl.stop_reading(&tools.kill);
    let (mut s, published) = publish_until_a_slow_client_is_closed(s, 1000).await;
    eventually("the node closes the stream that does not read", || async {
        s.node.metric("ssegate_slow_client_disconnects_total").await == 1.0
            && s.node.metric("ssegate_streams_open").await == 1.0
    })
    .await;
    eprintln!("a client that never reads: closed by its queue after {published} events of 60 KiB");
    control_still_serves(&mut s).await;
}

#[tokio::test]
async fn a_client_that_acknowledges_but_never_reads_is_closed_by_a_short_write_timeout() {
    let Some(tools) = programs() else { return };
    let Some(ns) = Netns::create() else { return };
    // A queue far larger than what is published: only the write timeout
    // can close it.
    let write_timeout = Duration::from_secs(2);
    let mut s = setup(
        &ns,
        &tools.curl,
        &[
            "--client-queue",
            "64MiB",
            "--write-timeout",
            "2s",
            "--ip-rate",
            "0",
            "--heartbeat",
            "1h",
        ],
    )
    .await;
    s.curl.stop_reading(&tools.kill);
    // 4 MiB: more than the client's receive window and the node's send
    // buffer hold, so the window shuts with data still to send.
    let payload = "x".repeat(60 * 1024);
    for _ in 0..70 {
        publish(&s.node, &s.channel, payload.clone()).await;
    }
    let last_sent = Instant::now();
    for _ in 0..70 {
        let ev = s.control.next().await.expect("the control stream stays open");
        assert_eq!(ev.data.len(), payload.len());
    }
    eventually_within(
        "the node closes the stream whose window stays shut",
        write_timeout + Duration::from_secs(5),
        || async { s.node.metric("ssegate_streams_open").await == 1.0 },
    )
    .await;
    eprintln!(
        "a client that never reads, 64 MiB queue: closed {:?} after the last publish",
        last_sent.elapsed()
    );
    assert_eq!(s.node.metric("ssegate_slow_client_disconnects_total").await, 0.0);
    control_still_serves(&mut s).await;
}
