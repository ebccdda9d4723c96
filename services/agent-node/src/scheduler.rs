//! The lead's ownership of async operations (SPEC §6): each zone elects its
//! own lead, which runs the monitors of that zone, and its batches
//! (`batch.rs`). On becoming lead at
//! term T it takes every unfinished async operation of its zone not running here (the
//! rules record the previous owner's loss), then every new pending one as
//! the mirror sees it. On stepping down every monitor stops at once. It also
//! purges finished contexts past their retention (only leads do; a purge
//! expects the revision, so two zones' leads never purge one twice).

use std::time::Duration;

use futures::StreamExt;

use tokio::sync::{broadcast, watch};
use tokio_util::sync::CancellationToken;
use uuid::Uuid;
use zerofoot_shared::assets::Assets;
use zerofoot_shared::context_store::ContextStore;
use zerofoot_shared::names::Names;
use zerofoot_shared::protocol::{decode, ExecutionContext, OperationKind, OperationState, Role};

use crate::batch::BatchRun;
use crate::heartbeat::Standing;
use crate::membership::Membership;
use crate::monitor::{self, Monitor};
use crate::ownership::{Owners, TakeError, Taken};
use crate::rules::{Backoff, Why};
use crate::run::Runner;
use crate::store::{Change, Store};

/// Monitors a new lead takes over at once.
const TAKES_AT_ONCE: usize = 64;

/// What the lead schedules with.
pub struct Scheduler {
    pub owners: Owners,
    pub client: async_nats::Client,
    pub runner: Runner,
    pub names: Names,
    pub assets: Assets,
    pub store: Store,
    pub standing: watch::Receiver<Standing>,
    pub changes: broadcast::Receiver<Change>,
    pub rescan_every: Duration,
    /// How long finished contexts are kept.
    pub retention: Duration,
    /// The zone this node leads when it leads: only its monitors are taken.
    pub zone: String,
    pub members: Membership,
}

/// The term this node leads and the token that stops its monitors.
struct Leading {
    term: u64,
    token: CancellationToken,
}

impl Scheduler {
    pub async fn run(mut self, cancel: CancellationToken) {
        let mut leading: Option<Leading> = None;
        // A purge round runs beside the scheduling, never blocking a take.
        let mut purging: Option<tokio::task::JoinHandle<()>> = None;
        let mut rescan = tokio::time::interval(self.rescan_every);
        let mut purge = tokio::time::interval(
            (self.retention / 4).clamp(Duration::from_millis(200), Duration::from_secs(60)),
        );
        loop {
            tokio::select! {
                _ = cancel.cancelled() => return,
                changed = self.standing.changed() => {
                    if changed.is_err() {
                        return;
                    }
                    let now = *self.standing.borrow_and_update();
                    if let Some(lead) = &leading {
                        if now.role != Role::Lead || now.term != lead.term {
                            lead.token.cancel();
                            tracing::warn!(term = lead.term, "no longer leading: monitors stopped");
                            leading = None;
                        }
                    }
                    if now.role == Role::Lead && leading.is_none() {
                        let lead = Leading { term: now.term, token: cancel.child_token() };
                        tracing::info!(term = now.term, "leading: taking over unfinished monitors");
                        self.take_all(&lead).await;
                        leading = Some(lead);
                    }
                }
                change = self.changes.recv() => match change {
                    Ok(Change::Put { value, .. }) => {
                        // Only a lead decodes the change: every node hears all of them.
                        if let Some((lead, Ok(ctx))) = leading.as_ref().map(|lead| (lead, decode::<ExecutionContext>(&value))) {
                            if ctx.kind == OperationKind::Async && ctx.state == OperationState::Pending && ctx.zone == self.zone {
                                self.take(ctx.id, lead).await;
                            }
                        }
                    }
                    Ok(Change::Delete { .. }) => {}
                    Err(broadcast::error::RecvError::Lagged(_)) => {
                        if let Some(lead) = &leading {
                            self.take_all(lead).await;
                        }
                    }
                    Err(broadcast::error::RecvError::Closed) => return,
                },
                _ = purge.tick() => {
                    let idle = purging.as_ref().is_none_or(|round| round.is_finished());
                    if leading.is_some() && idle {
                        let (assets, store, retention) = (self.assets.clone(), self.store.clone(), self.retention);
                        purging = Some(tokio::spawn(async move {
                            crate::purge::purge_finished(&assets, &store, retention).await;
                        }));
                    }
                }
                // A safety net for anything a notification missed.
                _ = rescan.tick() => {
                    if let Some(lead) = &leading {
                        self.take_all(lead).await;
                    }
                }
            }
        }
    }

