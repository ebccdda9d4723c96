//! `zf-repository`: validates, stores and serves module bundles (SPEC §9).

mod config;
mod service;
mod stock;
mod store;

use clap::Parser;

fn main() -> std::process::ExitCode {
    let config = config::Config::parse();
    match zerofoot_shared::config::service_runtime("zf-repository") {
        Ok((runtime, secret_variables)) => runtime.block_on(serve(config, secret_variables)),
        Err(code) => code,
    }
}

async fn serve(
    config: config::Config,
    secret_variables: Vec<&'static str>,
) -> std::process::ExitCode {
    if let Some(config::Command::Keygen) = config.command {
        let (private_key, public_key) = zerofoot_shared::signing::ModuleSigner::generate();
        println!(
            "{}",
            serde_json::json!({"private_key": private_key, "public_key": public_key})
        );
        return std::process::ExitCode::SUCCESS;
    }
    zerofoot_shared::telemetry::init(config.log.log_format);
    zerofoot_shared::config::warn_secret_variables(&secret_variables);
    let shutdown = zerofoot_shared::shutdown::on_signals();
    match service::run(config, shutdown).await {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(err) => {
            eprintln!("zf-repository: {err:#}");
            std::process::ExitCode::FAILURE
        }
    }
}
