//! An operation's feed, events or log lines, read in seq order: page by
//! page, or followed live over SSE. Following resumes after the last seq
//! printed (`Last-Event-ID`) whenever the connection drops, with backoff,
//! so no entry is printed twice or skipped; it ends once the operation is
//! final (checked on connecting, on every keep-alive and every second),
//! after reading what remains page by page a moment later. `zf op events`,
//! `zf op logs` and `zf op run --follow` all go through here.

use std::time::Duration;

use futures::StreamExt;
use serde_json::Value;
use tokio::time::Instant;

use crate::client::{self, Api};
use crate::error::CliError;
use crate::sse::{Item, Parser};

/// Entries asked for per page.
const PAGE_LIMIT: u32 = 1000;
/// How often a live stream checks whether the operation has ended.
const CHECK_EVERY: Duration = Duration::from_secs(1);
/// A stream silent this long (no data, no keep-alive) is taken as dropped.
const IDLE_LIMIT: Duration = Duration::from_secs(45);
/// How long entries may trail the operation's final state.
const SETTLE: Duration = Duration::from_millis(500);
const FIRST_BACKOFF: Duration = Duration::from_millis(200);
const MAX_BACKOFF: Duration = Duration::from_secs(5);

/// Which feed of which operation.
pub struct Feed {
    op: String,
    /// The last path segment: `events` or `logs`.
    kind: &'static str,
    /// The SSE event name of an entry.
    event: &'static str,
}

impl Feed {
    pub fn events(op: &str) -> Self {
        Self {
            op: op.to_string(),
            kind: "events",
            event: "event",
        }
    }

    pub fn logs(op: &str) -> Self {
        Self {
            op: op.to_string(),
            kind: "logs",
            event: "log",
        }
    }

    fn segments(&self) -> [&str; 4] {
        ["v1", "operations", &self.op, self.kind]
    }
}

/// What to do with each entry, in seq order.
pub type Sink<'a> = dyn FnMut(&Value) -> Result<(), CliError> + 'a;

/// Hands every entry after seq `after` to `sink`, page by page; returns
/// the last seq handed.
pub async fn read_pages(
    api: &Api,
    feed: &Feed,
    after: u64,
    sink: &mut Sink<'_>,
) -> Result<u64, CliError> {
    let mut last = after;
    loop {
        let query = [
            ("after", last.to_string()),
            ("limit", PAGE_LIMIT.to_string()),
        ];
        let page = api.get(&feed.segments(), &query).await?;
        let entries = page[feed.kind].as_array().cloned().unwrap_or_default();
        let before = last;
        for entry in &entries {
            match entry["seq"].as_u64() {
                Some(seq) if seq > last => {
                    sink(entry)?;
                    last = seq;
                }
                _ => {}
            }
        }
        if last == before {
            return Ok(last);
        }
    }
}

/// Follows the feed live from seq `after` until the operation is final;
/// returns its final context.
pub async fn follow(
    api: &Api,
    feed: &Feed,
    after: u64,
    sink: &mut Sink<'_>,
) -> Result<Value, CliError> {
    let mut last = after;
    let mut backoff = FIRST_BACKOFF;
    // The first look is not retried: an API that cannot be reached, or an
    // unknown operation, ends the command at once.
    let mut state = final_context(api, &feed.op).await?;
    loop {
        let dropped = match state {
            Some(ctx) => return finish(api, feed, last, sink, ctx).await,
            None => match api.open_stream(&feed.segments(), last).await {
                Ok(response) => match read_stream(api, feed, response, &mut last, sink).await? {
                    Ended::Final(ctx) => return finish(api, feed, last, sink, ctx).await,
                    Ended::Dropped { reason, got_data } => {
                        if got_data {
                            backoff = FIRST_BACKOFF;
                        }
                        reason
                    }
                },
                Err(e) if e.is_transient() => e.to_string(),
                Err(e) => return Err(e),
            },
        };
        eprintln!(
            "zf: the {} stream of operation {} dropped ({}); resuming after seq {last} in {:.1} s",
            feed.kind,
            feed.op,
            dropped.lines().next().unwrap_or_default(),
            backoff.as_secs_f64()
        );
        tokio::time::sleep(backoff).await;
        backoff = (backoff * 2).min(MAX_BACKOFF);
        state = loop {
            match final_context(api, &feed.op).await {
                Ok(state) => break state,
                Err(e) if e.is_transient() => {
                    eprintln!(
                        "zf: cannot check operation {} ({}); trying again in {:.1} s",
                        feed.op,
                        e.to_string().lines().next().unwrap_or_default(),
                        backoff.as_secs_f64()
                    );
                    tokio::time::sleep(backoff).await;
                    backoff = (backoff * 2).min(MAX_BACKOFF);
                }
                Err(e) => return Err(e),
            }
        };
    }
}

