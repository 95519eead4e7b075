//! The deployment files (`deploy/`, `docker-compose.yml`) checked against the
//! binary they deploy: every YAML file parses; every `SSEGATE_*` variable and
//! every `--flag` they name is one `ssegate --help` lists; ports and probe
//! paths are the server's; the shutdown timings fit together; HAProxy and
//! nginx accept their configurations; and three real nodes behind HAProxy
//! (and behind nginx) stream, drain and resume as the files promise.
//!
//! The HAProxy and nginx checks need `haproxy` and `nginx` on PATH
//! (scripts/test.sh installs them); without one, its checks print a notice
//! and pass.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use serde_norway::Value;

use crate::helpers::*;

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

// ---------------------------------------------------------------------------
// What the binary offers

/// The flags, variables and defaults of `ssegate --help` and of every
/// subcommand's help.
struct Help {
    flags: BTreeSet<String>,
    /// Variable name to its default, when it has one.
    env: BTreeMap<String, Option<String>>,
}

fn help_text(args: &[&str]) -> String {
    let mut cmd = Command::new(binary());
    cmd.args(args);
    // Set variables would show up in the help instead of the defaults.
    for (k, _) in std::env::vars() {
        if k.starts_with("SSEGATE_") {
            cmd.env_remove(k);
        }
    }
    let out = cmd.output().unwrap();
    assert!(out.status.success(), "ssegate {args:?} failed");
    String::from_utf8(out.stdout).unwrap()
}

fn help() -> Help {
    let main = help_text(&["--help"]);
    let subcommands: Vec<String> = main
        .lines()
        .skip_while(|l| !l.starts_with("Commands:"))
        .skip(1)
        .take_while(|l| !l.trim().is_empty())
        .filter_map(|l| l.split_whitespace().next().map(str::to_owned))
        .filter(|c| c != "help")
        .collect();
    assert!(subcommands.iter().any(|c| c == "serve"), "{main}");
    let mut texts = vec![main];
    for sub in &subcommands {
        texts.push(help_text(&[sub, "--help"]));
    }
    let mut help = Help {
        flags: BTreeSet::new(),
        env: BTreeMap::new(),
    };
    for text in texts {
        // One block per option: its line (`  -h, --help`, `      --listen <LISTEN>`)
        // and the description lines under it, which carry `[env: ..]` and
        // `[default: ..]`.
        let mut blocks: Vec<String> = Vec::new();
        for line in text.lines() {
            if line.trim_start().starts_with('-') {
                blocks.push(String::new());
            }
            if let Some(b) = blocks.last_mut() {
                b.push(' ');
                b.push_str(line.trim());
            }
        }
        for block in blocks {
            if let Some(flag) = block.split_whitespace().find_map(|w| w.strip_prefix("--")) {
                help.flags.insert(
                    flag.trim_end_matches(|c: char| !c.is_ascii_alphanumeric())
                        .to_owned(),
                );
            }
            if let Some(rest) = block.split("[env: ").nth(1) {
                // `[env: NAME=]`, or `[env: NAME]` for a hidden value.
                let name: String = rest
                    .chars()
                    .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
                    .collect();
                let default = block
                    .split("[default: ")
                    .nth(1)
                    .map(|d| d.split(']').next().unwrap().to_owned());
                help.env.insert(name, default);
            }
        }
    }
    assert!(help.flags.contains("listen") && help.env.contains_key("SSEGATE_LISTEN"));
    help
}

impl Help {
    fn default_of(&self, var: &str) -> String {
        self.env
            .get(var)
            .cloned()
            .flatten()
            .unwrap_or_else(|| panic!("{var} has no default in --help"))
    }

    /// A variable's value in a deployment file, or the server's default.
    fn value_or_default(&self, env: &BTreeMap<String, String>, var: &str) -> String {
        env.get(var).cloned().unwrap_or_else(|| self.default_of(var))
    }
}

/// Words that follow `--` in the files but are other programs' flags.
const OTHER_PROGRAMS_FLAGS: &[(&str, &str)] = &[
    ("release", "cargo build"),
    ("locked", "cargo build"),
    ("bin", "cargo build"),
    ("from", "Dockerfile COPY"),
    ("build-context", "docker build"),
    ("load", "docker buildx build"),
    ("strip-debug", "objcopy"),
    ("runtime", "podman"),
    ("cgroup-manager", "podman"),
    ("events-backend", "podman"),
    ("storage-driver", "podman"),
    ("cgroups", "podman run"),
    ("ulimit", "podman run"),
    ("network", "podman run"),
    ("read-only", "podman run"),
    ("cap-drop", "podman run"),
    ("security-opt", "podman run"),
    ("name", "podman run"),
    ("rm", "docker run"),
    ("build", "docker compose up"),
    ("from-literal", "kubectl create secret"),
    ("from-file", "kubectl create secret"),
];

