//! `GET /v1/cluster`: nodes, lead, zones and management instances.

use axum::extract::State;
use serde::Serialize;
use utoipa::ToSchema;

use crate::cluster_view::{ClusterView, Lead, Liveness, ManagementInstance, NodeStatus};
use crate::error::{ApiError, ApiJson, ErrorBody};
use crate::startup::AppState;

/// The cluster as this instance sees it.
#[derive(Serialize, ToSchema)]
pub struct ClusterOverview {
    pub cluster: String,
    /// The default zone's lead: its live node that says it leads at the
    /// highest term; `null` while none does. Each zone's is in `zones`.
    #[schema(required = true)]
    pub lead: Option<Lead>,
    /// Nodes heard from in the last 60 s, by id.
    pub nodes: Vec<NodeStatus>,
    /// The zones of those nodes, by name.
    pub zones: Vec<ZoneStatus>,
    pub management: Vec<ManagementInstance>,
}

/// One zone: its nodes, and how many of them are up.
#[derive(Serialize, ToSchema)]
pub struct ZoneStatus {
    pub zone: String,
    /// The node that runs the zone's monitors; `null` while none leads.
    #[schema(required = true)]
    pub lead: Option<Lead>,
    pub nodes: Vec<String>,
    pub up: usize,
}

/// The zones of `nodes`, by name.
fn zones(nodes: &[NodeStatus]) -> Vec<ZoneStatus> {
    let mut zones: std::collections::BTreeMap<&str, ZoneStatus> = Default::default();
    for node in nodes {
        let zone = zones.entry(&node.zone).or_insert_with(|| ZoneStatus {
            zone: node.zone.clone(),
            lead: ClusterView::lead_of(nodes, &node.zone),
            nodes: Vec::new(),
            up: 0,
        });
        zone.nodes.push(node.id.clone());
        if node.status == Liveness::Up {
            zone.up += 1;
        }
    }
    zones.into_values().collect()
}

/// Nodes (up or down), the lead and the management instances.
#[utoipa::path(
    get,
    path = "/v1/cluster",
    operation_id = "cluster",
    tag = "cluster",
    security(("bearer" = ["viewer"])),
    responses(
        (status = 200, description = "The cluster.", body = ClusterOverview),
        (status = 401, description = "`unauthorized`: a missing or unknown token.", body = ErrorBody),
        (status = 403, description = "`forbidden` (the token's role may not) or `host_not_allowed` (a token-less instance, not addressed to a loopback name).", body = ErrorBody),
        (status = 503, description = "`unavailable`: not connected to NATS yet.", body = ErrorBody),
    )
)]
pub async fn show(State(state): State<AppState>) -> Result<ApiJson<ClusterOverview>, ApiError> {
    state.nats()?;
    let view = state.view();
    let nodes = view.nodes();
    Ok(ApiJson(ClusterOverview {
        cluster: state.names().cluster().as_str().to_string(),
        lead: ClusterView::lead_of(&nodes, zerofoot_shared::names::DEFAULT_ZONE),
        zones: zones(&nodes),
        nodes,
        management: view.management(),
    }))
}
