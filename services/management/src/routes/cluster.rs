//! `GET /v1/cluster`: nodes, lead and management instances.

use axum::extract::State;
use axum::Json;
use serde_json::{json, Value};

use crate::error::ApiError;
use crate::startup::AppState;

pub async fn show(State(state): State<AppState>) -> Result<Json<Value>, ApiError> {
    state.nats()?;
    let view = state.view();
    Ok(Json(json!({
        "cluster": state.names().cluster().as_str(),
        "lead": view.lead(),
        "nodes": view.nodes(),
        "management": view.management(),
    })))
}