/// Reads what is left once the operation is final, after a moment for the
/// entries still on their way (a node publishes log lines without waiting).
async fn finish(
    api: &Api,
    feed: &Feed,
    last: u64,
    sink: &mut Sink<'_>,
    ctx: Value,
) -> Result<Value, CliError> {
    tokio::time::sleep(SETTLE).await;
    read_pages(api, feed, last, sink).await?;
    Ok(ctx)
}

enum Ended {
    /// The operation reached a final state: this context.
    Final(Value),
    /// The connection ended or went quiet; `got_data` if it carried anything.
    Dropped { reason: String, got_data: bool },
}

async fn read_stream(
    api: &Api,
    feed: &Feed,
    response: reqwest::Response,
    last: &mut u64,
    sink: &mut Sink<'_>,
) -> Result<Ended, CliError> {
    let mut body = response.bytes_stream();
    let mut parser = Parser::default();
    let mut heard = Instant::now();
    let mut got_data = false;
    let mut check = tokio::time::interval_at(Instant::now() + CHECK_EVERY, CHECK_EVERY);
    check.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let dropped = |reason: String, got_data| Ok(Ended::Dropped { reason, got_data });
    loop {
        let mut keep_alive = false;
        tokio::select! {
            chunk = body.next() => match chunk {
                None => return dropped("the server closed it".into(), got_data),
                Some(Err(e)) => return dropped(client::describe(&e), got_data),
                Some(Ok(bytes)) => {
                    heard = Instant::now();
                    got_data = true;
                    for item in parser.feed(&bytes) {
                        match item {
                            Item::Comment => keep_alive = true,
                            Item::Frame(frame) if frame.event == feed.event => {
                                take(&frame.data, frame.id.as_deref(), last, sink)?;
                            }
                            Item::Frame(_) => {}
                        }
                    }
                }
            },
            _ = tokio::time::sleep_until(heard + IDLE_LIMIT) => {
                return dropped(format!("nothing came for {} s", IDLE_LIMIT.as_secs()), got_data);
            }
            _ = check.tick() => keep_alive = true,
        }
        if keep_alive {
            match final_context(api, &feed.op).await {
                Ok(Some(ctx)) => return Ok(Ended::Final(ctx)),
                Ok(None) => {}
                // The stream may still carry on; a reconnect checks again.
                Err(e) if e.is_transient() => {}
                Err(e) => return Err(e),
            }
        }
    }
}

/// Hands one streamed entry to the sink unless its seq was handed already.
fn take(data: &str, id: Option<&str>, last: &mut u64, sink: &mut Sink<'_>) -> Result<(), CliError> {
    let Ok(entry) = serde_json::from_str::<Value>(data) else {
        eprintln!("zf: skipping an unreadable entry (id {id:?}): {data}");
        return Ok(());
    };
    let seq = id
        .and_then(|id| id.trim().parse::<u64>().ok())
        .or_else(|| entry["seq"].as_u64());
    match seq {
        Some(seq) if seq <= *last => Ok(()),
        Some(seq) => {
            sink(&entry)?;
            *last = seq;
            Ok(())
        }
        None => sink(&entry),
    }
}

/// The operation's context once it is final, else `None`.
pub async fn final_context(api: &Api, op: &str) -> Result<Option<Value>, CliError> {
    let ctx = api.get(&["v1", "operations", op], &[]).await?;
    Ok(is_final(&ctx).then_some(ctx))
}

pub fn is_final(ctx: &Value) -> bool {
    matches!(
        ctx["state"].as_str(),
        Some("complete" | "failed" | "cancelled")
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn a_seq_already_handed_is_not_handed_again() {
        let mut seen = Vec::new();
        let mut last = 0;
        {
            let mut sink = |e: &Value| {
                seen.push(e["seq"].as_u64().unwrap_or(0));
                Ok(())
            };
            for (data, id) in [
                (r#"{"seq":1}"#, Some("1")),
                (r#"{"seq":2}"#, Some("2")),
                (r#"{"seq":2}"#, Some("2")),
                (r#"{"seq":1}"#, Some("1")),
                (r#"{"seq":3}"#, None),
                ("not json", Some("4")),
                (r#"{"seq":4}"#, Some("4")),
            ] {
                take(data, id, &mut last, &mut sink).expect("take");
            }
        }
        assert_eq!(seen, vec![1, 2, 3, 4]);
        assert_eq!(last, 4);
        assert!(is_final(&json!({"state": "cancelled"})));
        assert!(!is_final(&json!({"state": "cancelling"})));
    }
}
