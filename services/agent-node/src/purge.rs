//! The lead's purge of finished contexts past their retention, leaving
//! nothing behind in the contexts bucket.
//!
//! **Which contexts.** The mirror's `finished` index holds every finished
//! context by the time the NATS server stored its last write (the KV
//! entry's own timestamp). A round asks the same server for its time (the
//! `ts` of a stream info answer) and reads from the index only the contexts
//! stored more than `retention` before it, oldest first: both times come
//! from the server's clock, never from a node's or from the writer's. (In a
//! NATS cluster the stream's leader stamps messages and may change; the
//! servers' clocks are assumed to agree within a small fraction of the
//! retention.) A server too old to answer with `ts` is asked for the time
//! of the stream's last message instead, which is never later than its
//! "now": contexts are then purged late, never early.
//!
//! **Nothing left behind.** A KV purge writes a marker that replaces every
//! earlier message of the key, and watchers (every node's mirror,
//! management's contexts watch) see the marker as a delete. The marker is
//! written with a per-message TTL (`Nats-TTL`,
//! [`CONTEXT_MARKER_TTL`]), after which the server drops it too and the key
//! has no message at all. That needs nats-server 2.11 or newer and
//! `allow_msg_ttl` on the contexts stream (set when the bucket is created,
//! see `shared/src/assets.rs`); without it the purge falls back to a plain
//! marker, which stays, and says so once. A mirror that was away longer
//! than the TTL misses the marker; it drops keys the bucket no longer holds
//! before it replays (`mirror.rs`).
//!
//! Each purge expects the revision the index holds for the context, so a
//! context written again since (the index lags) is left for a later round.

use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use async_nats::jetstream::kv;
use futures::StreamExt;
use serde::Deserialize;
use time::OffsetDateTime;
use zerofoot_shared::assets::{Assets, CONTEXT_MARKER_TTL};

use crate::store::{unix_ms, Finished, Store, StoreError};

/// Contexts read from the index at a time.
const BATCH: usize = 256;
/// Purges in flight at once.
const IN_FLIGHT: usize = 32;
/// How long one round may run; the rest waits for the next round.
const ROUND_BUDGET: Duration = Duration::from_secs(1);

#[derive(Debug, thiserror::Error)]
pub enum PurgeError {
    #[error("cannot ask the NATS server for its time: {0}")]
    ServerTime(String),
    #[error("cannot read the finished contexts from the local mirror: {0}")]
    Store(#[from] StoreError),
}

/// What one round did.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct PurgeRound {
    pub purged: usize,
    /// Written again since the index saw them, or the purge failed: left
    /// for a later round.
    pub skipped: usize,
    /// The round ran out of time with more contexts due.
    pub more: bool,
}

/// Purges finished contexts whose last write is older than `retention`, by
/// the server's clock. Only leads call it (one per zone, each purging every
/// zone's contexts): a purge expects the revision, so a context two leads
/// race for is purged once and the loser skips it.
/// Bounded to about a second per call; call it again for the rest.
pub async fn purge_finished(assets: &Assets, store: &Store, retention: Duration) -> PurgeRound {
    match purge_round(assets, store, retention).await {
        Ok(round) => {
            if round.purged > 0 || round.skipped > 0 {
                tracing::info!(
                    purged = round.purged,
                    skipped = round.skipped,
                    more = round.more,
                    "purged finished operations past their retention"
                );
            }
            round
        }
        Err(e) => {
            tracing::warn!(error = %e, "purge of finished operations skipped this round");
            PurgeRound::default()
        }
    }
}

async fn purge_round(
    assets: &Assets,
    store: &Store,
    retention: Duration,
) -> Result<PurgeRound, PurgeError> {
    let clock = server_clock(assets).await?;
    let ttl = if clock.ttl_allowed {
        Some(CONTEXT_MARKER_TTL)
    } else {
        match assets.allow_context_marker_ttl().await {
            Ok(()) => Some(CONTEXT_MARKER_TTL),
            Err(e) => {
                warn_no_ttl_once(&assets.contexts.stream_name, &e);
                None
            }
        }
    };
    let cutoff = cutoff_ms(clock.now_ms, retention);
    let started = Instant::now();
    let mut round = PurgeRound::default();
    let mut after: Option<Finished> = None;
    // Read once a round, and only if something is due: a batch that starts
    // meanwhile has no finished child yet.
    let mut running_batches = None;
    loop {
        let from = after.clone();
        let due = store
            .run(move |s| s.finished_before(cutoff, from.as_ref(), BATCH))
            .await?;
        let Some(last) = due.last().cloned() else {
            return Ok(round);
        };
        let full = due.len() == BATCH;
        let running = match &running_batches {
            Some(running) => std::sync::Arc::clone(running),
            None => {
                let running = std::sync::Arc::new(store.run(|s| s.running_batches()).await?);
                running_batches = Some(std::sync::Arc::clone(&running));
                running
            }
        };
        let due = store
            .run(move |s| s.without_children_of(due, &running))
            .await?;
        let outcomes: Vec<bool> = futures::stream::iter(due)
            .map(|finished| purge_one(&assets.contexts, finished, ttl))
            .buffer_unordered(IN_FLIGHT)
            .collect()
            .await;
        let purged = outcomes.iter().filter(|ok| **ok).count();
        round.purged += purged;
        round.skipped += outcomes.len() - purged;
        if !full {
            return Ok(round);
        }
        if started.elapsed() >= ROUND_BUDGET {
            round.more = true;
            return Ok(round);
        }
        after = Some(last);
    }
}