    /// Takes every unfinished monitor that does not run here.
    async fn take_all(&self, lead: &Leading) {
        let (zone, owners) = (self.zone.clone(), self.owners.clone());
        // The monitors that already run here are not even decoded: a lead
        // rescans every lapse, and may hold thousands.
        let not_here = move |key: &str| key.parse().is_ok_and(|id| !owners.runs_here(&id));
        let contexts = match self
            .store
            .run(move |s| s.unfinished_in(OperationKind::Async, &zone, not_here))
            .await
        {
            Ok(c) => c,
            Err(e) => {
                tracing::error!(error = %e, "cannot read the local mirror to take over monitors");
                return;
            }
        };
        // Each take is a compare-and-set synced to disk: a failover waits
        // for one of them, not for one per monitor in a row.
        // One may have started here since.
        let ops = contexts
            .into_iter()
            .filter(|ctx| !self.owners.runs_here(&ctx.id));
        futures::stream::iter(ops)
            .for_each_concurrent(TAKES_AT_ONCE, |ctx| self.take(ctx.id, lead))
            .await;
    }

    /// A batch closed as `cancelled` by a take (its cancel was recorded and
    /// its owner died) may still have running children: cancel them.
    fn closed(&self, op: Uuid) {
        let contexts = ContextStore::new(self.assets.contexts.clone());
        self.owners.spawn(async move {
            // Reads fail while the servers elect a leader, which is when
            // takes happen: a few tries before giving the children up.
            let mut backoff = Backoff::default();
            let stored = loop {
                match contexts.load(op).await {
                    Ok(Some(stored)) => break stored,
                    Ok(None) => return,
                    Err(e) => match backoff.failed(false) {
                        Some(wait) => {
                            tracing::debug!(%op, error = %e, "cannot read a closed batch yet; trying again");
                            tokio::time::sleep(wait).await;
                        }
                        None => {
                            tracing::warn!(%op, error = %e, "cannot read a closed batch, so its unfinished children are not cancelled; a repeated DELETE of the batch reaches them");
                            return;
                        }
                    },
                }
            };
            let batch = stored.ctx;
            if batch.batch.is_none() || batch.state != OperationState::Cancelled {
                return;
            }
            let launched = zerofoot_shared::batch::BatchCheckpoint::of(&batch).launched;
            match zerofoot_shared::batch::cancel_children(&contexts, &batch, launched).await {
                Ok(cancelling) => tracing::info!(%op, launched, cancelling = cancelling.len(), "cancelled batch closed: its unfinished children are cancelled"),
                Err(e) => tracing::warn!(%op, error = %e, "cancelled batch closed, but its children could not all be cancelled; a repeated DELETE reaches them"),
            }
        });
    }

    /// Takes one async operation at the lead's term and starts its monitor.
    async fn take(&self, op: Uuid, lead: &Leading) {
        if lead.token.is_cancelled() {
            return;
        }
        let why = Why::Lead { term: lead.term };
        match self.owners.take(op, why, &lead.token).await {
            Ok(Taken::Run(owned)) if owned.ctx().batch.is_some() => {
                let run = BatchRun {
                    owned: *owned,
                    client: self.client.clone(),
                    names: self.names.clone(),
                    assets: self.assets.clone(),
                    changes: self.changes.resubscribe(),
                    members: self.members.clone(),
                };
                crate::batch::start(&self.owners, run, lead.term);
            }
            Ok(Taken::Run(owned)) => {
                let monitor = Monitor {
                    owned: *owned,
                    runner: self.runner.clone(),
                    names: self.names.clone(),
                    assets: self.assets.clone(),
                };
                monitor::start(&self.owners, monitor, lead.term);
            }
            Ok(Taken::Closed) => self.closed(op),
            Err(TakeError::RunsHere(_) | TakeError::Refused(_)) => {}
            Err(e) => tracing::debug!(op = %op, error = %e, "monitor not taken"),
        }
    }
}
