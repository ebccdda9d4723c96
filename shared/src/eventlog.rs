//! The per-operation event log (SPEC §7): what one message on
//! `zf.<cluster>.evt.<op-id>` holds, and how to read a log in order. Only the
//! current owner appends, each append checked by JetStream against the
//! sequence of the log's last message, so a replaced owner can never slip an
//! event in after its successor's takeover marker.

use async_nats::jetstream::{consumer, stream};
use futures::StreamExt;
use serde::{Deserialize, Serialize};
use serde_json::Value;
use time::OffsetDateTime;
use uuid::Uuid;

use crate::protocol::v1;

/// One event of an async operation.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct Event {
    #[serde(default = "v1")]
    pub v: u32,
    pub op: Uuid,
    /// Counts the operation's events from 1, with no gap and no repeat.
    pub seq: u64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub key: Option<String>,
    pub data: Value,
    pub node: String,
    pub epoch: u64,
    #[serde(with = "time::serde::rfc3339")]
    pub at: OffsetDateTime,
}

/// One message of the log.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum LogEntry {
    /// A batch of events appended at once, in order.
    Events {
        #[serde(default = "v1")]
        v: u32,
        events: Vec<Event>,
    },
    /// A new owner took the operation over after event `after_seq`.
    Takeover {
        #[serde(default = "v1")]
        v: u32,
        op: Uuid,
        node: String,
        epoch: u64,
        after_seq: u64,
    },
}

#[derive(Debug, thiserror::Error)]
pub enum LogError {
    #[error("cannot read the event log: {0}")]
    Nats(String),
}

fn nats(e: impl std::fmt::Display) -> LogError {
    LogError::Nats(e.to_string())
}

/// Stream sequence of the log's last message, 0 for an empty log.
pub async fn last_position(events: &stream::Stream, subject: &str) -> Result<u64, LogError> {
    match events.direct_get_last_for_subject(subject).await {
        Ok(message) => Ok(message.sequence),
        Err(e) if e.kind() == stream::DirectGetErrorKind::NotFound => Ok(0),
        Err(e) => Err(nats(e)),
    }
}

/// Reads the log from stream sequence `from` (inclusive) to its end as it
/// stands now: `(stream sequence, entry)` in order. Unreadable messages are
/// skipped with a warning.
pub async fn read(
    events: &stream::Stream,
    subject: &str,
    from: u64,
) -> Result<Vec<(u64, LogEntry)>, LogError> {
    let end = last_position(events, subject).await?;
    let mut out = Vec::new();
    if end == 0 || end < from {
        return Ok(out);
    }
    let consumer = events
        .create_consumer(consumer::pull::OrderedConfig {
            filter_subject: subject.to_string(),
            deliver_policy: consumer::DeliverPolicy::ByStartSequence {
                start_sequence: from.max(1),
            },
            ..Default::default()
        })
        .await
        .map_err(nats)?;
    let mut messages = consumer.messages().await.map_err(nats)?;
    loop {
        let next = tokio::time::timeout(std::time::Duration::from_secs(5), messages.next()).await;
        let message = match next {
            Ok(Some(message)) => message.map_err(nats)?,
            Ok(None) => break,
            Err(_) => {
                return Err(LogError::Nats(format!(
                    "reading {subject} stalled before position {end}"
                )))
            }
        };
        let position = message.info().map_err(nats)?.stream_sequence;
        match serde_json::from_slice::<LogEntry>(&message.payload) {
            Ok(entry) => out.push((position, entry)),
            Err(e) => {
                tracing::warn!(subject, position, error = %e, "skipping an unreadable event log message")
            }
        }
        if position >= end {
            break;
        }
    }
    Ok(out)
}

/// The events of a log read with [`read`], markers left out.
pub fn events_of(entries: Vec<(u64, LogEntry)>) -> impl Iterator<Item = Event> {
    entries.into_iter().flat_map(|(_, entry)| match entry {
        LogEntry::Events { events, .. } => events,
        LogEntry::Takeover { .. } => Vec::new(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn log_entries_read_well_on_the_wire() {
        let op = Uuid::nil();
        let marker = LogEntry::Takeover {
            v: 1,
            op,
            node: "n2".into(),
            epoch: 3,
            after_seq: 41,
        };
        let text = serde_json::to_string(&marker).expect("json");
        assert!(text.starts_with(r#"{"kind":"takeover""#), "{text}");
        assert_eq!(
            serde_json::from_str::<LogEntry>(&text).expect("parse"),
            marker
        );
        let batch = r#"{"kind":"events","v":1,"events":[{"v":1,"op":"00000000-0000-0000-0000-000000000000",
            "seq":1,"key":"a","data":{"n":1},"node":"n1","epoch":2,"at":"2026-01-01T00:00:00Z"}]}"#;
        let parsed: LogEntry = serde_json::from_str(batch).expect("parse");
        let events: Vec<Event> = events_of(vec![(7, parsed), (8, marker)]).collect();
        assert_eq!(events.len(), 1);
        assert_eq!(events[0].key.as_deref(), Some("a"));
    }
}
