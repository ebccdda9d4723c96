//! Logging setup shared by every binary: `tracing` to stderr, filtered by
//! `RUST_LOG` (default `info`), as plain text or as one JSON object a line
//! (`--log-format json`), whose spans carry the node id, operation id and
//! term as fields.

use tracing_subscriber::EnvFilter;

/// The target of the debug events that time each phase of a sync operation
/// (fields ending in `_us`): `RUST_LOG=info,zerofoot::timing=debug` shows
/// them, and `scripts/bench.sh` turns them into docs/PERFORMANCE.md's table.
pub const TIMING: &str = "zerofoot::timing";

/// Microseconds since `start`, for a timing field.
pub fn micros_since(start: std::time::Instant) -> u64 {
    start.elapsed().as_micros() as u64
}

/// How log lines are written.
#[derive(clap::ValueEnum, Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum LogFormat {
    /// Human-readable lines.
    #[default]
    Text,
    /// One JSON object a line: `timestamp`, `level`, `fields` (with
    /// `message`), `target`, and `spans` with their fields.
    Json,
}

#[derive(clap::Args, Clone, Debug)]
pub struct LogArgs {
    /// Log line format.
    #[arg(long, env = "ZF_LOG_FORMAT", value_enum, default_value_t = LogFormat::Text)]
    pub log_format: LogFormat,
}

pub fn init(format: LogFormat) {
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info"));
    // A second init (tests calling into a service twice) is harmless.
    let _ = match format {
        LogFormat::Json => tracing_subscriber::fmt()
            .json()
            .with_current_span(false)
            .with_span_list(true)
            .with_env_filter(filter)
            .with_writer(std::io::stderr)
            .try_init(),
        LogFormat::Text => {
            // Colours only on a terminal: log files and `docker logs` stay plain text.
            let ansi = std::io::IsTerminal::is_terminal(&std::io::stderr());
            tracing_subscriber::fmt()
                .with_env_filter(filter)
                .with_writer(std::io::stderr)
                .with_ansi(ansi)
                .try_init()
        }
    };
}
