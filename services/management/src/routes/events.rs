//! `GET /v1/operations/{id}/events`: an async operation's events, read in
//! order from its log in JetStream (takeover markers and unreadable messages
//! left out), as JSON (`?after=&limit=`) or, with `Accept: text/event-stream`,
//! as a live SSE stream whose ids are event seqs and which resumes after
//! `Last-Event-ID`. Both find where to start by bisecting the log
//! ([`eventlog::start_position`]), so a page or a resume near the end of a
//! long log costs about the same as one near its start; a page stops reading
//! once it is full. Live streams are capped per API client
//! (`--max-event-streams-per-client`, see [`super::live`]).

use std::collections::HashMap;

use axum::extract::{Extension, State};
use axum::http::HeaderMap;
use axum::response::sse::Event as SseEvent;
use axum::response::{IntoResponse, Response};
use serde::Serialize;
use utoipa::ToSchema;
use zerofoot_shared::eventlog::{self, Event, LogEntry};

use super::live;
use crate::auth::ApiClient;
use crate::error::{ApiError, ApiJson, ApiPath, ApiQuery, ErrorBody};
use crate::startup::AppState;

/// A page of an operation's events.
#[derive(Serialize, ToSchema)]
pub struct EventPage {
    /// In seq order, without gaps.
    pub events: Vec<Event>,
}

/// An async operation's events: a page, or with `Accept: text/event-stream`
/// a live SSE stream of `event` events whose `id` is the seq and whose
/// `data` is the event as JSON (as in a page).
#[utoipa::path(
    get,
    path = "/v1/operations/{id}/events",
    operation_id = "operation_events",
    tag = "operations",
    security(("bearer" = ["viewer"])),
    params(
        ("id" = Uuid, Path, description = "The operation's id."),
        ("after" = Option<u64>, Query, description = "Only events with a seq above this (default 0)."),
        ("limit" = Option<u32>, Query, minimum = 1, maximum = 10000, description = "At most this many events in a page (default 1000); a stream ignores it."),
        ("Last-Event-ID" = Option<u64>, Header, nullable = false, description = "Resumes a stream after this seq (the `id` of the last SSE event seen); wins over `?after`. Empty means none."),
    ),
    responses(
        (status = 200, description = "A page as JSON, or (with `Accept: text/event-stream`) a live SSE stream that ends only when the client or the service goes.", content(
            (EventPage = "application/json"),
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
pub async fn events(
    State(state): State<AppState>,
    ApiPath(id): ApiPath<String>,
    ApiQuery(query): ApiQuery<HashMap<String, String>>,
    Extension(client): Extension<ApiClient>,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    let op = super::operations::parse_id(&id)?;
    let nats = state.nats()?;
    super::operations::load(nats, &op).await?;
    let subject = state.names().op_events(&op.to_string());
    let after = live::after(&query, &headers)?;

    if live::wants_stream(&headers) {
        let start = eventlog::start_position(&nats.assets.events, &subject, after)
            .await
            .map_err(|e| ApiError::nats("cannot read the event log", e))?;
        return live::stream(
            &state,
            &client,
            &nats.assets.events,
            subject,
            start,
            move |_, payload| {
                let Ok(entry) = serde_json::from_slice::<LogEntry>(payload) else {
                    return Vec::new();
                };
                eventlog::events_of(vec![(0, entry)])
                    .filter(|event| event.seq > after)
                    .map(|event| {
                        live::sse_json(
                            SseEvent::default().id(event.seq.to_string()).event("event"),
                            &event,
                        )
                    })
                    .collect()
            },
        )
        .await;
    }

    let limit = live::limit(&query)?;
    let page = eventlog::read_page(&nats.assets.events, &subject, after, limit)
        .await
        .map_err(|e| ApiError::nats("cannot read the event log", e))?;
    Ok(ApiJson(EventPage {
        events: page.events,
    })
    .into_response())
}
