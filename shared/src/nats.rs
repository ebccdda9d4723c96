//! Connecting to NATS: credentials and TLS from the shared flags, then retry
//! with backoff until the server answers, saying in the log what is awaited
//! and how to fix it, and logging every later disconnect, reconnect and
//! refused operation.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use async_nats::{Client, ConnectErrorKind, ConnectOptions, Event};
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

use crate::config::NatsArgs;
use crate::nats_auth::ServiceRole;

/// How often the client pings its server. The client drops a server that
/// leaves two pings unanswered and reconnects to another, so a server cut
/// off without a TCP reset (a partition, a pulled cable) is left within two
/// to three intervals. The library's default (a minute) left every client
/// of a partitioned NATS server hanging for minutes while the other two
/// served on.
pub const PING_INTERVAL: Duration = Duration::from_secs(2);

#[derive(Debug, thiserror::Error)]
pub enum ConnectError {
    #[error("shutdown requested while waiting for NATS")]
    Cancelled,
}

/// Why the NATS connection settings are unusable; said at start, before any attempt.
#[derive(Debug, thiserror::Error)]
pub enum SettingsError {
    #[error("cannot read {what} {path}: {source}")]
    Read {
        what: &'static str,
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{what} {path} is empty")]
    Empty { what: &'static str, path: PathBuf },
    #[error("the NATS credentials file {path} is not valid: {source}")]
    Creds {
        path: PathBuf,
        source: std::io::Error,
    },
}

/// Everything needed to (re)connect, read and checked once at start.
pub struct ConnectSettings {
    servers: Vec<String>,
    options: ConnectOptions,
    /// What the log says about the credentials in use (never a secret).
    credentials: String,
    /// The link as the client's events tell it.
    link: Arc<watch::Sender<Link>>,
}

/// A client's NATS link as its connection events tell it, which is sooner
/// than its connection state (the client sends the event first).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Link {
    /// Connections made so far: the first and every reconnect.
    pub connections: u64,
    /// Whether the last event was a (re)connect rather than a disconnect.
    pub up: bool,
}

impl ConnectSettings {
    /// Reads the password, nkey or credentials file named by `args` and
    /// checks that the TLS files exist. `role` picks the reply-subject prefix
    /// the NATS permissions of that role allow.
    pub async fn from_args(args: &NatsArgs, role: ServiceRole) -> Result<Self, SettingsError> {
        let (mut options, credentials) = if let Some(user) = &args.nats_user {
            let password = match (&args.nats_password, &args.nats_password_file) {
                (Some(password), _) => password.clone(),
                (None, Some(path)) => read_secret("NATS password file", path).await?,
                (None, None) => String::new(),
            };
            (
                ConnectOptions::with_user_and_password(user.clone(), password),
                format!("user {user}"),
            )
        } else if let Some(path) = &args.nats_creds {
            let text = read_secret("NATS credentials file", path).await?;
            let options =
                ConnectOptions::with_credentials(&text).map_err(|source| SettingsError::Creds {
                    path: path.clone(),
                    source,
                })?;
            (options, format!("credentials file {}", path.display()))
        } else if let Some(path) = &args.nats_nkey_file {
            let seed = read_secret("nkey seed file", path).await?;
            (
                ConnectOptions::with_nkey(seed),
                format!("nkey seed file {}", path.display()),
            )
        } else {
            (ConnectOptions::new(), "no credentials".to_string())
        };
        for (what, path) in [
            ("TLS CA certificate", &args.nats_tls_ca),
            ("TLS client certificate", &args.nats_tls_cert),
            ("TLS client key", &args.nats_tls_key),
        ] {
            if let Some(path) = path {
                read_secret(what, path).await?;
            }
        }
        if let Some(ca) = &args.nats_tls_ca {
            options = options.add_root_certificates(ca.clone()).require_tls(true);
        }
        if let (Some(cert), Some(key)) = (&args.nats_tls_cert, &args.nats_tls_key) {
            options = options.add_client_certificate(cert.clone(), key.clone());
        }
        let link = Arc::new(watch::Sender::new(Link::default()));
        let events = link.clone();
        let options = options
            .custom_inbox_prefix(args.names().inbox_prefix(role.as_str()))
            .connection_timeout(Duration::from_secs(2))
            .ping_interval(PING_INTERVAL)
            .event_callback(move |event| {
                let link = events.clone();
                async move {
                match event {
                    Event::Disconnected => {
                        tracing::warn!("lost the NATS connection; reconnecting");
                        link.send_modify(|l| l.up = false);
                    }
                    Event::Connected => {
                        tracing::info!("NATS connection (re)established");
                        link.send_modify(|l| {
                            l.connections += 1;
                            l.up = true;
                        });
                    }
                    Event::SlowConsumer(sid) => {
                        tracing::warn!(sid, "slow consumer: messages were dropped")
                    }
                    Event::ServerError(error) => tracing::warn!(
                        %error,
                        "NATS refused an operation; a permissions violation means this service's NATS user lacks a grant (see `zf-management nats-auth`)"
                    ),
                    other => tracing::info!(event = %other, "NATS connection event"),
                }
                }
            });
        Ok(Self {
            servers: args
                .nats_url
                .split(',')
                .map(str::trim)
                .filter(|s| !s.is_empty())
                .map(String::from)
                .collect(),
            options,
            credentials,
            link,
        })
    }

