//! AFL++ target: see `ssegate::fuzzing::resp` for what it checks.

fn main() {
    // Lazily initialised state (the verifying key, the crypto provider) is
    // set up before the fork server starts, so that the first input run in
    // each child does not show coverage that later ones never repeat.
    ssegate::fuzzing::resp(b"");
    afl::fuzz!(|data: &[u8]| ssegate::fuzzing::resp(data));
}
