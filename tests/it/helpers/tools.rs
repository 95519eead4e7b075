//! The programs tests need: found on PATH; when one is missing, the test
//! fails under CI naming it, and is skipped with a printed line elsewhere.

use std::path::PathBuf;

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
