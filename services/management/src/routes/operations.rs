//! `/v1/operations`: submit, list and show operations (SPEC §5, §8). The
//! execution context is written to KV before the operation is acknowledged;
//! a sync submission then waits for the context to reach a final state.

use std::collections::HashMap;
use std::time::Duration;

use axum::extract::{Extension, State};
use axum::http::StatusCode;
use futures::StreamExt;
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};
use utoipa::ToSchema;
use uuid::Uuid;
use zerofoot_shared::batch::{self, BatchPlan, FailPolicy, Target};
use zerofoot_shared::context_store::ContextStoreError;
use zerofoot_shared::protocol::{
    decode, ExecutionContext, NewOperation, OperationKind, OperationState,
};
use zerofoot_shared::submit::Handed;
use zerofoot_shared::telemetry::{micros_since, TIMING};

use crate::auth::ApiClient;
use crate::error::{ApiError, ApiJson, ApiPath, ApiQuery, ErrorBody};
use crate::operation_index::Filter;
use crate::startup::{AppState, Nats};

/// Slack on top of the operation's own time budget before answering 202.
const WAIT_SLACK: Duration = Duration::from_secs(10);
/// Largest `params` of an operation, as JSON.
const MAX_PARAMS_BYTES: usize = 256 * 1024;
/// Largest context of a batch, as JSON: under NATS's default 1 MiB
/// message limit with room for its checkpoint and attempts.
const MAX_BATCH_CONTEXT_BYTES: usize = 768 * 1024;
const DEFAULT_LIST_LIMIT: usize = 100;
const MAX_LIST_LIMIT: usize = 1000;

/// A new operation.
#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
#[schema(example = json!({"module": "shell", "operation": "run", "params": {"command": "uname", "args": ["-s"]}}))]
pub struct Submit {
    /// The module's name.
    module: String,
    /// A semantic version of the module; the newest when left out.
    #[serde(default)]
    version: Option<String>,
    /// One of the module's operations.
    operation: String,
    /// The id of the resource to run it against.
    #[serde(default)]
    #[schema(pattern = "^[A-Za-z0-9_-]{1,64}$")]
    resource: Option<String>,
    /// A JSON object (at most 256 KiB), checked against the operation's
    /// params schema when it has one; `{}` when left out or `null`.
    #[serde(default)]
    #[schema(value_type = Option<Object>)]
    params: Option<Value>,
    /// Runs the operation as a batch, once per target resource, instead of
    /// on one `resource`.
    #[serde(default)]
    targets: Option<Targets>,
    /// A batch's most children unfinished at once: 1 to 1000 (default 10).
    #[serde(default)]
    #[schema(minimum = 1, maximum = 1000)]
    max_parallel: Option<u32>,
    /// What a batch does when children fail (default `"continue"`).
    #[serde(default)]
    fail_policy: Option<FailPolicy>,
}

/// A batch's targets: the resources a label selector picks now (by id), or
/// resources named in order. Exactly one of the two.
#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
#[schema(example = json!({"selector": "role=web,env in (prod,stage)"}))]
pub struct Targets {
    /// A label selector, as on `GET /v1/resources?selector=`.
    #[serde(default)]
    selector: Option<String>,
    /// Resource ids, each once.
    #[serde(default)]
    resources: Option<Vec<String>>,
}

/// Operations, newest first.
#[derive(Serialize, ToSchema)]
pub struct OperationList {
    pub operations: Vec<ExecutionContext>,
}

fn flag(query: &HashMap<String, String>, name: &str, default: bool) -> Result<bool, ApiError> {
    match query.get(name).map(String::as_str) {
        None => Ok(default),
        Some("true" | "1" | "") => Ok(true),
        Some("false" | "0") => Ok(false),
        Some(other) => Err(ApiError::bad_request(
            "invalid_query",
            format!("?{name}={other} is not a boolean: use true or false"),
        )),
    }
}