/// Purges one context at the revision the index holds; true when it went.
async fn purge_one(bucket: &kv::Store, finished: Finished, ttl: Option<Duration>) -> bool {
    let key = finished.id.as_str();
    let result = match (ttl, finished.revision) {
        (Some(ttl), 0) => bucket.purge_with_ttl(key, ttl).await,
        (Some(ttl), revision) => {
            bucket
                .purge_expect_revision_with_ttl(key, revision, ttl)
                .await
        }
        (None, 0) => bucket.purge(key).await,
        (None, revision) => bucket.purge_expect_revision(key, Some(revision)).await,
    };
    match result {
        Ok(()) => {
            tracing::debug!(op = key, "purged a finished operation past its retention");
            true
        }
        Err(e) if e.kind() == kv::UpdateErrorKind::WrongLastRevision => {
            tracing::debug!(
                op = key,
                "not purged: written again since the mirror saw it"
            );
            false
        }
        Err(e) => {
            tracing::warn!(op = key, error = %e, "cannot purge a finished operation");
            false
        }
    }
}

/// The server's time over `retention`: the newest store time a context may
/// have to be purged (exclusive), in ms since the epoch.
pub fn cutoff_ms(now_ms: u64, retention: Duration) -> u64 {
    let retention_ms = u64::try_from(retention.as_millis()).unwrap_or(u64::MAX);
    now_ms.saturating_sub(retention_ms)
}

/// The server's clock and whether the contexts stream takes per-message TTLs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct ServerClock {
    now_ms: u64,
    ttl_allowed: bool,
}

/// The parts of a JetStream stream info answer the purge reads.
#[derive(Deserialize)]
struct StreamInfoNow {
    /// When the server gathered the answer (nats-server 2.10 and newer).
    #[serde(default, with = "time::serde::rfc3339::option")]
    ts: Option<OffsetDateTime>,
    config: StreamTtl,
    state: StreamTimes,
}

#[derive(Deserialize)]
struct StreamTtl {
    #[serde(default)]
    allow_msg_ttl: bool,
}

#[derive(Deserialize)]
struct StreamTimes {
    #[serde(default, with = "time::serde::rfc3339::option")]
    last_ts: Option<OffsetDateTime>,
}

impl StreamInfoNow {
    /// The server's time: `ts`, else the time of its last message (never
    /// later than the server's now).
    fn clock(&self) -> Option<ServerClock> {
        let now = self.ts.or(self.state.last_ts)?;
        Some(ServerClock {
            now_ms: unix_ms(now),
            ttl_allowed: self.config.allow_msg_ttl,
        })
    }
}

async fn server_clock(assets: &Assets) -> Result<ServerClock, PurgeError> {
    use async_nats::jetstream::response::Response;
    let stream = &assets.contexts.stream_name;
    let answer: Response<StreamInfoNow> = assets
        .jetstream
        .request(format!("STREAM.INFO.{stream}"), &())
        .await
        .map_err(|e| PurgeError::ServerTime(e.to_string()))?;
    match answer {
        Response::Ok(info) => info.clock().ok_or_else(|| {
            PurgeError::ServerTime(format!("the info of stream {stream} carries no time"))
        }),
        Response::Err { error } => Err(PurgeError::ServerTime(error.to_string())),
    }
}

fn warn_no_ttl_once(stream: &str, error: &dyn std::fmt::Display) {
    static WARNED: AtomicBool = AtomicBool::new(false);
    if !WARNED.swap(true, Ordering::Relaxed) {
        tracing::warn!(
            stream,
            %error,
            "the contexts stream does not allow per-message TTLs and they cannot be turned on (nats-server older than 2.11?): each purged operation leaves a marker behind; with nats-server 2.11 or newer they are turned on at the next purge"
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_cutoff_is_the_server_time_less_the_retention() {
        assert_eq!(cutoff_ms(10_000, Duration::from_secs(3)), 7_000);
        assert_eq!(cutoff_ms(1_000, Duration::from_secs(3)), 0, "saturates");
        assert_eq!(cutoff_ms(1_000, Duration::MAX), 0);
    }

    #[test]
    fn the_server_time_comes_from_the_stream_info() {
        let with_ts = r#"{"config":{"name":"KV_x","allow_msg_ttl":true},
            "state":{"messages":3,"last_ts":"2026-01-01T00:00:00Z"},
            "ts":"2026-01-02T00:00:00.5Z","created":"2025-01-01T00:00:00Z"}"#;
        let info: StreamInfoNow = serde_json::from_str(with_ts).expect("info");
        assert_eq!(
            info.clock(),
            Some(ServerClock {
                now_ms: 1_767_312_000_500,
                ttl_allowed: true
            })
        );
        // No `ts`: the last message's time, a lower bound of the server's now.
        let without_ts = r#"{"config":{"name":"KV_x"},"state":{"last_ts":"2026-01-01T00:00:00Z"}}"#;
        let info: StreamInfoNow = serde_json::from_str(without_ts).expect("info");
        assert_eq!(
            info.clock(),
            Some(ServerClock {
                now_ms: 1_767_225_600_000,
                ttl_allowed: false
            })
        );
        let nothing = r#"{"config":{},"state":{}}"#;
        let info: StreamInfoNow = serde_json::from_str(nothing).expect("info");
        assert_eq!(info.clock(), None);
    }

    #[test]
    fn an_answer_with_an_error_is_told_apart() {
        use async_nats::jetstream::response::Response;
        let answer: Response<StreamInfoNow> = serde_json::from_str(
            r#"{"error":{"code":404,"err_code":10059,"description":"stream not found"}}"#,
        )
        .expect("answer");
        assert!(matches!(answer, Response::Err { .. }));
    }
}
