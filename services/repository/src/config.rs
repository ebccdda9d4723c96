//! Flags of `zf-repository`, each with an environment fallback.

use clap::Parser;
use zerofoot_shared::config::NatsArgs;

#[derive(Parser, Clone, Debug)]
#[command(
    name = "zf-repository",
    version,
    about = "zerofoot module repository: validates, stores and serves module bundles"
)]
pub struct Config {
    #[command(flatten)]
    pub nats: NatsArgs,

    /// This instance's id (default: random).
    #[arg(long, env = "ZF_REPOSITORY_ID")]
    pub id: Option<String>,

    /// Largest module bundle accepted, in bytes.
    #[arg(long, env = "ZF_MAX_BUNDLE_BYTES", default_value_t = zerofoot_shared::bundle::DEFAULT_MAX_BUNDLE_BYTES)]
    pub max_bundle_bytes: u64,

    /// Do not load the stock modules (shell, http-probe, file-tail) at start.
    #[arg(long, env = "ZF_NO_STOCK_MODULES")]
    pub no_stock_modules: bool,
}
