//! What management knows of the cluster's members: agent nodes by their
//! heartbeats, management instances by micro-service discovery, and the
//! inventory each node registered here. Fed by two tasks and the register
//! endpoint, read by `GET /v1/cluster`.
//!
//! A heartbeat counts only for the node its subject names. A whole
//! inventory arrives in chunks ([`Registration::chunk`]): the chunks are
//! gathered aside, in order, and the node's inventory is replaced by them
//! only when the last one arrived, so a half inventory is never shown.

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde::Serialize;
use tokio_util::sync::CancellationToken;
use utoipa::ToSchema;
use zerofoot_shared::names::{Names, MANAGEMENT_SERVICE};
use zerofoot_shared::nats::discover;
use zerofoot_shared::protocol::{decode, Heartbeat, Registration, ResourceView, Role};

/// A node silent for this long is dropped from the view.
const FORGET_AFTER: Duration = Duration::from_secs(60);
/// How often management instances are rediscovered.
const DISCOVERY_INTERVAL: Duration = Duration::from_secs(1);
/// A chunked registration not finished within this is dropped (the node
/// starts a new one when a chunk goes unacknowledged).
const ASSEMBLY_MAX_AGE: Duration = Duration::from_secs(60);

/// Why a registration message was refused; the node registers again.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum RegistrationError {
    #[error("chunk {seq} of {total} is not a valid chunk number")]
    BadChunk { seq: u32, total: u32 },
    #[error("chunk {seq} of registration {registration} arrived out of order (expected {expected}); register again from the first chunk")]
    OutOfOrder {
        registration: uuid::Uuid,
        seq: u32,
        expected: String,
    },
}

/// What a registration message did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RegisterOutcome {
    /// Changes applied to the node's inventory.
    Changes,
    /// A chunk gathered; the inventory shown is still the previous one.
    Gathering { seq: u32, total: u32 },
    /// The node's whole inventory replaced, with this many resources.
    Complete { resources: usize },
}

/// A chunked registration being gathered.
struct Assembly {
    registration: uuid::Uuid,
    next: u32,
    total: u32,
    resources: BTreeMap<String, ResourceView>,
    started: Instant,
}

/// The inventories nodes registered here, and the ones being gathered.
#[derive(Default)]
struct Inventories {
    /// Node -> resource id -> view: only complete registrations (and the
    /// changes since).
    complete: HashMap<String, BTreeMap<String, ResourceView>>,
    gathering: HashMap<String, Assembly>,
}

fn apply_changes(
    inventory: &mut BTreeMap<String, ResourceView>,
    removed: &[String],
    resources: &[ResourceView],
) {
    for id in removed {
        inventory.remove(id);
    }
    for view in resources {
        inventory.insert(view.id.clone(), view.clone());
    }
}

struct Seen {
    heartbeat: Heartbeat,
    at: Instant,
}

#[derive(Clone, Default)]
pub struct ClusterView {
    nodes: Arc<Mutex<HashMap<String, Seen>>>,
    management: Arc<Mutex<Vec<ManagementInstance>>>,
    /// What each node registered with this instance.
    inventories: Arc<Mutex<Inventories>>,
    /// When the view started listening to heartbeats: until it has
    /// listened for a lapse, a node it has not heard yet may well be up.
    listening_since: Arc<std::sync::OnceLock<Instant>>,
}

/// The nodes' default lapse: how long the view listens at least before it
/// trusts that a zone has no node.
const DEFAULT_LAPSE_MS: u64 = 1000;

/// Whether a node is heard from.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum Liveness {
    Up,
    /// No heartbeat came for the node's lapse time.
    Down,
}

