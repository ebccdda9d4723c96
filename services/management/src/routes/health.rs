//! `GET /healthz`: 200 once connected to NATS, 503 before.

use axum::extract::State;
use serde::Serialize;
use utoipa::ToSchema;

use crate::error::{ApiError, ApiJson, ErrorBody};
use crate::startup::AppState;

/// A healthy instance.
#[derive(Serialize, ToSchema)]
pub struct Health {
    /// Always `ok`.
    #[schema(pattern = "^ok$")]
    pub status: &'static str,
    /// This management instance's id.
    pub id: String,
}

/// Up and connected to NATS. Needs no token (only a loopback `Host` when
/// the instance runs without tokens).
#[utoipa::path(
    get,
    path = "/healthz",
    operation_id = "healthz",
    tag = "health",
    security(()),
    responses(
        (status = 200, description = "Connected to NATS.", body = Health),
        (status = 403, description = "`host_not_allowed`: a token-less instance answers only requests addressed to a loopback name.", body = ErrorBody),
        (status = 503, description = "`unavailable`: not (or no longer) connected to NATS.", body = ErrorBody),
    )
)]
pub async fn healthz(State(state): State<AppState>) -> Result<ApiJson<Health>, ApiError> {
    let nats = state.nats()?;
    if nats.client.connection_state() != async_nats::connection::State::Connected {
        return Err(ApiError::unavailable("NATS connection lost; reconnecting"));
    }
    Ok(ApiJson(Health {
        status: "ok",
        id: state.id().to_string(),
    }))
}
