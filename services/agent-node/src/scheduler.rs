//! The lead's ownership of async operations (SPEC §6): on becoming lead at
//! term T it reads its local mirror and takes every unfinished async
//! operation not owned at T (recording the loss of the previous owner), then
//! takes every new pending one as the mirror sees it. On stepping down every
//! monitor stops at once.

use std::time::Duration;

use tokio::sync::{broadcast, watch};
use tokio_util::sync::CancellationToken;
use tracing::Instrument;
use uuid::Uuid;
use zerofoot_shared::protocol::{decode, ExecutionContext, OperationKind, OperationState, Role};

use crate::executor::Executor;
use crate::heartbeat::Standing;
use crate::monitor::Monitor;
use crate::store::{Change, Store};

/// What the lead schedules with.
pub struct Scheduler {
    pub exec: Executor,
    pub store: Store,
    pub standing: watch::Receiver<Standing>,
    pub changes: broadcast::Receiver<Change>,
    pub rescan_every: Duration,
    /// How long finished contexts are kept.
    pub retention: Duration,
}

pub async fn run(scheduler: Scheduler, cancel: CancellationToken) {
    let Scheduler {
        exec,
        store,
        mut standing,
        mut changes,
        rescan_every,
        retention,
    } = scheduler;
    let mut leading: Option<(u64, CancellationToken)> = None;
    let mut rescan = tokio::time::interval(rescan_every);
    let mut purge = tokio::time::interval(
        (retention / 4).clamp(Duration::from_millis(200), Duration::from_secs(60)),
    );
    loop {
        tokio::select! {
            _ = cancel.cancelled() => return,
            changed = standing.changed() => {
                if changed.is_err() {
                    return;
                }
                let now = *standing.borrow_and_update();
                match (&leading, now.role) {
                    (Some((term, token)), _) if now.role != Role::Lead || now.term != *term => {
                        token.cancel();
                        tracing::warn!(term, "no longer leading: monitors stopped");
                        leading = None;
                    }
                    _ => {}
                }
                if now.role == Role::Lead && leading.is_none() {
                    let token = cancel.child_token();
                    leading = Some((now.term, token.clone()));
                    tracing::info!(term = now.term, "leading: taking over unfinished monitors");
                    take_all(&exec, &store, now.term, &token).await;
                }
            }
            change = changes.recv() => match change {
                Ok(Change::Put { value, .. }) => {
                    if let Some((term, token)) = &leading {
                        if let Ok(ctx) = decode::<ExecutionContext>(&value) {
                            if ctx.kind == OperationKind::Async && ctx.state == OperationState::Pending {
                                take(&exec, ctx.id, *term, token).await;
                            }
                        }
                    }
                }
                Ok(Change::Delete { .. }) => {}
                Err(broadcast::error::RecvError::Lagged(_)) => {
                    if let Some((term, token)) = &leading {
                        take_all(&exec, &store, *term, token).await;
                    }
                }
                Err(broadcast::error::RecvError::Closed) => return,
            },
            _ = purge.tick() => {
                if leading.is_some() {
                    purge_finished(&exec, &store, retention).await;
                }
            }
            // A safety net for anything a notification missed.
            _ = rescan.tick() => {
                if let Some((term, token)) = &leading {
                    take_all(&exec, &store, *term, token).await;
                }
            }
        }
    }
}

async fn take_all(exec: &Executor, store: &Store, term: u64, lead: &CancellationToken) {
    let contexts = match store.run(|s| s.contexts()).await {
        Ok(c) => c,
        Err(e) => {
            tracing::error!(error = %e, "cannot read the local mirror to take over monitors");
            return;
        }
    };
    for ctx in contexts {
        let unfinished = ctx.kind == OperationKind::Async && !ctx.state.is_terminal();
        let ours = ctx.owner.as_deref() == Some(exec.node.as_str())
            && ctx.epoch == term
            && exec.is_running_here(&ctx.id);
        if unfinished && !ours {
            take(exec, ctx.id, term, lead).await;
        }
    }
}

/// Takes one async operation at `term` (compare-and-set on the fresh KV
/// entry) and starts its monitor.
async fn take(exec: &Executor, op: Uuid, term: u64, lead: &CancellationToken) {
    if lead.is_cancelled() || exec.is_running_here(&op) {
        return;
    }
    let Ok(Some((mut ctx, revision))) = exec.read(&op).await else {
        return;
    };
    if ctx.kind != OperationKind::Async || ctx.state.is_terminal() {
        return;
    }
    if ctx.epoch > term {
        return;
    }
    if ctx.state == OperationState::Running {
        // Another owner, an older term, or this node before a restart.
        ctx.owner_lost();
    }
    ctx.take(&exec.node, term);
    let cancel = lead.child_token();
    if !exec.claim_local(op, cancel.clone()) {
        return;
    }
    let revision = match exec.write(&ctx, revision).await {
        Ok(revision) => revision,
        Err(e) => {
            exec.release_local(&op);
            tracing::debug!(op = %op, error = %e, "monitor not taken");
            return;
        }
    };
    let monitor = Monitor {
        exec: exec.clone(),
        ctx: ctx.clone(),
        revision,
        lead: lead.clone(),
        cancel,
    };
    let exec = exec.clone();
    let span = tracing::info_span!("monitor", op = %op, module = %ctx.module, operation = %ctx.operation, term);
    tokio::spawn(
        async move {
            monitor.run().await;
            exec.release_local(&op);
        }
        .instrument(span),
    );
}

/// Purges finished contexts older than the retention period. Only the lead
/// does it, so the cluster purges each once.
async fn purge_finished(exec: &Executor, store: &Store, retention: Duration) {
    let Ok(contexts) = store.run(|s| s.contexts()).await else {
        return;
    };
    let horizon = zerofoot_shared::time::now() - retention;
    for ctx in contexts
        .into_iter()
        .filter(|c| c.state.is_terminal() && c.updated_at < horizon)
    {
        match exec.assets.contexts.purge(ctx.id.to_string()).await {
            Ok(()) => {
                tracing::info!(op = %ctx.id, state = ctx.state.as_str(), "purged a finished operation past its retention")
            }
            Err(e) => tracing::warn!(op = %ctx.id, error = %e, "cannot purge a finished operation"),
        }
    }
}
