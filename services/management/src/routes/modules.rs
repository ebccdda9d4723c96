//! `/v1/modules`: upload a bundle (streamed into the uploads object store,
//! then validated and stored by the repository), list and show modules.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use axum::body::Body;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use futures::StreamExt;
use serde::Serialize;
use tokio_util::io::StreamReader;
use utoipa::ToSchema;
use zerofoot_shared::protocol::{
    encode, ModuleRecord, PutModule, PutModuleOutcome, Reply, PROTOCOL_VERSION,
};

use crate::error::{ApiError, ApiJson, ApiPath, ErrorBody};
use crate::startup::AppState;

/// Validating and storing a large bundle takes a while.
const REPOSITORY_TIMEOUT: Duration = Duration::from_secs(120);
/// How long an upload waits for the module index watch to show the version.
const CATALOG_CATCH_UP: Duration = Duration::from_secs(5);

/// A stored module version, as an upload answers.
#[derive(Serialize, ToSchema)]
pub struct ModuleStored {
    pub name: String,
    /// A semantic version, e.g. `1.2.0`.
    pub version: String,
    /// `sha256:<hex>` of the bundle bytes.
    pub digest: String,
    /// Bundle size in bytes.
    pub size: u64,
}

/// The body of an upload in the OpenAPI document: the bundle's bytes, not
/// JSON (utoipa would show `Vec<u8>` as an array of numbers).
pub struct BundleBytes;

impl utoipa::PartialSchema for BundleBytes {
    fn schema() -> utoipa::openapi::RefOr<utoipa::openapi::schema::Schema> {
        use utoipa::openapi::schema::{KnownFormat, ObjectBuilder, SchemaFormat, Type};
        ObjectBuilder::new()
            .schema_type(Type::String)
            .format(Some(SchemaFormat::KnownFormat(KnownFormat::Binary)))
            .description(Some("A .tar.gz bundle with module.json at its root."))
            .into()
    }
}

impl ToSchema for BundleBytes {}

/// Every stored module version.
#[derive(Serialize, ToSchema)]
pub struct ModuleList {
    /// By name, newest version first.
    pub modules: Vec<ModuleRecord>,
}

/// One module's versions.
#[derive(Serialize, ToSchema)]
pub struct ModuleVersions {
    pub name: String,
    /// Newest first; never empty.
    pub versions: Vec<ModuleRecord>,
}

/// Uploads a module bundle (a `.tar.gz` with `module.json` at its root, as
/// `scripts/pack-module.sh` packs it), streamed, at most
/// `--max-bundle-bytes` (64 MiB). The repository validates, signs and
/// stores it; versions are immutable. Any `Content-Type` is taken: the body
/// is read as bytes.
#[utoipa::path(
    post,
    path = "/v1/modules",
    operation_id = "module_upload",
    tag = "modules",
    security(("bearer" = ["admin"])),
    request_body(
        description = "The bundle bytes.",
        content(
            (inline(BundleBytes) = "application/gzip"),
            (inline(BundleBytes) = "application/octet-stream"),
        ),
    ),
    responses(
        (status = 201, description = "A new module version, stored.", body = ModuleStored),
        (status = 200, description = "The same bytes were stored before: nothing changed.", body = ModuleStored),
        (status = 400, description = "`empty_body`: no bytes were sent.", body = ErrorBody),
        (status = 401, description = "`unauthorized`: a missing or unknown token.", body = ErrorBody),
        (status = 403, description = "`forbidden` (the token's role may not) or `host_not_allowed` (a token-less instance, not addressed to a loopback name).", body = ErrorBody),
        (status = 404, description = "`upload_not_found`: the staged upload was gone before the repository read it; upload again.", body = ErrorBody),
        (status = 409, description = "`version_exists`: this name and version are stored with other bytes; raise the version.", body = ErrorBody),
        (status = 413, description = "`bundle_too_large`: over the size limit.", body = ErrorBody),
        (status = 422, description = "`invalid_bundle`: not a valid bundle (what is wrong is in the message).", body = ErrorBody),
        (status = 500, description = "`internal`: the repository failed unexpectedly.", body = ErrorBody),
        (status = 503, description = "`unavailable`: NATS or the repository did not answer.", body = ErrorBody),
    )
)]
pub async fn upload(
    State(state): State<AppState>,
    headers: HeaderMap,
    body: Body,
) -> Result<(StatusCode, ApiJson<ModuleStored>), ApiError> {
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
        ApiJson(ModuleStored {
            name: m.name.clone(),
            version: m.version.to_string(),
            digest: m.digest.clone(),
            size: m.size,
        }),
    ))
}

async fn seen_nothing(
    store: &async_nats::jetstream::object_store::ObjectStore,
    name: &str,
) -> bool {
    matches!(store.info(name).await, Ok(info) if info.size == 0)
}

/// Every stored module version, by name, newest version first.
#[utoipa::path(
    get,
    path = "/v1/modules",
    operation_id = "module_list",
    tag = "modules",
    security(("bearer" = ["viewer"])),
    responses(
        (status = 200, description = "The modules.", body = ModuleList),
        (status = 401, description = "`unauthorized`: a missing or unknown token.", body = ErrorBody),
        (status = 403, description = "`forbidden` (the token's role may not) or `host_not_allowed` (a token-less instance, not addressed to a loopback name).", body = ErrorBody),
        (status = 503, description = "`unavailable`: not connected to NATS, or the module index is not read yet.", body = ErrorBody),
    )
)]
pub async fn list(State(state): State<AppState>) -> Result<ApiJson<ModuleList>, ApiError> {
    let nats = state.nats()?;
    let modules = nats
        .catalog
        .list()
        .await
        .map_err(|e| ApiError::unavailable(e.to_string()))?;
    Ok(ApiJson(ModuleList { modules }))
}

/// One module's versions, newest first, with their operations (and their
/// descriptions and params schemas).
#[utoipa::path(
    get,
    path = "/v1/modules/{name}",
    operation_id = "module_show",
    tag = "modules",
    security(("bearer" = ["viewer"])),
    params(("name" = String, Path, description = "The module's name.")),
    responses(
        (status = 200, description = "The module's versions.", body = ModuleVersions),
        (status = 400, description = "`invalid_path`: the name is not UTF-8.", body = ErrorBody),
        (status = 401, description = "`unauthorized`: a missing or unknown token.", body = ErrorBody),
        (status = 403, description = "`forbidden` (the token's role may not) or `host_not_allowed` (a token-less instance, not addressed to a loopback name).", body = ErrorBody),
        (status = 404, description = "`module_not_found`: no module of that name.", body = ErrorBody),
        (status = 503, description = "`unavailable`: not connected to NATS, or the module index is not read yet.", body = ErrorBody),
    )
)]
pub async fn show(
    State(state): State<AppState>,
    ApiPath(name): ApiPath<String>,
) -> Result<ApiJson<ModuleVersions>, ApiError> {
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
    Ok(ApiJson(ModuleVersions { name, versions }))
}