    /// Changes whenever a connection made with these settings drops or is
    /// (re)established; [`Client::server_info`] soon names the new one.
    pub fn link(&self) -> watch::Receiver<Link> {
        self.link.subscribe()
    }
}

async fn read_secret(what: &'static str, path: &Path) -> Result<String, SettingsError> {
    let text = tokio::fs::read_to_string(path)
        .await
        .map_err(|source| SettingsError::Read {
            what,
            path: path.to_path_buf(),
            source,
        })?;
    let text = text.trim().to_string();
    if text.is_empty() {
        return Err(SettingsError::Empty {
            what,
            path: path.to_path_buf(),
        });
    }
    Ok(text)
}

/// Connects with `settings`, retrying with exponential backoff (100 ms
/// doubling to 5 s) until it succeeds or `cancel` fires. `name` is the client
/// name shown by `nats server report connections`.
pub async fn connect_with_retry(
    settings: &ConnectSettings,
    name: &str,
    cancel: &CancellationToken,
) -> Result<Client, ConnectError> {
    let url = settings.servers.join(",");
    let mut delay = Duration::from_millis(100);
    let mut attempt = 1u32;
    loop {
        let attempt_result = tokio::select! {
            _ = cancel.cancelled() => return Err(ConnectError::Cancelled),
            r = settings.options.clone().name(name).connect(settings.servers.clone()) => r,
        };
        match attempt_result {
            Ok(client) => {
                tracing::info!(url, "connected to NATS");
                return Ok(client);
            }
            Err(err)
                if matches!(
                    err.kind(),
                    ConnectErrorKind::AuthorizationViolation | ConnectErrorKind::Authentication
                ) =>
            {
                tracing::error!(
                    url, attempt, error = %err, credentials = %settings.credentials,
                    retry_in_ms = delay.as_millis() as u64,
                    "NATS refused the credentials: check --nats-user and its password (or --nats-creds / --nats-nkey-file) against the server's authorization config"
                );
            }
            // rustls reports a certificate it cannot verify as an IO error.
            Err(err)
                if err.kind() == ConnectErrorKind::Tls
                    || err.to_string().contains("certificate") =>
            {
                tracing::error!(
                    url, attempt, error = %err, retry_in_ms = delay.as_millis() as u64,
                    "TLS with NATS failed: check --nats-tls-ca (and the client certificate) against the server's certificate, and that the URL names the host the certificate is for"
                );
            }
            Err(err) => {
                tracing::warn!(
                    url, attempt, error = %err, retry_in_ms = delay.as_millis() as u64,
                    "waiting for NATS: check that nats-server runs and that --nats-url / ZF_NATS_URL points at it"
                );
            }
        }
        tokio::select! {
            _ = cancel.cancelled() => return Err(ConnectError::Cancelled),
            _ = tokio::time::sleep(delay) => {}
        }
        delay = (delay * 2).min(Duration::from_secs(5));
        attempt += 1;
    }
}

/// One running instance of a micro service, as answered to `$SRV.PING`.
#[derive(Clone, Debug, serde::Deserialize)]
pub struct DiscoveredService {
    pub name: String,
    pub id: String,
    pub version: String,
    #[serde(default)]
    pub metadata: std::collections::HashMap<String, String>,
}

impl DiscoveredService {
    /// The instance id a zerofoot service puts in its metadata.
    pub fn instance(&self) -> Option<&str> {
        self.metadata.get("instance").map(String::as_str)
    }
}

/// Asks every instance of micro service `service` to answer `$SRV.PING` and
/// collects the answers that arrive within `wait`, keeping those of `cluster`.
pub async fn discover(
    client: &Client,
    service: &str,
    cluster: &str,
    wait: std::time::Duration,
) -> Result<Vec<DiscoveredService>, async_nats::Error> {
    use futures::StreamExt;
    let inbox = client.new_inbox();
    let mut replies = client.subscribe(inbox.clone()).await?;
    client
        .publish_with_reply(format!("$SRV.PING.{service}"), inbox, bytes::Bytes::new())
        .await?;
    client.flush().await?;
    let mut found = Vec::new();
    let deadline = tokio::time::Instant::now() + wait;
    while let Ok(Some(msg)) = tokio::time::timeout_at(deadline, replies.next()).await {
        if let Ok(svc) = serde_json::from_slice::<DiscoveredService>(&msg.payload) {
            if svc.metadata.get("cluster").map(String::as_str) == Some(cluster) {
                found.push(svc);
            }
        }
    }
    found.sort_by(|a, b| a.instance().cmp(&b.instance()));
    Ok(found)
}

/// Metadata every zerofoot micro service registers with.
pub fn service_metadata(
    cluster: &str,
    instance: &str,
) -> std::collections::HashMap<String, String> {
    std::collections::HashMap::from([
        ("cluster".to_string(), cluster.to_string()),
        ("instance".to_string(), instance.to_string()),
    ])
}

/// The next item of `stream`, or `None` once `cancel` fires or the stream
/// ends: the loop shape of every subscriber and endpoint in zerofoot.
pub async fn next_or_cancelled<S>(stream: &mut S, cancel: &CancellationToken) -> Option<S::Item>
where
    S: futures::Stream + Unpin,
{
    use futures::StreamExt;
    tokio::select! {
        _ = cancel.cancelled() => None,
        item = stream.next() => item,
    }
}
