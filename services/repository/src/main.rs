//! `zf-repository`: validates, stores and serves module bundles (SPEC §9).

mod config;
mod service;
mod stock;
mod store;

use clap::Parser;

#[tokio::main]
async fn main() -> std::process::ExitCode {
    let config = config::Config::parse();
    if let Some(config::Command::Keygen) = config.command {
        let (private_key, public_key) = zerofoot_shared::signing::ModuleSigner::generate();
        println!(
            "{}",
            serde_json::json!({"private_key": private_key, "public_key": public_key})
        );
        return std::process::ExitCode::SUCCESS;
    }
    zerofoot_shared::telemetry::init();
    let shutdown = zerofoot_shared::shutdown::on_signals();
    match service::run(config, shutdown).await {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(err) => {
            eprintln!("zf-repository: {err:#}");
            std::process::ExitCode::FAILURE
        }
    }
}
