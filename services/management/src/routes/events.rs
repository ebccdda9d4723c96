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

use axum::extract::{Extension, Path, Query, State};
use axum::http::HeaderMap;
use axum::response::sse::Event as SseEvent;
use axum::response::{IntoResponse, Response};
use serde_json::json;
use zerofoot_shared::eventlog::{self, LogEntry};

use super::live;
use crate::auth::ApiClient;
use crate::error::{ApiError, ApiJson};
use crate::startup::AppState;

pub async fn events(
    State(state): State<AppState>,
    Path(id): Path<String>,
    Query(query): Query<HashMap<String, String>>,
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
    Ok(ApiJson(json!({"events": page.events})).into_response())
}
