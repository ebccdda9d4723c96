//! `/v1/resources`: managed resources (SPEC §4). Secrets are write-only: they
//! are stored for the drivers and never answered, logged or echoed.

use std::collections::{BTreeMap, HashMap};

use async_nats::jetstream::kv;
use axum::extract::State;
use axum::http::StatusCode;
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};
use utoipa::ToSchema;
use zerofoot_shared::protocol::{decode, encode, ResourceRecord, ResourceView, PROTOCOL_VERSION};

use zerofoot_shared::selector::Selector;

use crate::error::{ApiError, ApiJson, ApiPath, ApiQuery, ErrorBody};
use crate::startup::AppState;

/// A resource's kind, configuration and secrets.
#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
#[schema(example = json!({"kind": "file", "config": {"path": "/var/log/syslog"}, "secrets": {"token": "s3cret"}}))]
pub struct PutResource {
    /// What the resource is, e.g. `ssh-host`: not empty.
    #[schema(min_length = 1, pattern = "\\S")]
    kind: String,
    /// A JSON object handed to the drivers; `{}` when left out or `null`.
    #[serde(default)]
    #[schema(value_type = Option<Object>)]
    config: Value,
    /// Secret values by name: sealed at rest, handed only to drivers, never
    /// answered (only their names are). Needs a secrets key.
    #[serde(default)]
    secrets: BTreeMap<String, String>,
    /// Labels that selectors pick the resource by, e.g. `{"role": "web"}`:
    /// keys and values of 1 to 63 letters, digits, `-`, `_` or `.`, starting
    /// and ending with a letter or digit; at most 64.
    #[serde(default)]
    labels: BTreeMap<String, String>,
    /// The zone whose nodes can reach it and run its sync operations
    /// (default `default`): 1 to 64 characters from A-Z, a-z, 0-9, '-' and '_'.
    #[serde(default = "zerofoot_shared::names::default_zone")]
    zone: String,
}

/// Every resource, by id.
#[derive(Serialize, ToSchema)]
pub struct ResourceList {
    pub resources: Vec<ResourceView>,
}

/// What resealing did, counted by resource.
#[derive(Serialize, ToSchema)]
pub struct ResealReport {
    /// Sealed again under the current key.
    pub resealed: u64,
    /// Already sealed under the current key.
    pub already_current: u64,
    pub without_secrets: u64,
    /// Resources whose secrets could not be resealed, and why.
    pub failed: Vec<ResealFailure>,
}

/// A resource whose secrets could not be resealed.
#[derive(Serialize, ToSchema)]
pub struct ResealFailure {
    pub id: String,
    pub error: String,
}

/// Checks a resource id: 1 to 64 characters from A-Z, a-z, 0-9, '-' and '_'.
pub(super) fn check_id(id: &str) -> Result<(), ApiError> {
    zerofoot_shared::names::validate_instance_id(id).map_err(|_| {
        ApiError::bad_request(
            "invalid_resource_id",
            format!("resource id {id:?} is invalid: use 1 to 64 characters from A-Z, a-z, 0-9, '-' and '_'"),
        )
    })
}

