//! Appending to an operation's event log (SPEC §7): every append carries
//! `Nats-Expected-Last-Subject-Sequence` (the position of the log's last
//! message as this owner knows it) and a `Nats-Msg-Id`, so a retried append
//! is harmless and an append after another owner wrote is refused by
//! JetStream itself: that refusal is how a replaced owner learns it is fenced.

use std::time::Duration;

use async_nats::jetstream::{self, context::PublishErrorKind};
use zerofoot_shared::eventlog::LogEntry;

#[derive(Debug, thiserror::Error)]
pub enum AppendError {
    #[error("another owner wrote to the event log: this owner is fenced")]
    Fenced,
    #[error("cannot append to the event log: {0}")]
    Nats(String),
}

/// The writing end of one operation's log, held by its current owner.
pub struct EventLog {
    js: jetstream::Context,
    subject: String,
    /// Stream sequence of the log's last message (0: empty).
    last_position: u64,
}

const ATTEMPTS: usize = 5;

impl EventLog {
    pub fn new(js: jetstream::Context, subject: String, last_position: u64) -> Self {
        Self {
            js,
            subject,
            last_position,
        }
    }

    pub fn last_position(&self) -> u64 {
        self.last_position
    }

    /// Appends one entry and waits for its acknowledgement; returns its position.
    pub async fn append(&mut self, entry: &LogEntry, msg_id: &str) -> Result<u64, AppendError> {
        let payload = bytes::Bytes::from(
            serde_json::to_vec(entry).map_err(|e| AppendError::Nats(e.to_string()))?,
        );
        let mut delay = Duration::from_millis(50);
        let mut last_error = String::new();
        let started = std::time::Instant::now();
        for _ in 0..ATTEMPTS {
            let publish = jetstream::message::PublishMessage::build()
                .payload(payload.clone())
                .message_id(msg_id)
                .expected_last_subject_sequence(self.last_position);
            let outcome = match self.js.send_publish(self.subject.clone(), publish).await {
                Ok(ack) => ack.await,
                Err(e) => Err(e),
            };
            match outcome {
                Ok(ack) => {
                    metrics::counter!("zf_event_appends_total").increment(1);
                    metrics::histogram!("zf_event_append_seconds")
                        .record(started.elapsed().as_secs_f64());
                    self.last_position = ack.sequence;
                    return Ok(ack.sequence);
                }
                Err(e) if e.kind() == PublishErrorKind::WrongLastSequence => {
                    return Err(AppendError::Fenced)
                }
                Err(e) => {
                    // The same Msg-Id makes a retry of an append that did land a no-op.
                    last_error = e.to_string();
                    tokio::time::sleep(delay).await;
                    delay *= 2;
                }
            }
        }
        Err(AppendError::Nats(last_error))
    }
}
