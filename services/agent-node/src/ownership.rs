//! Owning operations on this node: one way in ([`Owners::take`], or
//! [`Owners::claim`] then [`Claim::commit`] for a driver that starts while
//! the take is written) for every reason a node takes an operation (new,
//! pending, lost owner, lead takeover), decided by the pure rules in
//! `rules.rs` and written with compare-and-set.
//!
//! A take yields an [`Owned`] guard: it holds the context and its revision,
//! the epoch, the stop token and the local slot. Only the guard writes the
//! operation (checkpoints, the outcome), each write refused while the node
//! is fenced (`liveness.rs`) and each conflict re-read: a cancel recorded
//! meanwhile is adopted, another owner ends the guard's right to write.
//! Dropping the guard frees the slot. Every operation task is spawned on one
//! tracker, which shutdown waits for so drivers get their TERM→KILL grace.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use serde_json::Value;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use uuid::Uuid;
use zerofoot_shared::context_store::{ContextStore, ContextStoreError};
use zerofoot_shared::protocol::{
    CheckpointPosition, ExecutionContext, OperationState, RemoteError,
};

use crate::liveness::Liveness;
use crate::rules::{self, Decision, StopWhy, Why};

#[derive(Debug, thiserror::Error)]
pub enum TakeError {
    #[error("no operation {0}")]
    NotFound(Uuid),
    #[error("{0}")]
    Refused(String),
    #[error("operation {0} already runs on this node")]
    RunsHere(Uuid),
    #[error("this node is fenced (NATS has not answered lately) and takes nothing")]
    Fenced,
    #[error(transparent)]
    Store(#[from] ContextStoreError),
}

impl TakeError {
    /// How a submitter hears of it.
    pub fn to_remote(&self) -> RemoteError {
        match self {
            Self::NotFound(_) => RemoteError::new(404, "operation_not_found", self.to_string()),
            Self::Refused(_) | Self::RunsHere(_) => {
                RemoteError::new(409, "not_available", self.to_string())
            }
            Self::Store(e) if e.is_conflict() => {
                RemoteError::new(409, "not_available", format!("{e} (recorded already)"))
            }
            Self::Fenced | Self::Store(_) => RemoteError::new(503, "unavailable", self.to_string()),
        }
    }
}

/// Why a write of an owned operation did not land.
#[derive(Debug, thiserror::Error)]
pub enum OwnError {
    #[error(
        "operation {0} is no longer this node's: another owner has it, or it finished elsewhere"
    )]
    Lost(Uuid),
    #[error("this node is fenced (NATS has not answered within its budget); nothing is written")]
    Fenced,
    #[error(transparent)]
    Store(ContextStoreError),
}

/// Stops one local run, remembering why (the first reason wins). A token
/// cancelled by its parent (shutdown, stepping down) has no reason: the run
/// is released and writes nothing.
#[derive(Clone, Debug)]
pub struct Stopper {
    token: CancellationToken,
    why: Arc<Mutex<Option<StopWhy>>>,
}

impl Stopper {
    fn new(parent: &CancellationToken) -> Self {
        Self {
            token: parent.child_token(),
            why: Arc::default(),
        }
    }

    pub fn stop(&self, why: StopWhy) {
        self.why
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get_or_insert(why);
        self.token.cancel();
    }

    pub fn token(&self) -> &CancellationToken {
        &self.token
    }

    /// Why it was stopped; `None` while running or when released by its parent.
    pub fn why(&self) -> Option<StopWhy> {
        *self.why.lock().unwrap_or_else(|e| e.into_inner())
    }

    pub fn is_stopped(&self) -> bool {
        self.token.is_cancelled()
    }
}

struct Slot {
    stopper: Stopper,
    epoch: u64,
    attempts: usize,
}

/// The operations this node owns, and the tracker of their tasks.
#[derive(Clone)]
pub struct Owners {
    node: String,
    contexts: ContextStore,
    liveness: Liveness,
    slots: Arc<Mutex<HashMap<Uuid, Slot>>>,
    tracker: TaskTracker,
}

/// What a take came to.
pub enum Taken {
    /// Owned by this node now: run it.
    Run(Box<Owned>),
    /// Written in a final state without running (cancelled before, or no
    /// retries left).
    Closed,
}

impl Owners {
    pub fn new(node: &str, contexts: ContextStore, liveness: Liveness) -> Self {
        Self {
            node: node.to_string(),
            contexts,
            liveness,
            slots: Arc::default(),
            tracker: TaskTracker::new(),
        }
    }

    pub fn node(&self) -> &str {
        &self.node
    }

    fn slots(&self) -> std::sync::MutexGuard<'_, HashMap<Uuid, Slot>> {
        self.slots.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Operations owned and running on this node now.
    pub fn running(&self) -> u32 {
        self.slots().len() as u32
    }

    pub fn runs_here(&self, op: &Uuid) -> bool {
        self.slots().contains_key(op)
    }