/// Creates or replaces a resource; a replaced one keeps its reported state.
#[utoipa::path(
    put,
    path = "/v1/resources/{id}",
    operation_id = "resource_put",
    tag = "resources",
    security(("bearer" = ["admin"])),
    params(("id" = String, Path, pattern = "^[A-Za-z0-9_-]{1,64}$", example = "web-1", description = "The resource's id.")),
    request_body(content = PutResource, content_type = "application/json"),
    responses(
        (status = 201, description = "Created.", body = ResourceView, links(
            ("get" = (operation_id = "resource_get", parameters(("id" = "$request.path.id")))),
            ("delete" = (operation_id = "resource_delete", parameters(("id" = "$request.path.id")))),
        )),
        (status = 200, description = "Replaced.", body = ResourceView, links(
            ("get" = (operation_id = "resource_get", parameters(("id" = "$request.path.id")))),
            ("delete" = (operation_id = "resource_delete", parameters(("id" = "$request.path.id")))),
        )),
        (status = 400, description = "`invalid_resource_id`, `invalid_json` or `invalid_body` (does not fit the schema).", body = ErrorBody),
        (status = 401, description = "`unauthorized`: a missing or unknown token.", body = ErrorBody),
        (status = 403, description = "`forbidden` (the token's role may not) or `host_not_allowed` (a token-less instance, not addressed to a loopback name).", body = ErrorBody),
        (status = 409, description = "`concurrent_update`: the resource changed while it was being written; send it again.", body = ErrorBody),
        (status = 413, description = "`unreadable_body`: the body is over 1 MiB.", body = ErrorBody),
        (status = 415, description = "`invalid_content_type`: the body is not sent as `application/json`.", body = ErrorBody),
        (status = 422, description = "`invalid_kind` (empty), `invalid_config` (not an object), `invalid_labels` (a key or value out of the rules, or more than 64), `invalid_zone` or `no_secrets_key` (secrets sent to an instance without a secrets key).", body = ErrorBody),
        (status = 500, description = "`internal`: the secrets cannot be sealed, or the stored record is unreadable.", body = ErrorBody),
        (status = 503, description = "`unavailable`: NATS did not answer.", body = ErrorBody),
    )
)]
pub async fn put(
    State(state): State<AppState>,
    ApiPath(id): ApiPath<String>,
    ApiJson(body): ApiJson<PutResource>,
) -> Result<(StatusCode, ApiJson<ResourceView>), ApiError> {
    check_id(&id)?;
    if body.kind.trim().is_empty() {
        return Err(ApiError::unprocessable(
            "invalid_kind",
            "kind must be a non-empty string, e.g. \"ssh-host\"",
        ));
    }
    if !(body.config.is_object() || body.config.is_null()) {
        return Err(ApiError::unprocessable(
            "invalid_config",
            "config must be a JSON object",
        ));
    }
    zerofoot_shared::selector::check_labels(&body.labels)
        .map_err(|e| ApiError::unprocessable("invalid_labels", e.to_string()))?;
    zerofoot_shared::names::validate_zone(&body.zone).map_err(|_| {
        ApiError::unprocessable(
            "invalid_zone",
            format!(
                "zone {:?} is invalid: use 1 to 64 characters from A-Z, a-z, 0-9, '-' and '_'",
                body.zone
            ),
        )
    })?;
    let sealed_secrets = match (body.secrets.is_empty(), state.secrets_key()) {
        (true, _) => None,
        (false, Some(key)) => Some(
            key.seal(&id, &body.secrets)
                .map_err(|e| ApiError::internal("cannot seal the resource's secrets", e))?,
        ),
        (false, None) => {
            return Err(ApiError::unprocessable(
                "no_secrets_key",
                "this management instance has no secrets key, so it cannot store secrets; start it with ZF_SECRETS_KEY or --secrets-key-file (openssl rand -hex 32)",
            ))
        }
    };
    let store = &state.nats()?.assets.resources;
    let previous = load(store, &id).await?;
    let (state_value, state_updated_at, reported_by) = match &previous {
        Some((r, _)) => (r.state.clone(), r.state_updated_at, r.reported_by.clone()),
        None => (None, None, None),
    };
    let record = ResourceRecord {
        v: PROTOCOL_VERSION,
        id: id.clone(),
        kind: body.kind,
        config: if body.config.is_null() {
            json!({})
        } else {
            body.config
        },
        labels: body.labels,
        zone: body.zone,
        secret_names: body.secrets.keys().cloned().collect(),
        sealed_secrets,
        state: state_value,
        state_updated_at,
        reported_by,
        updated_at: zerofoot_shared::time::now(),
    };
    let write = match &previous {
        Some((_, revision)) => store
            .update(&id, encode(&record), *revision)
            .await
            .map(|_| ())
            .map_err(|e| e.to_string()),
        None => store
            .create(&id, encode(&record))
            .await
            .map(|_| ())
            .map_err(|e| e.to_string()),
    };
    write.map_err(|e| {
        ApiError::new(
            StatusCode::CONFLICT,
            "concurrent_update",
            format!(
                "resource {id} changed while it was being written ({e}); send the request again"
            ),
        )
    })?;
    tracing::info!(resource = %id, kind = %record.kind, "resource stored");
    let status = if previous.is_some() {
        StatusCode::OK
    } else {
        StatusCode::CREATED
    };
    Ok((status, ApiJson(ResourceView::from(&record))))
}

/// The record and its KV revision.
async fn load(store: &kv::Store, id: &str) -> Result<Option<(ResourceRecord, u64)>, ApiError> {
    let entry = store
        .entry(id)
        .await
        .map_err(|e| ApiError::nats("cannot read the resources bucket", e))?;
    match entry {
        Some(entry) if entry.operation == kv::Operation::Put => {
            let record = decode::<ResourceRecord>(&entry.value)
                .map_err(|e| ApiError::internal(&format!("resource {id} is unreadable"), e))?;
            Ok(Some((record, entry.revision)))
        }
        _ => Ok(None),
    }
}

fn not_found(id: &str) -> ApiError {
    ApiError::not_found(
        "resource_not_found",
        format!("no resource {id:?}; create it with PUT /v1/resources/{id}"),
    )
}

