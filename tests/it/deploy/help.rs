//! What the binary offers (`ssegate --help`), and the deployment files
//! naming only what it offers.

use std::collections::{BTreeMap, BTreeSet};
use std::process::Command;

use serde_norway::Value;

use super::{deploy_files, port_of, read, scalar};
use crate::helpers::binary;

/// The flags, variables and defaults of `ssegate --help` and of every
/// subcommand's help.
pub(super) struct Help {
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

pub(super) fn help() -> Help {
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
    pub(super) fn default_of(&self, var: &str) -> String {
        self.env
            .get(var)
            .cloned()
            .flatten()
            .unwrap_or_else(|| panic!("{var} has no default in --help"))
    }

    /// A variable's value in a deployment file, or the server's default.
    pub(super) fn value_or_default(&self, env: &BTreeMap<String, String>, var: &str) -> String {
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
    ("server", "nats (deploy/sources)"),
    ("subjects", "nats stream add"),
    ("storage", "nats stream add"),
    ("retention", "nats stream add"),
    ("discard", "nats stream add"),
    ("max-age", "nats stream add"),
    ("replicas", "nats stream add"),
    ("defaults", "nats stream add"),
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

pub(super) fn env_of(v: &Value) -> BTreeMap<String, String> {
    let mut out = BTreeMap::new();
    env_set_in(v, &mut out);
    out
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
