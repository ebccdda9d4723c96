//! `zf-management`: the HTTP API in front of a zerofoot cluster.

mod auth;
mod client_limits;
mod cluster_view;
mod config;
mod console;
mod context_watch;
mod error;
mod http_metrics;
mod operation_index;
mod routes;
mod startup;

use clap::Parser;

fn main() -> std::process::ExitCode {
    let config = config::Config::parse();
    match zerofoot_shared::config::service_runtime("zf-management") {
        Ok((runtime, secret_variables)) => runtime.block_on(serve(config, secret_variables)),
        Err(code) => code,
    }
}

async fn serve(
    config: config::Config,
    secret_variables: Vec<&'static str>,
) -> std::process::ExitCode {
    if let Some(config::Command::NatsAuth {
        dir,
        clusters,
        nodes,
    }) = config.command
    {
        return write_nats_auth(dir, clusters, nodes).await;
    }
    zerofoot_shared::telemetry::init(config.log.log_format);
    zerofoot_shared::config::warn_secret_variables(&secret_variables);
    let shutdown = zerofoot_shared::shutdown::on_signals();
    match startup::run(config, shutdown).await {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(err) => {
            eprintln!("zf-management: {err:#}");
            std::process::ExitCode::FAILURE
        }
    }
}

/// `zf-management nats-auth`: writes the NATS users and says where.
async fn write_nats_auth(
    dir: std::path::PathBuf,
    clusters: Vec<zerofoot_shared::names::ClusterName>,
    nodes: Vec<String>,
) -> std::process::ExitCode {
    let written = tokio::task::spawn_blocking(move || {
        zerofoot_shared::nats_auth::write_auth_dir(&dir, &clusters, &nodes)
    })
    .await;
    match written {
        Ok(Ok(files)) => {
            let users: Vec<_> = files
                .users
                .iter()
                .map(|(user, file)| serde_json::json!({"user": user, "password_file": file}))
                .collect();
            println!(
                "{}",
                serde_json::json!({"config": files.config, "users": users})
            );
            std::process::ExitCode::SUCCESS
        }
        Ok(Err(err)) => {
            eprintln!("zf-management nats-auth: {err}");
            std::process::ExitCode::FAILURE
        }
        Err(err) => {
            eprintln!("zf-management nats-auth: {err}");
            std::process::ExitCode::FAILURE
        }
    }
}
