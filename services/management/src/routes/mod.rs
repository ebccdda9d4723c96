//! The HTTP routes, one file per resource (SPEC §8).

pub mod cluster;
pub mod events;
pub mod health;
pub mod live;
pub mod logs;
pub mod modules;
pub mod operations;
pub mod resources;

use axum::routing::{get, post, put};
use axum::Router;

use crate::error::ApiError;
use crate::startup::AppState;

/// Largest JSON request body.
pub const MAX_JSON_BODY_BYTES: usize = 1024 * 1024;

pub fn router(state: AppState) -> Router {
    Router::new()
        .route("/healthz", get(health::healthz))
        .route("/metrics", get(crate::http_metrics::render))
        .route("/v1/cluster", get(cluster::show))
        .route("/v1/modules", post(modules::upload).get(modules::list))
        .route("/v1/modules/{name}", get(modules::show))
        .route(
            "/v1/operations",
            post(operations::submit).get(operations::list),
        )
        .route(
            "/v1/operations/{id}",
            get(operations::show).delete(operations::cancel),
        )
        .route("/v1/operations/{id}/events", get(events::events))
        .route("/v1/operations/{id}/logs", get(logs::logs))
        .route("/v1/resources", get(resources::list))
        .route(
            "/v1/resources/{id}",
            put(resources::put)
                .get(resources::get)
                .delete(resources::delete),
        )
        .route("/v1/admin/reseal-secrets", post(resources::reseal))
        .fallback(not_found)
        // JSON bodies; bundle uploads stream past this with their own limit.
        .layer(axum::extract::DefaultBodyLimit::max(MAX_JSON_BODY_BYTES))
        .layer(axum::middleware::from_fn_with_state(
            state.clone(),
            crate::auth::authorize,
        ))
        .layer(axum::middleware::from_fn(crate::http_metrics::track))
        .with_state(state)
}

/// Every key of a bucket, e.g. to list or revisit all its records.
pub async fn bucket_keys(
    store: &async_nats::jetstream::kv::Store,
    what: &str,
) -> Result<Vec<String>, ApiError> {
    use futures::TryStreamExt;
    let fail = |e: &dyn std::fmt::Display| ApiError::nats(&format!("cannot list the {what}"), e);
    store
        .keys()
        .await
        .map_err(|e| fail(&e))?
        .try_collect()
        .await
        .map_err(|e| fail(&e))
}

async fn not_found(uri: axum::http::Uri) -> ApiError {
    ApiError::not_found(
        "no_such_route",
        format!("no endpoint at {uri}; see the README for the API"),
    )
}
