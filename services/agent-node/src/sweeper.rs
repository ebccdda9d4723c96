//! Makes sure no sync operation is left behind: one whose owner stopped
//! beating (or is this node before a restart) is taken over, one left pending
//! longer than the lapse time (its submission got lost) is taken. Every node
//! sweeps; compare-and-set on the context makes exactly one of them win.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use tokio_util::sync::CancellationToken;
use uuid::Uuid;
use zerofoot_shared::protocol::{OperationKind, OperationState};

use crate::executor::{Executor, Taking};
use crate::membership::Membership;
use crate::store::Store;

pub async fn sweep_loop(
    exec: Executor,
    store: Store,
    members: Membership,
    lapse: Duration,
    cancel: CancellationToken,
) {
    let mut first_seen_pending: HashMap<Uuid, Instant> = HashMap::new();
    let period = (lapse / 2).max(Duration::from_millis(20));
    loop {
        tokio::select! {
            _ = cancel.cancelled() => return,
            _ = tokio::time::sleep(period) => {}
        }
        if !members.settled() {
            continue;
        }
        let contexts = match store.run(|s| s.contexts()).await {
            Ok(c) => c,
            Err(e) => {
                tracing::warn!(error = %e, "cannot read the local mirror");
                continue;
            }
        };
        let mut still_pending = HashMap::new();
        for ctx in contexts {
            if ctx.kind != OperationKind::Sync {
                continue;
            }
            let take = match ctx.state {
                OperationState::Running => {
                    let owner = ctx.owner.as_deref().unwrap_or("");
                    let orphaned = if owner == exec.node {
                        !exec.is_running_here(&ctx.id)
                    } else {
                        !members.is_alive(owner)
                    };
                    orphaned.then(|| Taking::FromLostOwner(owner.to_string()))
                }
                OperationState::Pending => {
                    let since = *first_seen_pending.get(&ctx.id).unwrap_or(&Instant::now());
                    still_pending.insert(ctx.id, since);
                    (since.elapsed() > lapse).then_some(Taking::Pending)
                }
                _ => None,
            };
            if let Some(how) = take {
                // Losing the race to another node is the normal case.
                if let Err(e) = exec.take_and_run(ctx.id, how).await {
                    tracing::debug!(op = %ctx.id, error = %e, "not taken");
                }
            }
        }
        first_seen_pending = still_pending;
    }
}
