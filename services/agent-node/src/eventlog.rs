//! Appending to an operation's event log (SPEC §7): every append carries
//! `Nats-Expected-Last-Subject-Sequence` (the position of the log's last
//! message as this owner knows it) and a `Nats-Msg-Id`, so a retried append
//! is harmless and an append after another owner wrote is refused by
//! JetStream itself: that refusal is how a replaced owner learns it is fenced.
//! [`OwnedLog`] is the log as one owner (a monitor, a batch) opens and writes it.

use std::collections::HashSet;
use std::time::Duration;

use async_nats::jetstream::{self, context::PublishErrorKind};
use serde_json::Value;
use zerofoot_shared::assets::Assets;
use zerofoot_shared::eventlog::{self, EncodedEvents, Event, LogEntry};
use zerofoot_shared::names::Names;
use zerofoot_shared::protocol::PROTOCOL_VERSION;

use crate::ownership::Owned;
use crate::rules::Sequencer;

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
        let payload = serde_json::to_vec(entry).map_err(|e| AppendError::Nats(e.to_string()))?;
        self.append_encoded(payload.into(), msg_id).await
    }

    /// Appends one entry already serialized, as [`EventLog::append`] does.
    pub async fn append_encoded(
        &mut self,
        payload: bytes::Bytes,
        msg_id: &str,
    ) -> Result<u64, AppendError> {
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

/// An owner's open event log: where to append and how to number events.
pub struct OwnedLog {
    pub log: EventLog,
    pub seq: Sequencer,
}

impl OwnedLog {
    /// Reads the log after the owner's checkpoint and appends the takeover
    /// marker after the last message the read saw (readable or not), which
    /// fences the previous owner; keyed events already in the log are
    /// skipped from then on. The marker's append expects that message to be
    /// the log's last, so it lands only if the read saw every event.
    pub async fn open(owned: &Owned, names: &Names, assets: &Assets) -> Result<Self, String> {
        let ctx = owned.ctx();
        let subject = names.op_events(&ctx.id.to_string());
        let from = ctx.checkpoint_at.map(|c| c.log_position + 1).unwrap_or(1);
        let checkpoint_seq = ctx.checkpoint_at.map(|c| c.seq).unwrap_or(0);
        let mut last_error = String::new();
        for attempt in 1..=10u64 {
            let read = eventlog::read(&assets.events, &subject, from)
                .await
                .map_err(|e| e.to_string())?;
            let mut last_seq = checkpoint_seq;
            let mut keys = HashSet::new();
            for (_, entry) in &read.entries {
                match entry {
                    LogEntry::Events { events, .. } => {
                        for event in events {
                            last_seq = last_seq.max(event.seq);
                            if let Some(key) = &event.key {
                                keys.insert(key.clone());
                            }
                        }
                    }
                    LogEntry::Takeover { after_seq, .. } => last_seq = last_seq.max(*after_seq),
                }
            }
            let mut log = EventLog::new(assets.jetstream.clone(), subject.clone(), read.end);
            let marker = LogEntry::Takeover {
                v: PROTOCOL_VERSION,
                op: ctx.id,
                node: owned.node().to_string(),
                epoch: ctx.epoch,
                after_seq: last_seq,
            };
            // Unique per take: a retake in the same term must not be
            // answered with an older marker's position.
            let msg_id = format!("{}:{}:takeover:{}", ctx.id, ctx.epoch, uuid::Uuid::new_v4());
            match log.append(&marker, &msg_id).await {
                Ok(_) => {
                    tracing::info!(
                        after_seq = last_seq,
                        skipped_keys = keys.len(),
                        "takeover marker written; resuming from the checkpoint"
                    );
                    return Ok(Self {
                        log,
                        seq: Sequencer::resume(last_seq, keys),
                    });
                }
                // The log holds more than the read saw: the previous owner
                // wrote after it, or its consumer was on a replica behind.
                // Read again, giving a lagging replica a moment.
                Err(AppendError::Fenced) => {
                    last_error = "the log kept changing under the takeover".into();
                    tokio::time::sleep(Duration::from_millis(50 * attempt)).await;
                    continue;
                }
                Err(e) => return Err(format!("cannot write the takeover marker: {e}")),
            }
        }
        Err(last_error)
    }

    /// The next event for `data`, numbered and stamped by this owner; `None`
    /// if its key is in the log already.
    pub fn event(&mut self, owned: &Owned, data: Value, key: Option<String>) -> Option<Event> {
        let seq = self.seq.next(key.as_deref())?;
        let ctx = owned.ctx();
        Some(Event {
            v: PROTOCOL_VERSION,
            op: ctx.id,
            seq,
            key,
            data,
            node: owned.node().to_string(),
            epoch: ctx.epoch,
            at: zerofoot_shared::time::now(),
        })
    }

    /// Appends `events` as one entry.
    pub async fn append(
        &mut self,
        owned: &Owned,
        events: &EncodedEvents,
    ) -> Result<(), AppendError> {
        let Some(first) = events.first_seq() else {
            return Ok(());
        };
        let ctx = owned.ctx();
        // Unique per take and batch: a retry of this append is a no-op, and
        // no earlier take's batch can answer for it.
        let msg_id = format!("{}:{}:{}:{first}", ctx.id, ctx.epoch, ctx.attempts.len());
        self.log
            .append_encoded(events.entry().into(), &msg_id)
            .await
            .map(|_| ())
    }
}