/// `SSEGATE_*` names and `--flag`s written anywhere in `text`, comments
/// included.
fn names_in(text: &str) -> (BTreeSet<String>, BTreeSet<String>) {
    let bytes = text.as_bytes();
    let word = |c: u8| c.is_ascii_alphanumeric() || c == b'_';
    let mut vars = BTreeSet::new();
    let mut flags = BTreeSet::new();
    for (i, _) in text.match_indices("SSEGATE_") {
        if i > 0 && word(bytes[i - 1]) {
            continue;
        }
        let end = text[i..]
            .find(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
            .map_or(text.len(), |n| i + n);
        // `SSEGATE_*` alone speaks of the variables in general.
        if end > i + "SSEGATE_".len() {
            vars.insert(text[i..end].to_owned());
        }
    }
    for (i, _) in text.match_indices("--") {
        if i > 0 && (word(bytes[i - 1]) || bytes[i - 1] == b'-') {
            continue;
        }
        let rest = &text[i + 2..];
        if !rest.starts_with(|c: char| c.is_ascii_lowercase()) {
            continue;
        }
        let name: String = rest
            .chars()
            .take_while(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || *c == '-')
            .collect();
        flags.insert(name.trim_end_matches('-').to_owned());
    }
    (vars, flags)
}

/// The `SSEGATE_*` variables a YAML document sets: compose-style maps
/// (`SSEGATE_X: value`) and Kubernetes-style lists (`name:`/`value:`).
fn env_set_in(v: &Value, out: &mut BTreeMap<String, String>) {
    match v {
        Value::Mapping(m) => {
            if let (Some(Value::String(name)), Some(value)) = (m.get("name"), m.get("value"))
                && name.starts_with("SSEGATE_")
            {
                out.insert(name.clone(), scalar(value));
            }
            for (k, val) in m {
                if let Value::String(k) = k
                    && k.starts_with("SSEGATE_")
                {
                    out.insert(k.clone(), scalar(val));
                }
                env_set_in(val, out);
            }
        }
        Value::Sequence(s) => s.iter().for_each(|x| env_set_in(x, out)),
        _ => {}
    }
}

fn scalar(v: &Value) -> String {
    match v {
        Value::String(s) => s.clone(),
        Value::Number(n) => n.to_string(),
        Value::Bool(b) => b.to_string(),
        other => panic!("not a scalar: {other:?}"),
    }
}

fn env_of(v: &Value) -> BTreeMap<String, String> {
    let mut out = BTreeMap::new();
    env_set_in(v, &mut out);
    out
}

// ---------------------------------------------------------------------------
// Static checks

#[test]
fn every_yaml_file_parses() {
    let files = yaml_files();
    for want in [
        "docker-compose.yml",
        "deploy/prometheus.yml",
        "deploy/k8s/deployment.yaml",
        "deploy/k8s/service.yaml",
        "deploy/k8s/pdb.yaml",
        "deploy/k8s/hpa.yaml",
    ] {
        assert!(files.iter().any(|f| f == want), "{want} is missing: {files:?}");
    }
    for f in &files {
        let docs = yaml_documents(f);
        assert!(!docs.is_empty(), "{f} is empty");
        for d in docs {
            assert!(d.is_mapping(), "{f}: a document is not a mapping");
        }
    }
}

#[test]
fn every_variable_and_flag_named_in_the_deploy_files_exists() {
    let help = help();
    for f in deploy_files() {
        let (vars, flags) = names_in(&read(&f));
        for v in vars {
            assert!(
                help.env.contains_key(&v),
                "{f} names {v}, which `ssegate --help` does not list"
            );
        }
        for flag in flags {
            assert!(
                help.flags.contains(&flag) || OTHER_PROGRAMS_FLAGS.iter().any(|(o, _)| *o == flag),
                "{f} names --{flag}, which `ssegate --help` does not list \
                 (another program's flag goes in OTHER_PROGRAMS_FLAGS)"
            );
        }
    }
}

#[test]
fn the_server_defaults_are_the_ones_the_files_assume() {
    let help = help();
    assert_eq!(port_of(&help.default_of("SSEGATE_LISTEN")), 8080);
    let routes = ["/healthz", "/readyz", "/metrics", "/v1/stream"];
    let readme = read("deploy/README.md");
    for r in routes {
        assert!(readme.contains(r), "deploy/README.md does not mention {r}");
    }
}

#[test]
fn the_dockerfile_runs_ssegate_unprivileged_on_8080() {
    let text = read("deploy/Dockerfile");
    let lines = config_lines(&text);
    let froms: Vec<&&str> = lines.iter().filter(|l| l.starts_with("FROM ")).collect();
    assert!(froms.len() >= 2, "a multi-stage build");
    assert!(froms[0].contains("rust:"), "{}", froms[0]);
    assert!(lines.contains(&"EXPOSE 8080"));
    let user = lines
        .iter()
        .rev()
        .find_map(|l| l.strip_prefix("USER "))
        .expect("a USER");
    let uid = user.split(':').next().unwrap();
    assert!(
        uid.parse::<u32>().is_ok_and(|u| u != 0),
        "numeric non-root USER, not {user}"
    );
    let entry = lines
        .iter()
        .find_map(|l| l.strip_prefix("ENTRYPOINT "))
        .expect("an ENTRYPOINT");
    assert!(
        entry.starts_with('[') && entry.contains("ssegate\""),
        "exec form: {entry}"
    );
    assert!(lines.iter().any(|l| l.contains("cargo build --release --locked")));
    let ignore = read(".dockerignore");
    assert!(ignore.lines().any(|l| l.trim_end_matches('/') == "target"));
    assert!(ignore.lines().any(|l| l.trim_end_matches('/') == ".git"));
}

/// The gateway services of docker-compose.yml: the ones built from
/// deploy/Dockerfile.
fn compose_gateways(compose: &Value) -> BTreeMap<String, Value> {
    let services = compose["services"].as_mapping().expect("services");
    services
        .iter()
        .filter(|(_, s)| text_at(s, &["build", "dockerfile"]).as_deref() == Some("deploy/Dockerfile"))
        .map(|(k, s)| (k.as_str().unwrap().to_owned(), s.clone()))
        .collect()
}

#[test]
fn compose_runs_three_nodes_behind_haproxy_with_redis_and_prometheus() {
    let help = help();
    let compose = yaml("docker-compose.yml");
    let gateways = compose_gateways(&compose);
    assert_eq!(gateways.len(), 3, "{:?}", gateways.keys());
    let haproxy_detection = haproxy_detection_time();
    for (name, svc) in &gateways {
        let env = env_of(&svc["environment"]);
        assert!(env.contains_key("SSEGATE_REDIS_URL"), "{name}");
        let redis_host = env["SSEGATE_REDIS_URL"]
            .trim_start_matches("redis://")
            .split([':', '/'])
            .next()
            .unwrap()
            .to_owned();
        assert!(
            compose["services"].get(&redis_host).is_some(),
            "{name}: no service {redis_host}"
        );
        assert_eq!(
            port_of(&help.value_or_default(&env, "SSEGATE_LISTEN")),
            8080,
            "{name}"
        );
        let exposed: Vec<String> = seq(svc, "expose").iter().map(scalar).collect();
        assert_eq!(exposed, ["8080"], "{name}");
        // Docker sends SIGKILL after stop_grace_period: the node must be
        // done by then.
        let drain = duration(&help.value_or_default(&env, "SSEGATE_DRAIN_DELAY"));
        let spread = duration(&help.value_or_default(&env, "SSEGATE_CLOSE_SPREAD"));
        let grace = duration(&help.value_or_default(&env, "SSEGATE_SHUTDOWN_GRACE"));
        let stop = duration(&text_at(svc, &["stop_grace_period"]).expect("stop_grace_period"));
        assert!(drain + spread <= grace, "{name}: drain + spread > grace");
        assert!(
            stop > grace,
            "{name}: stop_grace_period {stop:?} <= grace {grace:?}"
        );
        // HAProxy must take the node out before it stops accepting.
        assert!(
            haproxy_detection < drain,
            "{name}: HAProxy needs {haproxy_detection:?} to see a drain, the node drains for {drain:?}"
        );
    }
    let services = compose["services"].as_mapping().unwrap();
    let image = |s: &Value| text_at(s, &["image"]).unwrap_or_default();
    assert!(services.values().any(|s| image(s).starts_with("redis:7")));
    let lb = services
        .values()
        .find(|s| image(s).starts_with("haproxy:2.8"))
        .expect("an haproxy:2.8 service");
    let volumes: Vec<String> = seq(lb, "volumes").iter().map(scalar).collect();
    assert!(
        volumes.iter().any(|v| v.starts_with("./deploy/haproxy.cfg:")),
        "{volumes:?}"
    );
    let ports: Vec<String> = seq(lb, "ports").iter().map(scalar).collect();
    assert!(ports.iter().any(|p| p == "8080:8080"), "{ports:?}");
    let lb_env = lb["environment"]
        .as_mapping()
        .expect("the balancer's environment");
    let mut nodes: Vec<String> = (1..=3)
        .map(|i| scalar(&lb_env[format!("NODE{i}_ADDR").as_str()]))
        .collect();
    for n in &nodes {
        assert_eq!(port_of(n), 8080, "{n}");
    }
    nodes
        .iter_mut()
        .for_each(|n| *n = n.split(':').next().unwrap().to_owned());
    assert_eq!(nodes, gateways.keys().cloned().collect::<Vec<_>>());
    let prom = services
        .values()
        .find(|s| image(s).starts_with("prom/prometheus"))
        .expect("a prom/prometheus service");
    let volumes: Vec<String> = seq(prom, "volumes").iter().map(scalar).collect();
    assert!(
        volumes.iter().any(|v| v.starts_with("./deploy/prometheus.yml:")),
        "{volumes:?}"
    );
}

#[test]
fn prometheus_scrapes_metrics_of_every_node() {
    let compose = yaml("docker-compose.yml");
    let want: BTreeSet<String> = compose_gateways(&compose)
        .keys()
        .map(|n| format!("{n}:8080"))
        .collect();
    let prom = yaml("deploy/prometheus.yml");
    let mut targets = BTreeSet::new();
    for job in seq(&prom, "scrape_configs") {
        assert_eq!(
            text_at(job, &["metrics_path"]).as_deref().unwrap_or("/metrics"),
            "/metrics"
        );
        for sc in seq(job, "static_configs") {
            targets.extend(seq(sc, "targets").iter().map(scalar));
        }
    }
    assert_eq!(targets, want);
}

/// The one container of deploy/k8s/deployment.yaml.
fn k8s_container() -> (Value, Value) {
    let d = yaml("deploy/k8s/deployment.yaml");
    assert_eq!(text_at(&d, &["kind"]).as_deref(), Some("Deployment"));
    let pod = d["spec"]["template"]["spec"].clone();
    let containers = seq(&pod, "containers");
    assert_eq!(containers.len(), 1);
    (pod.clone(), containers[0].clone())
}

#[test]
fn the_kubernetes_probes_and_ports_are_the_servers() {
    let help = help();
    let d = yaml("deploy/k8s/deployment.yaml");
    assert_eq!(text_at(&d, &["spec", "replicas"]).as_deref(), Some("3"));
    let (pod, c) = k8s_container();
    let ports = seq(&c, "ports");
    assert_eq!(ports.len(), 1);
    assert_eq!(text_at(&ports[0], &["containerPort"]).as_deref(), Some("8080"));
    let port_name = text_at(&ports[0], &["name"]).unwrap_or_default();
    let env = env_of(&c["env"]);
    assert_eq!(port_of(&help.value_or_default(&env, "SSEGATE_LISTEN")), 8080);
    for (probe, path) in [("readinessProbe", "/readyz"), ("livenessProbe", "/healthz")] {
        assert_eq!(
            text_at(&c, &[probe, "httpGet", "path"]).as_deref(),
            Some(path),
            "{probe}"
        );
        let port = text_at(&c, &[probe, "httpGet", "port"]).expect("a probe port");
        assert!(port == "8080" || port == port_name, "{probe} port {port}");
    }
    // The Redis URL comes in by name, whether as a value or from a Secret.
    let names: Vec<String> = seq(&c, "env")
        .iter()
        .filter_map(|e| text_at(e, &["name"]))
        .collect();
    assert!(names.iter().any(|n| n == "SSEGATE_REDIS_URL"), "{names:?}");
    assert_eq!(
        text_at(&pod, &["securityContext", "runAsNonRoot"]).as_deref(),
        Some("true")
    );
    assert_eq!(
        text_at(&c, &["securityContext", "readOnlyRootFilesystem"]).as_deref(),
        Some("true")
    );
    assert!(c["resources"]["requests"].is_mapping());
    let svc = yaml("deploy/k8s/service.yaml");
    let target = text_at(&seq(&svc["spec"], "ports")[0], &["targetPort"]).unwrap();
    assert!(target == "8080" || target == port_name, "targetPort {target}");
    assert_ne!(
        text_at(&svc, &["spec", "sessionAffinity"]).as_deref(),
        Some("ClientIP")
    );
    let selector = svc["spec"]["selector"].clone();
    assert_eq!(selector, d["spec"]["template"]["metadata"]["labels"]);
    let pdb = yaml("deploy/k8s/pdb.yaml");
    assert_eq!(text_at(&pdb, &["kind"]).as_deref(), Some("PodDisruptionBudget"));
    assert_eq!(pdb["spec"]["selector"]["matchLabels"], selector);
    let hpa = yaml("deploy/k8s/hpa.yaml");
    assert_eq!(
        text_at(&hpa, &["kind"]).as_deref(),
        Some("HorizontalPodAutoscaler")
    );
    assert_eq!(
        text_at(&hpa, &["spec", "scaleTargetRef", "name"]),
        text_at(&d, &["metadata", "name"])
    );
    assert!(read("deploy/k8s/hpa.yaml").contains("ssegate_streams_open"));
}

#[test]
fn the_kubernetes_grace_period_covers_the_prestop_sleep_and_the_drain() {
    let help = help();
    let (pod, c) = k8s_container();
    let env = env_of(&c["env"]);
    let secs = |s: String| Duration::from_secs(s.parse().unwrap());
    let termination = secs(text_at(&pod, &["terminationGracePeriodSeconds"]).expect("set"));
    let pre_stop = match text_at(&c, &["lifecycle", "preStop", "sleep", "seconds"]) {
        Some(s) => secs(s),
        None => {
            let cmd: Vec<String> = seq(&c["lifecycle"]["preStop"]["exec"], "command")
                .iter()
                .map(scalar)
                .collect();
            assert_eq!(cmd.first().map(String::as_str), Some("sleep"), "a preStop sleep");
            duration(&format!("{}s", cmd[1]))
        }
    };
    assert!(pre_stop >= Duration::from_secs(1), "a preStop sleep");
    let drain = duration(&help.value_or_default(&env, "SSEGATE_DRAIN_DELAY"));
    let spread = duration(&help.value_or_default(&env, "SSEGATE_CLOSE_SPREAD"));
    let grace = duration(&help.value_or_default(&env, "SSEGATE_SHUTDOWN_GRACE"));
    assert!(drain + spread <= grace, "the node refuses drain + spread > grace");
    // The grace is counted from SIGTERM and already covers the drain and the
    // spread, so preStop + grace would do; the sum leaves a margin.
    let needed = pre_stop + drain + spread + grace;
    assert!(
        termination > needed,
        "terminationGracePeriodSeconds {termination:?} <= {needed:?}"
    );
}

// ---------------------------------------------------------------------------
// HAProxy

/// How long HAProxy takes at most to mark a node down once its /readyz
/// answers 503 (at once): one `inter` until the next check, then `fall - 1`
/// more checks `fastinter` apart.
fn haproxy_detection_time() -> Duration {
    let text = read("deploy/haproxy.cfg");
    let lines = config_lines(&text);
    let line = lines
        .iter()
        .find(|l| l.starts_with("default-server ") && l.contains(" check"))
        .expect("a default-server line with checks");
    let words: Vec<&str> = line.split_whitespace().collect();
    let after = |k: &str| {
        words
            .iter()
            .position(|w| *w == k)
            .map(|i| words[i + 1])
            .unwrap_or_else(|| panic!("default-server without {k}"))
    };
    let inter = duration(after("inter"));
    let fastinter = duration(after("fastinter"));
    let fall: u32 = after("fall").parse().unwrap();
    inter + fastinter * (fall - 1)
}

#[test]
fn the_haproxy_config_suits_long_streams_without_stickiness() {
    let text = read("deploy/haproxy.cfg");
    let lines = config_lines(&text);
    let has = |prefix: &str| lines.iter().any(|l| l.starts_with(prefix));
    assert!(has("option httpchk GET /readyz"));
    assert!(has("balance leastconn") || has("balance roundrobin"));
    for banned in [
        "cookie",
        "stick",
        "option http-server-close",
        "option httpclose",
        "compression",
        "option http-buffer-request",
        "balance source",
    ] {
        assert!(!has(banned), "haproxy.cfg has `{banned}`");
    }
    for t in ["client", "server", "tunnel"] {
        let v = lines
            .iter()
            .find_map(|l| l.strip_prefix(&format!("timeout {t} ")))
            .unwrap_or_else(|| panic!("no timeout {t}"));
        assert!(duration(v) >= Duration::from_secs(3600), "timeout {t} {v}");
    }
    // The defaults point at the compose services on the server's port.
    for i in 1..=3 {
        let var = format!("NODE{i}_ADDR");
        let default = lines
            .iter()
            .find_map(|l| l.strip_prefix(&format!("presetenv {var} ")))
            .unwrap_or_else(|| panic!("no default for {var}"));
        assert_eq!(default.trim(), format!("node{i}:8080"));
        assert!(
            lines
                .iter()
                .any(|l| l.starts_with("server ") && l.contains(&format!("\"${{{var}}}\"")))
        );
    }
}

pub(crate) fn find_program(name: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path)
        .chain(["/usr/sbin", "/usr/local/sbin", "/sbin"].map(PathBuf::from))
        .map(|d| d.join(name))
        .find(|p| p.is_file())
}

