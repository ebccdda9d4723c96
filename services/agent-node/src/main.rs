//! `zf-agent-node`: runs module drivers for a zerofoot cluster.

mod batch;
mod cache;
mod config;
mod datadir;
mod driver;
mod election;
mod eventlog;
mod heartbeat;
mod launcher;
mod liveness;
mod membership;
mod mirror;
mod monitor;
mod node;
mod ownership;
mod purge;
mod registrar;
mod rules;
mod run;
mod sandbox;
mod scheduler;
mod shim_spec;
mod ssh_masters;
mod store;
mod sweeper;
mod sync_op;
mod watchdog;

use clap::Parser;

fn main() -> std::process::ExitCode {
    let cli = config::Cli::parse();
    if let Some(config::Command::Watchdog(args)) = &cli.command {
        // No runtime, no logging setup: the watchdog must stay small.
        return watchdog::run(std::time::Duration::from_millis(args.starve_ms));
    }
    // Before the runtime's threads exist.
    let secret_variables = zerofoot_shared::config::forget_secret_variables();
    zerofoot_shared::telemetry::init(cli.run.log.log_format);
    zerofoot_shared::config::warn_secret_variables(&secret_variables);
    let result = match cli.command {
        Some(config::Command::Inspect(args)) => inspect(args),
        Some(config::Command::Watchdog(_)) => Ok(()),
        None => tokio::runtime::Builder::new_multi_thread()
            .enable_all()
            .build()
            .map_err(anyhow::Error::from)
            .and_then(|runtime| {
                runtime.block_on(async {
                    let shutdown = zerofoot_shared::shutdown::on_signals();
                    node::run(cli.run, shutdown).await
                })
            }),
    };
    match result {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(err) => {
            eprintln!("zf-agent-node: {err:#}");
            std::process::ExitCode::FAILURE
        }
    }
}

/// Prints the node's redb mirror as JSON (the node must be stopped: redb
/// allows one process at a time).
fn inspect(args: config::InspectArgs) -> anyhow::Result<()> {
    let path = args.data_dir.join("node.redb");
    if !path.exists() {
        anyhow::bail!(
            "{} does not exist: is {} a node's data dir?",
            path.display(),
            args.data_dir.display()
        );
    }
    let dump = store::Store::open(&path)?.dump()?;
    println!("{}", serde_json::to_string_pretty(&dump)?);
    Ok(())
}
