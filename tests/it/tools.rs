//! The rule for the programs tests need (`require_tool`): under CI a test
//! whose program is missing fails with a message naming it; elsewhere it is
//! skipped with a printed line. Proven by running one HAProxy test of this
//! very test binary as a child process, with a PATH on which no program can
//! be found.

use std::process::Command;

/// Set in the child, so that it never runs this test again.
const CHILD: &str = "SSEGATE_TOOL_RULE_CHILD";

/// A test that needs `haproxy` and nothing else.
const HAPROXY_TEST: &str =
    "deploy::haproxy::haproxy_accepts_its_config_with_the_compose_defaults_and_with_local_nodes";

/// Runs `HAPROXY_TEST` in a child of this binary with an empty PATH and `CI`
/// as given; whether it passed, and what it printed.
fn run_without_haproxy(ci: Option<&str>) -> (bool, String) {
    let empty = tempfile::tempdir().unwrap();
    let mut cmd = Command::new(std::env::current_exe().unwrap());
    cmd.args(["--exact", HAPROXY_TEST, "--nocapture", "--test-threads", "1"])
        .env("PATH", empty.path())
        .env(CHILD, "1")
        .env_remove("CI");
    if let Some(ci) = ci {
        cmd.env("CI", ci);
    }
    let out = cmd.output().unwrap();
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    (out.status.success(), text)
}

#[test]
fn under_ci_a_missing_program_fails_the_test_naming_it_and_elsewhere_skips_it() {
    if std::env::var_os(CHILD).is_some() {
        return;
    }
    let (passed, out) = run_without_haproxy(Some("true"));
    assert!(
        !passed,
        "the HAProxy test passed under CI without haproxy:\n{out}"
    );
    assert!(out.contains("1 failed"), "the HAProxy test did not run:\n{out}");
    assert!(
        out.contains("cannot run: haproxy is missing"),
        "the failure does not name haproxy:\n{out}"
    );

    let (passed, out) = run_without_haproxy(None);
    assert!(
        passed,
        "outside CI the HAProxy test fails without haproxy:\n{out}"
    );
    assert!(out.contains("1 passed"), "the HAProxy test did not run:\n{out}");
    assert!(
        out.contains(&format!("SKIPPED {HAPROXY_TEST}: haproxy is missing")),
        "the skip is not printed:\n{out}"
    );
}
