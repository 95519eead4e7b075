//! The shipped container image, built and run for real with podman:
//! deploy/rootfs.sh lays out the test's own `ssegate` binary with the
//! libraries it links, the loader and the CA bundle; deploy/Dockerfile makes
//! its `FROM scratch` image of that (the layout replacing its build stage);
//! and the container answers `/healthz`, streams a published event with its
//! id, runs as its unprivileged user, reaches Redis over TLS by name with the
//! roots at the image's bundle path, and exits 0 on SIGTERM within its grace
//! period.
//!
//! Needs root (rootful podman), `podman`, `runc` and `iptables`
//! (scripts/test.sh installs them). Without one, the tests print a notice
//! and pass on a developer's machine, and fail under CI.

use std::path::PathBuf;
use std::process::{Command, Output};
use std::sync::{Arc, Mutex, PoisonError, Weak};
use std::time::{Duration, Instant};

use crate::deploy::root;
use crate::helpers::*;

/// A privilege is missing: the test fails under CI, else is skipped.
fn missing<T>(what: &str) -> Option<T> {
    unavailable(what);
    None
}

fn is_root() -> bool {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    status
        .lines()
        .find_map(|l| l.strip_prefix("Uid:"))
        .and_then(|ids| ids.split_whitespace().nth(1))
        == Some("0")
}

/// Rootful podman, with the settings the tests need whatever the host's
/// defaults are:
/// - `--runtime runc`: crun (podman's default) refuses to start anything on
///   a host that mounts cgroup v1 hierarchies and has a controller on the v2
///   one ("cgroups in hybrid mode not supported"); runc runs on v1, hybrid
///   and v2 hosts.
/// - `--cgroup-manager cgroupfs` and `--events-backend file`: no systemd and
///   no journald are needed.
#[derive(Clone)]
struct Podman {
    program: PathBuf,
}

impl Podman {
    fn find() -> Option<Podman> {
        let program = require_tool("podman")?;
        require_tool("runc")?;
        // Podman's default network publishes ports through iptables.
        require_tool("iptables")?;
        if !is_root() {
            return missing("the tests run podman rootful, as root");
        }
        Some(Podman { program })
    }

    fn command(&self) -> Command {
        let mut cmd = Command::new(&self.program);
        cmd.args([
            "--runtime",
            "runc",
            "--cgroup-manager",
            "cgroupfs",
            "--events-backend",
            "file",
        ]);
        cmd
    }

    fn output(&self, args: &[&str]) -> Output {
        self.command().args(args).output().expect("podman runs")
    }

    /// Runs podman; its standard output, or a panic with what it said.
    fn run(&self, args: &[&str]) -> String {
        let out = self.output(args);
        assert!(
            out.status.success(),
            "podman {args:?}: {}\n{}",
            out.status,
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8(out.stdout).unwrap().trim().to_owned()
    }
}

/// `--ulimit` options the runtime is allowed to apply. Podman's default for
/// open files and processes is 1048576, above the hard limits of some
/// machines (20000 open files on the development machine), and raising a
/// hard limit takes CAP_SYS_RESOURCE, which root does not always have (not
/// there): the container would not start. Podman itself lowers its process
/// limit to kernel.pid_max before it starts the runtime.
fn ulimits() -> [String; 2] {
    let hard = |r| rlimit::getrlimit(r).expect("getrlimit").1;
    let pid_max: u64 = std::fs::read_to_string("/proc/sys/kernel/pid_max")
        .ok()
        .and_then(|s| s.trim().parse().ok())
        .unwrap_or(rlimit::INFINITY);
    let text = |v: u64| match v {
        rlimit::INFINITY => "-1".to_owned(),
        v => v.to_string(),
    };
    let nofile = text(hard(rlimit::Resource::NOFILE));
    let nproc = text(hard(rlimit::Resource::NPROC).min(pid_max));
    [
        format!("--ulimit=nofile={nofile}:{nofile}"),
        format!("--ulimit=nproc={nproc}:{nproc}"),
    ]
}

/// The image, built once for the tests running at the same time and removed
/// when the last of them lets go of it (a failing test included).
struct Image {
    podman: Podman,
    tag: String,
    /// What replaces deploy/Dockerfile's build stage: `out/rootfs`, laid out
    /// by deploy/rootfs.sh.
    builder: tempfile::TempDir,
}

impl Image {
    fn shared(podman: &Podman) -> Arc<Image> {
        static SHARED: Mutex<Weak<Image>> = Mutex::new(Weak::new());
        let mut slot = SHARED.lock().unwrap_or_else(PoisonError::into_inner);
        if let Some(image) = slot.upgrade() {
            return image;
        }
        let image = Arc::new(Image::build(podman));
        *slot = Arc::downgrade(&image);
        image
    }

