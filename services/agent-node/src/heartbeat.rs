//! Publishes this node's heartbeat every interval (SPEC §6). Core NATS, not
//! JetStream: a heartbeat is only worth something when it is fresh.

use std::time::Duration;

use time::OffsetDateTime;
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;
use zerofoot_shared::protocol::{encode, Heartbeat, Role, PROTOCOL_VERSION};

/// The role and term a node announces.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Standing {
    pub role: Role,
    pub term: u64,
}

pub struct Beat {
    pub client: async_nats::Client,
    pub subject: String,
    pub node: String,
    pub interval: Duration,
    pub lapse: Duration,
    pub started_at: OffsetDateTime,
    pub standing: watch::Receiver<Standing>,
    pub owners: crate::ownership::Owners,
    pub registered_with: crate::registrar::RegisteredWith,
    pub sandbox: &'static str,
    pub zone: String,
    pub labels: zerofoot_shared::selector::Labels,
}

impl Beat {
    pub async fn run(mut self, cancel: CancellationToken) {
        let mut tick = tokio::time::interval(self.interval);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
        loop {
            tokio::select! {
                _ = cancel.cancelled() => return,
                _ = tick.tick() => {}
                // A change of role is announced at once, not at the next tick.
                Ok(()) = self.standing.changed() => {}
            }
            let standing = *self.standing.borrow_and_update();
            let heartbeat = Heartbeat {
                v: PROTOCOL_VERSION,
                node: self.node.clone(),
                role: standing.role,
                term: standing.term,
                running: self.owners.running(),
                version: zerofoot_shared::VERSION.to_string(),
                interval_ms: self.interval.as_millis() as u64,
                lapse_ms: self.lapse.as_millis() as u64,
                registered_with: self
                    .registered_with
                    .lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .iter()
                    .cloned()
                    .collect(),
                started_at: self.started_at,
                sandbox: self.sandbox.to_string(),
                zone: self.zone.clone(),
                labels: self.labels.clone(),
            };
            if let Err(e) = self
                .client
                .publish(self.subject.clone(), encode(&heartbeat))
                .await
            {
                tracing::warn!(error = %e, "cannot publish a heartbeat");
            }
        }
    }
}
