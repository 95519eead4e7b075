//! Fuzz targets: one function per parser that reads untrusted bytes. Each
//! takes arbitrary bytes and panics when an invariant of its parser breaks,
//! so that a coverage-guided fuzzer (the `fuzz/` crate, run by
//! `scripts/fuzz.sh`) reports the input as a crash. Public, but no part of
//! the gateway's API: the fuzz crate is built apart (with instrumentation)
//! and can only reach the crate-private parsers through here.
//!
//! | target | parser | untrusted source |
//! |---|---|---|
//! | [`http_head`] | `http::server::parse_head` | any TCP client |
//! | [`cursor`] | [`crate::sse::Cursor::parse`] | `Last-Event-ID`, `?lastEventId=` |
//! | [`envelope`] | [`crate::sse::parse_payload`], `_lenient`, then [`crate::sse::Encoded`] | publishers (HTTP, Redis) |
//! | [`resp`] | [`crate::broker::redis::resp::parse`] | the Redis pub/sub connection |
//! | [`jwt_claims`] | [`crate::auth::Auth`] on a correctly signed token | whoever holds a token |

mod cursor;
mod envelope;
mod http_head;
mod jwt;
mod resp;
mod sse_lines;

pub use cursor::cursor;
pub use envelope::envelope;
pub use http_head::http_head;
pub use jwt::jwt_claims;
pub use resp::resp;

/// A fuzz target: arbitrary bytes in, a panic on a broken invariant.
pub type Target = fn(&[u8]);

/// The targets by name, as `scripts/fuzz.sh` and the seed tests know them.
pub const TARGETS: [(&str, Target); 5] = [
    ("http_head", http_head),
    ("cursor", cursor),
    ("envelope", envelope),
    ("resp", resp),
    ("jwt_claims", jwt_claims),
];

#[cfg(test)]
mod tests {
    use std::path::PathBuf;

    /// Every seed of every target holds its target's invariants: a seed
    /// that breaks one would be reported as a crash before fuzzing starts.
    #[test]
    fn every_seed_passes_its_target() {
        let root = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("fuzz/corpus");
        for (name, target) in super::TARGETS {
            let dir = root.join(name);
            let mut seeds = 0;
            for entry in std::fs::read_dir(&dir).unwrap_or_else(|e| panic!("{}: {e}", dir.display())) {
                let path = entry.unwrap().path();
                target(&std::fs::read(&path).unwrap());
                seeds += 1;
            }
            assert!(seeds >= 3, "{name} has only {seeds} seeds");
        }
    }

    /// Saved crash inputs pass their target, except those of a defect that
    /// `fuzz/known-crashes.tsv` still lists, which must panic as listed
    /// (anything else there is a new crash, or a fix whose line is stale).
    #[test]
    fn saved_crash_inputs_pass_or_are_known() {
        let root = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("fuzz");
        let known = std::fs::read_to_string(root.join("known-crashes.tsv")).unwrap();
        let known: Vec<(&str, &str)> = known
            .lines()
            .filter(|l| !l.is_empty() && !l.starts_with('#'))
            .map(|l| {
                let mut f = l.split('\t');
                (f.next().unwrap(), f.next().expect("a panic message column"))
            })
            .collect();
        for (name, target) in super::TARGETS {
            let Ok(dir) = std::fs::read_dir(root.join("regressions").join(name)) else {
                continue;
            };
            for entry in dir {
                let path = entry.unwrap().path();
                let input = std::fs::read(&path).unwrap();
                let Err(panic) = std::panic::catch_unwind(|| target(&input)) else {
                    continue;
                };
                let message = panic
                    .downcast_ref::<String>()
                    .map(String::as_str)
                    .or_else(|| panic.downcast_ref::<&str>().copied())
                    .unwrap_or("");
                assert!(
                    known.iter().any(|&(t, m)| t == name && message.contains(m)),
                    "{}: new crash: {message}",
                    path.display()
                );
            }
        }
    }
}