    /// deploy/Dockerfile as it is, with the test's binary in place of the
    /// release build: `--build-context builder=DIR` replaces the stage named
    /// builder, so no Rust image is pulled, nor any other.
    fn build(podman: &Podman) -> Image {
        let image = Image {
            podman: podman.clone(),
            tag: format!("localhost/ssegate-test:{}", unique("image")),
            builder: tempfile::tempdir().unwrap(),
        };
        let out = Command::new(root().join("deploy/rootfs.sh"))
            .arg(binary())
            .arg(image.rootfs())
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "deploy/rootfs.sh: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let dockerfile = root().join("deploy/Dockerfile");
        let builder = image.builder.path().to_str().unwrap();
        // One layer, no intermediate images or build containers left behind.
        podman.run(&[
            "build",
            "--quiet",
            "--layers=false",
            "--force-rm",
            "--file",
            dockerfile.to_str().unwrap(),
            "--build-context",
            &format!("builder={builder}"),
            "--tag",
            &image.tag,
            builder,
        ]);
        image
    }

    /// The root filesystem as deploy/rootfs.sh laid it out, which
    /// `COPY --from=builder /out/rootfs /` puts in the image as it is.
    fn rootfs(&self) -> PathBuf {
        self.builder.path().join("out/rootfs")
    }
}

impl Drop for Image {
    fn drop(&mut self) {
        let _ = self.podman.output(&["rmi", "--force", &self.tag]);
    }
}

/// A running container of the image, removed on drop.
struct Container {
    podman: Podman,
    name: String,
}

impl Container {
    /// `podman run --detach` with `options` before the image and `args`
    /// (the node's flags) after it.
    fn start(image: &Image, options: &[&str], args: &[&str]) -> Container {
        let container = Container {
            podman: image.podman.clone(),
            name: unique("ssegate-test"),
        };
        let ulimits = ulimits();
        let mut run = vec!["run", "--detach", "--name", &container.name];
        run.extend(ulimits.iter().map(String::as_str));
        run.extend(options.iter().copied());
        run.push(&image.tag);
        run.extend(args.iter().copied());
        container.podman.run(&run);
        container
    }

    fn inspect(&self, format: &str) -> String {
        self.podman
            .run(&["container", "inspect", "--format", format, &self.name])
    }

    fn logs(&self) -> String {
        let out = self.podman.output(&["logs", &self.name]);
        format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        )
    }

