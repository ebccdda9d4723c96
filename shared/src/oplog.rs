//! Per-operation logs: the `log` lines a driver writes and the tail of its
//! stderr, kept per operation so an operator can read them without the
//! node's own log. One message per line on `zf.<cluster>.log.<op-id>` in
//! the logs stream, which keeps at most [`LINES_PER_OPERATION`] lines of each
//! operation (the oldest go first) for as long as the events stream keeps
//! events. Lines are masked by the node before they are published: nothing
//! here ever sees a secret.

use async_nats::jetstream::stream;
use serde::{Deserialize, Serialize};
use time::OffsetDateTime;
use utoipa::ToSchema;

use crate::eventlog::{self, LogError};
use crate::protocol::v1;

/// Lines the logs stream keeps per operation.
pub const LINES_PER_OPERATION: i64 = 1000;
/// Longest message of one line, in bytes; longer ones are cut.
pub const MAX_LINE_BYTES: usize = 8 * 1024;

/// Levels a line may carry; a driver's other levels are logged as `info`.
/// `stderr` marks the tail of the driver's stderr, published when it ends.
const LEVELS: [&str; 5] = ["debug", "info", "warn", "error", "stderr"];

/// One line of an operation's log.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, ToSchema)]
pub struct LogLine {
    #[serde(default = "v1")]
    #[schema(required = true)]
    pub v: u32,
    /// Position in the logs stream; set when read, 0 in what is stored.
    #[serde(default, skip_serializing_if = "is_zero")]
    pub seq: u64,
    #[serde(with = "time::serde::rfc3339")]
    pub at: OffsetDateTime,
    /// `debug`, `info`, `warn`, `error`, or `stderr` for the tail of a driver's stderr.
    #[schema(pattern = "^(debug|info|warn|error|stderr)$")]
    pub level: String,
    pub msg: String,
    /// The node whose driver wrote it.
    pub node: String,
}

fn is_zero(n: &u64) -> bool {
    *n == 0
}

impl LogLine {
    /// A line written now: the level normalised, the message cut to
    /// [`MAX_LINE_BYTES`] on a character boundary.
    pub fn new(level: &str, msg: &str, node: &str) -> Self {
        let level = if LEVELS.contains(&level) {
            level
        } else {
            "info"
        };
        let mut end = msg.len().min(MAX_LINE_BYTES);
        while !msg.is_char_boundary(end) {
            end -= 1;
        }
        Self {
            v: crate::protocol::PROTOCOL_VERSION,
            seq: 0,
            at: OffsetDateTime::now_utc(),
            level: level.to_string(),
            msg: msg[..end].to_string(),
            node: node.to_string(),
        }
    }

    /// The line stored at stream position `seq`; `None` if unreadable.
    pub fn decode(seq: u64, payload: &[u8]) -> Option<Self> {
        serde_json::from_slice::<Self>(payload)
            .ok()
            .map(|line| Self { seq, ..line })
    }
}

/// At most `limit` lines of `subject` after stream position `after`, as the
/// log stands now. Unreadable messages are left out.
pub async fn read(
    logs: &stream::Stream,
    subject: &str,
    after: u64,
    limit: usize,
) -> Result<Vec<LogLine>, LogError> {
    let end = eventlog::last_position(logs, subject).await?;
    let mut lines = Vec::new();
    if limit == 0 {
        return Ok(lines);
    }
    eventlog::visit_messages(
        logs,
        subject,
        after.saturating_add(1),
        end,
        None,
        |position, payload| {
            lines.extend(LogLine::decode(position, payload));
            lines.len() < limit
        },
    )
    .await?;
    Ok(lines)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn long_messages_are_cut_on_a_character_boundary() {
        let msg = "é".repeat(MAX_LINE_BYTES);
        let line = LogLine::new("info", &msg, "node-1");
        assert!(line.msg.len() <= MAX_LINE_BYTES);
        assert!(line.msg.chars().all(|c| c == 'é'));
    }

    #[test]
    fn unknown_levels_become_info_and_seq_is_not_stored() {
        let line = LogLine::new("shout", "hi", "node-1");
        assert_eq!(line.level, "info");
        let stored = serde_json::to_vec(&line).expect("encodes");
        assert!(!String::from_utf8_lossy(&stored).contains("\"seq\""));
        let read = LogLine::decode(7, &stored).expect("decodes");
        assert_eq!((read.seq, read.msg.as_str()), (7, "hi"));
        assert!(LogLine::decode(8, b"junk").is_none());
    }
}
