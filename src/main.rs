//! The `ssegate` binary: parse the command line, start logging, hand over to
//! the library, map the outcome to an exit code.

use clap::Parser;
use ssegate::cli;
use ssegate::config::{Cli, Command};

/// jemalloc rather than the system allocator: a node allocates and frees
/// small blocks per event and per request on every worker thread, and
/// glibc's `malloc` spent its time merging freed blocks
/// (`malloc_consolidate`) on the `POST` path and held more memory per idle
/// stream (docs/benchmarks.md, "jemalloc instead of glibc's allocator").
#[cfg(feature = "jemalloc")]
#[global_allocator]
static GLOBAL: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

#[tokio::main]
async fn main() -> std::process::ExitCode {
    let cli = Cli::parse();
    match cli.command {
        Some(Command::Publish(args)) => cli::publish(args).await,
        Some(Command::Serve(config)) => cli::serve(*config).await,
        None => cli::serve(cli.serve).await,
    }
}
