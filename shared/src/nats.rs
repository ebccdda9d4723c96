//! Connecting to NATS: retry with backoff until the server answers, saying in
//! the log what is awaited and how to fix it, and log every later
//! disconnect and reconnect.

use std::time::Duration;

use async_nats::{Client, ConnectOptions, Event};
use tokio_util::sync::CancellationToken;

#[derive(Debug, thiserror::Error)]
pub enum ConnectError {
    #[error("shutdown requested while waiting for NATS")]
    Cancelled,
}

/// Connects to `url` (one or more server URLs, comma separated), retrying with exponential backoff (100 ms doubling to
/// 5 s) until it succeeds or `cancel` fires. `name` is the client name shown
/// by `nats server report connections`.
pub async fn connect_with_retry(
    url: &str,
    name: &str,
    cancel: &CancellationToken,
) -> Result<Client, ConnectError> {
    let mut delay = Duration::from_millis(100);
    let mut attempt = 1u32;
    loop {
        let options = ConnectOptions::new()
            .name(name)
            .connection_timeout(Duration::from_secs(2))
            .event_callback(|event| async move {
                match event {
                    Event::Disconnected => {
                        tracing::warn!("lost the NATS connection; reconnecting")
                    }
                    Event::Connected => tracing::info!("NATS connection (re)established"),
                    Event::SlowConsumer(sid) => {
                        tracing::warn!(sid, "slow consumer: messages were dropped")
                    }
                    other => tracing::info!(event = %other, "NATS connection event"),
                }
            });
        let servers: Vec<&str> = url
            .split(',')
            .map(str::trim)
            .filter(|s| !s.is_empty())
            .collect();
        let attempt_result = tokio::select! {
            _ = cancel.cancelled() => return Err(ConnectError::Cancelled),
            r = options.connect(servers) => r,
        };
        match attempt_result {
            Ok(client) => {
                tracing::info!(url, "connected to NATS");
                return Ok(client);
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
