//! Flags of `zf-management` (SPEC §10), each with an environment fallback.

use std::net::SocketAddr;

use clap::Parser;
use zerofoot_shared::config::NatsArgs;

#[derive(Parser, Clone, Debug)]
#[command(
    name = "zf-management",
    version,
    about = "zerofoot management service: the HTTP API of a cluster"
)]
pub struct Config {
    #[command(flatten)]
    pub nats: NatsArgs,

    #[command(flatten)]
    pub secrets: zerofoot_shared::sealing::SecretsKeyArgs,

    /// Address the HTTP API listens on (port 0 picks a free port).
    #[arg(long, env = "ZF_HTTP_ADDR", default_value = "127.0.0.1:8080")]
    pub http_addr: SocketAddr,

    /// This instance's id (default: random).
    #[arg(long, env = "ZF_MANAGEMENT_ID", value_parser = parse_id)]
    pub id: Option<String>,

    /// API tokens as ROLE:TOKEN, comma separated (roles: admin, operator, viewer).
    /// Without any token the API only listens on a loopback address.
    #[arg(long, env = "ZF_API_TOKENS", hide_env_values = true)]
    pub api_tokens: Option<String>,

    /// A file of ROLE:TOKEN lines, added to --api-tokens.
    #[arg(long, env = "ZF_TOKENS_FILE")]
    pub tokens_file: Option<std::path::PathBuf>,

    /// Largest module bundle accepted by POST /v1/modules, in bytes.
    #[arg(long, env = "ZF_MAX_BUNDLE_BYTES", default_value_t = 64 * 1024 * 1024)]
    pub max_bundle_bytes: u64,
}

fn parse_id(s: &str) -> Result<String, String> {
    zerofoot_shared::names::validate_instance_id(s)
        .map(|_| s.to_string())
        .map_err(|e| e.to_string())
}
