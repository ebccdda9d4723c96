//! `zf`: the command-line client of the zerofoot HTTP API. Parses the
//! command line, prints completions without touching the network, runs the
//! command on a small runtime, and turns the outcome into text on stderr and
//! the exit code `zf --help` documents; Ctrl-C ends it with 130.

mod args;
mod client;
mod commands;
mod error;
mod feed;
mod input;
mod output;
mod sse;

use std::process::ExitCode;

use clap::{CommandFactory, Parser};

use crate::error::{CliError, EXIT_INTERRUPTED};

fn main() -> ExitCode {
    let cli = args::Cli::parse();
    if let args::Command::Completions { shell } = cli.command {
        let mut command = args::Cli::command();
        clap_complete::generate(shell, &mut command, "zf", &mut std::io::stdout());
        return ExitCode::SUCCESS;
    }
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(e) => return report(&CliError::Local(format!("cannot start the runtime: {e}"))),
    };
    let outcome = runtime.block_on(async {
        tokio::select! {
            outcome = commands::run(cli.global, cli.command) => Some(outcome),
            _ = tokio::signal::ctrl_c() => None,
        }
    });
    match outcome {
        Some(Ok(())) => ExitCode::SUCCESS,
        Some(Err(e)) => report(&e),
        None => {
            eprintln!("zf: interrupted");
            ExitCode::from(EXIT_INTERRUPTED)
        }
    }
}

fn report(err: &CliError) -> ExitCode {
    if !matches!(err, CliError::Closed) {
        eprintln!("zf: {err}");
    }
    ExitCode::from(err.exit_code())
}
