//! Flags of `zf-management` (SPEC §10), each with an environment fallback.

use std::net::SocketAddr;

use clap::{Parser, Subcommand};
use zerofoot_shared::config::NatsArgs;
use zerofoot_shared::names::ClusterName;

#[derive(Parser, Clone, Debug)]
#[command(
    name = "zf-management",
    version,
    about = "zerofoot management service: the HTTP API of a cluster"
)]
#[command(args_conflicts_with_subcommands = true)]
pub struct Config {
    #[command(subcommand)]
    pub command: Option<Command>,

    #[command(flatten)]
    pub nats: NatsArgs,

    #[command(flatten)]
    pub log: zerofoot_shared::telemetry::LogArgs,

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

    /// Unfinished operations one API client (one token; all of loopback
    /// without tokens) may have at once; more are refused with 429.
    #[arg(long, env = "ZF_MAX_OPERATIONS_PER_CLIENT", default_value_t = 2000, value_parser = clap::value_parser!(u64).range(1..))]
    pub max_operations_per_client: u64,

    /// Live event streams (SSE) one API client (one token; all of loopback
    /// without tokens) may hold open on this instance; more are refused with 429.
    #[arg(long, env = "ZF_MAX_EVENT_STREAMS_PER_CLIENT", default_value_t = 32, value_parser = clap::value_parser!(u64).range(1..))]
    pub max_event_streams_per_client: u64,

    /// Largest module bundle accepted by POST /v1/modules, in bytes.
    #[arg(long, env = "ZF_MAX_BUNDLE_BYTES", default_value_t = 64 * 1024 * 1024)]
    pub max_bundle_bytes: u64,
}

fn parse_id(s: &str) -> Result<String, String> {
    zerofoot_shared::names::validate_instance_id(s)
        .map(|_| s.to_string())
        .map_err(|e| e.to_string())
}

#[derive(Subcommand, Clone, Debug)]
pub enum Command {
    /// Write the NATS users of every service role (management, repository,
    /// agent, or one per node with --nodes) of the given clusters plus `admin`: DIR/auth.conf for
    /// nats-server's `include`, and DIR/<user>.password for each user.
    /// Existing password files are kept; delete one to rotate it.
    NatsAuth {
        /// Folder for auth.conf and the password files (made private).
        #[arg(long, env = "ZF_NATS_AUTH_DIR")]
        dir: std::path::PathBuf,

        /// Cluster(s) to make users for, comma separated or repeated.
        #[arg(long = "cluster", env = "ZF_CLUSTER", value_delimiter = ',', required = true, value_parser = parse_cluster)]
        clusters: Vec<ClusterName>,

        /// Node ids, comma separated: each gets a NATS user of its own
        /// (`zf-<cluster>-node-<id>`), allowed to speak only for itself,
        /// instead of the agent user all nodes would share. Start each node
        /// with its id (--id) and its user.
        #[arg(long = "nodes", env = "ZF_NATS_NODES", value_delimiter = ',', value_parser = parse_id)]
        nodes: Vec<String>,
    },
}

fn parse_cluster(s: &str) -> Result<ClusterName, String> {
    s.parse()
        .map_err(|e: zerofoot_shared::names::NameError| e.to_string())
}
