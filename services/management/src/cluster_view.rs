//! What management knows of the cluster's members: agent nodes by their
//! heartbeats, management instances by micro-service discovery. Fed by two
//! tasks, read by `GET /v1/cluster`.

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde::Serialize;
use tokio_util::sync::CancellationToken;
use zerofoot_shared::names::{Names, MANAGEMENT_SERVICE};
use zerofoot_shared::nats::discover;
use zerofoot_shared::protocol::{decode, Heartbeat, Registration, ResourceView, Role};

/// A node silent for this long is dropped from the view.
const FORGET_AFTER: Duration = Duration::from_secs(60);
/// How often management instances are rediscovered.
const DISCOVERY_INTERVAL: Duration = Duration::from_secs(1);

struct Seen {
    heartbeat: Heartbeat,
    at: Instant,
}

#[derive(Clone, Default)]
pub struct ClusterView {
    nodes: Arc<Mutex<HashMap<String, Seen>>>,
    management: Arc<Mutex<Vec<ManagementInstance>>>,
    /// What each node registered with this instance: resource id -> view.
    inventories: Arc<Mutex<HashMap<String, BTreeMap<String, ResourceView>>>>,
}

#[derive(Clone, Debug, Serialize)]
pub struct NodeStatus {
    pub id: String,
    pub role: Role,
    /// `up`, or `down` once no heartbeat came for the node's lapse time.
    pub status: &'static str,
    pub term: u64,
    pub heartbeat_age_ms: u64,
    pub running: u32,
    pub version: String,
    #[serde(with = "time::serde::rfc3339")]
    pub started_at: time::OffsetDateTime,
    /// Management instances the node says it is registered with.
    pub registered_with: Vec<String>,
    /// Resources the node reported to this instance when it registered.
    pub inventory: usize,
}

#[derive(Clone, Debug, Serialize)]
pub struct ManagementInstance {
    pub id: String,
    pub version: String,
}

#[derive(Clone, Debug, Serialize)]
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
                        "down"
                    } else {
                        "up"
                    },
                    term: hb.term,
                    heartbeat_age_ms: age.as_millis() as u64,
                    running: hb.running,
                    version: hb.version.clone(),
                    started_at: hb.started_at,
                    registered_with: hb.registered_with.clone(),
                    inventory: self.inventory_size(&hb.node),
                }
            })
            .collect();
        list.sort_by(|a, b| a.id.cmp(&b.id));
        list
    }

    /// The live node that says it leads at the highest term.
    pub fn lead(&self) -> Option<Lead> {
        self.nodes()
            .into_iter()
            .filter(|n| n.status == "up" && n.role == Role::Lead)
            .max_by_key(|n| n.term)
            .map(|n| Lead {
                node: n.id,
                term: n.term,
            })
    }

    fn inventory_size(&self, node: &str) -> usize {
        self.inventories
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get(node)
            .map(BTreeMap::len)
            .unwrap_or(0)
    }

    /// Applies a node's registration: the whole inventory, or changes.
    pub fn register(&self, registration: Registration) {
        let mut inventories = self.inventories.lock().unwrap_or_else(|e| e.into_inner());
        let inventory = inventories.entry(registration.node).or_default();
        if registration.full {
            inventory.clear();
        }
        for id in registration.removed {
            inventory.remove(&id);
        }
        for view in registration.resources {
            inventory.insert(view.id.clone(), view);
        }
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
        while let Some(msg) = zerofoot_shared::nats::next_or_cancelled(&mut sub, &cancel).await {
            match decode::<Heartbeat>(&msg.payload) {
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
