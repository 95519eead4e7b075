//! The Dockerfile, docker-compose.yml, the Prometheus configuration and the
//! Kubernetes manifests, checked against the server.

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use serde_norway::Value;

use super::haproxy::haproxy_detection_time;
use super::help::{env_of, help};
use super::{config_lines, duration, port_of, read, scalar, seq, text_at, yaml, yaml_documents, yaml_files};

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

/// The networks a node trusts, as the node reads `SSEGATE_TRUSTED_PROXIES`;
/// trusting everyone would let any client name any address.
fn trusted_proxies(env: &BTreeMap<String, String>, what: &str) -> Vec<ipnet::IpNet> {
    let value = env
        .get("SSEGATE_TRUSTED_PROXIES")
        .unwrap_or_else(|| panic!("{what} sets no SSEGATE_TRUSTED_PROXIES"));
    let nets: Vec<ipnet::IpNet> = value
        .split(',')
        .map(|n| ssegate::config::cidr(n).unwrap_or_else(|e| panic!("{what}: {e}")))
        .collect();
    assert!(!nets.is_empty(), "{what}");
    for n in &nets {
        assert!(n.prefix_len() >= 8, "{what} trusts all of {n}");
    }
    nets
}

#[test]
fn every_node_trusts_the_balancer_in_front_of_it_and_no_more() {
    let compose = yaml("docker-compose.yml");
    let services = compose["services"].as_mapping().unwrap();
    let lb = services
        .values()
        .find(|s| text_at(s, &["image"]).unwrap_or_default().starts_with("haproxy:"))
        .expect("a balancer");
    let lb_addr: std::net::IpAddr = text_at(lb, &["networks", "default", "ipv4_address"])
        .expect("the balancer has a fixed address")
        .parse()
        .unwrap();
    let subnet = &seq(&compose["networks"]["default"]["ipam"], "config")[0];
    let subnet = ssegate::config::cidr(&text_at(subnet, &["subnet"]).expect("a subnet")).unwrap();
    assert!(subnet.contains(&lb_addr), "{lb_addr} is outside {subnet}");
    for (name, svc) in compose_gateways(&compose) {
        let nets = trusted_proxies(&env_of(&svc["environment"]), &name);
        assert!(
            nets.iter().any(|n| n.contains(&lb_addr)),
            "{name} does not trust the balancer at {lb_addr}: {nets:?}"
        );
    }
    let (_, c) = k8s_container();
    trusted_proxies(&env_of(&c["env"]), "deploy/k8s/deployment.yaml");
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

#[test]
fn the_sources_compose_file_wires_a_source_every_node_accepts() {
    let compose = yaml("deploy/sources/docker-compose.nats.yml");
    let services = compose["services"].as_mapping().unwrap();
    let mut gateways = 0;
    for (name, svc) in services {
        let Some(sources) = svc["environment"]["SSEGATE_SOURCES"].as_str() else {
            continue;
        };
        gateways += 1;
        let urls: Vec<String> = sources.split(' ').map(str::to_owned).collect();
        let specs = ssegate::sources::parse_all(&urls).unwrap_or_else(|e| panic!("{name:?}: {e}"));
        for s in specs {
            let ssegate::sources::Backbone::Nats { server, stream, .. } = s.backbone else {
                panic!("{name:?}: a NATS source");
            };
            assert_eq!(server, "nats://nats:4222");
            assert_eq!(stream, "ORDERS");
            assert!(services.contains_key("nats"));
        }
    }
    assert_eq!(gateways, 2, "two nodes share the source");
    let setup = services["nats-setup"]["command"].as_str().unwrap();
    assert!(
        setup.contains("stream add ORDERS") && setup.contains("orders.>"),
        "{setup}"
    );
}