/// One resource: configuration, reported state, secret names (never values).
#[utoipa::path(
    get,
    path = "/v1/resources/{id}",
    operation_id = "resource_get",
    tag = "resources",
    security(("bearer" = ["viewer"])),
    params(("id" = String, Path, pattern = "^[A-Za-z0-9_-]{1,64}$", example = "web-1", description = "The resource's id.")),
    responses(
        (status = 200, description = "The resource.", body = ResourceView),
        (status = 400, description = "`invalid_resource_id`.", body = ErrorBody),
        (status = 401, description = "`unauthorized`: a missing or unknown token.", body = ErrorBody),
        (status = 403, description = "`forbidden` (the token's role may not) or `host_not_allowed` (a token-less instance, not addressed to a loopback name).", body = ErrorBody),
        (status = 404, description = "`resource_not_found`.", body = ErrorBody),
        (status = 500, description = "`internal`: the stored record is unreadable.", body = ErrorBody),
        (status = 503, description = "`unavailable`: NATS did not answer.", body = ErrorBody),
    )
)]
pub async fn get(
    State(state): State<AppState>,
    ApiPath(id): ApiPath<String>,
) -> Result<ApiJson<ResourceView>, ApiError> {
    check_id(&id)?;
    let store = &state.nats()?.assets.resources;
    let (record, _) = load(store, &id).await?.ok_or_else(|| not_found(&id))?;
    Ok(ApiJson(ResourceView::from(&record)))
}

/// Every resource, by id, or those a label selector picks; secret names only.
#[utoipa::path(
    get,
    path = "/v1/resources",
    operation_id = "resource_list",
    tag = "resources",
    security(("bearer" = ["viewer"])),
    params(
        ("selector" = Option<String>, Query, example = "role=web,env in (prod,stage),!canary", description = "Only resources whose labels this selector picks: requirements separated by commas, all of which must hold: `k=v` (or `==`), `k!=v`, `k in (a,b)`, `k notin (a,b)`, `k` (set), `!k` (not set)."),
    ),
    responses(
        (status = 200, description = "The resources.", body = ResourceList),
        (status = 400, description = "`invalid_selector`: the selector does not parse; the message says what and where.", body = ErrorBody),
        (status = 401, description = "`unauthorized`: a missing or unknown token.", body = ErrorBody),
        (status = 403, description = "`forbidden` (the token's role may not) or `host_not_allowed` (a token-less instance, not addressed to a loopback name).", body = ErrorBody),
        (status = 500, description = "`internal`: a stored record is unreadable.", body = ErrorBody),
        (status = 503, description = "`unavailable`: NATS did not answer.", body = ErrorBody),
    )
)]
pub async fn list(
    State(state): State<AppState>,
    ApiQuery(query): ApiQuery<HashMap<String, String>>,
) -> Result<ApiJson<ResourceList>, ApiError> {
    let selector = query.get("selector").map_or("", String::as_str);
    let records = select(&state.nats()?.assets.resources, selector).await?;
    let resources = records.iter().map(ResourceView::from).collect();
    Ok(ApiJson(ResourceList { resources }))
}

/// The resources `selector` picks (every one for an empty selector), by id.
pub(super) async fn select(
    store: &kv::Store,
    selector: &str,
) -> Result<Vec<ResourceRecord>, ApiError> {
    let selector = Selector::parse(selector)
        .map_err(|e| ApiError::bad_request("invalid_selector", e.to_string()))?;
    let keys = super::bucket_keys(store, "resources bucket").await?;
    let mut records = Vec::with_capacity(keys.len());
    for key in keys {
        if let Some((record, _)) = load(store, &key).await? {
            if selector.matches(&record.labels) {
                records.push(record);
            }
        }
    }
    records.sort_by(|a, b| a.id.cmp(&b.id));
    Ok(records)
}

/// The resources named by `ids`, in that order; 404 naming every one missing.
pub(super) async fn named(
    store: &kv::Store,
    ids: &[String],
) -> Result<Vec<ResourceRecord>, ApiError> {
    let mut records = Vec::with_capacity(ids.len());
    let mut missing = Vec::new();
    for id in ids {
        check_id(id)?;
        match load(store, id).await? {
            Some((record, _)) => records.push(record),
            None => missing.push(id.as_str()),
        }
    }
    if !missing.is_empty() {
        return Err(ApiError::not_found(
            "resource_not_found",
            format!(
                "no resource {}; create them with PUT /v1/resources/{{id}}",
                missing.join(", ")
            ),
        ));
    }
    Ok(records)
}

/// What resealing did to one resource.
enum Resealing {
    Resealed,
    Current,
    NoSecrets,
    Gone,
}

