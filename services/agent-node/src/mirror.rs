//! Keeps a redb table equal to a KV bucket: replays from the last revision
//! applied when the stream still holds it, otherwise rebuilds from a full
//! snapshot; then follows live changes, committing them in batches so the
//! mirror keeps up with thousands of changes per second. A batch is what
//! arrives within a short window after a change: applying every change at
//! once made the other nodes compete for the CPU with an owner starting its
//! driver, while nothing waits on a mirror for a sync operation's answer.
//!
//! A replay sees every change after the last revision applied, with one
//! exception: the marker of a purged key is not kept forever (the lead
//! purges finished contexts with a marker that expires, see `purge.rs`), so
//! a mirror that was away longer than that would keep the key. Before each
//! replay the mirror therefore lists the bucket's live keys (headers only)
//! and drops every local key the bucket no longer has. A snapshot needs no
//! such step: it holds only what exists.

use std::collections::HashSet;
use std::time::Duration;

use async_nats::jetstream::kv;
use futures::StreamExt;
use tokio::sync::broadcast;
use tokio_util::sync::CancellationToken;

use crate::store::{Change, Mirrored, Stamped, Store};

/// How long a mirror waits after a change for more to commit with it.
const COALESCE: Duration = Duration::from_millis(5);
/// Largest number of changes committed in one redb transaction.
pub const MAX_BATCH: usize = 2048;
/// How often a batch is committed with an fsync; the ones between skip it,
/// which bounds what a crash makes the node replay.
const DURABLE_EVERY: Duration = Duration::from_secs(1);
/// A snapshot or key listing that delivers nothing for this long has lost
/// messages it counted on (a purge marker expired on the way) and starts
/// again; the new consumer counts right.
const STALL: Duration = Duration::from_secs(5);

/// Follows `bucket` into `store` until `cancel` fires; every applied change
/// is also sent to `notify`, if given.
pub async fn follow(
    bucket: kv::Store,
    store: Store,
    what: Mirrored,
    notify: Option<broadcast::Sender<Change>>,
    cancel: CancellationToken,
) {
    let mut backoff = Duration::from_millis(100);
    loop {
        match follow_once(&bucket, &store, what, notify.as_ref(), &cancel).await {
            Ok(()) => return,
            Err(e) => {
                tracing::warn!(table = what.name(), error = %e, "mirror interrupted; resuming")
            }
        }
        tokio::select! {
            _ = cancel.cancelled() => return,
            _ = tokio::time::sleep(backoff) => {}
        }
        backoff = (backoff * 2).min(Duration::from_secs(5));
    }
}

fn change_of(entry: &kv::Entry) -> Stamped {
    let change = match entry.operation {
        kv::Operation::Put => Change::Put {
            key: entry.key.clone(),
            value: entry.value.clone(),
        },
        kv::Operation::Delete | kv::Operation::Purge => Change::Delete {
            key: entry.key.clone(),
        },
    };
    Stamped::new(change, entry.revision, entry.created)
}

/// Drops every local key the bucket no longer holds (its delete marker may
/// have expired while this mirror was away), at the revision already
/// applied. Returns the deletes it applied, or `None` when cancelled.
async fn drop_vanished(
    bucket: &kv::Store,
    store: &Store,
    what: Mirrored,
    applied: u64,
    cancel: &CancellationToken,
) -> Result<Option<Vec<Stamped>>, String> {
    let mut live = HashSet::new();
    let mut keys = bucket.keys().await.map_err(|e| e.to_string())?;
    loop {
        let key = tokio::select! {
            _ = cancel.cancelled() => return Ok(None),
            k = tokio::time::timeout(STALL, keys.next()) => {
                k.map_err(|_| format!("the key listing stalled for {STALL:?}"))?
            }
        };
        match key {
            Some(key) => {
                live.insert(key.map_err(|e| e.to_string())?);
            }
            None => break,
        }
    }
    let local = store
        .run(move |s| s.keys(what))
        .await
        .map_err(|e| e.to_string())?;
    let gone: Vec<Stamped> = local
        .into_iter()
        .filter(|key| !live.contains(key))
        .map(|key| Stamped {
            change: Change::Delete { key },
            revision: applied,
            stored_ms: 0,
        })
        .collect();
    if gone.is_empty() {
        return Ok(Some(gone));
    }
    tracing::info!(
        table = what.name(),
        keys = gone.len(),
        "dropping entries the bucket no longer holds"
    );
    store
        .run(move |s| s.apply(what, &gone, applied, true).map(|()| gone))
        .await
        .map(Some)
        .map_err(|e| e.to_string())
}