    /// Stops `op` if it runs here; true if it did.
    pub fn stop(&self, op: &Uuid, why: StopWhy) -> bool {
        match self.slots().get(op) {
            Some(slot) => {
                slot.stopper.stop(why);
                true
            }
            None => false,
        }
    }

    /// Stops every local run (this node fenced itself).
    pub fn stop_all(&self, why: StopWhy) -> usize {
        let slots = self.slots();
        for slot in slots.values() {
            slot.stopper.stop(why);
        }
        slots.len()
    }

    /// A context changed (as this node's mirror saw it): stops the local run
    /// if it was cancelled or taken elsewhere.
    pub fn context_changed(&self, ctx: &ExecutionContext) {
        let slots = self.slots();
        let Some(slot) = slots.get(&ctx.id) else {
            return;
        };
        if let Some(why) = rules::on_change(ctx, &self.node, slot.epoch, slot.attempts) {
            if !slot.stopper.is_stopped() {
                tracing::info!(op = %ctx.id, ?why, state = ctx.state.as_str(), "the context changed under this run: stopping its driver");
                slot.stopper.stop(why);
            }
        }
    }

    /// Checks every local run against the contexts bucket: for when changes
    /// were missed (the change feed lagged), so a cancel or a new owner is
    /// still seen. Work in proportion to the runs here, not the table.
    pub async fn recheck_all(&self) {
        let ops: Vec<Uuid> = self.slots().keys().copied().collect();
        for op in ops {
            match self.contexts.load(op).await {
                Ok(Some(stored)) => self.context_changed(&stored.ctx),
                Ok(None) => {}
                Err(e) => {
                    tracing::warn!(%op, error = %e, "cannot re-read a running operation's context after missed changes; its mirror will tell")
                }
            }
        }
    }

    /// Spawns an operation's task on the tracker shutdown waits for.
    pub fn spawn<F>(&self, task: F)
    where
        F: std::future::Future<Output = ()> + Send + 'static,
    {
        self.tracker.spawn(task);
    }

    /// Waits for every operation task (after shutdown told them to stop).
    pub async fn wait(&self) {
        self.tracker.close();
        self.tracker.wait().await;
    }

    /// Decides a take and reserves the local slot; nothing is written yet.
    /// `known` is the context of a new submission (not read from KV);
    /// `parent` stops the run with it (shutdown, or the lead's term).
    pub async fn claim(
        &self,
        op: Uuid,
        why: Why,
        known: Option<ExecutionContext>,
        parent: &CancellationToken,
    ) -> Result<Claim, TakeError> {
        if !self.liveness.may_act() {
            return Err(TakeError::Fenced);
        }
        if self.runs_here(&op) {
            return Err(TakeError::RunsHere(op));
        }
        let (ctx, revision) = match known {
            Some(ctx) => (ctx, None),
            None => {
                let stored = self
                    .contexts
                    .load(op)
                    .await?
                    .ok_or(TakeError::NotFound(op))?;
                (stored.ctx, Some(stored.revision))
            }
        };
        let (ctx, run) = match rules::decide(ctx, &why, &self.node) {
            Decision::Refuse(reason) => return Err(TakeError::Refused(reason)),
            Decision::Run(ctx) => (*ctx, true),
            Decision::Close(ctx) => (*ctx, false),
        };
        let stopper = Stopper::new(parent);
        let slot = if run {
            let mut slots = self.slots();
            if slots.contains_key(&op) {
                return Err(TakeError::RunsHere(op));
            }
            slots.insert(
                op,
                Slot {
                    stopper: stopper.clone(),
                    epoch: ctx.epoch,
                    attempts: ctx.attempts.len(),
                },
            );
            Some(SlotGuard {
                owners: self.clone(),
                op,
            })
        } else {
            None
        };
        Ok(Claim {
            owners: self.clone(),
            ctx,
            revision,
            stopper,
            slot,
        })
    }

    /// [`Owners::claim`] and [`Claim::commit`] in one.
    pub async fn take(
        &self,
        op: Uuid,
        why: Why,
        parent: &CancellationToken,
    ) -> Result<Taken, TakeError> {
        self.claim(op, why, None, parent).await?.commit().await
    }
}

/// Frees a local slot when dropped.
struct SlotGuard {
    owners: Owners,
    op: Uuid,
}

impl Drop for SlotGuard {
    fn drop(&mut self) {
        self.owners.slots().remove(&self.op);
    }
}

/// A decided take whose write has not landed yet.
pub struct Claim {
    owners: Owners,
    ctx: ExecutionContext,
    revision: Option<u64>,
    stopper: Stopper,
    slot: Option<SlotGuard>,
}

impl Claim {
    pub fn ctx(&self) -> &ExecutionContext {
        &self.ctx
    }

    pub fn stopper(&self) -> &Stopper {
        &self.stopper
    }

