//! One watch on the contexts bucket for the whole instance, handing each
//! change to the requests waiting on that operation, to the per-client
//! counts of unfinished operations and to the listing index. A request per consumer would cost a
//! JetStream consumer per sync call and run into the server's consumer
//! limit under load.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_nats::jetstream::kv;
use futures::StreamExt;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;
use uuid::Uuid;
use zerofoot_shared::protocol::{decode, ExecutionContext};

use crate::client_limits::ClientLimits;
use crate::operation_index::{OperationIndex, Summary};

type Waiters = HashMap<Uuid, Vec<mpsc::UnboundedSender<ExecutionContext>>>;

#[derive(Clone)]
pub struct ContextWatch {
    waiters: Arc<Mutex<Waiters>>,
    limits: ClientLimits,
    index: OperationIndex,
}

/// The part of a context the client counts and the listing index need.
#[derive(serde::Deserialize)]
struct Listed {
    #[serde(default)]
    client: Option<String>,
    #[serde(flatten)]
    summary: Summary,
}

/// Changes of one operation's context, for as long as this lives.
pub struct Subscription {
    watch: ContextWatch,
    op: Uuid,
    pub changes: mpsc::UnboundedReceiver<ExecutionContext>,
}

impl Drop for Subscription {
    fn drop(&mut self) {
        let mut waiters = self.watch.waiters.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(list) = waiters.get_mut(&self.op) {
            list.retain(|tx| !tx.is_closed());
            if list.is_empty() {
                waiters.remove(&self.op);
            }
        }
    }
}

impl ContextWatch {
    pub fn new(limits: ClientLimits) -> Self {
        Self {
            waiters: Arc::default(),
            limits,
            index: OperationIndex::default(),
        }
    }

    pub fn limits(&self) -> &ClientLimits {
        &self.limits
    }

    pub fn index(&self) -> &OperationIndex {
        &self.index
    }

    /// Registers interest in `op`; subscribe before writing so no change is missed.
    pub fn subscribe(&self, op: Uuid) -> Subscription {
        let (tx, changes) = mpsc::unbounded_channel();
        self.waiters
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .entry(op)
            .or_default()
            .push(tx);
        Subscription {
            watch: self.clone(),
            op,
            changes,
        }
    }

    /// Follows the bucket until `cancel` fires, re-watching after errors.
    /// Each watch starts with the latest value of every context, so the
    /// client counts include operations submitted before this instance started.
    pub async fn follow(self, bucket: kv::Store, cancel: CancellationToken) {
        loop {
            self.index.set_current(false);
            match bucket.watch_with_history(">").await {
                Ok(mut changes) => loop {
                    let entry = tokio::select! {
                        _ = cancel.cancelled() => return,
                        e = changes.next() => e,
                    };
                    match entry {
                        Some(Ok(entry)) => {
                            self.dispatch(&entry);
                            if entry.seen_current {
                                self.index.set_current(true);
                            }
                        }
                        _ => break,
                    }
                },
                Err(e) => tracing::warn!(error = %e, "cannot watch the contexts bucket; retrying"),
            }
            tokio::select! {
                _ = cancel.cancelled() => return,
                _ = tokio::time::sleep(Duration::from_millis(200)) => {}
            }
        }
    }

    fn dispatch(&self, entry: &kv::Entry) {
        let Ok(op) = entry.key.parse::<Uuid>() else {
            return;
        };
        if entry.operation != kv::Operation::Put {
            self.limits.forget(&op);
            self.index.remove(&op);
            return;
        }
        if let Ok(seen) = serde_json::from_slice::<Listed>(&entry.value) {
            self.limits
                .observe(op, seen.client.as_deref(), seen.summary.state.is_terminal());
            self.index.put(op, seen.summary);
        }
        let waiters = self.waiters.lock().unwrap_or_else(|e| e.into_inner());
        let Some(list) = waiters.get(&op) else { return };
        if let Ok(ctx) = decode::<ExecutionContext>(&entry.value) {
            for tx in list {
                let _ = tx.send(ctx.clone());
            }
        }
    }
}
