//! `GET /v1/operations/{id}/logs`: the log lines an operation's drivers
//! wrote (and the tails of their stderr), masked by the node that ran them
//! and capped per operation ([`zerofoot_shared::oplog`]). JSON pages
//! (`?after=&limit=`, `after` being a line's `seq`) or, with
//! `Accept: text/event-stream`, a live SSE stream of `log` events whose ids
//! are those seqs, resumable with `Last-Event-ID`.

use std::collections::HashMap;

use axum::extract::{Extension, State};
use axum::http::HeaderMap;
use axum::response::sse::Event as SseEvent;
use axum::response::{IntoResponse, Response};
use serde::Serialize;
use utoipa::ToSchema;
use zerofoot_shared::oplog::{self, LogLine};

use super::live;
use crate::auth::ApiClient;
use crate::error::{ApiError, ApiJson, ApiPath, ApiQuery, ErrorBody};
use crate::startup::AppState;

/// A page of an operation's log lines.
#[derive(Serialize, ToSchema)]
pub struct LogPage {
    /// In seq order; seqs have gaps (they are stream positions).
    pub logs: Vec<LogLine>,
}

/// An operation's log lines (masked; the newest 1000 are kept): a page, or
/// with `Accept: text/event-stream` a live SSE stream of `log` events whose
/// `id` is the seq and whose `data` is the line as JSON.
#[utoipa::path(
    get,
    path = "/v1/operations/{id}/logs",
    operation_id = "operation_logs",
    tag = "operations",
    security(("bearer" = ["viewer"])),
    params(
        ("id" = Uuid, Path, description = "The operation's id."),
        ("after" = Option<u64>, Query, description = "Only lines with a seq above this (default 0)."),
        ("limit" = Option<u32>, Query, minimum = 1, maximum = 10000, description = "At most this many lines in a page (default 1000); a stream ignores it."),
        ("Last-Event-ID" = Option<u64>, Header, nullable = false, description = "Resumes a stream after this seq (the `id` of the last SSE event seen); wins over `?after`. Empty means none."),
    ),
    responses(
        (status = 200, description = "A page as JSON, or (with `Accept: text/event-stream`) a live SSE stream that ends only when the client or the service goes.", content(
            (LogPage = "application/json"),
            (String = "text/event-stream"),
        )),
        (status = 400, description = "`invalid_operation_id` (not a UUID), `invalid_query` (`?after`, `?limit`) or `invalid_last_event_id`.", body = ErrorBody),
        (status = 401, description = "`unauthorized`: a missing or unknown token.", body = ErrorBody),
        (status = 403, description = "`forbidden` (the token's role may not) or `host_not_allowed` (a token-less instance, not addressed to a loopback name).", body = ErrorBody),
        (status = 404, description = "`operation_not_found`.", body = ErrorBody),
        (status = 429, description = "`too_many_event_streams`: the client holds as many live streams on this instance as it may (`--max-event-streams-per-client`).", body = ErrorBody),
        (status = 500, description = "`internal`: the stored context is unreadable.", body = ErrorBody),
        (status = 503, description = "`unavailable`: NATS did not answer.", body = ErrorBody),
    )
)]
pub async fn logs(
    State(state): State<AppState>,
    ApiPath(id): ApiPath<String>,
    ApiQuery(query): ApiQuery<HashMap<String, String>>,
    Extension(client): Extension<ApiClient>,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    let op = super::operations::parse_id(&id)?;
    let nats = state.nats()?;
    super::operations::load(nats, &op).await?;
    let subject = state.names().op_logs(&op.to_string());
    let after = live::after(&query, &headers)?;

    if live::wants_stream(&headers) {
        return live::stream(
            &state,
            &client,
            &nats.assets.logs,
            subject,
            after.saturating_add(1),
            |position, payload| {
                LogLine::decode(position, payload)
                    .map(|line| {
                        live::sse_json(
                            SseEvent::default().id(position.to_string()).event("log"),
                            &line,
                        )
                    })
                    .into_iter()
                    .collect()
            },
        )
        .await;
    }

    let limit = live::limit(&query)?;
    let lines = oplog::read(&nats.assets.logs, &subject, after, limit)
        .await
        .map_err(|e| ApiError::nats("cannot read the operation's log", e))?;
    Ok(ApiJson(LogPage { logs: lines }).into_response())
}
