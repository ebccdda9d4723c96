//! Management's Prometheus metrics and `GET /metrics` (viewer role when
//! tokens are set): every request counted by method, route and status and
//! timed by route, submissions timed on their own
//! (`zf_operation_submit_seconds`, the whole call: a sync operation's includes
//! its run), operations by module, kind and state (kept by the operation
//! index), and open SSE streams (kept by the stream slots).

use std::time::Instant;

use axum::extract::{MatchedPath, Request, State};
use axum::http::{header, Method};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};

use crate::startup::AppState;

/// Counts and times every request.
pub async fn track(request: Request, next: Next) -> Response {
    let started = Instant::now();
    let method = request.method().clone();
    let route = request
        .extensions()
        .get::<MatchedPath>()
        .map(|p| p.as_str().to_string())
        .unwrap_or_else(|| "unmatched".to_string());
    let response = next.run(request).await;
    let seconds = started.elapsed().as_secs_f64();
    let status = response.status().as_u16().to_string();
    if method == Method::POST && route == "/v1/operations" {
        metrics::histogram!("zf_operation_submit_seconds", "status" => status.clone())
            .record(seconds);
    }
    metrics::histogram!("zf_http_request_seconds", "method" => method.to_string(), "route" => route.clone())
        .record(seconds);
    metrics::counter!("zf_http_requests_total", "method" => method.to_string(), "route" => route, "status" => status)
        .increment(1);
    response
}

/// `GET /metrics`, in Prometheus's text format.
#[utoipa::path(
    get,
    path = "/metrics",
    operation_id = "metrics",
    tag = "health",
    security(("bearer" = ["viewer"])),
    responses(
        (status = 200, description = "Prometheus's text exposition format (0.0.4).", body = String, content_type = "text/plain"),
        (status = 401, description = "`unauthorized`: a missing or unknown token.", body = crate::error::ErrorBody),
        (status = 403, description = "`forbidden` (the token's role may not) or `host_not_allowed` (a token-less instance, not addressed to a loopback name).", body = crate::error::ErrorBody),
    )
)]
pub async fn render(State(state): State<AppState>) -> Response {
    (
        [(header::CONTENT_TYPE, "text/plain; version=0.0.4")],
        state.metrics().render(),
    )
        .into_response()
}
