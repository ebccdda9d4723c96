//! Registers this node with every management instance (SPEC §8): finds them
//! by micro-service discovery, at start and every half second, sends each new
//! one the node's identity and the inventory it keeps in redb (resources'
//! configuration and state, never secrets), then every change as it happens.
//! An instance that stops answering discovery is dropped.
//!
//! The whole inventory goes in chunks ([`chunk_inventory`]: at most
//! [`CHUNK_RESOURCES`] resources and about [`CHUNK_BYTES`] each, less when
//! the server's `max_payload` is small), one request after the other under
//! one registration id; management shows the new inventory only once the
//! last chunk arrived. A chunk that is not acknowledged leaves the node
//! unregistered there, and the next round starts again with a new id.

use std::collections::{BTreeSet, HashMap};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::sync::broadcast;
use tokio_util::sync::CancellationToken;
use uuid::Uuid;
use zerofoot_shared::names::{Names, MANAGEMENT_SERVICE};
use zerofoot_shared::nats::discover;
use zerofoot_shared::protocol::{
    decode, encode, Registered, Registration, RegistrationChunk, Reply, ResourceRecord,
    ResourceView, PROTOCOL_VERSION,
};

use crate::store::{Change, Store};

const DISCOVERY_EVERY: Duration = Duration::from_millis(500);
const DISCOVERY_WAIT: Duration = Duration::from_millis(200);
const REGISTER_TIMEOUT: Duration = Duration::from_secs(2);
/// Discovery rounds an instance may miss before it counts as gone.
const MISSES_ALLOWED: u32 = 2;
/// At most this many resources in one registration message.
pub const CHUNK_RESOURCES: usize = 256;
/// About this many bytes of resources in one registration message at most
/// (a single larger resource goes alone).
pub const CHUNK_BYTES: usize = 256 * 1024;

