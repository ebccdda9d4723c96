//! The HTTP routes, one file per resource (SPEC §8).

pub mod cluster;
pub mod events;
pub mod health;
pub mod live;
pub mod logs;
pub mod modules;
pub mod openapi;
pub mod operations;
pub mod resources;

use axum::Router;

use crate::error::ApiError;
use crate::startup::AppState;

/// Largest JSON request body.
pub const MAX_JSON_BODY_BYTES: usize = 1024 * 1024;

/// Declares every endpoint once: the router is built from this table and
/// [`ROUTES`] lists the same (method, path) pairs, which the OpenAPI
/// document must describe (a test in [`openapi`] checks), so no endpoint
/// can be served without documentation.
macro_rules! endpoints {
    ($($method:ident $path:literal => $handler:path,)*) => {
        /// Every endpoint the router serves, as (method, path).
        #[cfg(test)]
        pub const ROUTES: &[(&str, &str)] = &[$((stringify!($method), $path),)*];

        fn endpoints(router: Router<AppState>) -> Router<AppState> {
            router$(.route($path, axum::routing::$method($handler)))*
        }
    };
}

endpoints! {
    get "/healthz" => health::healthz,
    get "/metrics" => crate::http_metrics::render,
    get "/v1/openapi.json" => openapi::serve,
    get "/v1/cluster" => cluster::show,
    post "/v1/modules" => modules::upload,
    get "/v1/modules" => modules::list,
    get "/v1/modules/{name}" => modules::show,
    post "/v1/operations" => operations::submit,
    get "/v1/operations" => operations::list,
    get "/v1/operations/{id}" => operations::show,
    delete "/v1/operations/{id}" => operations::cancel,
    get "/v1/operations/{id}/events" => events::events,
    get "/v1/operations/{id}/logs" => logs::logs,
    get "/v1/resources" => resources::list,
    put "/v1/resources/{id}" => resources::put,
    get "/v1/resources/{id}" => resources::get,
    delete "/v1/resources/{id}" => resources::delete,
    post "/v1/admin/reseal-secrets" => resources::reseal,
}

pub fn router(state: AppState) -> Router {
    endpoints(Router::new())
        // The web console's page and files: not API, so not in the table
        // above nor in the OpenAPI document.
        .merge(crate::console::router())
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
