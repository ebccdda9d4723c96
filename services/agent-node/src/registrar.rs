//! Registers this node with every management instance (SPEC §8): finds them
//! by micro-service discovery, at start and every half second, sends each new
//! one the node's identity and the inventory it keeps in redb (resources'
//! configuration and state, never secrets), then every change as it happens.
//! An instance that stops answering discovery is dropped.

use std::collections::{BTreeSet, HashMap};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::sync::broadcast;
use tokio_util::sync::CancellationToken;
use zerofoot_shared::names::{Names, MANAGEMENT_SERVICE};
use zerofoot_shared::nats::discover;
use zerofoot_shared::protocol::{
    decode, encode, Registered, Registration, Reply, ResourceRecord, ResourceView, PROTOCOL_VERSION,
};

use crate::store::{Change, Store};

const DISCOVERY_EVERY: Duration = Duration::from_millis(500);
const DISCOVERY_WAIT: Duration = Duration::from_millis(200);
const REGISTER_TIMEOUT: Duration = Duration::from_secs(2);
/// Discovery rounds an instance may miss before it counts as gone.
const MISSES_ALLOWED: u32 = 2;

/// The instances this node is registered with; the heartbeat reports them.
pub type RegisteredWith = Arc<Mutex<BTreeSet<String>>>;

pub struct Registrar {
    pub client: async_nats::Client,
    pub names: Names,
    pub node: String,
    pub store: Store,
    pub registered: RegisteredWith,
}

impl Registrar {
    pub async fn run(self, mut changes: broadcast::Receiver<Change>, cancel: CancellationToken) {
        let mut misses: HashMap<String, u32> = HashMap::new();
        let mut tick = tokio::time::interval(DISCOVERY_EVERY);
        loop {
            tokio::select! {
                _ = cancel.cancelled() => return,
                _ = tick.tick() => self.discover_round(&mut misses).await,
                change = changes.recv() => match change {
                    Ok(change) => self.send_change(change).await,
                    // Missed changes: register everywhere again with the whole inventory.
                    Err(broadcast::error::RecvError::Lagged(_)) => self.lock().clear(),
                    Err(broadcast::error::RecvError::Closed) => return,
                },
            }
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, BTreeSet<String>> {
        self.registered.lock().unwrap_or_else(|e| e.into_inner())
    }

    async fn discover_round(&self, misses: &mut HashMap<String, u32>) {
        let found = match discover(
            &self.client,
            MANAGEMENT_SERVICE,
            self.names.cluster().as_str(),
            DISCOVERY_WAIT,
        )
        .await
        {
            Ok(found) => found,
            Err(e) => {
                tracing::debug!(error = %e, "management discovery failed");
                return;
            }
        };
        let found: BTreeSet<String> = found
            .iter()
            .filter_map(|s| s.instance().map(str::to_string))
            .collect();
        let known: Vec<String> = self.lock().iter().cloned().collect();
        for id in known {
            if found.contains(&id) {
                misses.remove(&id);
                continue;
            }
            let missed = misses.entry(id.clone()).or_default();
            *missed += 1;
            if *missed > MISSES_ALLOWED {
                misses.remove(&id);
                self.lock().remove(&id);
                tracing::info!(management = %id, "management instance gone: dropped");
            }
        }
        for id in found {
            if self.lock().contains(&id) {
                continue;
            }
            let inventory = self.store.run(|s| s.resources()).await.unwrap_or_default();
            let registration = Registration {
                v: PROTOCOL_VERSION,
                node: self.node.clone(),
                full: true,
                resources: inventory.iter().map(ResourceView::from).collect(),
                removed: Vec::new(),
            };
            if self.send(&id, &registration).await {
                tracing::info!(management = %id, resources = registration.resources.len(), "registered with a management instance");
                self.lock().insert(id);
            }
        }
    }

    async fn send_change(&self, change: Change) {
        let registration = match change {
            Change::Put { value, .. } => match decode::<ResourceRecord>(&value) {
                Ok(record) => Registration {
                    v: PROTOCOL_VERSION,
                    node: self.node.clone(),
                    full: false,
                    resources: vec![ResourceView::from(&record)],
                    removed: Vec::new(),
                },
                Err(_) => return,
            },
            Change::Delete { key } => Registration {
                v: PROTOCOL_VERSION,
                node: self.node.clone(),
                full: false,
                resources: Vec::new(),
                removed: vec![key],
            },
        };
        let targets: Vec<String> = self.lock().iter().cloned().collect();
        for id in targets {
            if !self.send(&id, &registration).await {
                // Re-registered with the whole inventory at the next round.
                self.lock().remove(&id);
            }
        }
    }

    async fn send(&self, management: &str, registration: &Registration) -> bool {
        let subject = self.names.management_register(management);
        let answer = tokio::time::timeout(
            REGISTER_TIMEOUT,
            self.client.request(subject, encode(registration)),
        )
        .await;
        match answer {
            Ok(Ok(msg)) => matches!(
                serde_json::from_slice::<Reply<Registered>>(&msg.payload),
                Ok(Reply::Ok(_))
            ),
            _ => false,
        }
    }
}