fn announce(notify: Option<&broadcast::Sender<Change>>, batch: Vec<Stamped>) {
    if let Some(notify) = notify {
        for stamped in batch {
            // Nobody listening is fine.
            let _ = notify.send(stamped.change);
        }
    }
}

/// Runs until cancelled (`Ok`) or until the watch fails (`Err`).
async fn follow_once(
    bucket: &kv::Store,
    store: &Store,
    what: Mirrored,
    notify: Option<&broadcast::Sender<Change>>,
    cancel: &CancellationToken,
) -> Result<(), String> {
    let applied = store
        .run(move |s| s.revision(what))
        .await
        .map_err(|e| e.to_string())?;
    let status = bucket.status().await.map_err(|e| e.to_string())?;
    let state = &status.info.state;
    // Replay works when every message after `applied` is still in the stream.
    // Otherwise (a new node, or history the stream dropped) take a snapshot.
    let replay =
        applied > 0 && applied + 1 >= state.first_sequence && applied <= state.last_sequence;
    let mut watch = if replay {
        let Some(dropped) = drop_vanished(bucket, store, what, applied, cancel).await? else {
            return Ok(());
        };
        announce(notify, dropped);
        tracing::info!(
            table = what.name(),
            from = applied + 1,
            "replaying missed changes"
        );
        bucket
            .watch_all_from_revision(applied + 1)
            .await
            .map_err(|e| e.to_string())?
    } else {
        let snapshot_end = state.last_sequence;
        tracing::info!(
            table = what.name(),
            applied,
            "rebuilding the mirror from a snapshot"
        );
        // Current value of every key first, then live changes.
        let mut watch = bucket
            .watch_with_history(">")
            .await
            .map_err(|e| e.to_string())?;
        let mut snapshot = Vec::new();
        let mut revision = snapshot_end;
        if state.messages > 0 {
            loop {
                let entry = tokio::select! {
                    _ = cancel.cancelled() => return Ok(()),
                    e = tokio::time::timeout(STALL, watch.next()) => {
                        e.map_err(|_| format!("the snapshot stalled for {STALL:?}"))?
                    }
                };
                let entry = entry.ok_or("watch ended")?.map_err(|e| e.to_string())?;
                revision = revision.max(entry.revision);
                let done = entry.delta == 0;
                snapshot.push(change_of(&entry));
                if done {
                    break;
                }
            }
        }
        let count = snapshot.len();
        store
            .run(move |s| s.replace(what, &snapshot, revision))
            .await
            .map_err(|e| e.to_string())?;
        tracing::info!(
            table = what.name(),
            entries = count,
            revision,
            "mirror rebuilt"
        );
        watch
    };

    let mut last_durable = std::time::Instant::now();
    loop {
        let first = tokio::select! {
            _ = cancel.cancelled() => return Ok(()),
            e = watch.next() => e,
        };
        let first = first.ok_or("watch ended")?.map_err(|e| e.to_string())?;
        let mut revision = first.revision;
        let mut behind = first.delta;
        let mut batch = vec![change_of(&first)];
        // Take whatever else comes within the coalescing window.
        let window = tokio::time::sleep(COALESCE);
        tokio::pin!(window);
        while batch.len() < MAX_BATCH {
            let next = tokio::select! {
                biased;
                _ = cancel.cancelled() => return Ok(()),
                e = watch.next() => e,
                _ = &mut window => break,
            };
            match next {
                Some(Ok(entry)) => {
                    revision = revision.max(entry.revision);
                    behind = entry.delta;
                    batch.push(change_of(&entry));
                }
                Some(Err(e)) => return Err(e.to_string()),
                None => return Err("watch ended".into()),
            }
        }
        let durable = last_durable.elapsed() >= DURABLE_EVERY;
        let batch = store
            .run(move |s| s.apply(what, &batch, revision, durable).map(|()| batch))
            .await
            .map_err(|e| e.to_string())?;
        announce(notify, batch);
        metrics::gauge!("zf_mirror_lag_revisions", "table" => what.name()).set(behind as f64);
        if durable {
            last_durable = std::time::Instant::now();
        }
    }
}
