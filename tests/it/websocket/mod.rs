//! The WebSocket endpoint (`/v1/ws`) end to end, against real nodes on a
//! real Redis: the contract's protocol driven with the `ws` npm package,
//! the JavaScript client (clients/js/ssegate.js) against the gateway it was
//! written for, and what the Rust side can check byte by byte.
//!
//! The Node scripts live in tests/ws-client/ and need a running gateway:
//! these tests start the nodes and pass their addresses in `SSEGATE_TEST_*`
//! variables. They need `node` and `npm` (tests/ws-client/node_modules is
//! installed with `npm ci` from its package-lock.json when it does not
//! match it); without them the tests fail under CI and are skipped with a
//! printed line elsewhere (`require_tool`).

mod client;
mod closing;
mod flood;
mod heartbeat;
mod origin;
mod pending;
mod protocol;
pub(crate) mod raw;
mod served;
mod slots;

use std::path::PathBuf;
use std::process::Stdio;
use std::sync::OnceLock;
use std::time::Duration;

use crate::browser::node_modules_match;
use crate::helpers::*;

/// tests/ws-client with its dependencies installed (`npm ci`, once per
/// run), or `None` when a tool is missing (outside CI).
fn scripts_dir() -> Option<PathBuf> {
    require_tool("node")?;
    let npm = require_tool("npm")?;
    static READY: OnceLock<PathBuf> = OnceLock::new();
    let dir = READY.get_or_init(|| {
        let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/ws-client");
        if !node_modules_match(&dir) {
            let out = std::process::Command::new(npm)
                .args(["ci", "--no-audit", "--no-fund", "--prefer-offline"])
                .current_dir(&dir)
                .stdin(Stdio::null())
                .output()
                .expect("npm runs");
            assert!(
                out.status.success(),
                "npm ci in tests/ws-client failed:\n{}{}",
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            );
            assert!(
                node_modules_match(&dir),
                "npm ci did not install package-lock.json"
            );
        }
        dir
    });
    Some(dir.clone())
}

/// Runs one script of tests/ws-client with `node --test` and the given
/// `SSEGATE_TEST_*` settings; fails the test (with the script's output)
/// unless every test in it passed and none was skipped. Returns how many
/// passed.
async fn run_script(dir: &std::path::Path, script: &str, settings: &[(&str, String)]) -> usize {
    let mut cmd = tokio::process::Command::new("node");
    cmd.args(["--test", "--test-reporter=tap", script])
        .current_dir(dir)
        .stdin(Stdio::null())
        .kill_on_drop(true);
    for (name, value) in settings {
        cmd.env(format!("SSEGATE_TEST_{name}"), value);
    }
    let out = tokio::time::timeout(Duration::from_secs(300), cmd.output())
        .await
        .unwrap_or_else(|_| panic!("{script} did not finish within 300 s"))
        .expect("node runs");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let report = format!("{script}:\n{stdout}{}", String::from_utf8_lossy(&out.stderr));
    let count = |key: &str| -> usize {
        stdout
            .lines()
            .find_map(|l| l.strip_prefix(&format!("# {key} ")))
            .and_then(|n| n.trim().parse().ok())
            .unwrap_or_else(|| panic!("no `# {key}` line in the report of {report}"))
    };
    assert!(out.status.success(), "{report}");
    assert_eq!(count("fail"), 0, "{report}");
    assert_eq!(
        count("skipped") + count("todo") + count("cancelled"),
        0,
        "{report}"
    );
    let passed = count("pass");
    assert!(passed > 0, "{report}");
    eprintln!("{script}: {passed} passed");
    passed
}