/// Runs an operation. The context is recorded before the call answers. A
/// sync operation is waited for (unless `?wait=false`): 200 with its final
/// context, or 202 with the context as it stands once it outlasts
/// `timeout_ms × (retries + 1) + 10 s`. An async one (a monitor) answers
/// 202 `pending` at once; the lead starts it.
#[utoipa::path(
    post,
    path = "/v1/operations",
    operation_id = "operation_submit",
    tag = "operations",
    security(("bearer" = ["operator"])),
    params(("wait" = Option<bool>, Query, description = "Whether a sync call waits for the end (default true).")),
    request_body(content = Submit, content_type = "application/json"),
    responses(
        (status = 200, description = "A sync operation, finished: `complete`, `failed` or `cancelled`.", body = ExecutionContext, links(
            ("show" = (operation_id = "operation_show", parameters(("id" = "$response.body#/id")))),
            ("cancel" = (operation_id = "operation_cancel", parameters(("id" = "$response.body#/id")))),
            ("events" = (operation_id = "operation_events", parameters(("id" = "$response.body#/id")))),
            ("logs" = (operation_id = "operation_logs", parameters(("id" = "$response.body#/id")))),
        )),
        (status = 202, description = "Recorded, not finished: an async operation (`pending`), a sync one with `?wait=false` or one that outlasted its time budget.", body = ExecutionContext, links(
            ("show" = (operation_id = "operation_show", parameters(("id" = "$response.body#/id")))),
            ("cancel" = (operation_id = "operation_cancel", parameters(("id" = "$response.body#/id")))),
            ("events" = (operation_id = "operation_events", parameters(("id" = "$response.body#/id")))),
            ("logs" = (operation_id = "operation_logs", parameters(("id" = "$response.body#/id")))),
        )),
        (status = 400, description = "`invalid_json`, `invalid_body` (does not fit the schema), `invalid_params` (not an object), `invalid_version` (not semver), `invalid_resource_id` or `invalid_query` (`?wait`).", body = ErrorBody),
        (status = 401, description = "`unauthorized`: a missing or unknown token.", body = ErrorBody),
        (status = 403, description = "`forbidden` (the token's role may not) or `host_not_allowed` (a token-less instance, not addressed to a loopback name).", body = ErrorBody),
        (status = 404, description = "`module_not_found` (no such module or version) or `resource_not_found`.", body = ErrorBody),
        (status = 413, description = "`params_too_large` (over 256 KiB), `batch_too_large` (a batch's targets and params over 768 KiB) or `unreadable_body` (the body is over 1 MiB).", body = ErrorBody),
        (status = 415, description = "`invalid_content_type`: the body is not sent as `application/json`.", body = ErrorBody),
        (status = 422, description = "`unknown_operation` (the module has no such operation) or `invalid_params` (the params break the operation's schema; every violation in `error.violations`).", body = ErrorBody),
        (status = 429, description = "`too_many_operations`: the client's limit of unfinished operations is reached.", body = ErrorBody),
        (status = 500, description = "`internal`: the operation's stored params schema is unusable.", body = ErrorBody),
        (status = 503, description = "`unavailable`: NATS did not answer, the module index is not read yet, or no agent node is running (the operation is then recorded as failed).", body = ErrorBody),
    )
)]
pub async fn submit(
    State(state): State<AppState>,
    ApiQuery(query): ApiQuery<HashMap<String, String>>,
    Extension(client): Extension<ApiClient>,
    ApiJson(body): ApiJson<Submit>,
) -> Result<(StatusCode, ApiJson<ExecutionContext>), ApiError> {
    let received = std::time::Instant::now();
    let wait = flag(&query, "wait", true)?;
    let nats = state.nats()?;
    let params = match body.params {
        None | Some(Value::Null) => json!({}),
        Some(Value::Object(map)) => Value::Object(map),
        Some(other) => {
            return Err(ApiError::bad_request(
                "invalid_params",
                format!("params must be a JSON object, not {}", kind_of(&other)),
            ))
        }
    };
    let params_size = serde_json::to_vec(&params)
        .map(|v| v.len())
        .unwrap_or(usize::MAX);
    if params_size > MAX_PARAMS_BYTES {
        return Err(ApiError::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            "params_too_large",
            format!("params are {params_size} bytes; the limit is {MAX_PARAMS_BYTES}"),
        ));
    }
    let version = body
        .version
        .as_deref()
        .map(str::parse::<semver::Version>)
        .transpose()
        .map_err(|e| {
            ApiError::bad_request("invalid_version", format!("version is not semver: {e}"))
        })?;
    let module = nats
        .catalog
        .resolve(&body.module, version.as_ref())
        .await
        .map_err(|e| ApiError::unavailable(e.to_string()))?
        .ok_or_else(|| {
            let which = match &version {
                Some(v) => format!("module {:?} version {v}", body.module),
                None => format!("module {:?}", body.module),
            };
            ApiError::not_found(
                "module_not_found",
                format!("no {which}; GET /v1/modules lists the modules"),
            )
        })?;
    let resolved = std::time::Instant::now();
    let spec = module.operations.get(&body.operation).ok_or_else(|| {
        let known: Vec<&str> = module.operations.keys().map(String::as_str).collect();
        ApiError::unprocessable(
            "unknown_operation",
            format!(
                "module {} {} has no operation {:?}; it has: {}",
                module.name,
                module.version,
                body.operation,
                known.join(", ")
            ),
        )
    })?;
    if let Some(schema) = &spec.params {
        let violations = zerofoot_shared::protocol::params_violations(schema, &params)
            .map_err(|e| ApiError::internal("a stored params schema is unusable", e))?;
        if !violations.is_empty() {
            return Err(ApiError::unprocessable(
                "invalid_params",
                format!(
                    "params of {} {} {} do not match its schema: {}",
                    module.name,
                    module.version,
                    body.operation,
                    violations.join("; ")
                ),
            )
            .with_violations(violations));
        }
    }
    if let Some(targets) = body.targets {
        if body.resource.is_some() {
            return Err(ApiError::bad_request(
                "invalid_body",
                "give either resource (one operation) or targets (a batch), not both",
            ));
        }
        let plan = batch_plan(
            nats,
            targets,
            body.max_parallel,
            body.fail_policy,
            spec.kind,
        )
        .await?;
        let mut ctx = ExecutionContext::new(NewOperation {
            module: module.name.clone(),
            version: module.version.to_string(),
            digest: module.digest.clone(),
            operation: body.operation,
            // A batch is run by a zone lead, as monitors are.
            kind: OperationKind::Async,
            resource: None,
            zone: plan.targets[0].zone.clone(),
            params,
            timeout_ms: spec.timeout_ms(),
            retries: spec.retries(),
            client: Some(client.0.clone()),
        });
        let mut zones: Vec<&str> = plan.targets.iter().map(|t| t.zone.as_str()).collect();
        zones.sort_unstable();
        zones.dedup();
        let empty: Vec<&str> = zones
            .into_iter()
            .filter(|zone| state.view().zone_is_empty(zone))
            .collect();
        if !empty.is_empty() {
            return Err(ApiError::unavailable(format!(
                "no agent node of zone {} is running in cluster {}; start one with --zone",
                empty.join(", "),
                state.names().cluster(),
            )));
        }
        ctx.batch = Some(plan);
        // The batch's context holds every target and crosses NATS whole.
        let size = zerofoot_shared::protocol::encode(&ctx).len();
        if size > MAX_BATCH_CONTEXT_BYTES {
            return Err(ApiError::new(
                StatusCode::PAYLOAD_TOO_LARGE,
                "batch_too_large",
                format!("the batch's context would be {size} bytes (targets and params); the limit is {MAX_BATCH_CONTEXT_BYTES}: split it into smaller batches"),
            ));
        }
        return record_async(nats, &client, ctx).await;
    }
    if body.max_parallel.is_some() || body.fail_policy.is_some() {
        return Err(ApiError::bad_request(
            "invalid_body",
            "max_parallel and fail_policy go with targets (a batch)",
        ));
    }
    // The resource's zone decides which nodes may run the operation.
    let reading_resource = std::time::Instant::now();
    let zone = match &body.resource {
        None => zerofoot_shared::names::default_zone(),
        Some(resource) => {
            // Before the bucket is asked: it refuses such keys as an error of its own.
            super::resources::check_id(resource)?;
            let stored = nats
                .assets
                .resources
                .get(resource.as_str())
                .await
                .map_err(|e| ApiError::nats("cannot read the resources bucket", e))?
                .ok_or_else(|| {
                    ApiError::not_found(
                        "resource_not_found",
                        format!(
                            "no resource {resource:?}; create it with PUT /v1/resources/{resource}"
                        ),
                    )
                })?;
            zerofoot_shared::protocol::decode::<zerofoot_shared::protocol::ResourceRecord>(&stored)
                .map_err(|e| ApiError::internal("a stored resource is unreadable", e))?
                .zone
        }
    };

    let ctx = ExecutionContext::new(NewOperation {
        module: module.name.clone(),
        version: module.version.to_string(),
        digest: module.digest.clone(),
        operation: body.operation,
        kind: spec.kind,
        resource: body.resource,
        zone,
        params,
        timeout_ms: spec.timeout_ms(),
        retries: spec.retries(),
        client: Some(client.0.clone()),
    });
    // A monitor would wait for a lead of its zone for ever. (A sync
    // submission finds out from the zone's queue group, which also waits a
    // moment for a node that is restarting.)
    if spec.kind == OperationKind::Async && state.view().zone_is_empty(&ctx.zone) {
        return Err(ApiError::unavailable(format!(
            "no agent node of zone {} is running in cluster {}; start one with --zone {}",
            ctx.zone,
            state.names().cluster(),
            ctx.zone
        )));
    }
    if ctx.kind == OperationKind::Async {
        return record_async(nats, &client, ctx).await;
    }
    let resource_us = micros_since(reading_resource);
    let admission = admit(nats, &client)?;
    // Subscribe before submitting, so no change of the context can slip past.
    let subscription = nats.contexts.subscribe(ctx.id);
    let submitting = std::time::Instant::now();
    submit_to_a_node(&state, nats, &ctx).await?;
    let submit_us = micros_since(submitting);
    admission.recorded(ctx.id);
    tracing::info!(op = %ctx.id, module = %ctx.module, operation = %ctx.operation, "operation recorded");
    if !wait {
        return Ok((StatusCode::ACCEPTED, ApiJson(ctx)));
    }
    let budget = Duration::from_millis(ctx.timeout_ms) * (ctx.retries + 1) + WAIT_SLACK;
    let waiting = std::time::Instant::now();
    let id = ctx.id;
    let final_ctx = wait_for_end(nats, subscription, ctx, budget).await;
    tracing::debug!(
        target: TIMING,
        op = %id,
        resolve_module_us = resolved.duration_since(received).as_micros() as u64,
        resource_us,
        submit_us,
        wait_result_us = micros_since(waiting),
        handler_us = micros_since(received),
        "sync operation answered"
    );
    let status = if final_ctx.state.is_terminal() {
        StatusCode::OK
    } else {
        StatusCode::ACCEPTED
    };
    Ok((status, ApiJson(final_ctx)))
}