/// An agent node as its heartbeats show it.
#[derive(Clone, Debug, Serialize, ToSchema)]
pub struct NodeStatus {
    pub id: String,
    pub role: Role,
    /// `up`, or `down` once no heartbeat came for the node's lapse time.
    pub status: Liveness,
    pub term: u64,
    pub heartbeat_age_ms: u64,
    pub running: u32,
    pub version: String,
    #[serde(with = "time::serde::rfc3339")]
    pub started_at: time::OffsetDateTime,
    /// Management instances the node says it is registered with.
    pub registered_with: Vec<String>,
    /// How the node confines its drivers: `landlock` or `none`.
    pub sandbox: String,
    /// The zone whose sync operations the node runs.
    pub zone: String,
    pub labels: zerofoot_shared::selector::Labels,
    /// Resources the node reported to this instance: its last complete
    /// registration and the changes since.
    pub inventory: usize,
}

/// A management instance found by micro-service discovery.
#[derive(Clone, Debug, Serialize, ToSchema)]
pub struct ManagementInstance {
    pub id: String,
    pub version: String,
}

/// The node that leads, and its term.
#[derive(Clone, Debug, Serialize, ToSchema)]
pub struct Lead {
    pub node: String,
    pub term: u64,
}

impl ClusterView {
    /// Nodes seen recently, by id.
    pub fn nodes(&self) -> Vec<NodeStatus> {
        let mut nodes = self.nodes.lock().unwrap_or_else(|e| e.into_inner());
        nodes.retain(|_, seen| seen.at.elapsed() < FORGET_AFTER);
        let mut list: Vec<NodeStatus> = nodes
            .values()
            .map(|seen| {
                let age = seen.at.elapsed();
                let hb = &seen.heartbeat;
                NodeStatus {
                    id: hb.node.clone(),
                    role: hb.role,
                    status: if age.as_millis() as u64 > hb.lapse_ms {
                        Liveness::Down
                    } else {
                        Liveness::Up
                    },
                    term: hb.term,
                    heartbeat_age_ms: age.as_millis() as u64,
                    running: hb.running,
                    version: hb.version.clone(),
                    started_at: hb.started_at,
                    registered_with: hb.registered_with.clone(),
                    sandbox: hb.sandbox.clone(),
                    zone: hb.zone.clone(),
                    labels: hb.labels.clone(),
                    inventory: self.inventory_size(&hb.node),
                }
            })
            .collect();
        list.sort_by(|a, b| a.id.cmp(&b.id));
        list
    }

    /// The ids of the nodes of `zone` heard within their lapse.
    pub fn live_nodes_in(&self, zone: &str) -> Vec<String> {
        let seen = self.nodes.lock().unwrap_or_else(|e| e.into_inner());
        seen.values()
            .filter(|s| {
                s.heartbeat.zone == zone
                    && (s.at.elapsed().as_millis() as u64) <= s.heartbeat.lapse_ms
            })
            .map(|s| s.heartbeat.node.clone())
            .collect()
    }

    /// Whether `zone` surely has no live node: the view has listened for
    /// the longest lapse of the nodes it heard, and at least the default
    /// one (every live node beats more often than that), and none of the
    /// live ones is in the zone.
    pub fn zone_is_empty(&self, zone: &str) -> bool {
        let Some(since) = self.listening_since.get() else {
            return false;
        };
        let lapse = {
            let seen = self.nodes.lock().unwrap_or_else(|e| e.into_inner());
            seen.values()
                .map(|s| s.heartbeat.lapse_ms)
                .max()
                .unwrap_or(0)
                .max(DEFAULT_LAPSE_MS)
        };
        let heard_everyone = since.elapsed().as_millis() as u64 > lapse;
        heard_everyone && self.live_nodes_in(zone).is_empty()
    }

    /// Of `nodes`, the live node of `zone` that says it leads it at the
    /// highest term.
    pub fn lead_of(nodes: &[NodeStatus], zone: &str) -> Option<Lead> {
        nodes
            .iter()
            .filter(|n| n.zone == zone && n.status == Liveness::Up && n.role == Role::Lead)
            .max_by_key(|n| n.term)
            .map(|n| Lead {
                node: n.id.clone(),
                term: n.term,
            })
    }

    fn inventory_size(&self, node: &str) -> usize {
        self.inventories
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .complete
            .get(node)
            .map(BTreeMap::len)
            .unwrap_or(0)
    }

