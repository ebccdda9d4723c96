//! `GET /healthz` for the services that have no HTTP API of their own (agent
//! nodes, the repository), on `--health-addr`: 200 with what was checked, or
//! 503 with why not, for load balancers, compose health checks and
//! orchestrators. Nothing else is served there.

use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;

use axum::http::StatusCode;
use axum::response::IntoResponse;
use serde_json::Value;
use tokio_util::sync::CancellationToken;

/// One health check: `Ok` with what it found, or `Err` saying what is wrong.
pub type Check =
    Arc<dyn Fn() -> Pin<Box<dyn Future<Output = Result<Value, String>> + Send>> + Send + Sync>;

/// Serves `/healthz` on `addr` until `shutdown` fires.
pub async fn serve(
    addr: SocketAddr,
    check: Check,
    shutdown: CancellationToken,
) -> std::io::Result<()> {
    let listener = tokio::net::TcpListener::bind(addr).await?;
    tracing::info!(addr = %listener.local_addr()?, "serving /healthz");
    let app = axum::Router::new().route(
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
    );
    axum::serve(listener, app)
        .with_graceful_shutdown(async move { shutdown.cancelled().await })
        .await
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