    /// Writes the take (create for a submission, compare-and-set otherwise).
    pub async fn commit(self) -> Result<Taken, TakeError> {
        let Claim {
            owners,
            ctx,
            revision,
            stopper,
            slot,
        } = self;
        if !owners.liveness.may_act() {
            return Err(TakeError::Fenced);
        }
        let revision = match revision {
            Some(revision) => owners.contexts.cas(&ctx, revision).await?,
            None => owners.contexts.create(&ctx).await?,
        };
        let Some(slot) = slot else {
            tracing::info!(op = %ctx.id, state = ctx.state.as_str(), "closed without running");
            return Ok(Taken::Closed);
        };
        if ctx.attempts.len() > 1 {
            metrics::counter!("zf_takeovers_total", "kind" => ctx.kind.as_str()).increment(1);
        }
        Ok(Taken::Run(Box::new(Owned {
            owners,
            ctx,
            revision,
            stopper,
            _slot: slot,
        })))
    }
}

/// How a run ended, as the owner writes it.
#[derive(Debug)]
pub enum Outcome {
    Complete(Option<Value>),
    Failed(String),
    Cancelled,
}

/// An operation this node owns: the only way to write it.
pub struct Owned {
    owners: Owners,
    ctx: ExecutionContext,
    revision: u64,
    stopper: Stopper,
    _slot: SlotGuard,
}

impl Owned {
    pub fn ctx(&self) -> &ExecutionContext {
        &self.ctx
    }

    pub fn stopper(&self) -> &Stopper {
        &self.stopper
    }

    pub fn node(&self) -> &str {
        &self.owners.node
    }

    /// Records a checkpoint at `at` in the log.
    pub async fn checkpoint(
        &mut self,
        data: Value,
        at: CheckpointPosition,
    ) -> Result<(), OwnError> {
        self.ctx.checkpoint = Some(data);
        self.ctx.checkpoint_at = Some(at);
        self.ctx.updated_at = zerofoot_shared::time::now();
        self.save().await
    }

    /// Writes the outcome; the state written.
    pub async fn finish(mut self, outcome: Outcome) -> Result<OperationState, OwnError> {
        match outcome {
            Outcome::Complete(result) => self.ctx.complete(result),
            Outcome::Failed(error) => self.ctx.fail(error),
            Outcome::Cancelled => self.ctx.cancel(),
        }
        self.save().await?;
        Ok(self.ctx.state)
    }

    /// Compare-and-set of the context as this guard holds it. On a conflict
    /// the stored context is read again: still this take's, its newer state
    /// (a cancel request) is kept and the write retried; otherwise the
    /// ownership is gone. While NATS does not answer (a stream electing its
    /// leader), the write is tried again with backoff as long as this node
    /// may act: giving up would leave a finished run's outcome unwritten,
    /// and the operation to be run again.
    async fn save(&mut self) -> Result<(), OwnError> {
        let op = self.ctx.id;
        let mut backoff = rules::Backoff::default();
        let mut conflicts = 0;
        while conflicts < 10 {
            if !self.owners.liveness.may_act() {
                return Err(OwnError::Fenced);
            }
            match self.owners.contexts.cas(&self.ctx, self.revision).await {
                Ok(revision) => {
                    self.revision = revision;
                    return Ok(());
                }
                Err(e) if e.is_conflict() => conflicts += 1,
                Err(e) if e.is_unavailable() => {
                    pause_or_give_up(&mut backoff, e).await?;
                    continue;
                }
                Err(e) => return Err(OwnError::Store(e)),
            }
            let stored = match self.owners.contexts.load(op).await {
                Ok(stored) => stored.ok_or(OwnError::Lost(op))?,
                Err(e) if e.is_unavailable() => {
                    pause_or_give_up(&mut backoff, e).await?;
                    continue;
                }
                Err(e) => return Err(OwnError::Store(e)),
            };
            // An earlier try whose answer was lost landed after all.
            if stored.ctx == self.ctx {
                self.revision = stored.revision;
                return Ok(());
            }
            match rules::on_change(
                &stored.ctx,
                &self.owners.node,
                self.ctx.epoch,
                self.ctx.attempts.len(),
            ) {
                None => {}
                Some(StopWhy::Cancel) => {
                    self.stopper.stop(StopWhy::Cancel);
                    if !self.ctx.state.is_terminal() {
                        self.ctx.state = OperationState::Cancelling;
                    }
                }
                Some(_) => return Err(OwnError::Lost(op)),
            }
            self.revision = stored.revision;
        }
        Err(OwnError::Lost(op))
    }
}

/// After NATS left a context read or write unanswered: waits the backoff's
/// next delay, or gives the error back once it has failed too often.
async fn pause_or_give_up(
    backoff: &mut rules::Backoff,
    error: ContextStoreError,
) -> Result<(), OwnError> {
    let Some(delay) = backoff.failed(false) else {
        return Err(OwnError::Store(error));
    };
    tracing::warn!(%error, ?delay, "NATS did not answer a context read or write; trying again");
    tokio::time::sleep(delay).await;
    Ok(())
}
