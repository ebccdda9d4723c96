//! `GET /healthz`: 200 once connected to NATS, 503 before.

use axum::extract::State;
use axum::Json;
use serde_json::{json, Value};

use crate::error::ApiError;
use crate::startup::AppState;

pub async fn healthz(State(state): State<AppState>) -> Result<Json<Value>, ApiError> {
    let nats = state.nats()?;
    if nats.client.connection_state() != async_nats::connection::State::Connected {
        return Err(ApiError::unavailable("NATS connection lost; reconnecting"));
    }
    Ok(Json(json!({"status": "ok", "id": state.id()})))
}
