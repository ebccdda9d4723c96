//! Flags of `zf-repository`, each with an environment fallback.

use clap::{Parser, Subcommand};
use zerofoot_shared::config::NatsArgs;

#[derive(Parser, Clone, Debug)]
#[command(
    name = "zf-repository",
    version,
    about = "zerofoot module repository: validates, stores and serves module bundles"
)]
#[command(args_conflicts_with_subcommands = true)]
pub struct Config {
    #[command(subcommand)]
    pub command: Option<Command>,

    #[command(flatten)]
    pub nats: NatsArgs,

    #[command(flatten)]
    pub log: zerofoot_shared::telemetry::LogArgs,

    /// ed25519 key (64 hex characters) that signs every stored module;
    /// make one with `zf-repository keygen`.
    #[arg(long, env = "ZF_SIGNING_KEY", hide_env_values = true)]
    pub signing_key: Option<String>,

    /// A file holding the signing key.
    #[arg(long, env = "ZF_SIGNING_KEY_FILE")]
    pub signing_key_file: Option<std::path::PathBuf>,

    /// This instance's id (default: random).
    #[arg(long, env = "ZF_REPOSITORY_ID")]
    pub id: Option<String>,

    /// Largest module bundle accepted, in bytes.
    #[arg(long, env = "ZF_MAX_BUNDLE_BYTES", default_value_t = zerofoot_shared::bundle::DEFAULT_MAX_BUNDLE_BYTES)]
    pub max_bundle_bytes: u64,

    /// Do not load the stock modules (shell, http-probe, file-tail) at start.
    #[arg(long, env = "ZF_NO_STOCK_MODULES")]
    pub no_stock_modules: bool,

    /// `/healthz` (200 while NATS is connected) and `/metrics`.
    #[command(flatten)]
    pub endpoints: zerofoot_shared::config::EndpointArgs,
}

#[derive(Subcommand, Clone, Debug)]
pub enum Command {
    /// Print a new signing key pair as JSON: the private key for
    /// --signing-key-file, the public key for the nodes' --trusted-keys.
    Keygen,
}
