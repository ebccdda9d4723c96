//! Command-line flags every binary shares (SPEC §10), flattened into each
//! service's own `clap` parser. Every flag has an environment fallback.

use std::path::PathBuf;

use clap::Args;

use crate::names::{ClusterName, Names};

/// Where NATS is and which cluster this process belongs to.
#[derive(Args, Clone, Debug)]
pub struct NatsArgs {
    /// NATS server URL(s), comma separated.
    #[arg(long, env = "ZF_NATS_URL", default_value = "nats://127.0.0.1:4222", value_parser = parse_servers)]
    pub nats_url: String,

    /// Cluster name: every subject and JetStream asset carries it.
    #[arg(long, env = "ZF_CLUSTER", default_value = "default", value_parser = parse_cluster)]
    pub cluster: ClusterName,

    /// Replicas of every bucket and stream this process creates (3 on a
    /// three-node NATS cluster in production).
    #[arg(long, env = "ZF_REPLICAS", default_value_t = 1, value_parser = clap::value_parser!(u8).range(1..=5))]
    pub replicas: u8,

    /// Seconds an operation's events are kept in the events stream.
    #[arg(long, env = "ZF_EVENTS_MAX_AGE_S", default_value_t = 7 * 24 * 3600)]
    pub events_max_age_s: u64,

    /// Bytes the events stream may hold before its oldest events are dropped (0: no limit).
    #[arg(long, env = "ZF_EVENTS_MAX_BYTES", default_value_t = 0)]
    pub events_max_bytes: u64,

    /// NATS user name; give its password with --nats-password or
    /// --nats-password-file (`zf-management nats-auth` makes both).
    #[arg(long, env = "ZF_NATS_USER", requires = "nats_password_source", conflicts_with_all = ["nats_creds", "nats_nkey_file"])]
    pub nats_user: Option<String>,

    /// Password of --nats-user.
    #[arg(
        long,
        env = "ZF_NATS_PASSWORD",
        hide_env_values = true,
        group = "nats_password_source",
        requires = "nats_user"
    )]
    pub nats_password: Option<String>,

    /// A file holding the password of --nats-user.
    #[arg(
        long,
        env = "ZF_NATS_PASSWORD_FILE",
        group = "nats_password_source",
        requires = "nats_user"
    )]
    pub nats_password_file: Option<PathBuf>,

    /// A NATS credentials file (user JWT and nkey seed).
    #[arg(long, env = "ZF_NATS_CREDS", conflicts_with = "nats_nkey_file")]
    pub nats_creds: Option<PathBuf>,

    /// A file holding an nkey seed (`SU...`).
    #[arg(long, env = "ZF_NATS_NKEY_FILE")]
    pub nats_nkey_file: Option<PathBuf>,

    /// CA certificate (PEM) the NATS server's certificate must chain to;
    /// with it the connection must use TLS.
    #[arg(long, env = "ZF_NATS_TLS_CA")]
    pub nats_tls_ca: Option<PathBuf>,

    /// Client certificate (PEM) for servers that verify clients; needs --nats-tls-key.
    #[arg(long, env = "ZF_NATS_TLS_CERT", requires = "nats_tls_key")]
    pub nats_tls_cert: Option<PathBuf>,

    /// Private key (PEM) of --nats-tls-cert.
    #[arg(long, env = "ZF_NATS_TLS_KEY", requires = "nats_tls_cert")]
    pub nats_tls_key: Option<PathBuf>,
}

impl NatsArgs {
    pub fn names(&self) -> Names {
        Names::new(self.cluster.clone())
    }

    /// The settings this process creates JetStream assets with.
    pub fn asset_settings(&self) -> crate::assets::AssetSettings {
        crate::assets::AssetSettings {
            replicas: self.replicas,
            events_max_age: std::time::Duration::from_secs(self.events_max_age_s),
            events_max_bytes: self.events_max_bytes,
        }
    }
}

fn parse_cluster(s: &str) -> Result<ClusterName, String> {
    s.parse()
        .map_err(|e: crate::names::NameError| e.to_string())
}

fn parse_servers(s: &str) -> Result<String, String> {
    let servers: Vec<&str> = s
        .split(',')
        .map(str::trim)
        .filter(|p| !p.is_empty())
        .collect();
    if servers.is_empty() {
        return Err("give at least one NATS server URL, e.g. nats://127.0.0.1:4222".into());
    }
    for server in servers {
        server.parse::<async_nats::ServerAddr>().map_err(|e| {
            format!("{server:?} is not a NATS server URL ({e}); e.g. nats://host:4222")
        })?;
    }
    Ok(s.to_string())
}