fn admit(nats: &Nats, client: &ApiClient) -> Result<crate::client_limits::Admission, ApiError> {
    nats.contexts.limits().admit(&client.0).map_err(|e| {
        ApiError::new(
            StatusCode::TOO_MANY_REQUESTS,
            "too_many_operations",
            e.to_string(),
        )
    })
}

/// Records an async operation or a batch, `pending` for its zone's lead.
async fn record_async(
    nats: &Nats,
    client: &ApiClient,
    ctx: ExecutionContext,
) -> Result<(StatusCode, ApiJson<ExecutionContext>), ApiError> {
    let admission = admit(nats, client)?;
    nats.store
        .create(&ctx)
        .await
        .map_err(|e| ApiError::nats("cannot record the operation", e))?;
    admission.recorded(ctx.id);
    tracing::info!(op = %ctx.id, module = %ctx.module, operation = %ctx.operation, targets = ctx.batch.as_ref().map(|b| b.targets.len()), "operation recorded");
    Ok((StatusCode::ACCEPTED, ApiJson(ctx)))
}

/// A batch's plan: its targets resolved now, each with its zone.
async fn batch_plan(
    nats: &Nats,
    targets: Targets,
    max_parallel: Option<u32>,
    fail_policy: Option<FailPolicy>,
    child_kind: OperationKind,
) -> Result<BatchPlan, ApiError> {
    let max_parallel = max_parallel.unwrap_or(batch::DEFAULT_MAX_PARALLEL);
    if !(1..=batch::MAX_PARALLEL).contains(&max_parallel) {
        return Err(ApiError::bad_request(
            "invalid_body",
            format!(
                "max_parallel is {max_parallel}: use 1 to {}",
                batch::MAX_PARALLEL
            ),
        ));
    }
    let store = &nats.assets.resources;
    let (records, selector) = match (targets.selector, targets.resources) {
        (Some(selector), None) => (
            super::resources::select(store, &selector).await?,
            Some(selector),
        ),
        (None, Some(ids)) => {
            let mut seen = std::collections::HashSet::new();
            if let Some(twice) = ids.iter().find(|id| !seen.insert(id.as_str())) {
                return Err(ApiError::bad_request(
                    "invalid_body",
                    format!("targets.resources names {twice:?} twice; name each resource once"),
                ));
            }
            (super::resources::named(store, &ids).await?, None)
        }
        _ => {
            return Err(ApiError::bad_request(
                "invalid_body",
                "targets needs exactly one of selector or resources",
            ))
        }
    };
    if records.is_empty() {
        return Err(ApiError::unprocessable(
            "no_targets",
            match &selector {
                Some(s) => format!("the selector {s:?} picks no resource"),
                None => "targets.resources is empty".to_string(),
            },
        ));
    }
    if records.len() > batch::MAX_TARGETS {
        return Err(ApiError::unprocessable(
            "too_many_targets",
            format!(
                "{} targets; a batch takes at most {}",
                records.len(),
                batch::MAX_TARGETS
            ),
        ));
    }
    Ok(BatchPlan {
        targets: records
            .into_iter()
            .map(|r| Target {
                resource: r.id,
                zone: r.zone,
            })
            .collect(),
        max_parallel,
        fail_policy: fail_policy.unwrap_or_default(),
        selector,
        child_kind,
    })
}

