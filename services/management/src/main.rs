//! `zf-management`: the HTTP API in front of a zerofoot cluster.

mod auth;
mod cluster_view;
mod config;
mod context_watch;
mod error;
mod routes;
mod startup;

use clap::Parser;

#[tokio::main]
async fn main() -> std::process::ExitCode {
    let config = config::Config::parse();
    zerofoot_shared::telemetry::init();
    let shutdown = zerofoot_shared::shutdown::on_signals();
    match startup::run(config, shutdown).await {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(err) => {
            eprintln!("zf-management: {err:#}");
            std::process::ExitCode::FAILURE
        }
    }
}