pub(crate) fn haproxy() -> Option<PathBuf> {
    let found = find_program("haproxy");
    if found.is_none() {
        eprintln!("NOTICE: haproxy is not installed: HAProxy checks skipped (apt-get install haproxy)");
    }
    found
}

fn nginx() -> Option<PathBuf> {
    let found = find_program("nginx");
    if found.is_none() {
        eprintln!("NOTICE: nginx is not installed: nginx checks skipped (apt-get install nginx)");
    }
    found
}

/// The variables deploy/haproxy.cfg reads, for a balancer on loopback.
pub(crate) fn haproxy_env(lb: u16, stats: u16, nodes: [String; 3]) -> Vec<(String, String)> {
    let [n1, n2, n3] = nodes;
    vec![
        ("LB_BIND".into(), format!("127.0.0.1:{lb}")),
        ("LB_STATS_BIND".into(), format!("127.0.0.1:{stats}")),
        ("NODE1_ADDR".into(), n1),
        ("NODE2_ADDR".into(), n2),
        ("NODE3_ADDR".into(), n3),
        // Node addresses are IPs here: nothing is resolved. The resolver
        // still gets an address, on loopback.
        ("LB_DNS".into(), format!("127.0.0.1:{}", free_port())),
        ("LB_MAXCONN".into(), "1000".into()),
    ]
}

