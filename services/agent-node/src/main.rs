//! `zf-agent-node`: runs module drivers for a zerofoot cluster.

mod config;
mod datadir;
mod heartbeat;
mod node;

use clap::Parser;

#[tokio::main]
async fn main() -> std::process::ExitCode {
    let cli = config::Cli::parse();
    zerofoot_shared::telemetry::init();
    let result = match cli.command {
        Some(config::Command::Inspect(args)) => inspect(args),
        None => {
            let shutdown = zerofoot_shared::shutdown::on_signals();
            node::run(cli.run, shutdown).await
        }
    };
    match result {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(err) => {
            eprintln!("zf-agent-node: {err:#}");
            std::process::ExitCode::FAILURE
        }
    }
}

fn inspect(_args: config::InspectArgs) -> anyhow::Result<()> {
    anyhow::bail!("inspect is not available yet")
}
