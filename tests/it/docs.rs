//! The README documents every flag the binary has.

use crate::helpers::binary;

#[test]
fn every_flag_in_help_is_documented_in_the_readme() {
    let help = std::process::Command::new(binary())
        .arg("--help")
        .output()
        .unwrap();
    let help = String::from_utf8(help.stdout).unwrap();
    let readme = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/README.md")).unwrap();
    let flags: Vec<&str> = help
        .split_whitespace()
        .filter(|w| w.starts_with("--") && w.len() > 2)
        .map(|w| w.trim_end_matches(','))
        .filter(|w| !matches!(*w, "--help" | "--version"))
        .collect();
    assert!(flags.len() > 10, "{help}");
    for flag in flags {
        // A row of its own, not just a mention in the text.
        let row = format!("| `{flag}` |");
        assert!(
            readme.lines().any(|l| l.starts_with(&row)),
            "{flag} is not in the README's flag table"
        );
    }
}
