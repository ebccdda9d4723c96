//! The HTTP routes, one file per resource (SPEC §8).

pub mod cluster;
pub mod health;

use axum::routing::get;
use axum::Router;

use crate::error::ApiError;
use crate::startup::AppState;

pub fn router(state: AppState) -> Router {
    Router::new()
        .route("/healthz", get(health::healthz))
        .route("/v1/cluster", get(cluster::show))
        .fallback(not_found)
        .with_state(state)
}

async fn not_found(uri: axum::http::Uri) -> ApiError {
    ApiError::not_found("no_such_route", format!("no endpoint at {uri}; see the README for the API"))
}
