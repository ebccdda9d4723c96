//! `GET /healthz` and `GET /metrics` for the services that have no HTTP API
//! of their own (agent nodes, the repository), on `--health-addr` and
//! `--metrics-addr`: health is 200 with what was checked, or 503 with why
//! not, for load balancers, compose health checks and orchestrators.
//! Nothing else is served there.

use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;

use axum::http::StatusCode;
use axum::response::IntoResponse;
use serde_json::Value;
use tokio_util::sync::CancellationToken;

use crate::config::EndpointArgs;

/// One health check: `Ok` with what it found, or `Err` saying what is wrong.
pub type Check =
    Arc<dyn Fn() -> Pin<Box<dyn Future<Output = Result<Value, String>> + Send>> + Send + Sync>;

/// `GET /healthz` running `check`.
pub fn router(check: Check) -> axum::Router {
    axum::Router::new().route(
        "/healthz",
        axum::routing::get(move || {
            let check = check.clone();
            async move {
                match check().await {
                    Ok(found) => (
                        StatusCode::OK,
                        axum::Json(serde_json::json!({"status": "ok", "checked": found})),
                    )
                        .into_response(),
                    Err(why) => (
                        StatusCode::SERVICE_UNAVAILABLE,
                        axum::Json(serde_json::json!({"status": "unavailable", "reason": why})),
                    )
                        .into_response(),
                }
            }
        }),
    )
}

/// Serves `/healthz` on `--health-addr` and `/metrics` on `--metrics-addr`
/// (both on one listener when the addresses are the same) until `shutdown`.
/// A listener that cannot start is logged; the service runs on without it.
pub async fn serve(
    endpoints: EndpointArgs,
    check: Check,
    metrics: Option<metrics_exporter_prometheus::PrometheusHandle>,
    shutdown: CancellationToken,
) {
    let mut listeners: Vec<(SocketAddr, axum::Router)> = Vec::new();
    let mut add = |addr: SocketAddr, routes: axum::Router| match listeners
        .iter_mut()
        .find(|(a, _)| *a == addr)
    {
        Some((_, app)) => *app = std::mem::take(app).merge(routes),
        None => listeners.push((addr, routes)),
    };
    if let Some(addr) = endpoints.health_addr {
        add(addr, router(check));
    }
    if let (Some(addr), Some(handle)) = (endpoints.metrics_addr, metrics) {
        add(addr, crate::metrics::router(handle));
    }
    let serving = listeners.into_iter().map(|(addr, app)| {
        let shutdown = shutdown.clone();
        async move {
            let listener = match tokio::net::TcpListener::bind(addr).await {
                Ok(listener) => listener,
                Err(e) => {
                    tracing::error!(%addr, error = %e, "cannot serve /healthz or /metrics; is the address in use?");
                    return;
                }
            };
            tracing::info!(%addr, "serving /healthz and /metrics as configured");
            let served = axum::serve(listener, app)
                .with_graceful_shutdown(async move { shutdown.cancelled().await })
                .await;
            if let Err(e) = served {
                tracing::error!(%addr, error = %e, "serving /healthz or /metrics failed");
            }
        }
    });
    futures::future::join_all(serving).await;
}

/// Whether `client` is connected to NATS, as a check's first step.
pub fn nats_connected(client: &async_nats::Client) -> Result<(), String> {
    match client.connection_state() {
        async_nats::connection::State::Connected => Ok(()),
        other => Err(format!(
            "not connected to NATS ({other:?}); the service keeps retrying"
        )),
    }
}
