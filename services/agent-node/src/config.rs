//! Flags of `zf-agent-node` (SPEC §10), each with an environment fallback.

use std::path::PathBuf;

use clap::{Args, Parser, Subcommand};
use zerofoot_shared::config::NatsArgs;

#[derive(Parser, Debug)]
#[command(
    name = "zf-agent-node",
    version,
    about = "zerofoot agent node: runs module drivers for the cluster",
    args_conflicts_with_subcommands = true
)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Option<Command>,
    #[command(flatten)]
    pub run: RunArgs,
}

#[derive(Subcommand, Debug)]
pub enum Command {
    /// Print the node's local mirror (contexts, resources, applied revisions) as JSON.
    Inspect(InspectArgs),
    /// (Started by the node itself.) Kills the node's drivers when the node
    /// dies or stops feeding it; see watchdog.rs.
    #[command(hide = true)]
    Watchdog(WatchdogArgs),
}

#[derive(Args, Debug)]
pub struct WatchdogArgs {
    /// Silence from the node after which its drivers are killed.
    #[arg(long)]
    pub starve_ms: u64,
}

#[derive(Args, Debug)]
pub struct InspectArgs {
    /// The node's data directory.
    #[arg(long, env = "ZF_DATA_DIR")]
    pub data_dir: PathBuf,
}

#[derive(Args, Clone, Debug)]
pub struct RunArgs {
    #[command(flatten)]
    pub nats: NatsArgs,

    #[command(flatten)]
    pub log: zerofoot_shared::telemetry::LogArgs,

    #[command(flatten)]
    pub secrets: zerofoot_shared::sealing::SecretsKeyArgs,

    /// Public keys (hex, comma separated) whose module signatures this node
    /// trusts. When any is set, unsigned or wrongly signed modules never run.
    #[arg(long, env = "ZF_TRUSTED_KEYS")]
    pub trusted_keys: Option<String>,

    /// A file of trusted public keys, one a line.
    #[arg(long, env = "ZF_TRUSTED_KEYS_FILE")]
    pub trusted_keys_file: Option<PathBuf>,

    /// Node id (default: the one kept in the data dir, or a new random one).
    #[arg(long, env = "ZF_NODE_ID", value_parser = parse_id)]
    pub id: Option<String>,

    /// The zone this node is in: it runs the sync operations of the
    /// resources of this zone (those it can reach), and only those.
    #[arg(long, env = "ZF_ZONE", default_value = zerofoot_shared::names::DEFAULT_ZONE, value_parser = parse_id)]
    pub zone: String,

    /// A label of this node, `KEY=VALUE`; repeatable, or comma separated in
    /// ZF_NODE_LABELS. Shown in the cluster view.
    #[arg(long = "label", env = "ZF_NODE_LABELS", value_delimiter = ',', value_parser = parse_label)]
    pub labels: Vec<(String, String)>,

    /// Where the node keeps its id, its redb mirror and its module cache.
    #[arg(long, env = "ZF_DATA_DIR", default_value = "zf-node-data")]
    pub data_dir: PathBuf,

    /// Heartbeat interval in milliseconds.
    #[arg(long, env = "ZF_HEARTBEAT_MS", default_value_t = 200, value_parser = clap::value_parser!(u64).range(10..=60_000))]
    pub heartbeat_ms: u64,

    /// Silence after which a node (or the lead) counts as gone, in milliseconds.
    #[arg(long, env = "ZF_LAPSE_MS", default_value_t = 1000, value_parser = clap::value_parser!(u64).range(20..=600_000))]
    pub lapse_ms: u64,

    /// After nats-server says the lead's connection closed, how long the
    /// other nodes wait for the lead to reconnect and write its claim again
    /// before they claim, in milliseconds (at most the lapse). A killed
    /// lead is replaced after this, not after the lapse; a lead whose
    /// network blips for less keeps its term.
    #[arg(long, env = "ZF_RECONNECT_GRACE_MS", default_value_t = 50, value_parser = clap::value_parser!(u64).range(0..=600_000))]
    pub reconnect_grace_ms: u64,