fn kind_of(v: &Value) -> &'static str {
    match v {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "an array",
        Value::Object(_) => "an object",
    }
}

/// Hands a new sync operation to a node of its zone; 503 when the zone has
/// no node (the operation is then recorded as failed).
async fn submit_to_a_node(
    state: &AppState,
    nats: &Nats,
    ctx: &ExecutionContext,
) -> Result<(), ApiError> {
    let live = state.view().live_nodes_in(&ctx.zone);
    match zerofoot_shared::submit::hand_over(&nats.client, state.names(), &nats.store, ctx, &live)
        .await
    {
        Ok(Handed::Taken { .. } | Handed::Recorded) => Ok(()),
        Ok(Handed::NoNode) => Err(ApiError::unavailable(format!(
            "no agent node of zone {} is running in cluster {}; operation {} was marked failed",
            ctx.zone,
            state.names().cluster(),
            ctx.id
        ))),
        Err(e) => Err(ApiError::nats("cannot record the operation", e)),
    }
}

/// Waits for the context to reach a final state, or the budget to run out.
/// A direct read every few seconds covers changes the shared watch missed
/// (while it re-watches after a NATS hiccup).
async fn wait_for_end(
    nats: &Nats,
    mut subscription: crate::context_watch::Subscription,
    mut latest: ExecutionContext,
    budget: Duration,
) -> ExecutionContext {
    let deadline = tokio::time::Instant::now() + budget;
    let mut recheck = tokio::time::interval(Duration::from_secs(2));
    recheck.tick().await;
    loop {
        tokio::select! {
            _ = tokio::time::sleep_until(deadline) => break,
            change = subscription.changes.recv() => match change {
                Some(ctx) => latest = ctx,
                None => break,
            },
            _ = recheck.tick() => {
                if let Ok((ctx, _)) = load(nats, &latest.id).await {
                    latest = ctx;
                }
            }
        }
        if latest.state.is_terminal() {
            break;
        }
    }
    latest
}