    /// The resources `node` registered here, by id (complete registrations only).
    #[cfg(test)]
    fn inventory(&self, node: &str) -> Option<BTreeMap<String, ResourceView>> {
        self.inventories
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .complete
            .get(node)
            .cloned()
    }

    /// Applies a node's registration message: a chunk of a whole inventory
    /// (shown once all arrived), a whole inventory in one message (nodes
    /// from before chunks), or changes.
    pub fn register(
        &self,
        registration: Registration,
    ) -> Result<RegisterOutcome, RegistrationError> {
        let mut guard = self.inventories.lock().unwrap_or_else(|e| e.into_inner());
        let inventories = &mut *guard;
        inventories
            .gathering
            .retain(|_, a| a.started.elapsed() < ASSEMBLY_MAX_AGE);
        let Registration {
            node,
            full,
            resources,
            removed,
            chunk,
            ..
        } = registration;
        let Some(chunk) = chunk else {
            if full {
                // A whole inventory in one message: replaces at once.
                inventories.gathering.remove(&node);
                let mut inventory = BTreeMap::new();
                apply_changes(&mut inventory, &removed, &resources);
                let count = inventory.len();
                inventories.complete.insert(node, inventory);
                return Ok(RegisterOutcome::Complete { resources: count });
            }
            if let Some(assembly) = inventories.gathering.get_mut(&node) {
                apply_changes(&mut assembly.resources, &removed, &resources);
            }
            let inventory = inventories.complete.entry(node).or_default();
            apply_changes(inventory, &removed, &resources);
            return Ok(RegisterOutcome::Changes);
        };
        if chunk.total == 0 || chunk.seq >= chunk.total {
            inventories.gathering.remove(&node);
            return Err(RegistrationError::BadChunk {
                seq: chunk.seq,
                total: chunk.total,
            });
        }
        if chunk.seq == 0 {
            // A new registration; one being gathered is abandoned.
            inventories.gathering.insert(
                node.clone(),
                Assembly {
                    registration: chunk.registration,
                    next: 0,
                    total: chunk.total,
                    resources: BTreeMap::new(),
                    started: Instant::now(),
                },
            );
        }
        let gathered = match inventories.gathering.get_mut(&node) {
            Some(a)
                if a.registration == chunk.registration
                    && a.next == chunk.seq
                    && a.total == chunk.total =>
            {
                apply_changes(&mut a.resources, &removed, &resources);
                a.next += 1;
                if a.next < a.total {
                    return Ok(RegisterOutcome::Gathering {
                        seq: chunk.seq,
                        total: chunk.total,
                    });
                }
                std::mem::take(&mut a.resources)
            }
            other => {
                let expected = match other {
                    Some(a) if a.registration == chunk.registration => {
                        format!("chunk {} of {}", a.next, a.total)
                    }
                    _ => "chunk 0 of a registration".to_string(),
                };
                inventories.gathering.remove(&node);
                return Err(RegistrationError::OutOfOrder {
                    registration: chunk.registration,
                    seq: chunk.seq,
                    expected,
                });
            }
        };
        inventories.gathering.remove(&node);
        let count = gathered.len();
        inventories.complete.insert(node, gathered);
        Ok(RegisterOutcome::Complete { resources: count })
    }