#[test]
fn haproxy_accepts_its_config_with_the_compose_defaults_and_with_local_nodes() {
    let Some(haproxy) = haproxy() else { return };
    let check = |env: Vec<(String, String)>| {
        let mut cmd = Command::new(&haproxy);
        cmd.arg("-c").arg("-f").arg(root().join("deploy/haproxy.cfg"));
        for var in [
            "LB_BIND",
            "LB_STATS_BIND",
            "NODE1_ADDR",
            "NODE2_ADDR",
            "NODE3_ADDR",
            "LB_DNS",
            "LB_MAXCONN",
        ] {
            cmd.env_remove(var);
        }
        cmd.envs(env);
        let out = cmd.output().unwrap();
        assert!(
            out.status.success(),
            "haproxy -c: {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    };
    check(Vec::new());
    check(haproxy_env(
        free_port(),
        free_port(),
        ["127.0.0.1:1".into(), "127.0.0.1:2".into(), "127.0.0.1:3".into()],
    ));
}

/// A process that logs to a file, stopped on drop.
pub(crate) struct Proxy {
    child: Child,
    log: tempfile::NamedTempFile,
    /// Signal for a graceful stop (`-TERM`), then SIGKILL.
    pub(crate) stop_signal: Option<&'static str>,
}

impl Proxy {
    pub(crate) fn spawn(mut cmd: Command) -> Proxy {
        let log = tempfile::NamedTempFile::new().unwrap();
        // One open file for both streams, so they share its offset.
        let out = log.reopen().unwrap();
        let child = cmd
            .stdin(Stdio::null())
            .stdout(out.try_clone().unwrap())
            .stderr(out)
            .spawn()
            .unwrap();
        Proxy {
            child,
            log,
            stop_signal: None,
        }
    }

    pub(crate) fn log(&self) -> String {
        std::fs::read_to_string(self.log.path()).unwrap_or_default()
    }

    fn assert_running(&mut self) {
        if let Some(status) = self.child.try_wait().unwrap() {
            panic!("the proxy exited ({status}):\n{}", self.log());
        }
    }
}

impl Drop for Proxy {
    fn drop(&mut self) {
        let grace = match self.stop_signal {
            Some(sig) => {
                let _ = Command::new("kill")
                    .args([sig, &self.child.id().to_string()])
                    .status();
                Duration::from_secs(5)
            }
            None => Duration::ZERO,
        };
        wait_or_kill(&mut self.child, grace);
    }
}

/// deploy/haproxy.cfg in front of three nodes, listening; returns the
/// proxy (stopped with SIGTERM on drop), its port and its stats port.
pub(crate) async fn haproxy_in_front(haproxy: PathBuf, nodes: &[NodeProcess; 3]) -> (Proxy, u16, u16) {
    let (lb, stats) = (free_port(), free_port());
    let mut cmd = Command::new(haproxy);
    cmd.arg("-db").arg("-f").arg(root().join("deploy/haproxy.cfg"));
    cmd.envs(haproxy_env(
        lb,
        stats,
        nodes.each_ref().map(|n| n.addr.to_string()),
    ));
    let mut proxy = Proxy::spawn(cmd);
    proxy.stop_signal = Some("-TERM");
    listening(lb, &mut proxy).await;
    (proxy, lb, stats)
}

/// Waits until the proxy accepts connections on a loopback port; fails with
/// its log if it exits first.
pub(crate) async fn listening(port: u16, proxy: &mut Proxy) {
    let deadline = Instant::now() + WAIT;
    while tokio::net::TcpStream::connect(("127.0.0.1", port)).await.is_err() {
        proxy.assert_running();
        assert!(
            Instant::now() < deadline,
            "the proxy does not listen:\n{}",
            proxy.log()
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// The status HAProxy's stats page gives each server of the `ssegate`
/// backend (`UP`, `DOWN`, `UP 1/2`, ..).
pub(crate) async fn haproxy_status(stats: u16) -> BTreeMap<String, String> {
    let Ok(resp) = reqwest::get(format!("http://127.0.0.1:{stats}/stats;csv")).await else {
        return BTreeMap::new();
    };
    let csv = resp.text().await.unwrap_or_default();
    let mut lines = csv.lines();
    let header: Vec<&str> = lines
        .next()
        .unwrap_or("")
        .trim_start_matches("# ")
        .split(',')
        .collect();
    let col = |name: &str| header.iter().position(|h| *h == name);
    let (Some(px), Some(sv), Some(st)) = (col("pxname"), col("svname"), col("status")) else {
        return BTreeMap::new();
    };
    lines
        .map(|l| l.split(',').collect::<Vec<_>>())
        .filter(|f| f.len() > st && f[px] == "ssegate" && f[sv] != "BACKEND")
        .map(|f| (f[sv].to_owned(), f[st].to_owned()))
        .collect()
}

async fn publish_via(base: &str, channel: &str, body: &str) -> String {
    let resp = reqwest::Client::new()
        .post(format!("{base}/v1/stream/{channel}"))
        .body(body.to_owned())
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 201, "publish through the balancer");
    let v: serde_json::Value = resp.json().await.unwrap();
    v["id"].as_str().unwrap().to_owned()
}

/// Three nodes on one Redis, as in docker-compose.yml, with a drain long
/// enough to watch.
pub(crate) fn three_nodes(redis: &RedisServer) -> [NodeProcess; 3] {
    let url = redis.url();
    let args = [
        "--redis-url",
        url.as_str(),
        "--allow-anonymous",
        "--ip-rate",
        "0",
        "--drain-delay",
        "3s",
        "--close-spread",
        "0s",
        "--shutdown-grace",
        "8s",
    ];
    [
        NodeProcess::spawn(&args),
        NodeProcess::spawn(&args),
        NodeProcess::spawn(&args),
    ]
}

#[tokio::test]
async fn through_haproxy_streams_spread_over_the_nodes_and_a_drained_node_hands_over() {
    let Some(haproxy) = haproxy() else { return };
    let redis = RedisServer::spawn();
    let mut nodes = three_nodes(&redis);
    let (mut proxy, lb, stats) = haproxy_in_front(haproxy, &nodes).await;
    eventually("HAProxy sees three nodes UP", || async {
        let s = haproxy_status(stats).await;
        s.len() == 3 && s.values().all(|v| v == "UP")
    })
    .await;
    let base = format!("http://127.0.0.1:{lb}");

    // Three streams through the balancer: least connections puts one on
    // each node, and a publish through any node reaches all of them.
    let ch = unique("haproxy");
    let mut streams = Vec::new();
    for _ in 0..3 {
        streams.push(Sse::open(&format!("{base}/v1/stream/{ch}")).await);
    }
    for n in &nodes {
        assert_eq!(n.metric("ssegate_streams_open").await, 1.0, "one stream per node");
    }
    publish_via(&base, &ch, "one").await;
    for s in &mut streams {
        assert_eq!(s.take(1).await, ["one"]);
    }

    // SIGTERM to node1: HAProxy takes it out while it still accepts, so a
    // new stream goes to another node.
    let opened_before = nodes[0].metric("ssegate_streams_opened_total").await;
    let signalled = Instant::now();
    nodes[0].signal("-TERM");
    eventually("HAProxy marks node1 DOWN", || async {
        haproxy_status(stats)
            .await
            .get("node1")
            .is_some_and(|s| s == "DOWN")
    })
    .await;
    let took = signalled.elapsed();
    assert!(
        took < Duration::from_secs(3),
        "node1 left the balancer {took:?} after SIGTERM, after its 3s drain delay"
    );
    let mut late = Sse::open(&format!("{base}/v1/stream/{ch}")).await;
    assert_eq!(
        nodes[0].metric("ssegate_streams_opened_total").await,
        opened_before,
        "a stream opened on the draining node"
    );

    // node1 closes its stream and exits 0; its client reconnects through
    // the balancer with Last-Event-ID and gets what it missed.
    let deadline = Instant::now() + WAIT;
    let status = loop {
        if let Some(status) = nodes[0].child.try_wait().unwrap() {
            break status;
        }
        assert!(Instant::now() < deadline, "node1 did not exit");
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    assert!(status.success(), "node1 exited with {status}");
    publish_via(&base, &ch, "two").await;
    let mut ended = Vec::new();
    for (i, s) in streams.iter_mut().enumerate() {
        match s.next().await {
            Some(ev) => assert_eq!(ev.data, "two"),
            None => ended.push(i),
        }
    }
    assert_eq!(ended.len(), 1, "exactly node1's stream ended");
    let last_id = streams[ended[0]].last_id.clone();
    assert!(!last_id.is_empty());
    let mut resumed = Sse::open_with(&format!("{base}/v1/stream/{ch}"), Some(&last_id)).await;
    assert_eq!(resumed.take(1).await, ["two"]);
    assert_eq!(late.take(1).await, ["two"]);
    proxy.assert_running();
}

// ---------------------------------------------------------------------------
// nginx

#[test]
fn the_nginx_config_suits_long_streams_without_stickiness() {
    let text = read("deploy/nginx.conf");
    let lines = config_lines(&text);
    for want in [
        "proxy_buffering off;",
        "proxy_cache off;",
        "proxy_http_version 1.1;",
        "proxy_set_header Connection \"\";",
        "proxy_set_header Last-Event-ID $http_last_event_id;",
        "proxy_read_timeout 1h;",
        "chunked_transfer_encoding on;",
    ] {
        assert!(lines.contains(&want), "nginx.conf lacks `{want}`");
    }
    for banned in ["ip_hash", "hash ", "sticky", "gzip on"] {
        assert!(
            !lines.iter().any(|l| l.starts_with(banned)),
            "nginx.conf has `{banned}`"
        );
    }
    let servers = lines
        .iter()
        .filter(|l| l.starts_with("server 127.0.0.1:"))
        .count();
    assert_eq!(servers, 3);
}

#[test]
fn nginx_accepts_its_config() {
    let Some(nginx) = nginx() else { return };
    let out = Command::new(nginx)
        .args(["-t", "-q", "-e", "stderr", "-c"])
        .arg(root().join("deploy/nginx.conf"))
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "nginx -t: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// deploy/nginx.conf with its addresses and paths moved: the listener and
/// the three nodes to the given ports, pid and temporary files to `dir`.
fn local_nginx_conf(dir: &Path, listen: u16, nodes: &[NodeProcess; 3]) -> PathBuf {
    let mut conf = read("deploy/nginx.conf");
    let mut replace = |from: &str, to: &str| {
        assert!(conf.contains(from), "deploy/nginx.conf no longer has `{from}`");
        conf = conf.replace(from, to);
    };
    replace("listen 8080;", &format!("listen 127.0.0.1:{listen};"));
    for (i, n) in nodes.iter().enumerate() {
        replace(
            &format!("server 127.0.0.1:{} ", 8081 + i),
            &format!("server {} ", n.addr),
        );
    }
    replace("/tmp/ssegate-nginx", &dir.join("nginx").to_string_lossy());
    replace("worker_processes auto;", "worker_processes 1;");
    let path = dir.join("nginx.conf");
    std::fs::write(&path, conf).unwrap();
    path
}

#[tokio::test]
async fn through_nginx_events_reach_streams_on_every_node() {
    let Some(nginx) = nginx() else { return };
    let redis = RedisServer::spawn();
    let nodes = three_nodes(&redis);
    let dir = tempfile::tempdir().unwrap();
    let port = free_port();
    let conf = local_nginx_conf(dir.path(), port, &nodes);
    let mut cmd = Command::new(nginx);
    cmd.args(["-e", "stderr", "-g", "daemon off;", "-c"]).arg(conf);
    let mut proxy = Proxy::spawn(cmd);
    proxy.stop_signal = Some("-TERM");
    listening(port, &mut proxy).await;
    let base = format!("http://127.0.0.1:{port}");

    let ch = unique("nginx");
    let mut streams = Vec::new();
    for _ in 0..3 {
        streams.push(Sse::open(&format!("{base}/v1/stream/{ch}")).await);
    }
    for n in &nodes {
        assert_eq!(n.metric("ssegate_streams_open").await, 1.0, "one stream per node");
    }
    // Each event arrives while the response is still open: nothing buffers.
    for body in ["one", "two"] {
        publish_via(&base, &ch, body).await;
        for s in &mut streams {
            assert_eq!(s.take(1).await, [body]);
        }
    }
    let resumed_from = streams[0].last_id.clone();
    publish_via(&base, &ch, "three").await;
    let mut resumed = Sse::open_with(&format!("{base}/v1/stream/{ch}"), Some(&resumed_from)).await;
    assert_eq!(resumed.take(1).await, ["three"], "Last-Event-ID reaches the node");
    proxy.assert_running();
}