/// Variables that can carry a secret (keys, passwords, tokens). Each setting
/// also takes a file (`--secrets-key-file`, `--nats-password-file`,
/// `--signing-key-file`, `--tokens-file`), which is what deployments use.
pub const SECRET_VARIABLES: &[&str] = &[
    "ZF_SECRETS_KEY",
    "ZF_SECRETS_PREVIOUS_KEYS",
    "ZF_NATS_PASSWORD",
    "ZF_SIGNING_KEY",
    "ZF_API_TOKENS",
];

/// Removes [`SECRET_VARIABLES`] from this process's environment once the
/// flags are parsed, so that no child process (drivers included) inherits
/// them, and says which were set. Call it before any thread starts: changing
/// the environment of a multi-threaded process is unsound.
///
/// The kernel keeps the environment the process started with: it stays in
/// `/proc/<pid>/environ`, readable by the same user and root. Files avoid that.
pub fn forget_secret_variables() -> Vec<&'static str> {
    let mut found = Vec::new();
    for name in SECRET_VARIABLES {
        if std::env::var_os(name).is_some() {
            std::env::remove_var(name);
            found.push(*name);
        }
    }
    found
}

/// What a service's `main` does first: forgets the secret variables while
/// the process has one thread, then builds the async runtime. `Err` is the
/// exit code, after saying why on stderr.
pub fn service_runtime(
    program: &str,
) -> Result<(tokio::runtime::Runtime, Vec<&'static str>), std::process::ExitCode> {
    let secret_variables = forget_secret_variables();
    match tokio::runtime::Runtime::new() {
        Ok(runtime) => Ok((runtime, secret_variables)),
        Err(err) => {
            eprintln!("{program}: cannot start the async runtime: {err}");
            Err(std::process::ExitCode::FAILURE)
        }
    }
}

/// Logs, once tracing is up, which secrets came from the environment.
pub fn warn_secret_variables(found: &[&str]) {
    for name in found {
        tracing::warn!(
            variable = name,
            "a secret came from the environment: removed from this process's environment so no child inherits it, but still readable in /proc/<pid>/environ by this user and root; give it as a file instead (the setting's --...-file flag)"
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    #[derive(Parser, Debug)]
    struct Cli {
        #[command(flatten)]
        nats: NatsArgs,
    }

    #[test]
    fn credentials_flags_go_together() {
        let parse = |args: &[&str]| Cli::try_parse_from([&["zf"], args].concat());
        assert!(parse(&["--nats-user", "u", "--nats-password", "p"]).is_ok());
        assert!(parse(&["--nats-user", "u", "--nats-password-file", "/f"]).is_ok());
        assert!(
            parse(&["--nats-user", "u"]).is_err(),
            "a user needs a password"
        );
        assert!(
            parse(&["--nats-password", "p"]).is_err(),
            "a password needs a user"
        );
        assert!(parse(&[
            "--nats-user",
            "u",
            "--nats-password",
            "p",
            "--nats-creds",
            "/c"
        ])
        .is_err());
        assert!(
            parse(&["--nats-tls-cert", "/c"]).is_err(),
            "a certificate needs its key"
        );
        assert!(parse(&["--nats-tls-ca", "/ca"]).is_ok());
    }

    #[test]
    fn server_lists_are_checked() {
        assert!(parse_servers("nats://a:4222, nats://b:4222").is_ok());
        assert!(parse_servers("nats://a:4222,,").is_ok());
        assert!(parse_servers("").is_err());
        assert!(parse_servers("nats://a:notaport").is_err());
    }
}

/// Where a service without an HTTP API of its own answers `GET /healthz` and
/// `GET /metrics`; off unless given.
#[derive(clap::Args, Clone, Debug, Default)]
pub struct EndpointArgs {
    /// Where to answer `GET /healthz`: 200 while the service is healthy,
    /// else 503 with the reason.
    #[arg(long, env = "ZF_HEALTH_ADDR")]
    pub health_addr: Option<std::net::SocketAddr>,

    /// Where to answer `GET /metrics` in Prometheus's text format (may be
    /// the health address).
    #[arg(long, env = "ZF_METRICS_ADDR")]
    pub metrics_addr: Option<std::net::SocketAddr>,
}
