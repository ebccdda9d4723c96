//! `GET /v1/cluster`: nodes, lead and management instances.

use axum::extract::State;
use serde::Serialize;
use utoipa::ToSchema;

use crate::cluster_view::{Lead, ManagementInstance, NodeStatus};
use crate::error::{ApiError, ApiJson, ErrorBody};
use crate::startup::AppState;

/// The cluster as this instance sees it.
#[derive(Serialize, ToSchema)]
pub struct ClusterOverview {
    pub cluster: String,
    /// The live node that says it leads at the highest term; `null` while none does.
    #[schema(required = true)]
    pub lead: Option<Lead>,
    /// Nodes heard from in the last 60 s, by id.
    pub nodes: Vec<NodeStatus>,
    pub management: Vec<ManagementInstance>,
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
    Ok(ApiJson(ClusterOverview {
        cluster: state.names().cluster().as_str().to_string(),
        lead: view.lead(),
        nodes: view.nodes(),
        management: view.management(),
    }))
}
