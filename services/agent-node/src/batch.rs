//! Runs one batch that the zone lead owns at its term: starts the children
//! (ordinary operations, one per target, see `zerofoot_shared::batch`) up to
//! `max_parallel` unfinished at once, stops starting them as the fail
//! policy says, streams each child's state changes as keyed events of the
//! batch's own log, and writes the batch's outcome once every started child
//! has finished.
//!
//! Nothing of the batch's progress lives only here. Before targets start,
//! the new `launched` count is written as the batch's checkpoint through the
//! owner guard (so a fenced lead starts nothing); the children's states are
//! their own contexts. A new lead re-reads both, starts again any child
//! that was counted but never recorded (child ids are fixed, so a repeat
//! cannot run one twice), and its keyed events skip what the log holds.

use std::collections::HashMap;
use std::time::Duration;

use futures::StreamExt;
use serde_json::json;
use tokio::sync::broadcast;
use tracing::Instrument;
use uuid::Uuid;
use zerofoot_shared::assets::Assets;
use zerofoot_shared::batch::{self, BatchCheckpoint, BatchPlan, Step};
use zerofoot_shared::context_store::ContextStore;
use zerofoot_shared::names::Names;
use zerofoot_shared::protocol::{
    decode, CheckpointPosition, ExecutionContext, OperationKind, OperationState,
};
use zerofoot_shared::submit::{self, Handed};

use crate::eventlog::OwnedLog;
use crate::membership::Membership;
use crate::ownership::{Outcome, OwnError, Owned, Owners};
use crate::rules::StopWhy;
use crate::store::Change;
use zerofoot_shared::eventlog::EncodedEvents;

/// How often the children still unfinished are read from KV, in case a
/// change notification was missed.
const RESCAN_EVERY: Duration = Duration::from_secs(1);

/// How many children a rescan reads at once.
const RESCAN_READS: usize = 32;

pub struct BatchRun {
    pub owned: Owned,
    pub client: async_nats::Client,
    pub names: Names,
    pub assets: Assets,
    /// The node's mirror of the contexts bucket, as it changes.
    pub changes: broadcast::Receiver<Change>,
    /// The nodes this one hears, of whose zones a child's preferred node is picked.
    pub members: Membership,
}

/// Why the batch stopped on this node before it ended.
enum Stop {
    /// A user cancelled it: cancel the children, write `cancelled`.
    Cancelled,
    /// Another owner has it, this node cannot act, or it stepped down.
    Released(String),
}

/// Child changes taken in one go before the next decision.
const MAX_DRAIN: usize = 1000;

/// The last state seen of one child.
#[derive(Clone, PartialEq)]
struct Seen {
    state: OperationState,
    attempts: usize,
    node: Option<String>,
    error: Option<String>,
}

impl Seen {
    fn of(ctx: &ExecutionContext) -> Self {
        Self {
            state: ctx.state,
            attempts: ctx.attempts.len(),
            node: ctx.attempts.last().map(|a| a.node.clone()),
            error: ctx.error.clone(),
        }
    }
}

/// Records what was read of a child. Reads come from the change feed and
/// from KV and may arrive out of order: a finished child never goes back to
/// unfinished, nor to fewer attempts.
fn observe(seen: &mut [Option<Seen>], i: u32, ctx: &ExecutionContext) {
    let Some(slot) = seen.get_mut(i as usize) else {
        return;
    };
    let new = Seen::of(ctx);
    if let Some(old) = slot {
        let older =
            new.attempts < old.attempts || (old.state.is_terminal() && !new.state.is_terminal());
        if older {
            return;
        }
    }
    *slot = Some(new);
}

/// Spawns the run of a batch the lead just took.
pub fn start(owners: &Owners, run: BatchRun, term: u64) {
    let ctx = run.owned.ctx();
    let span = tracing::info_span!("batch", op = %ctx.id, module = %ctx.module, operation = %ctx.operation, node = %owners.node(), term);
    owners.spawn(run.run().instrument(span));
}

impl BatchRun {
    async fn run(mut self) {
        let outcome = match self.drive().await {
            Ok(outcome) => outcome,
            Err(Stop::Cancelled) => {
                let launched = BatchCheckpoint::of(self.owned.ctx()).launched;
                match batch::cancel_children(&self.contexts(), self.owned.ctx(), launched).await {
                    Ok(cancelling) => tracing::info!(
                        launched,
                        cancelling = cancelling.len(),
                        "batch cancelled: its unfinished children are cancelled"
                    ),
                    Err(e) => {
                        tracing::warn!(error = %e, "batch cancelled, but its children could not all be cancelled; a repeated DELETE reaches them")
                    }
                }
                Outcome::Cancelled
            }
            Err(Stop::Released(why)) => {
                tracing::info!(%why, "batch released here; the zone's lead goes on with it");
                return;
            }
        };
        match self.owned.finish(outcome).await {
            Ok(state) => tracing::info!(state = state.as_str(), "batch finished"),
            Err(e) => tracing::warn!(error = %e, "batch's final state not written"),
        }
    }

    fn contexts(&self) -> ContextStore {
        ContextStore::new(self.assets.contexts.clone())
    }

