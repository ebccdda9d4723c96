//! `/v1/modules`: upload a bundle (streamed into the uploads object store,
//! then validated and stored by the repository), list and show modules.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use axum::body::Body;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode};
use axum::Json;
use futures::StreamExt;
use serde_json::{json, Value};
use tokio_util::io::StreamReader;
use zerofoot_shared::protocol::{encode, PutModule, PutModuleOutcome, Reply, PROTOCOL_VERSION};

use crate::error::ApiError;
use crate::startup::AppState;

/// Validating and storing a large bundle takes a while.
const REPOSITORY_TIMEOUT: Duration = Duration::from_secs(120);
/// How long an upload waits for the module index watch to show the version.
const CATALOG_CATCH_UP: Duration = Duration::from_secs(5);

pub async fn upload(
    State(state): State<AppState>,
    headers: HeaderMap,
    body: Body,
) -> Result<(StatusCode, Json<Value>), ApiError> {
    let nats = state.nats()?;
    let limit = state.config().max_bundle_bytes;
    let too_large = || {
        ApiError::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            "bundle_too_large",
            format!("the bundle is larger than the limit of {limit} bytes"),
        )
    };
    let declared = headers
        .get(axum::http::header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    if declared.is_some_and(|len| len > limit) {
        return Err(too_large());
    }

    // Stream the body into the uploads store, counting; the whole bundle is
    // never held in memory.
    let exceeded = Arc::new(AtomicBool::new(false));
    let mut seen = 0u64;
    let flag = exceeded.clone();
    let stream = body.into_data_stream().map(move |chunk| {
        let chunk = chunk.map_err(std::io::Error::other)?;
        seen += chunk.len() as u64;
        if seen > limit {
            flag.store(true, Ordering::Relaxed);
            return Err(std::io::Error::other("bundle over the size limit"));
        }
        Ok::<_, std::io::Error>(chunk)
    });
    let mut reader = StreamReader::new(stream);
    let upload = format!("upload-{}", uuid::Uuid::new_v4());
    let put = nats.assets.uploads.put(upload.as_str(), &mut reader).await;
    if let Err(e) = put {
        let _ = nats.assets.uploads.delete(&upload).await;
        if exceeded.load(Ordering::Relaxed) {
            return Err(too_large());
        }
        return Err(ApiError::nats(
            "cannot stage the bundle in the uploads object store",
            e,
        ));
    }
    if seen_nothing(&nats.assets.uploads, &upload).await {
        let _ = nats.assets.uploads.delete(&upload).await;
        return Err(ApiError::bad_request(
            "empty_body",
            "the body is empty: send the bundle bytes (a .tar.gz)",
        ));
    }

    let request = PutModule {
        v: PROTOCOL_VERSION,
        upload: upload.clone(),
    };
    let reply = tokio::time::timeout(
        REPOSITORY_TIMEOUT,
        nats.client
            .request(state.names().repository_put(), encode(&request)),
    )
    .await;
    let message = match reply {
        Ok(Ok(message)) => message,
        Ok(Err(e)) => {
            let _ = nats.assets.uploads.delete(&upload).await;
            return Err(ApiError::unavailable(format!(
                "no module repository answered ({e}); start zf-repository for cluster {}",
                state.names().cluster()
            )));
        }
        Err(_) => {
            return Err(ApiError::unavailable(
                "the module repository did not answer in time; try again",
            ));
        }
    };
    let outcome: PutModuleOutcome =
        serde_json::from_slice::<Reply<PutModuleOutcome>>(&message.payload)
            .map_err(|e| ApiError::internal("unreadable answer from the repository", e))?
            .into_result()?;
    let status = if outcome.created {
        StatusCode::CREATED
    } else {
        StatusCode::OK
    };
    let m = &outcome.module;
    // Runnable through this instance once the caller hears it is stored:
    // wait (briefly) for the index watch to bring the new version here.
    let _ = tokio::time::timeout(CATALOG_CATCH_UP, async {
        while !matches!(
            nats.catalog.resolve(&m.name, Some(&m.version)).await,
            Ok(Some(_))
        ) {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    })
    .await;
    Ok((
        status,
        Json(json!({"name": m.name, "version": m.version, "digest": m.digest, "size": m.size})),
    ))
}

async fn seen_nothing(
    store: &async_nats::jetstream::object_store::ObjectStore,
    name: &str,
) -> bool {
    matches!(store.info(name).await, Ok(info) if info.size == 0)
}

pub async fn list(State(state): State<AppState>) -> Result<Json<Value>, ApiError> {
    let nats = state.nats()?;
    let modules = nats
        .catalog
        .list()
        .await
        .map_err(|e| ApiError::unavailable(e.to_string()))?;
    Ok(Json(json!({"modules": modules})))
}

pub async fn show(
    State(state): State<AppState>,
    Path(name): Path<String>,
) -> Result<Json<Value>, ApiError> {
    let nats = state.nats()?;
    let versions = nats
        .catalog
        .versions(&name)
        .await
        .map_err(|e| ApiError::unavailable(e.to_string()))?;
    if versions.is_empty() {
        return Err(ApiError::not_found(
            "module_not_found",
            format!("no module named {name:?}; GET /v1/modules lists them"),
        ));
    }
    Ok(Json(json!({"name": name, "versions": versions})))
}
