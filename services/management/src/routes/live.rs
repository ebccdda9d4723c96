//! What the routes that read a per-operation stream share: the `?after=`,
//! `Last-Event-ID` and `?limit=` of a page or a resume, and live SSE streams
//! over one subject. A live stream holds one of its API client's slots
//! (`--max-event-streams-per-client`) until it ends, and ends when the
//! service shuts down, so shutdown never waits on a connected client.

use std::collections::HashMap;
use std::convert::Infallible;

use async_nats::jetstream::stream::Stream;
use axum::http::{HeaderMap, StatusCode};
use axum::response::sse::{Event as SseEvent, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use futures::{future, stream, StreamExt};

use zerofoot_shared::ordered_read::OrderedRead;

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
                    format!("?{name}={v} is not a whole number from 0 to {}", u64::MAX),
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
/// `?after=`, else from the start. An id that is not one of ours (a seq) is
/// refused rather than ignored: ignoring it would replay the stream from
/// its start. An empty one means none, as in the SSE spec.
pub fn after(query: &HashMap<String, String>, headers: &HeaderMap) -> Result<u64, ApiError> {
    let after = number(query, "after")?;
    let resume = match headers.get("last-event-id") {
        None => None,
        Some(value) => {
            let text = String::from_utf8_lossy(value.as_bytes());
            let text = text.trim();
            if text.is_empty() {
                None
            } else {
                Some(text.parse::<u64>().map_err(|_| {
                    let shown: String = text.chars().take(100).collect();
                    ApiError::bad_request(
                        "invalid_last_event_id",
                        format!("Last-Event-ID {shown:?} is not an event id of this stream (a whole number)"),
                    )
                })?)
            }
        }
    };
    Ok(resume.or(after).unwrap_or(0))
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
    let consumer = OrderedRead::open(source, &subject, start)
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

#[cfg(test)]
mod tests {
    use super::*;

    fn start(query: &[(&str, &str)], last_event_id: Option<&str>) -> Result<u64, String> {
        let query = query
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        let mut headers = HeaderMap::new();
        if let Some(id) = last_event_id {
            headers.insert("last-event-id", id.parse().expect("header value"));
        }
        after(&query, &headers).map_err(|e| e.code)
    }

    #[test]
    fn a_resume_starts_after_last_event_id_else_after_the_query() {
        assert_eq!(start(&[], None), Ok(0));
        assert_eq!(start(&[("after", "7")], None), Ok(7));
        assert_eq!(start(&[("after", "7")], Some("9")), Ok(9));
        assert_eq!(start(&[("after", "7")], Some(" ")), Ok(7), "empty: none");
        assert_eq!(
            start(&[], Some("x")),
            Err("invalid_last_event_id".to_string())
        );
        assert_eq!(
            start(&[("after", "-1")], Some("9")),
            Err("invalid_query".to_string())
        );
        let largest = u64::MAX.to_string();
        assert_eq!(start(&[("after", largest.as_str())], None), Ok(u64::MAX));
    }

    #[test]
    fn limits_stay_in_their_range() {
        let query = |v: &str| HashMap::from([("limit".to_string(), v.to_string())]);
        assert_eq!(limit(&HashMap::new()).ok(), Some(DEFAULT_LIMIT));
        assert_eq!(limit(&query("10000")).ok(), Some(MAX_LIMIT));
        assert!(limit(&query("0")).is_err());
        assert!(limit(&query("10001")).is_err());
    }
}