/// `POST /v1/admin/reseal-secrets`: seals every resource's secrets again
/// under the current secrets key, so that the previous keys can be dropped
/// from every service. Safe to repeat; each record is written with
/// compare-and-set, so a concurrent state report is never lost.
#[utoipa::path(
    post,
    path = "/v1/admin/reseal-secrets",
    operation_id = "reseal_secrets",
    tag = "resources",
    security(("bearer" = ["admin"])),
    responses(
        (status = 200, description = "Every resource visited.", body = ResealReport),
        (status = 401, description = "`unauthorized`: a missing or unknown token.", body = ErrorBody),
        (status = 403, description = "`forbidden` (the token's role may not) or `host_not_allowed` (a token-less instance, not addressed to a loopback name).", body = ErrorBody),
        (status = 422, description = "`no_secrets_key`: this instance has no secrets key.", body = ErrorBody),
        (status = 500, description = "`internal`: a stored record is unreadable.", body = ErrorBody),
        (status = 503, description = "`unavailable`: NATS did not answer.", body = ErrorBody),
    )
)]
pub async fn reseal(State(state): State<AppState>) -> Result<ApiJson<ResealReport>, ApiError> {
    let key = state.secrets_key().ok_or_else(|| {
        ApiError::unprocessable(
            "no_secrets_key",
            "this management instance has no secrets key; start it with the new key as ZF_SECRETS_KEY and the old ones as ZF_SECRETS_PREVIOUS_KEYS",
        )
    })?;
    let store = &state.nats()?.assets.resources;
    let keys = super::bucket_keys(store, "resources bucket").await?;
    let (mut resealed, mut current, mut without_secrets) = (0, 0, 0);
    let mut failed = Vec::new();
    for id in keys {
        let mut outcome = Err("changed on every try; run the reseal again".to_string());
        for _ in 0..3 {
            let Some((mut record, revision)) = load(store, &id).await? else {
                outcome = Ok(Resealing::Gone);
                break;
            };
            let Some(sealed) = record.sealed_secrets.as_deref() else {
                outcome = Ok(Resealing::NoSecrets);
                break;
            };
            match key.reseal(&id, sealed) {
                Ok(None) => {
                    outcome = Ok(Resealing::Current);
                    break;
                }
                Ok(Some(new)) => {
                    record.sealed_secrets = Some(new);
                    if store.update(&id, encode(&record), revision).await.is_ok() {
                        outcome = Ok(Resealing::Resealed);
                        break;
                    }
                }
                Err(e) => {
                    outcome = Err(e.to_string());
                    break;
                }
            }
        }
        match outcome {
            Ok(Resealing::Resealed) => resealed += 1,
            Ok(Resealing::Current) => current += 1,
            Ok(Resealing::NoSecrets) => without_secrets += 1,
            Ok(Resealing::Gone) => {}
            Err(error) => failed.push(ResealFailure { id, error }),
        }
    }
    tracing::info!(
        resealed,
        already_current = current,
        failed = failed.len(),
        "resealed resource secrets under the current key"
    );
    Ok(ApiJson(ResealReport {
        resealed,
        already_current: current,
        without_secrets,
        failed,
    }))
}

/// Deletes a resource.
#[utoipa::path(
    delete,
    path = "/v1/resources/{id}",
    operation_id = "resource_delete",
    tag = "resources",
    security(("bearer" = ["admin"])),
    params(("id" = String, Path, pattern = "^[A-Za-z0-9_-]{1,64}$", example = "web-1", description = "The resource's id.")),
    responses(
        (status = 204, description = "Deleted."),
        (status = 400, description = "`invalid_resource_id`.", body = ErrorBody),
        (status = 401, description = "`unauthorized`: a missing or unknown token.", body = ErrorBody),
        (status = 403, description = "`forbidden` (the token's role may not) or `host_not_allowed` (a token-less instance, not addressed to a loopback name).", body = ErrorBody),
        (status = 404, description = "`resource_not_found`.", body = ErrorBody),
        (status = 500, description = "`internal`: the stored record is unreadable.", body = ErrorBody),
        (status = 503, description = "`unavailable`: NATS did not answer.", body = ErrorBody),
    )
)]
pub async fn delete(
    State(state): State<AppState>,
    ApiPath(id): ApiPath<String>,
) -> Result<StatusCode, ApiError> {
    check_id(&id)?;
    let store = &state.nats()?.assets.resources;
    load(store, &id).await?.ok_or_else(|| not_found(&id))?;
    store
        .delete(&id)
        .await
        .map_err(|e| ApiError::nats("cannot delete from the resources bucket", e))?;
    tracing::info!(resource = %id, "resource deleted");
    Ok(StatusCode::NO_CONTENT)
}