    /// Waits until `url` answers 200; fails with the container's state and
    /// log if it does not within the wait or the container stops first.
    async fn wait_for(&self, url: &str) {
        let client = reqwest::Client::builder()
            .timeout(Duration::from_secs(2))
            .build()
            .unwrap();
        let deadline = Instant::now() + WAIT;
        loop {
            if let Ok(resp) = client.get(url).send().await
                && resp.status() == 200
            {
                return;
            }
            let state = self.inspect("{{.State.Status}}");
            assert!(
                state == "running" || state == "created" || state == "configured",
                "the container is {state}:\n{}",
                self.logs()
            );
            assert!(
                Instant::now() < deadline,
                "{url} does not answer 200:\n{}",
                self.logs()
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}

impl Drop for Container {
    fn drop(&mut self) {
        let _ = self
            .podman
            .output(&["rm", "--force", "--ignore", "--time", "0", &self.name]);
    }
}

/// Publishes through the node at `base`; the event's id.
async fn publish(base: &str, channel: &str, body: &str) -> String {
    let resp = reqwest::Client::new()
        .post(format!("{base}/v1/stream/{channel}"))
        .body(body.to_owned())
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 201, "publish");
    let v: serde_json::Value = resp.json().await.unwrap();
    v["id"].as_str().unwrap().to_owned()
}

/// Subscribes, publishes, and checks that the event arrives with its id.
async fn round_trip(base: &str) {
    let channel = unique("container");
    let mut stream = Sse::open(&format!("{base}/v1/stream/{channel}")).await;
    let id = publish(base, &channel, "from the image").await;
    let event = stream.next().await.expect("the published event");
    assert_eq!(event.data, "from the image");
    assert_eq!(event.id, id, "the event carries the id POST returned");
}

#[test]
fn the_dockerfile_runs_from_scratch_with_the_root_filesystem_its_build_stage_lays_out() {
    let text = std::fs::read_to_string(root().join("deploy/Dockerfile")).unwrap();
    let lines: Vec<&str> = text
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty() && !l.starts_with('#'))
        .collect();
    let last = lines.iter().rposition(|l| l.starts_with("FROM ")).unwrap();
    let (build, runtime) = lines.split_at(last);
    // An empty base and one directory from the stage named `builder`, which
    // a host build replaces with `--build-context builder=DIR`.
    assert_eq!(
        runtime[..2],
        ["FROM scratch", "COPY --from=builder /out/rootfs /"]
    );
    assert!(
        build
            .iter()
            .any(|l| l.starts_with("FROM ") && l.ends_with(" AS builder")),
        "a stage named builder"
    );
    assert!(
        build
            .iter()
            .any(|l| l.contains("deploy/rootfs.sh target/release/ssegate /out/rootfs")),
        "the build stage lays out /out/rootfs with deploy/rootfs.sh"
    );
}

#[tokio::test]
async fn the_image_streams_events_as_its_user_and_exits_0_on_sigterm() {
    let Some(podman) = Podman::find() else { return };
    let image = Image::shared(&podman);

    // What the image declares, and what it holds besides the binary.
    let config: serde_json::Value =
        serde_json::from_str(&podman.run(&["image", "inspect", "--format", "{{json .Config}}", &image.tag]))
            .unwrap();
    assert_eq!(config["User"], "65532:65532", "{config}");
    assert!(config["ExposedPorts"].get("8080/tcp").is_some(), "{config}");
    assert_eq!(
        config["Entrypoint"],
        serde_json::json!(["/usr/local/bin/ssegate"])
    );
    let rootfs = image.rootfs();
    let bundle = std::fs::read_to_string(rootfs.join("etc/ssl/certs/ca-certificates.crt")).unwrap();
    assert!(
        bundle.matches("BEGIN CERTIFICATE").count() > 10,
        "the image's CA bundle holds the system's roots"
    );
    assert!(!rootfs.join("bin/sh").exists(), "no shell in the image");

    // The image's own listen address (0.0.0.0:8080), published on loopback;
    // locked down as deploy/k8s/deployment.yaml runs it (read-only root
    // filesystem, no capabilities, no privilege escalation).
    let port = free_port();
    let grace = Duration::from_secs(10);
    let container = Container::start(
        &image,
        &[
            "--read-only",
            "--cap-drop=all",
            "--security-opt=no-new-privileges",
            "--publish",
            &format!("127.0.0.1:{port}:8080"),
            "--env",
            &format!("SSEGATE_SHUTDOWN_GRACE={}s", grace.as_secs()),
        ],
        &[],
    );
    let base = format!("http://127.0.0.1:{port}");
    container.wait_for(&format!("{base}/healthz")).await;
    container.wait_for(&format!("{base}/readyz")).await;
    round_trip(&base).await;
    // The node's process, seen from the host (no user namespace): its real,
    // effective, saved and filesystem user ids.
    let pid = container.inspect("{{.State.Pid}}");
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let uids = status.lines().find_map(|l| l.strip_prefix("Uid:")).unwrap();
    assert_eq!(uids.split_whitespace().collect::<Vec<_>>(), ["65532"; 4]);

    // `podman stop` sends SIGTERM, and SIGKILL only after its timeout, well
    // beyond the node's grace: the node closes its streams and exits by
    // itself, with status 0, within its grace.
    let mut stream = Sse::open(&format!("{base}/v1/stream/{}", unique("open"))).await;
    let (p, name) = (container.podman.clone(), container.name.clone());
    let signalled = Instant::now();
    let stop = tokio::task::spawn_blocking(move || p.run(&["stop", "--time", "60", &name]));
    assert!(stream.ends().await, "the node closes its streams on SIGTERM");
    stop.await.unwrap();
    let took = signalled.elapsed();
    let logs = container.logs();
    assert_eq!(container.inspect("{{.State.ExitCode}}"), "0", "{logs}");
    assert!(logs.contains("SIGTERM received"), "{logs}");
    assert!(took < grace, "the node took {took:?} to exit:\n{logs}");

    podman.run(&["rm", &container.name]);
    let exists = podman.output(&["container", "exists", &container.name]);
    assert_eq!(exists.status.code(), Some(1), "the container is gone");
}

#[tokio::test]
async fn the_image_reaches_redis_over_tls_by_name_with_the_roots_at_its_bundle_path() {
    let Some(podman) = Podman::find() else { return };
    let image = Image::shared(&podman);
    let dir = tempfile::tempdir().unwrap();
    let Some(openssl) = require_tool("openssl") else {
        return;
    };
    let (ca, cert, key) = crate::core::test_ca(&openssl, dir.path());
    let tls_port = free_port();
    let _redis = RedisServer::spawn_with(&[
        "--tls-port",
        &tls_port.to_string(),
        "--tls-cert-file",
        &cert,
        "--tls-key-file",
        &key,
        "--tls-ca-cert-file",
        &ca,
        "--tls-auth-clients",
        "no",
    ]);

    // On the host's network, where Redis listens on loopback; `localhost` is
    // resolved inside the image (/etc/hosts, nsswitch.conf). The test CA
    // stands in for the image's bundle at the path rustls-native-certs reads
    // when SSL_CERT_FILE is not set: the node trusts what is there.
    let port = free_port();
    let container = Container::start(
        &image,
        &[
            "--network",
            "host",
            "--env",
            &format!("SSEGATE_LISTEN=127.0.0.1:{port}"),
            "--volume",
            &format!("{ca}:/etc/ssl/certs/ca-certificates.crt:ro"),
        ],
        &[
            "--redis-url",
            &format!("rediss://localhost:{tls_port}"),
            "--allow-anonymous",
        ],
    );
    let base = format!("http://127.0.0.1:{port}");
    container.wait_for(&format!("{base}/readyz")).await;
    // The publish runs the function over a TLS command connection; the event
    // comes back over the TLS pub/sub connection.
    round_trip(&base).await;
    let logs = container.logs();
    assert!(logs.contains("\"broker\":\"redis\""), "{logs}");
}