    fn stopped(&self) -> Result<(), Stop> {
        let stopper = self.owned.stopper();
        if !stopper.is_stopped() {
            return Ok(());
        }
        Err(match stopper.why() {
            Some(StopWhy::Cancel) => Stop::Cancelled,
            Some(why) => Stop::Released(format!("{why:?}")),
            None => Stop::Released("this node no longer leads, or is stopping".into()),
        })
    }

    fn stop_for(&self, e: OwnError) -> Stop {
        match self.owned.stopper().why() {
            Some(StopWhy::Cancel) => Stop::Cancelled,
            _ => Stop::Released(e.to_string()),
        }
    }

    async fn drive(&mut self) -> Result<Outcome, Stop> {
        let Some(plan) = self.owned.ctx().batch.clone() else {
            return Ok(Outcome::Failed("not a batch".into()));
        };
        let batch_id = self.owned.ctx().id;
        let total = plan.targets.len() as u32;
        let index_of: HashMap<Uuid, u32> = (0..total)
            .map(|i| (batch::child_id(batch_id, i), i))
            .collect();
        let mut launched = BatchCheckpoint::of(self.owned.ctx()).launched.min(total);
        let mut log = OwnedLog::open(&self.owned, &self.names, &self.assets)
            .await
            .map_err(Stop::Released)?;
        let mut seen: Vec<Option<Seen>> = vec![None; total as usize];
        let mut reported: Vec<Option<(usize, OperationState)>> = vec![None; total as usize];
        // What an earlier owner started: read it, and start again any child
        // it counted but did not record.
        self.rescan(&plan, launched, &mut seen).await;
        tracing::info!(launched, total, "batch running");
        let mut rescan = tokio::time::interval(RESCAN_EVERY);
        rescan.tick().await;
        loop {
            self.stopped()?;
            self.report(&plan, &mut log, &seen, &mut reported).await?;
            let states: Vec<Option<OperationState>> =
                seen.iter().map(|s| s.as_ref().map(|s| s.state)).collect();
            match batch::next_step(&plan, launched, &states) {
                Step::Done(summary) => {
                    return Ok(match summary.outcome() {
                        Ok(result) => Outcome::Complete(Some(result)),
                        Err(error) => Outcome::Failed(error),
                    })
                }
                Step::Launch { from, to } => {
                    let at = CheckpointPosition {
                        seq: log.seq.last_seq(),
                        // The whole log is read on a takeover: every key counts.
                        log_position: 0,
                    };
                    self.owned
                        .checkpoint(BatchCheckpoint { launched: to }.to_value(), at)
                        .await
                        .map_err(|e| self.stop_for(e))?;
                    // A cancel adopted by that write: start nothing.
                    self.stopped()?;
                    launched = to;
                    self.launch(&plan, from..to, &mut seen).await;
                    continue;
                }
                Step::Wait => {}
            }
            let stopper = self.owned.stopper().token().clone();
            tokio::select! {
                _ = stopper.cancelled() => {}
                change = self.changes.recv() => {
                    let mut change = change;
                    // Take the changes already queued (up to a bound) before
                    // deciding: one decision, and one checkpoint, for many
                    // finished children.
                    for _ in 0..MAX_DRAIN {
                        match change {
                            Ok(Change::Put { key, value }) => {
                                let child = key.parse::<Uuid>().ok().and_then(|id| index_of.get(&id));
                                // Only a child's change is decoded.
                                if let Some((&i, Ok(ctx))) = child.map(|i| (i, decode::<ExecutionContext>(&value))) {
                                    observe(&mut seen, i, &ctx);
                                }
                            }
                            Ok(Change::Delete { .. }) => {}
                            Err(broadcast::error::RecvError::Lagged(_)) => {
                                self.rescan(&plan, launched, &mut seen).await;
                                break;
                            }
                            Err(broadcast::error::RecvError::Closed) => {
                                return Err(Stop::Released("the node is stopping".into()))
                            }
                        }
                        change = match self.changes.try_recv() {
                            Ok(next) => Ok(next),
                            Err(broadcast::error::TryRecvError::Lagged(n)) => {
                                Err(broadcast::error::RecvError::Lagged(n))
                            }
                            Err(_) => break,
                        };
                    }
                }
                _ = rescan.tick() => self.rescan(&plan, launched, &mut seen).await,
            }
        }
    }

    /// Starts the children of `targets`, all at once.
    async fn launch(
        &self,
        plan: &BatchPlan,
        targets: std::ops::Range<u32>,
        seen: &mut [Option<Seen>],
    ) {
        let starts = targets.map(|i| async move { (i, self.start_child(plan, i).await) });
        for (i, started) in futures::future::join_all(starts).await {
            if let Some(ctx) = started {
                observe(seen, i, &ctx);
            }
        }
    }

