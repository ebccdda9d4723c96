//! Whether this node may still act as an owner: it must have heard NATS
//! answer recently, on its own monotonic clock. A silent partition (packets
//! dropped, no TCP reset), a NATS server on the minority side or a stall of
//! this process all look the same from here: the round trips stop coming
//! back. The NATS client's pings (every few seconds) are not the detector.
//!
//! Every probe interval the node reads the default zone's lead key (a
//! JetStream round trip that proves the connection and the lead bucket's
//! stream leader). The time a probe was *sent* is what counts when it is answered, so
//! a late answer never stretches the node's right to act. Once no answer
//! came for the fence budget (the lapse less one heartbeat interval, so the
//! node gives up before any other node may claim), the node is fenced: its
//! drivers are stopped and nothing it owns is written until answers return.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use async_nats::jetstream::kv;
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;
use zerofoot_shared::names::LEAD_KEY;

#[derive(Clone)]
pub struct Liveness {
    budget: Duration,
    /// When the newest answered probe was sent.
    confirmed: Arc<Mutex<Instant>>,
    fenced: Arc<watch::Sender<bool>>,
}

impl Liveness {
    /// A node with `lapse` and heartbeats every `interval`.
    pub fn new(lapse: Duration, interval: Duration) -> Self {
        let budget = lapse.saturating_sub(interval).max(lapse / 2);
        Self {
            budget,
            confirmed: Arc::new(Mutex::new(Instant::now())),
            fenced: Arc::new(watch::channel(false).0),
        }
    }

    pub fn budget(&self) -> Duration {
        self.budget
    }

    /// True while the newest confirmation is younger than the budget.
    pub fn may_act(&self) -> bool {
        self.confirmed
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .elapsed()
            < self.budget
    }

    /// Fires `true` when the node fences itself, `false` when it may act again.
    pub fn subscribe(&self) -> watch::Receiver<bool> {
        self.fenced.subscribe()
    }

    fn confirm(&self, sent: Instant) {
        let mut confirmed = self.confirmed.lock().unwrap_or_else(|e| e.into_inner());
        if sent > *confirmed {
            *confirmed = sent;
        }
    }

    /// Publishes the fence state if it changed; logs the change.
    fn check(&self) {
        let fenced = !self.may_act();
        self.fenced.send_if_modified(|current| {
            if *current == fenced {
                return false;
            }
            *current = fenced;
            if fenced {
                tracing::error!(budget = ?self.budget, "NATS has not answered within the fence budget: this node fences itself (drivers stopped, nothing written) until it answers again; check the network between this node and NATS");
            } else {
                tracing::warn!("NATS answers again: this node may take work again");
            }
            true
        });
    }
}

/// Probes NATS every `every` and keeps the fence state current until `cancel`.
pub async fn run(
    liveness: Liveness,
    lead_bucket: kv::Store,
    every: Duration,
    cancel: CancellationToken,
) {
    let mut probes = tokio::task::JoinSet::new();
    let mut tick = tokio::time::interval(every);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
    loop {
        tokio::select! {
            _ = cancel.cancelled() => return,
            _ = tick.tick() => {
                // At most a few probes in flight: a stalled connection must
                // not pile them up.
                if probes.len() < 4 {
                    let bucket = lead_bucket.clone();
                    let liveness = liveness.clone();
                    let budget = liveness.budget;
                    probes.spawn(async move {
                        let sent = Instant::now();
                        if let Ok(Ok(_)) = tokio::time::timeout(budget, bucket.entry(LEAD_KEY)).await {
                            liveness.confirm(sent);
                        }
                    });
                }
                liveness.check();
            }
            Some(_) = probes.join_next(), if !probes.is_empty() => liveness.check(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_node_fences_itself_once_no_answer_came_within_the_budget() {
        let liveness = Liveness::new(Duration::from_millis(60), Duration::from_millis(20));
        assert_eq!(liveness.budget(), Duration::from_millis(40));
        let fenced = liveness.subscribe();
        assert!(liveness.may_act(), "a node starts trusted");
        std::thread::sleep(Duration::from_millis(50));
        assert!(!liveness.may_act());
        liveness.check();
        assert!(*fenced.borrow());
        // An answer to a probe sent before the silence does not help...
        liveness.confirm(Instant::now() - Duration::from_millis(45));
        assert!(!liveness.may_act());
        // ...a fresh one does.
        liveness.confirm(Instant::now());
        liveness.check();
        assert!(liveness.may_act() && !*fenced.borrow());
    }
}