pub fn parse_id(id: &str) -> Result<Uuid, ApiError> {
    id.parse::<Uuid>().map_err(|_| {
        ApiError::bad_request(
            "invalid_operation_id",
            format!("{id:?} is not an operation id (a UUID)"),
        )
    })
}

/// The context of `op` and its KV revision, or 404.
pub async fn load(nats: &Nats, op: &Uuid) -> Result<(ExecutionContext, u64), ApiError> {
    match nats.store.load(*op).await {
        Ok(Some(stored)) => Ok((stored.ctx, stored.revision)),
        Ok(None) => Err(ApiError::not_found(
            "operation_not_found",
            format!("no operation {op}"),
        )),
        Err(e @ ContextStoreError::Unreadable { .. }) => {
            Err(ApiError::internal("unreadable context", e))
        }
        Err(e) => Err(ApiError::nats("cannot read the contexts bucket", e)),
    }
}

/// One operation's execution context: state, owner, attempts, result, error.
#[utoipa::path(
    get,
    path = "/v1/operations/{id}",
    operation_id = "operation_show",
    tag = "operations",
    security(("bearer" = ["viewer"])),
    params(("id" = Uuid, Path, description = "The operation's id.")),
    responses(
        (status = 200, description = "The execution context; a batch's also has `counts` and `children`.", body = OperationView),
        (status = 400, description = "`invalid_operation_id`: not a UUID.", body = ErrorBody),
        (status = 401, description = "`unauthorized`: a missing or unknown token.", body = ErrorBody),
        (status = 403, description = "`forbidden` (the token's role may not) or `host_not_allowed` (a token-less instance, not addressed to a loopback name).", body = ErrorBody),
        (status = 404, description = "`operation_not_found`.", body = ErrorBody),
        (status = 500, description = "`internal`: the stored context is unreadable.", body = ErrorBody),
        (status = 503, description = "`unavailable`: NATS did not answer.", body = ErrorBody),
    )
)]
pub async fn show(
    State(state): State<AppState>,
    ApiPath(id): ApiPath<String>,
) -> Result<ApiJson<OperationView>, ApiError> {
    let id = parse_id(&id)?;
    let nats = state.nats()?;
    let (ctx, _) = load(nats, &id).await?;
    let Some(plan) = &ctx.batch else {
        return Ok(ApiJson(OperationView {
            context: ctx,
            counts: None,
            children: None,
        }));
    };
    let targets: Vec<(u32, Target)> = (0u32..).zip(plan.targets.iter().cloned()).collect();
    let store = nats.store.clone();
    let batch_id = ctx.id;
    let loaded: Vec<_> = futures::stream::iter(targets)
        .map(move |(index, target)| {
            let store = store.clone();
            async move {
                let id = batch::child_id(batch_id, index);
                (index, id, target, store.load(id).await)
            }
        })
        .buffered(32)
        .collect()
        .await;
    let mut children = Vec::with_capacity(loaded.len());
    for (index, id, target, stored) in loaded {
        let child = stored
            .map_err(|e| ApiError::nats("cannot read a child of the batch", e))?
            .map(|s| s.ctx);
        children.push(ChildView {
            index,
            id,
            resource: target.resource,
            zone: target.zone,
            state: child.as_ref().map(|c| c.state),
            node: child
                .as_ref()
                .and_then(|c| c.attempts.last().map(|a| a.node.clone())),
            error: child.and_then(|c| c.error),
        });
    }
    let counts = batch::BatchCounts::of(children.iter().map(|c| c.state));
    Ok(ApiJson(OperationView {
        context: ctx,
        counts: Some(counts),
        children: Some(children),
    }))
}