    /// Starts the child of target `i`; what is known of it right away (a
    /// zone without nodes fails it at once).
    async fn start_child(&self, plan: &BatchPlan, i: u32) -> Option<ExecutionContext> {
        let child = batch::child_context(self.owned.ctx(), i)?;
        let store = self.contexts();
        let outcome = match plan.child_kind {
            OperationKind::Sync => {
                let live = self.members.live_in(&child.zone);
                submit::hand_over(&self.client, &self.names, &store, &child, &live).await
            }
            // A monitor is its zone's lead's to take.
            OperationKind::Async => match store.create(&child).await {
                Ok(_) => Ok(Handed::Recorded),
                Err(e) if e.is_conflict() => Ok(Handed::Recorded),
                Err(e) => Err(e),
            },
        };
        match outcome {
            Ok(Handed::NoNode) => {
                let mut failed = child;
                failed.fail(format!(
                    "no agent node of zone {} was running to take the operation",
                    failed.zone
                ));
                Some(failed)
            }
            Ok(_) => None,
            Err(e) => {
                tracing::warn!(child = %child.id, resource = ?child.resource, error = %e, "a child could not be recorded; it is started again on the next rescan");
                None
            }
        }
    }

    /// Reads from KV every started child not known to be finished, and
    /// starts (again) one not recorded at all: a child handed over is
    /// recorded before the hand-over answers, so a missing one never was.
    async fn rescan(&self, plan: &BatchPlan, launched: u32, seen: &mut [Option<Seen>]) {
        let store = self.contexts();
        let batch_id = self.owned.ctx().id;
        let open: Vec<u32> = (0..launched)
            .filter(|&i| {
                !seen[i as usize]
                    .as_ref()
                    .is_some_and(|s| s.state.is_terminal())
            })
            .collect();
        // Each read goes to the contexts stream's leader: a few at a time,
        // not a batch's thousands at once.
        let loaded: Vec<_> = futures::stream::iter(open)
            .map(|i| {
                let store = store.clone();
                async move { (i, store.load(batch::child_id(batch_id, i)).await) }
            })
            .buffer_unordered(RESCAN_READS)
            .collect()
            .await;
        let mut missing = Vec::new();
        for (i, loaded) in loaded {
            match loaded {
                Ok(Some(stored)) => observe(seen, i, &stored.ctx),
                Ok(None) => missing.push(i),
                Err(e) => tracing::debug!(error = %e, "cannot re-read a child; next rescan"),
            }
        }
        for i in missing {
            if let Some(ctx) = self.start_child(plan, i).await {
                observe(seen, i, &ctx);
            }
        }
    }

    /// Appends an event for every child whose state changed since the last
    /// report, keyed by target and state so that no change is told twice,
    /// whichever lead tells it.
    async fn report(
        &self,
        plan: &BatchPlan,
        log: &mut OwnedLog,
        seen: &[Option<Seen>],
        reported: &mut [Option<(usize, OperationState)>],
    ) -> Result<(), Stop> {
        let batch_id = self.owned.ctx().id;
        let mut events = Vec::new();
        for (i, child) in seen.iter().enumerate() {
            let Some(child) = child else { continue };
            let now = (child.attempts, child.state);
            if reported[i] == Some(now) {
                continue;
            }
            reported[i] = Some(now);
            let data = json!({
                "index": i,
                "child": batch::child_id(batch_id, i as u32),
                "resource": plan.targets[i].resource,
                "state": child.state,
                "node": child.node,
                "error": child.error,
            });
            // A retried child runs again: its attempt is part of the key.
            let key = format!("{i}:{}:{}", child.attempts, child.state.as_str());
            if let Some(event) = log.event(&self.owned, data, Some(key)) {
                events.push(event);
            }
        }
        for chunk in events.chunks(100) {
            log.append(&self.owned, &EncodedEvents::of(chunk))
                .await
                .map_err(|e| Stop::Released(e.to_string()))?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use zerofoot_shared::protocol::NewOperation;

    fn child(state: OperationState, attempts: usize) -> ExecutionContext {
        let mut ctx = ExecutionContext::new(NewOperation {
            module: "m".into(),
            version: "1.0.0".into(),
            digest: "sha256:00".into(),
            operation: "o".into(),
            kind: OperationKind::Sync,
            resource: Some("r".into()),
            zone: "default".into(),
            params: json!({}),
            timeout_ms: 1000,
            retries: 3,
            client: None,
        });
        for n in 0..attempts {
            ctx.take(&format!("node-{n}"), 0);
        }
        ctx.state = state;
        ctx
    }

    #[test]
    fn a_finished_child_never_looks_unfinished_again() {
        let mut seen = vec![None; 2];
        observe(&mut seen, 0, &child(OperationState::Failed, 1));
        // A stale change from the feed, read after KV said failed.
        observe(&mut seen, 0, &child(OperationState::Running, 1));
        assert!(seen[0]
            .as_ref()
            .is_some_and(|s| s.state == OperationState::Failed));
        // A retry is newer: more attempts.
        observe(&mut seen, 1, &child(OperationState::Running, 2));
        observe(&mut seen, 1, &child(OperationState::Running, 1));
        assert!(seen[1].as_ref().is_some_and(|s| s.attempts == 2));
        // An index out of range is ignored, not a panic.
        observe(&mut seen, 7, &child(OperationState::Complete, 1));
    }
}