    /// Seconds a finished operation's context is kept before the lead purges it.
    #[arg(long, env = "ZF_CONTEXT_RETENTION_S", default_value_t = 7 * 24 * 3600)]
    pub context_retention_s: u64,

    #[command(flatten)]
    pub sandbox: SandboxArgs,

    /// `/healthz` (200 while NATS is connected and answering and the
    /// mirror is current, else 503) and `/metrics`.
    #[command(flatten)]
    pub endpoints: zerofoot_shared::config::EndpointArgs,

    /// The program every driver starts through (default: `zf-driver-shim`
    /// next to this program).
    #[arg(long, env = "ZF_DRIVER_SHIM")]
    pub driver_shim: Option<PathBuf>,

    /// Seconds an unused module bundle stays in the node's cache.
    #[arg(long, env = "ZF_MODULE_CACHE_TTL_S", default_value_t = 600)]
    pub module_cache_ttl_s: u64,
}

fn parse_label(s: &str) -> Result<(String, String), String> {
    let (key, value) = s
        .split_once('=')
        .ok_or_else(|| format!("label {s:?} is not KEY=VALUE"))?;
    let label = zerofoot_shared::selector::Labels::from([(key.to_string(), value.to_string())]);
    zerofoot_shared::selector::check_labels(&label).map_err(|e| e.to_string())?;
    Ok((key.to_string(), value.to_string()))
}

fn parse_id(s: &str) -> Result<String, String> {
    zerofoot_shared::names::validate_instance_id(s)
        .map(|_| s.to_string())
        .map_err(|e| e.to_string())
}

/// How drivers are confined (see sandbox.rs and docs/SECURITY.md).
#[derive(Args, Clone, Debug)]
pub struct SandboxArgs {
    /// The account whose group drivers run in; each driver gets its own
    /// uid. Default (when the node runs as root): `zerofoot-driver`. A node
    /// that is not root runs drivers as its own user.
    #[arg(long, env = "ZF_DRIVER_USER")]
    pub driver_user: Option<String>,

    /// Let drivers run as root when --driver-user names root.
    #[arg(long, env = "ZF_ALLOW_ROOT_DRIVERS")]
    pub allow_root_drivers: bool,

    /// A path drivers may read (besides their bundle and system paths);
    /// repeat, or separate with ':' in the variable.
    #[arg(long, env = "ZF_DRIVER_READABLE", value_delimiter = ':')]
    pub driver_readable: Vec<PathBuf>,

    /// A path drivers may read and write (besides their scratch dir).
    #[arg(long, env = "ZF_DRIVER_WRITABLE", value_delimiter = ':')]
    pub driver_writable: Vec<PathBuf>,

    /// Drivers running at once on this node; more wait for a place.
    #[arg(long, env = "ZF_MAX_DRIVERS", default_value_t = 256)]
    pub max_drivers: usize,

    /// Ceiling of a driver's address space, MiB (0: none).
    #[arg(long, env = "ZF_DRIVER_MAX_MEMORY_MB", default_value_t = 2048)]
    pub driver_max_memory_mb: u64,

    /// Ceiling of a driver's open files (0: none).
    #[arg(long, env = "ZF_DRIVER_MAX_OPEN_FILES", default_value_t = 1024)]
    pub driver_max_open_files: u64,

    /// Ceiling of a driver's processes and threads at once (0: none).
    #[arg(long, env = "ZF_DRIVER_MAX_PROCESSES", default_value_t = 128)]
    pub driver_max_processes: u64,

    /// Ceiling of a driver's CPU time, seconds (0: none).
    #[arg(long, env = "ZF_DRIVER_MAX_CPU_S", default_value_t = 0)]
    pub driver_max_cpu_s: u64,
}