/// An operation's execution context; for a batch, also where its targets stand.
#[derive(Serialize, ToSchema)]
pub struct OperationView {
    #[serde(flatten)]
    pub context: ExecutionContext,
    /// A batch's targets counted by their child's state.
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schema(nullable = false)]
    pub counts: Option<batch::BatchCounts>,
    /// A batch's children, one per target in order.
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schema(nullable = false)]
    pub children: Option<Vec<ChildView>>,
}

/// One target of a batch and its child operation.
#[derive(Serialize, ToSchema)]
pub struct ChildView {
    pub index: u32,
    /// The child operation's id (also when it has not started).
    pub id: Uuid,
    pub resource: String,
    pub zone: String,
    /// `null` while the target has not started (or never will: after a stop or a cancel).
    #[schema(required = true)]
    pub state: Option<OperationState>,
    /// The node of its last attempt.
    #[schema(required = true)]
    pub node: Option<String>,
    #[schema(required = true)]
    pub error: Option<String>,
}

/// Compare-and-set tries of a cancel before it gives up with 409 `busy`.
const CANCEL_ATTEMPTS: usize = 5;
/// How long the best-effort nudge to the owner may take.
const CANCEL_NUDGE_TIMEOUT: Duration = Duration::from_secs(2);

/// Cancel, recorded before it is acknowledged: a pending operation is
/// `cancelled` at once; a running one turns `cancelling` in the contexts
/// bucket (compare-and-set, retried on conflict), and whichever node owns it,
/// now or after a failover, stops the driver and writes `cancelled`. Only
/// then does the call answer 202, so a cancel survives the owner's death.
/// Asking the owner on `op.<id>.cancel` afterwards only makes it quicker.
#[utoipa::path(
    delete,
    path = "/v1/operations/{id}",
    operation_id = "operation_cancel",
    tag = "operations",
    security(("bearer" = ["operator"])),
    params(("id" = Uuid, Path, description = "The operation's id.")),
    responses(
        (status = 202, description = "The cancel is recorded: `cancelled` at once when the operation was pending, else `cancelling` (its owner stops the driver and writes `cancelled`). A batch's unfinished children are cancelled too before the answer (a cancelled batch may be cancelled again to reach them).", body = ExecutionContext),
        (status = 400, description = "`invalid_operation_id`: not a UUID.", body = ErrorBody),
        (status = 401, description = "`unauthorized`: a missing or unknown token.", body = ErrorBody),
        (status = 403, description = "`forbidden` (the token's role may not) or `host_not_allowed` (a token-less instance, not addressed to a loopback name).", body = ErrorBody),
        (status = 404, description = "`operation_not_found`.", body = ErrorBody),
        (status = 409, description = "`already_finished`, or `busy` (the context kept changing; try again).", body = ErrorBody),
        (status = 500, description = "`internal`: the stored context is unreadable.", body = ErrorBody),
        (status = 503, description = "`unavailable`: NATS did not answer.", body = ErrorBody),
    )
)]
pub async fn cancel(
    State(state): State<AppState>,
    ApiPath(id): ApiPath<String>,
) -> Result<(StatusCode, ApiJson<ExecutionContext>), ApiError> {
    let id = parse_id(&id)?;
    let nats = state.nats()?;
    for _ in 0..CANCEL_ATTEMPTS {
        let (mut ctx, revision) = load(nats, &id).await?;
        // A cancelled batch's children may still be running (its owner died
        // before it cancelled them): a repeated cancel reaches them.
        let batch_cancelled = ctx.batch.is_some() && ctx.state == OperationState::Cancelled;
        if ctx.state.is_terminal() && !batch_cancelled {
            return Err(ApiError::new(
                StatusCode::CONFLICT,
                "already_finished",
                format!("operation {id} is already {}", ctx.state.as_str()),
            ));
        }
        if ctx.state == OperationState::Cancelling || batch_cancelled {
            // Asked before; the record stands. Nudge the owner again.
            nudge_owner(&state, nats, &ctx);
            cancel_children(&state, nats, &ctx).await?;
            return Ok((StatusCode::ACCEPTED, ApiJson(ctx)));
        }
        ctx.request_cancel();
        match nats.store.cas(&ctx, revision).await {
            Ok(_) => {
                tracing::info!(op = %id, state = ctx.state.as_str(), "cancel recorded");
                if ctx.state == OperationState::Cancelling {
                    nudge_owner(&state, nats, &ctx);
                }
                cancel_children(&state, nats, &ctx).await?;
                return Ok((StatusCode::ACCEPTED, ApiJson(ctx)));
            }
            // Someone wrote meanwhile (the owner, a takeover): read again.
            Err(e) if e.is_conflict() => continue,
            Err(e) => return Err(ApiError::nats("cannot record the cancel", e)),
        }
    }
    Err(ApiError::new(
        StatusCode::CONFLICT,
        "busy",
        format!("operation {id} kept changing while being cancelled; try again"),
    ))
}

