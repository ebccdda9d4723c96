//! Prometheus metrics: one recorder per process, installed at start, and
//! `GET /metrics` rendering it in Prometheus's text format. Code anywhere
//! records with the `metrics` macros (`counter!`, `gauge!`, `histogram!`);
//! without a recorder (a node started without `--metrics-addr`) they cost
//! next to nothing. Every name starts with `zf_`; durations are histograms
//! in seconds whose names end in `_seconds`.

use std::time::Duration;

use axum::http::header;
use axum::response::IntoResponse;
use metrics_exporter_prometheus::{Matcher, PrometheusBuilder, PrometheusHandle};
use tokio_util::sync::CancellationToken;

/// Buckets of every `*_seconds` histogram: 0.5 ms to 10 s.
const SECONDS_BUCKETS: [f64; 14] = [
    0.0005, 0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.2, 0.5, 1.0, 2.0, 5.0, 10.0,
];
/// How often histograms are drained and idle series forgotten.
const UPKEEP: Duration = Duration::from_secs(5);

#[derive(Debug, thiserror::Error)]
#[error("cannot install the metrics recorder: {0}")]
pub struct MetricsError(String);

/// Installs this process's recorder, labelling every series with `service`,
/// and keeps it tidy until `shutdown`.
pub fn install(
    service: &str,
    shutdown: CancellationToken,
) -> Result<PrometheusHandle, MetricsError> {
    let handle = PrometheusBuilder::new()
        .add_global_label("service", service)
        .set_buckets_for_metric(Matcher::Suffix("_seconds".into()), &SECONDS_BUCKETS)
        .map_err(|e| MetricsError(e.to_string()))?
        .install_recorder()
        .map_err(|e| MetricsError(e.to_string()))?;
    let upkeep = handle.clone();
    tokio::spawn(async move {
        while tokio::time::timeout(UPKEEP, shutdown.cancelled())
            .await
            .is_err()
        {
            upkeep.run_upkeep();
        }
    });
    Ok(handle)
}

/// `GET /metrics` over `handle`.
pub fn router(handle: PrometheusHandle) -> axum::Router {
    axum::Router::new().route(
        "/metrics",
        axum::routing::get(move || {
            let handle = handle.clone();
            async move {
                (
                    [(header::CONTENT_TYPE, "text/plain; version=0.0.4")],
                    handle.render(),
                )
                    .into_response()
            }
        }),
    )
}
