//! The `ssegate` binary: parse the command line, start logging, hand over to
//! the library, map the outcome to an exit code.

use clap::Parser;
use ssegate::cli;
use ssegate::config::{Cli, Command};

#[tokio::main]
async fn main() -> std::process::ExitCode {
    let cli = Cli::parse();
    match cli.command {
        Some(Command::Publish(args)) => cli::publish(args).await,
        Some(Command::Serve(config)) => cli::serve(*config).await,
        None => cli::serve(cli.serve).await,
    }
}