/// After a batch's cancel is recorded: cancels the children it started
/// (its owner does too, once it sees the cancel; both are idempotent).
async fn cancel_children(
    state: &AppState,
    nats: &Nats,
    ctx: &ExecutionContext,
) -> Result<(), ApiError> {
    if ctx.batch.is_none() {
        return Ok(());
    }
    let launched = batch::BatchCheckpoint::of(ctx).launched;
    let cancelling = batch::cancel_children(&nats.store, ctx, launched)
        .await
        .map_err(|e| {
            let what = "the batch's cancel is recorded, but cancelling its children failed; send the DELETE again";
            if e.is_conflict() {
                ApiError::new(StatusCode::CONFLICT, "busy", format!("{what}: {e}"))
            } else {
                ApiError::nats(what, e)
            }
        })?;
    for child in &cancelling {
        nudge_owner(state, nats, child);
    }
    tracing::info!(op = %ctx.id, launched, cancelling = cancelling.len(), "the batch's children are cancelled");
    Ok(())
}

/// Best effort, after the cancel is recorded: tells the owner on
/// `op.<id>.cancel` so it need not wait to notice `cancelling` itself. Its
/// answer is not needed; the request ends with the service or the timeout.
fn nudge_owner(state: &AppState, nats: &Nats, ctx: &ExecutionContext) {
    let client = nats.client.clone();
    let subject = state.names().op_cancel(&ctx.id.to_string());
    let shutdown = state.shutdown().clone();
    let op = ctx.id;
    tokio::spawn(async move {
        let asked = tokio::select! {
            _ = shutdown.cancelled() => return,
            asked = tokio::time::timeout(
                CANCEL_NUDGE_TIMEOUT,
                client.request(subject, bytes::Bytes::new()),
            ) => asked,
        };
        match asked {
            Ok(Ok(_)) => tracing::debug!(%op, "owner told of the cancel"),
            Ok(Err(e)) => {
                tracing::debug!(%op, error = %e, "owner not told of the cancel; it will see the record")
            }
            Err(_) => {
                tracing::debug!(%op, "owner did not answer the cancel in time; it will see the record")
            }
        }
    });
}

