//! `GET /v1/operations/{id}/events`: an async operation's events, read in
//! order from its log in JetStream (takeover markers and unreadable messages
//! left out), as JSON (`?after=&limit=`) or, with `Accept: text/event-stream`,
//! as a live SSE stream whose ids are event seqs and which resumes after
//! `Last-Event-ID`. Both find where to start by bisecting the log
//! ([`eventlog::start_position`]), so a page or a resume near the end of a
//! long log costs about the same as one near its start; a page stops reading
//! once it is full. Live streams are capped per API client
//! (`--max-event-streams-per-client`), each holding its slot until it ends.

use std::collections::HashMap;
use std::convert::Infallible;

use async_nats::jetstream::consumer;
use axum::extract::{Extension, Path, Query, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::sse::{Event as SseEvent, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use futures::{future, stream, StreamExt};
use serde_json::json;
use zerofoot_shared::eventlog::{self, LogEntry};

use crate::auth::ApiClient;
use crate::error::{ApiError, ApiJson};
use crate::startup::AppState;

const DEFAULT_LIMIT: usize = 1000;
const MAX_LIMIT: usize = 10_000;

fn number(query: &HashMap<String, String>, name: &str) -> Result<Option<u64>, ApiError> {
    query
        .get(name)
        .map(|v| {
            v.parse::<u64>().map_err(|_| {
                ApiError::bad_request(
                    "invalid_query",
                    format!("?{name}={v} is not a whole number"),
                )
            })
        })
        .transpose()
}

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
    let wants_stream = headers
        .get(axum::http::header::ACCEPT)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.contains("text/event-stream"));
    let resume = headers
        .get("last-event-id")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.trim().parse::<u64>().ok());
    let after = resume.or(number(&query, "after")?).unwrap_or(0);

    if wants_stream {
        let slot = state.stream_slots().take(&client.0).map_err(|e| {
            ApiError::new(
                StatusCode::TOO_MANY_REQUESTS,
                "too_many_event_streams",
                e.to_string(),
            )
        })?;
        let start = eventlog::start_position(&nats.assets.events, &subject, after)
            .await
            .map_err(|e| ApiError::nats("cannot read the event log", e))?;
        let consumer = nats
            .assets
            .events
            .create_consumer(consumer::pull::OrderedConfig {
                filter_subject: subject,
                deliver_policy: consumer::DeliverPolicy::ByStartSequence {
                    start_sequence: start,
                },
                ..Default::default()
            })
            .await
            .map_err(|e| ApiError::nats("cannot read the event log", e))?;
        let messages = consumer
            .messages()
            .await
            .map_err(|e| ApiError::nats("cannot read the event log", e))?;
        // A live stream ends when the service shuts down, so shutdown never
        // waits on a connected client.
        let events = messages
            .take_until(state.shutdown().clone().cancelled_owned())
            .take_while(|m| future::ready(m.is_ok()))
            .filter_map(|m| {
                future::ready(
                    m.ok()
                        .and_then(|m| serde_json::from_slice::<LogEntry>(&m.payload).ok()),
                )
            })
            .flat_map(|entry| {
                stream::iter(eventlog::events_of(vec![(0, entry)]).collect::<Vec<_>>())
            })
            .filter(move |event| future::ready(event.seq > after))
            // The slot goes with the stream: freed when it ends or the
            // client disconnects and the response body is dropped.
            .map(move |event| {
                let _held = &slot;
                let sse = SseEvent::default().id(event.seq.to_string()).event("event");
                Ok::<_, Infallible>(
                    sse.json_data(&event)
                        .unwrap_or_else(|_| SseEvent::default().comment("unencodable event")),
                )
            });
        return Ok(Sse::new(events)
            .keep_alive(KeepAlive::default())
            .into_response());
    }

    let limit = match number(&query, "limit")? {
        None => DEFAULT_LIMIT,
        Some(l) if (1..=MAX_LIMIT as u64).contains(&l) => l as usize,
        Some(l) => {
            return Err(ApiError::bad_request(
                "invalid_query",
                format!("?limit={l}: use 1 to {MAX_LIMIT}"),
            ))
        }
    };
    let page = eventlog::read_page(&nats.assets.events, &subject, after, limit)
        .await
        .map_err(|e| ApiError::nats("cannot read the event log", e))?;
    Ok(ApiJson(json!({"events": page.events})).into_response())
}
