//! What the routes that read a per-operation stream share: the `?after=`,
//! `Last-Event-ID` and `?limit=` of a page or a resume, and live SSE streams
//! over one subject. A live stream holds one of its API client's slots
//! (`--max-event-streams-per-client`) until it ends, and ends when the
//! service shuts down, so shutdown never waits on a connected client.

use std::collections::HashMap;
use std::convert::Infallible;

use async_nats::jetstream::{consumer, stream::Stream};
use axum::http::{HeaderMap, StatusCode};
use axum::response::sse::{Event as SseEvent, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use futures::{future, stream, StreamExt};

use crate::auth::ApiClient;
use crate::error::ApiError;
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

/// Whether the client asked for a live SSE stream.
pub fn wants_stream(headers: &HeaderMap) -> bool {
    headers
        .get(axum::http::header::ACCEPT)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.contains("text/event-stream"))
}

/// Where to start: after the resumed stream's `Last-Event-ID`, else after
/// `?after=`, else from the start.
pub fn after(query: &HashMap<String, String>, headers: &HeaderMap) -> Result<u64, ApiError> {
    let resume = headers
        .get("last-event-id")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.trim().parse::<u64>().ok());
    Ok(resume.or(number(query, "after")?).unwrap_or(0))
}

/// The page size of `?limit=`.
pub fn limit(query: &HashMap<String, String>) -> Result<usize, ApiError> {
    match number(query, "limit")? {
        None => Ok(DEFAULT_LIMIT),
        Some(l) if (1..=MAX_LIMIT as u64).contains(&l) => Ok(l as usize),
        Some(l) => Err(ApiError::bad_request(
            "invalid_query",
            format!("?limit={l}: use 1 to {MAX_LIMIT}"),
        )),
    }
}

/// An SSE event carrying `data` as JSON.
pub fn sse_json(event: SseEvent, data: &impl serde::Serialize) -> SseEvent {
    event
        .json_data(data)
        .unwrap_or_else(|_| SseEvent::default().comment("unencodable"))
}

/// A live SSE stream of `subject` from stream position `start` on: every
/// message, with its position, becomes the events `to_events` makes of it.
pub async fn stream<F>(
    state: &AppState,
    client: &ApiClient,
    source: &Stream,
    subject: String,
    start: u64,
    to_events: F,
) -> Result<Response, ApiError>
where
    F: Fn(u64, &[u8]) -> Vec<SseEvent> + Send + Sync + 'static,
{
    let slot = state.stream_slots().take(&client.0).map_err(|e| {
        ApiError::new(
            StatusCode::TOO_MANY_REQUESTS,
            "too_many_event_streams",
            e.to_string(),
        )
    })?;
    let fail = |e: &dyn std::fmt::Display| ApiError::nats("cannot read the operation's stream", e);
    let consumer = source
        .create_consumer(consumer::pull::OrderedConfig {
            filter_subject: subject,
            deliver_policy: consumer::DeliverPolicy::ByStartSequence {
                start_sequence: start.max(1),
            },
            ..Default::default()
        })
        .await
        .map_err(|e| fail(&e))?;
    let messages = consumer.messages().await.map_err(|e| fail(&e))?;
    let events = messages
        .take_until(state.shutdown().clone().cancelled_owned())
        .take_while(|m| future::ready(m.is_ok()))
        .filter_map(move |m| {
            future::ready(m.ok().and_then(|m| {
                let position = m.info().ok()?.stream_sequence;
                Some(to_events(position, &m.payload))
            }))
        })
        .flat_map(stream::iter)
        // The slot goes with the stream: freed when it ends or the client
        // disconnects and the response body is dropped.
        .map(move |event| {
            let _held = &slot;
            Ok::<_, Infallible>(event)
        });
    Ok(Sse::new(events)
        .keep_alive(KeepAlive::default())
        .into_response())
}