/// Splits a whole inventory into registration messages of at most
/// `max_resources` resources and about `max_bytes` of JSON each (a single
/// larger resource goes alone), numbered under `registration`. Always at
/// least one message, so an empty inventory registers too. The first is
/// `full` (it replaces the inventory), the others add to it.
pub fn chunk_inventory(
    node: &str,
    registration: Uuid,
    resources: Vec<ResourceView>,
    max_resources: usize,
    max_bytes: usize,
) -> Vec<Registration> {
    let max_resources = max_resources.max(1);
    let mut parts: Vec<Vec<ResourceView>> = vec![Vec::new()];
    let mut bytes = 0usize;
    for view in resources {
        // The resource's JSON and the comma before it.
        let size = serde_json::to_vec(&view).map(|v| v.len()).unwrap_or(0) + 1;
        let full = parts.last().is_some_and(|p| {
            !p.is_empty() && (p.len() >= max_resources || bytes + size > max_bytes)
        });
        if full {
            parts.push(Vec::new());
            bytes = 0;
        }
        bytes += size;
        if let Some(part) = parts.last_mut() {
            part.push(view);
        }
    }
    let total = u32::try_from(parts.len()).unwrap_or(u32::MAX);
    parts
        .into_iter()
        .enumerate()
        .map(|(seq, resources)| Registration {
            v: PROTOCOL_VERSION,
            node: node.to_string(),
            full: seq == 0,
            resources,
            removed: Vec::new(),
            chunk: Some(RegistrationChunk {
                registration,
                seq: u32::try_from(seq).unwrap_or(u32::MAX),
                total,
            }),
        })
        .collect()
}

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
            let inventory = match self.store.run(|s| s.resources()).await {
                Ok(inventory) => inventory,
                Err(e) => {
                    tracing::warn!(error = %e, "cannot read the inventory to register; retrying next round");
                    return;
                }
            };
            let resources = inventory.len();
            if self.register(&id, inventory).await {
                tracing::info!(management = %id, resources, "registered with a management instance");
                self.lock().insert(id);
            }
        }
    }

    /// Sends the whole inventory to `management`, chunk after chunk; true
    /// once the last one was acknowledged.
    async fn register(&self, management: &str, inventory: Vec<ResourceRecord>) -> bool {
        // Room for the envelope; a server with a small max_payload gets small chunks.
        let max_bytes = CHUNK_BYTES.min(self.client.max_payload() / 2);
        let chunks = chunk_inventory(
            &self.node,
            Uuid::new_v4(),
            inventory.iter().map(ResourceView::from).collect(),
            CHUNK_RESOURCES,
            max_bytes.max(1024),
        );
        let total = chunks.len();
        for (seq, chunk) in chunks.iter().enumerate() {
            if !self.send(management, chunk).await {
                tracing::debug!(
                    management,
                    seq,
                    total,
                    "registration chunk not acknowledged; registering again next round"
                );
                return false;
            }
        }
        true
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
                    chunk: None,
                },
                Err(_) => return,
            },
            Change::Delete { key } => Registration {
                v: PROTOCOL_VERSION,
                node: self.node.clone(),
                full: false,
                resources: Vec::new(),
                removed: vec![key],
                chunk: None,
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

#[cfg(test)]
mod tests {
    use super::*;

    fn view(id: &str, payload_len: usize) -> ResourceView {
        ResourceView {
            id: id.into(),
            kind: "file".into(),
            config: serde_json::json!({ "blob": "x".repeat(payload_len) }),
            labels: Default::default(),
            zone: "default".into(),
            secret_names: Vec::new(),
            state: None,
            state_updated_at: None,
            reported_by: None,
            updated_at: zerofoot_shared::time::now(),
        }
    }

    fn ids(chunks: &[Registration]) -> Vec<Vec<String>> {
        chunks
            .iter()
            .map(|c| c.resources.iter().map(|r| r.id.clone()).collect())
            .collect()
    }

    fn check_numbering(chunks: &[Registration], registration: Uuid) {
        let total = chunks.len() as u32;
        for (seq, chunk) in chunks.iter().enumerate() {
            assert_eq!(
                chunk.chunk,
                Some(RegistrationChunk {
                    registration,
                    seq: seq as u32,
                    total
                })
            );
            assert_eq!(chunk.full, seq == 0, "only the first replaces");
            assert_eq!(chunk.node, "n1");
            assert!(chunk.removed.is_empty());
        }
    }

    #[test]
    fn an_empty_inventory_is_one_chunk() {
        let id = Uuid::new_v4();
        let chunks = chunk_inventory("n1", id, Vec::new(), 256, CHUNK_BYTES);
        assert_eq!(chunks.len(), 1);
        assert!(chunks[0].resources.is_empty());
        check_numbering(&chunks, id);
    }

    #[test]
    fn chunks_hold_at_most_the_resource_count() {
        let id = Uuid::new_v4();
        let inventory: Vec<ResourceView> = (0..600).map(|i| view(&format!("r{i}"), 10)).collect();
        let chunks = chunk_inventory("n1", id, inventory.clone(), 256, CHUNK_BYTES);
        assert_eq!(
            chunks.iter().map(|c| c.resources.len()).collect::<Vec<_>>(),
            [256, 256, 88]
        );
        check_numbering(&chunks, id);
        // Nothing lost, nothing repeated, order kept.
        let all: Vec<ResourceView> = chunks.into_iter().flat_map(|c| c.resources).collect();
        assert_eq!(all, inventory);
    }

    #[test]
    fn chunks_stay_under_the_byte_limit_and_a_big_resource_goes_alone() {
        let id = Uuid::new_v4();
        let inventory = vec![
            view("a", 400),
            view("b", 400),
            view("c", 400),
            view("big", 5000),
            view("d", 400),
        ];
        let max_bytes = 1200;
        let chunks = chunk_inventory("n1", id, inventory, 256, max_bytes);
        assert_eq!(
            ids(&chunks),
            [vec!["a", "b"], vec!["c"], vec!["big"], vec!["d"]]
        );
        check_numbering(&chunks, id);
        for chunk in &chunks {
            let size = serde_json::to_vec(&chunk.resources).expect("json").len();
            assert!(
                size <= max_bytes || chunk.resources.len() == 1,
                "{size} bytes in {:?}",
                chunk.resources.len()
            );
        }
    }

    #[test]
    fn a_chunk_decodes_as_a_registration_and_an_old_one_without_chunk() {
        let id = Uuid::new_v4();
        let chunks = chunk_inventory("n1", id, vec![view("a", 1)], 256, CHUNK_BYTES);
        let wire = encode(&chunks[0]);
        let back: Registration = decode(&wire).expect("decode");
        assert_eq!(back, chunks[0]);
        let old = br#"{"v":1,"node":"n1","full":true,"resources":[]}"#;
        let old: Registration = decode(old).expect("decode");
        assert_eq!(old.chunk, None);
        assert!(old.removed.is_empty());
    }
}