/// Operations, newest first, filtered.
#[utoipa::path(
    get,
    path = "/v1/operations",
    operation_id = "operation_list",
    tag = "operations",
    security(("bearer" = ["viewer"])),
    params(
        ("state" = Option<OperationState>, Query, description = "Only operations in this state."),
        ("module" = Option<String>, Query, description = "Only operations of this module."),
        ("kind" = Option<OperationKind>, Query, description = "Only sync or only async operations."),
        ("limit" = Option<u32>, Query, minimum = 1, maximum = 1000, description = "At most this many (default 100)."),
    ),
    responses(
        (status = 200, description = "The operations.", body = OperationList),
        (status = 400, description = "`invalid_query`: a filter or limit that is not one of the documented values.", body = ErrorBody),
        (status = 401, description = "`unauthorized`: a missing or unknown token.", body = ErrorBody),
        (status = 403, description = "`forbidden` (the token's role may not) or `host_not_allowed` (a token-less instance, not addressed to a loopback name).", body = ErrorBody),
        (status = 503, description = "`unavailable`: NATS did not answer.", body = ErrorBody),
    )
)]
pub async fn list(
    State(state): State<AppState>,
    ApiQuery(query): ApiQuery<HashMap<String, String>>,
) -> Result<ApiJson<OperationList>, ApiError> {
    let nats = state.nats()?;
    let wanted_state = query
        .get("state")
        .map(|s| s.parse::<OperationState>())
        .transpose()
        .map_err(|e| ApiError::bad_request("invalid_query", e))?;
    let wanted_kind = match query.get("kind").map(String::as_str) {
        None => None,
        Some("sync") => Some(OperationKind::Sync),
        Some("async") => Some(OperationKind::Async),
        Some(other) => {
            return Err(ApiError::bad_request(
                "invalid_query",
                format!("?kind={other}: use sync or async"),
            ))
        }
    };
    let limit = match query.get("limit") {
        None => DEFAULT_LIST_LIMIT,
        Some(l) => l
            .parse::<usize>()
            .ok()
            .filter(|l| (1..=MAX_LIST_LIMIT).contains(l))
            .ok_or_else(|| {
                ApiError::bad_request(
                    "invalid_query",
                    format!("?limit={l}: use 1 to {MAX_LIST_LIMIT}"),
                )
            })?,
    };
    let filter = Filter {
        state: wanted_state,
        kind: wanted_kind,
        module: query.get("module").cloned(),
    };
    let store = nats.store.bucket().clone();
    // The index names the newest matches; until the watch is current, every
    // key is read.
    let keys: Vec<String> = match nats.contexts.index().newest(&filter, limit) {
        Some(ids) => ids.iter().map(Uuid::to_string).collect(),
        None => super::bucket_keys(&store, "contexts bucket").await?,
    };
    let mut contexts: Vec<ExecutionContext> = futures::stream::iter(keys)
        .map(|key| {
            let store = store.clone();
            async move { store.get(key).await }
        })
        .buffer_unordered(32)
        .filter_map(|r| async move {
            r.ok()
                .flatten()
                .and_then(|b| decode::<ExecutionContext>(&b).ok())
        })
        // A context may have changed since the index saw it.
        .filter(|ctx| {
            let keep = filter.matches(ctx.state, ctx.kind, &ctx.module);
            async move { keep }
        })
        .collect()
        .await;
    contexts.sort_by_key(|c| std::cmp::Reverse(c.created_at));
    contexts.truncate(limit);
    Ok(ApiJson(OperationList {
        operations: contexts,
    }))
}