    pub fn management(&self) -> Vec<ManagementInstance> {
        self.management
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    /// Follows heartbeats and management instances until `cancel` fires.
    pub fn start(&self, client: async_nats::Client, names: Names, cancel: CancellationToken) {
        tokio::spawn(
            self.clone()
                .follow_heartbeats(client.clone(), names.clone(), cancel.clone()),
        );
        tokio::spawn(self.clone().discover_management(client, names, cancel));
    }

    async fn follow_heartbeats(
        self,
        client: async_nats::Client,
        names: Names,
        cancel: CancellationToken,
    ) {
        let mut sub = match client.subscribe(names.all_heartbeats()).await {
            Ok(sub) => sub,
            Err(e) => {
                tracing::error!(error = %e, "cannot subscribe to heartbeats; the cluster view stays empty");
                return;
            }
        };
        self.listening_since.get_or_init(Instant::now);
        while let Some(msg) = zerofoot_shared::nats::next_or_cancelled(&mut sub, &cancel).await {
            match decode::<Heartbeat>(&msg.payload) {
                // A node speaks only for itself.
                Ok(hb) if msg.subject.as_str() != names.heartbeat(&hb.node) => {
                    tracing::debug!(subject = %msg.subject, node = %hb.node, "ignoring a heartbeat that speaks for another node")
                }
                Ok(hb) => {
                    let mut nodes = self.nodes.lock().unwrap_or_else(|e| e.into_inner());
                    nodes.insert(
                        hb.node.clone(),
                        Seen {
                            heartbeat: hb,
                            at: Instant::now(),
                        },
                    );
                }
                Err(e) => {
                    tracing::debug!(subject = %msg.subject, error = %e, "ignoring a malformed heartbeat")
                }
            }
        }
    }

    async fn discover_management(
        self,
        client: async_nats::Client,
        names: Names,
        cancel: CancellationToken,
    ) {
        let mut tick = tokio::time::interval(DISCOVERY_INTERVAL);
        loop {
            tokio::select! {
                _ = cancel.cancelled() => return,
                _ = tick.tick() => {}
            }
            let cluster = names.cluster().as_str();
            match discover(
                &client,
                MANAGEMENT_SERVICE,
                cluster,
                Duration::from_millis(200),
            )
            .await
            {
                Ok(found) => {
                    let unique: BTreeMap<String, ManagementInstance> = found
                        .into_iter()
                        .filter_map(|s| {
                            let id = s.instance()?.to_string();
                            Some((
                                id.clone(),
                                ManagementInstance {
                                    id,
                                    version: s.version,
                                },
                            ))
                        })
                        .collect();
                    *self.management.lock().unwrap_or_else(|e| e.into_inner()) =
                        unique.into_values().collect();
                }
                Err(e) => tracing::debug!(error = %e, "management discovery failed; retrying"),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use zerofoot_shared::protocol::RegistrationChunk;

    fn view(id: &str) -> ResourceView {
        ResourceView {
            id: id.into(),
            kind: "file".into(),
            config: serde_json::json!({}),
            labels: Default::default(),
            zone: "default".into(),
            secret_names: Vec::new(),
            state: None,
            state_updated_at: None,
            reported_by: None,
            updated_at: zerofoot_shared::time::now(),
        }
    }

    fn whole(node: &str, ids: &[&str]) -> Registration {
        Registration {
            v: 1,
            node: node.into(),
            full: true,
            resources: ids.iter().map(|id| view(id)).collect(),
            removed: Vec::new(),
            chunk: None,
        }
    }

    fn chunk(
        node: &str,
        registration: uuid::Uuid,
        seq: u32,
        total: u32,
        ids: &[&str],
    ) -> Registration {
        Registration {
            full: seq == 0,
            chunk: Some(RegistrationChunk {
                registration,
                seq,
                total,
            }),
            ..whole(node, ids)
        }
    }

    fn change(node: &str, put: &[&str], removed: &[&str]) -> Registration {
        Registration {
            full: false,
            removed: removed.iter().map(|id| id.to_string()).collect(),
            ..whole(node, put)
        }
    }

    fn ids(view: &ClusterView, node: &str) -> Vec<String> {
        view.inventory(node)
            .map(|inv| inv.into_keys().collect())
            .unwrap_or_default()
    }

    #[test]
    fn a_whole_registration_in_one_message_and_changes() {
        let v = ClusterView::default();
        assert_eq!(
            v.register(whole("n1", &["a", "b"])),
            Ok(RegisterOutcome::Complete { resources: 2 })
        );
        assert_eq!(
            v.register(change("n1", &["c"], &["a"])),
            Ok(RegisterOutcome::Changes)
        );
        assert_eq!(ids(&v, "n1"), ["b", "c"]);
        assert_eq!(
            v.register(whole("n1", &["z"])),
            Ok(RegisterOutcome::Complete { resources: 1 })
        );
        assert_eq!(ids(&v, "n1"), ["z"], "a whole registration replaces");
        assert_eq!(v.inventory_size("n1"), 1);
        assert_eq!(v.inventory_size("n2"), 0);
    }

    #[test]
    fn chunks_replace_the_inventory_only_once_all_arrived() {
        let v = ClusterView::default();
        v.register(whole("n1", &["old"])).expect("register");
        let r = uuid::Uuid::new_v4();
        assert_eq!(
            v.register(chunk("n1", r, 0, 3, &["a", "b"])),
            Ok(RegisterOutcome::Gathering { seq: 0, total: 3 })
        );
        assert_eq!(ids(&v, "n1"), ["old"], "the previous inventory still shows");
        assert_eq!(
            v.register(chunk("n1", r, 1, 3, &["c"])),
            Ok(RegisterOutcome::Gathering { seq: 1, total: 3 })
        );
        // A change meanwhile lands in both.
        v.register(change("n1", &["d"], &["a"])).expect("change");
        assert_eq!(ids(&v, "n1"), ["d", "old"]);
        assert_eq!(
            v.register(chunk("n1", r, 2, 3, &["e"])),
            Ok(RegisterOutcome::Complete { resources: 4 })
        );
        assert_eq!(ids(&v, "n1"), ["b", "c", "d", "e"]);
        // One chunk alone is a whole inventory too.
        let r = uuid::Uuid::new_v4();
        assert_eq!(
            v.register(chunk("n1", r, 0, 1, &[])),
            Ok(RegisterOutcome::Complete { resources: 0 })
        );
        assert!(ids(&v, "n1").is_empty());
    }

    #[test]
    fn chunks_out_of_order_are_refused_and_the_gathering_dropped() {
        let v = ClusterView::default();
        v.register(whole("n1", &["old"])).expect("register");
        let r = uuid::Uuid::new_v4();
        assert!(matches!(
            v.register(chunk("n1", r, 1, 2, &["a"])),
            Err(RegistrationError::OutOfOrder { seq: 1, .. })
        ));
        v.register(chunk("n1", r, 0, 3, &["a"])).expect("first");
        assert!(matches!(
            v.register(chunk("n1", r, 2, 3, &["c"])),
            Err(RegistrationError::OutOfOrder { seq: 2, .. })
        ));
        assert!(
            v.register(chunk("n1", r, 1, 3, &["b"])).is_err(),
            "the gathering was dropped: start again"
        );
        assert!(matches!(
            v.register(chunk("n1", r, 3, 3, &[])),
            Err(RegistrationError::BadChunk { seq: 3, total: 3 })
        ));
        assert!(v.register(chunk("n1", r, 0, 0, &[])).is_err());
        assert_eq!(ids(&v, "n1"), ["old"], "nothing half-done shows");

        // A new registration abandons the one being gathered; another
        // registration's chunk does not fit into it.
        let (r1, r2) = (uuid::Uuid::new_v4(), uuid::Uuid::new_v4());
        v.register(chunk("n1", r1, 0, 2, &["x"])).expect("first");
        v.register(chunk("n1", r2, 0, 2, &["y"]))
            .expect("first again");
        assert!(v.register(chunk("n1", r1, 1, 2, &["x2"])).is_err());
        v.register(chunk("n1", r2, 0, 2, &["y"]))
            .expect("first again");
        assert_eq!(
            v.register(chunk("n1", r2, 1, 2, &["y2"])),
            Ok(RegisterOutcome::Complete { resources: 2 })
        );
        assert_eq!(ids(&v, "n1"), ["y", "y2"]);
        // Other nodes are apart.
        v.register(chunk("n2", r1, 0, 2, &["p"])).expect("n2");
        assert_eq!(ids(&v, "n1"), ["y", "y2"]);
        assert!(ids(&v, "n2").is_empty());
    }
}
