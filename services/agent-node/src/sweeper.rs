//! Makes sure no sync operation is left behind: one whose owner stopped
//! beating (or is this node, without a local run) is taken over, one left
//! pending longer than the lapse (its submission got lost) is taken. Every
//! node sweeps the unfinished contexts of its zone in its mirror (a node of
//! another zone may not reach the resource); compare-and-set makes exactly
//! one of them win.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use tokio_util::sync::CancellationToken;
use uuid::Uuid;
use zerofoot_shared::protocol::{OperationKind, OperationState};

use crate::membership::Membership;
use crate::ownership::{Owners, Taken};
use crate::rules::Why;
use crate::run::Runner;
use crate::store::Store;

pub struct Sweeper {
    pub owners: Owners,
    pub runner: Runner,
    pub store: Store,
    pub members: Membership,
    pub lapse: Duration,
    /// Only operations of this node's zone are its to take.
    pub zone: String,
}

impl Sweeper {
    pub async fn run(self, cancel: CancellationToken) {
        let mut first_seen_pending: HashMap<Uuid, Instant> = HashMap::new();
        let period = (self.lapse / 2).max(Duration::from_millis(20));
        loop {
            tokio::select! {
                _ = cancel.cancelled() => return,
                _ = tokio::time::sleep(period) => {}
            }
            if !self.members.settled() {
                continue;
            }
            let zone = self.zone.clone();
            let contexts = match self
                .store
                .run(move |s| s.unfinished_in(OperationKind::Sync, &zone, |_| true))
                .await
            {
                Ok(c) => c,
                Err(e) => {
                    tracing::warn!(error = %e, "cannot read the local mirror");
                    continue;
                }
            };
            let mut still_pending = HashMap::new();
            for ctx in contexts {
                let why = match ctx.state {
                    OperationState::Running | OperationState::Cancelling => {
                        let owner = ctx.owner.as_deref().unwrap_or("");
                        let orphaned = if owner == self.owners.node() {
                            !self.owners.runs_here(&ctx.id)
                        } else {
                            // Dead, or restarted in another zone.
                            !self.members.serves(owner, &ctx.zone)
                        };
                        orphaned.then(|| Why::LostOwner(owner.to_string()))
                    }
                    OperationState::Pending => {
                        let since = *first_seen_pending.get(&ctx.id).unwrap_or(&Instant::now());
                        still_pending.insert(ctx.id, since);
                        (since.elapsed() > self.lapse).then_some(Why::Pending)
                    }
                    _ => None,
                };
                let Some(why) = why else { continue };
                // Losing the race to another node is the normal case.
                match self.owners.take(ctx.id, why, &cancel).await {
                    Ok(Taken::Run(owned)) => {
                        crate::sync_op::start_owned(&self.owners, &self.runner, *owned)
                    }
                    Ok(Taken::Closed) => {}
                    Err(e) => tracing::debug!(op = %ctx.id, error = %e, "not taken"),
                }
            }
            first_seen_pending = still_pending;
        }
    }
}
