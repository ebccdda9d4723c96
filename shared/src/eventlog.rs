//! The per-operation event log (SPEC §7): what one message on
//! `zf.<cluster>.evt.<op-id>` holds, and how to read a log in order. Only the
//! current owner appends, each append checked by JetStream against the
//! sequence of the log's last message, so a replaced owner can never slip an
//! event in after its successor's takeover marker.

use async_nats::jetstream::{consumer, stream};
use futures::{Stream, StreamExt};
use serde::{Deserialize, Serialize};
use serde_json::Value;
use time::OffsetDateTime;
use utoipa::ToSchema;
use uuid::Uuid;

use crate::ordered_read::OrderedRead;
use crate::protocol::v1;

/// One event of an async operation.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, ToSchema)]
pub struct Event {
    #[serde(default = "v1")]
    #[schema(required = true)]
    pub v: u32,
    pub op: Uuid,
    /// Counts the operation's events from 1, with no gap and no repeat.
    pub seq: u64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schema(nullable = false)]
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

/// The bytes of one event as a log entry holds it. An event serializes:
/// its data is a JSON value, whose map keys are strings.
pub fn encode(event: &Event) -> Vec<u8> {
    serde_json::to_vec(event).expect("an event is JSON with string keys")
}

/// The events of one [`LogEntry::Events`], encoded as they join it: each
/// event is serialized once, its size is known before it joins (to bound
/// the batch), and the entry is their bytes in the envelope. At a hundred
/// thousand events a second, serializing each event a second time for the
/// whole entry was a good part of the owner's CPU.
#[derive(Debug, Default)]
pub struct EncodedEvents {
    body: Vec<u8>,
    count: usize,
    first_seq: Option<u64>,
}

impl EncodedEvents {
    /// `events`, encoded.
    pub fn of(events: &[Event]) -> Self {
        let mut encoded = Self::default();
        for event in events {
            encoded.push(event.seq, &encode(event));
        }
        encoded
    }

    /// Adds event `seq`, encoded by [`encode`].
    pub fn push(&mut self, seq: u64, encoded: &[u8]) {
        if self.count > 0 {
            self.body.push(b',');
        }
        self.body.extend_from_slice(encoded);
        self.first_seq.get_or_insert(seq);
        self.count += 1;
    }

    pub fn len(&self) -> usize {
        self.count
    }

    pub fn is_empty(&self) -> bool {
        self.count == 0
    }

    /// What the events take in the entry, separators included.
    pub fn bytes(&self) -> usize {
        self.body.len()
    }

    /// The sequence number of the first event.
    pub fn first_seq(&self) -> Option<u64> {
        self.first_seq
    }

    /// The entry, byte for byte as [`LogEntry::Events`] serializes.
    pub fn entry(&self) -> Vec<u8> {
        let head = format!(
            r#"{{"kind":"events","v":{},"events":["#,
            crate::protocol::PROTOCOL_VERSION
        );
        let mut entry = Vec::with_capacity(head.len() + self.body.len() + 2);
        entry.extend_from_slice(head.as_bytes());
        entry.extend_from_slice(&self.body);
        entry.extend_from_slice(b"]}");
        entry
    }
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
    Ok(last_message(events, subject)
        .await?
        .map_or(0, |m| m.sequence))
}

/// A log as read by [`read`].
#[derive(Debug, Default)]
pub struct LogRead {
    /// `(stream sequence, entry)` in order; unreadable messages left out.
    pub entries: Vec<(u64, LogEntry)>,
    /// Stream sequence of the last message of the log this read got to,
    /// readable or not (0: none). An owner appends after this, never after
    /// the last entry that parsed: one junk message must not make every
    /// append look fenced. Never past a message the read did not see: an
    /// append expecting it is refused if the log holds more, so a read cut
    /// short can never fence the log behind events it did not count.
    pub end: u64,
}

/// Reads the log from stream sequence `from` (inclusive) to its end as it
/// stands now. Unreadable messages are skipped with a warning.
///
/// The end and the messages ([`visit_messages`]) may each be served by
/// any replica, a lagging one included. The read reports as its end only
/// what it saw through ([`read_through`]).
pub async fn read(events: &stream::Stream, subject: &str, from: u64) -> Result<LogRead, LogError> {
    let end = last_position(events, subject).await?;
    let mut out = LogRead::default();
    let mut visited = None;
    visit_messages(events, subject, from, end, None, |position, payload| {
        visited = Some(position);
        match serde_json::from_slice::<LogEntry>(payload) {
            Ok(entry) => out.entries.push((position, entry)),
            Err(e) => {
                tracing::warn!(subject, position, error = %e, "skipping an unreadable event log message")
            }
        }
        true
    })
    .await?;
    out.end = read_through(from, end, visited);
    Ok(out)
}

/// How far a read of a log from `from` got, as a position an append may
/// expect as the log's last: `end` (the log's last position, as one
/// replica saw it) when there was nothing to read from `from` or the read
/// reached it; else the last message it saw (`visited`), or the position
/// just before `from`. A read cut short (its consumer on a replica behind
/// the one that gave `end`) thus reports a position the log has moved past,
/// and an append expecting it is refused rather than fencing unread events.
pub fn read_through(from: u64, end: u64, visited: Option<u64>) -> u64 {
    if end < from {
        return end;
    }
    match visited {
        Some(position) if position >= end => end,
        Some(position) => position,
        None => from.saturating_sub(1),
    }
}

/// Messages a read takes with direct gets before an ordered consumer
/// brings the rest. Most reads are short (an owner's read after its last
/// checkpoint, a page of large batches, up to 1000 events a message) and
/// need no consumer at all. A consumer is also the weak part when a NATS
/// server is cut off: the servers place it on any replica of the stream,
/// the cut-off one included for as long as they do not count it gone
/// (minutes), and its creation then times out; any replica still in touch
/// answers a direct get.
const DIRECT_READS: usize = 32;

/// Hands `visit` the messages of `subject` from stream position `from`
/// (inclusive) up to `end`, in order, until it returns false or no message
/// up to `end` is left (some may have expired meanwhile). `last` is the
/// log's last message when the caller has it already. The first
/// [`DIRECT_READS`] messages come by direct get, the rest through an ordered
/// consumer ([`OrderedRead`]: each message once), deleted once done.
///
/// Any replica may answer, a lagging one too; replicas apply the stream in
/// order, so the read is a prefix of the log, cut short at worst, never
/// with a hole.
pub async fn visit_messages(
    stream: &stream::Stream,
    subject: &str,
    from: u64,
    end: u64,
    last: Option<&async_nats::jetstream::message::StreamMessage>,
    mut visit: impl FnMut(u64, &[u8]) -> bool,
) -> Result<(), LogError> {
    let mut position = from;
    for _ in 0..DIRECT_READS {
        if end == 0 || position > end {
            return Ok(());
        }
        let message = match last {
            Some(last) if last.sequence == position => last.clone(),
            _ => match stream
                .direct_get_next_for_subject(subject, Some(position))
                .await
            {
                Ok(message) => message,
                Err(e) if e.kind() == stream::DirectGetErrorKind::NotFound => return Ok(()),
                Err(e) => return Err(nats(e)),
            },
        };
        if message.sequence > end || !visit(message.sequence, &message.payload) {
            return Ok(());
        }
        position = message.sequence + 1;
    }
    if position > end {
        return Ok(());
    }
    let consumer = OrderedRead::open(stream, subject, position)
        .await
        .map_err(nats)?;
    let name = consumer.name();
    let read = async {
        let mut messages = consumer.messages().await.map_err(nats)?;
        while let Some(message) = next_message(&mut messages, subject, end).await? {
            let info = message.info().map_err(nats)?;
            let (position, pending) = (info.stream_sequence, info.pending);
            if position > end || !visit(position, &message.payload) {
                break;
            }
            if position >= end || pending == 0 {
                break;
            }
        }
        Ok(())
    }
    .await;
    // The server would keep an idle consumer for 30 s; this read is done.
    let _ = tokio::time::timeout(
        std::time::Duration::from_secs(1),
        stream.delete_consumer(&name),
    )
    .await;
    read
}

/// What one message of a log says about where the events with a seq above
/// some `after` start. Event seqs grow in log order, so the messages holding
/// such events form the log's tail; [`StartSearch`] looks for its head.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Probe {
    /// Every event in this message, and so every earlier one, is at or
    /// below `after`; `last` is the message's last seq.
    Before { last: u64 },
    /// This message holds an event above `after` (`first` is its first
    /// seq), or is a takeover marker after such an event (`first` is then
    /// `after_seq + 1`, which every later event is at or above): the tail
    /// starts here or earlier.
    AtOrAfter { first: u64 },
    /// Says nothing either way: unreadable (junk), an empty batch, or a
    /// marker taken over at or below `after`. Carries no event, so reading
    /// may start before it at no loss.
    Undecided,
}

/// The pure decision of the search: what `entry` (`None`: the message did
/// not parse as a [`LogEntry`]) says about events above `after`.
pub fn probe(entry: Option<&LogEntry>, after: u64) -> Probe {
    match entry {
        Some(LogEntry::Events { events, .. }) => {
            let first = events.iter().map(|e| e.seq).min();
            match (first, events.iter().map(|e| e.seq).max()) {
                (Some(first), Some(last)) if last > after => Probe::AtOrAfter { first },
                (_, Some(last)) => Probe::Before { last },
                _ => Probe::Undecided,
            }
        }
        // Every later event counts on from the marker's `after_seq`.
        Some(LogEntry::Takeover { after_seq, .. }) if *after_seq > after => Probe::AtOrAfter {
            first: after_seq.saturating_add(1),
        },
        // What the old owner wrote before the marker is not bounded by it
        // for sure: decide on the messages around it instead.
        Some(LogEntry::Takeover { .. }) | None => Probe::Undecided,
    }
}

/// [`probe`] of a message's raw bytes; junk is [`Probe::Undecided`].
pub fn probe_message(payload: &[u8], after: u64) -> Probe {
    probe(
        serde_json::from_slice::<LogEntry>(payload).ok().as_ref(),
        after,
    )
}

/// Most direct gets one search may spend before it settles for the start it
/// has proven so far (still correct, only a longer read).
const MAX_PROBES: u32 = 128;

/// The search for the position to start reading a log at so that no event
/// above some `after` is missed and no message holding only earlier events
/// is read. Pure: the caller classifies messages with [`probe`], fetches
/// "the first message of the log at or after position
/// [`StartSearch::next_probe`]" and hands what it found to
/// [`StartSearch::observe`] until `next_probe` says `None`.
///
/// Probes alternate between interpolation (seqs count on without gaps, so
/// the seqs seen at both ends of the range place `after` well) and
/// bisection (which bounds the probes at about twice log2 of the range
/// whatever the layout); the log's last message, which every read fetches
/// anyway, can be handed in first ([`StartSearch::seed`]) so a read near the
/// end needs few probes or none.
///
/// Invariant: no message before `lo` holds an event above `after`, and no
/// message from `hi` on holds only events at or below it. `lo` is therefore
/// always a correct start; once `lo == hi` it is a tight one.
#[derive(Clone, Debug)]
pub struct StartSearch {
    after: u64,
    lo: u64,
    hi: u64,
    /// The last seq of the message just before `lo` (0: none seen).
    lo_seq: u64,
    /// A seq at or below every event from `hi` on, when one was seen.
    hi_seq: Option<u64>,
    probes_left: u32,
    bisect_next: bool,
    /// The position asked for last.
    probing: u64,
    /// A run of undecided messages found from a probed point: `(point,
    /// next position to look at)`.
    run: Option<(u64, u64)>,
}

impl StartSearch {
    /// A search for events above `after` among positions `first..=end`
    /// (`end`: the log's last position when the search starts; 0 for an
    /// empty log).
    pub fn new(after: u64, first: u64, end: u64) -> Self {
        let lo = first.max(1);
        Self {
            after,
            lo,
            hi: end.saturating_add(1).max(lo),
            lo_seq: 0,
            hi_seq: None,
            probes_left: MAX_PROBES,
            bisect_next: false,
            probing: lo,
            run: None,
        }
    }

    /// Hands in a message already at hand (e.g. the log's last one) as if
    /// it had been probed at its own position.
    pub fn seed(&mut self, position: u64, probe: Probe) {
        if position < self.lo || position >= self.hi {
            return;
        }
        self.run = None;
        self.probing = position;
        self.observe(Some((position, probe)));
    }

    /// The position whose next message to fetch, or `None` when done.
    pub fn next_probe(&mut self) -> Option<u64> {
        if self.lo >= self.hi || self.probes_left == 0 {
            return None;
        }
        self.probing = match self.run {
            Some((_, next)) => next,
            None => {
                let bisect = self.bisect_next;
                self.bisect_next = !bisect;
                match self.interpolated() {
                    Some(guess) if !bisect => guess,
                    _ => self.lo + (self.hi - self.lo) / 2,
                }
            }
        };
        Some(self.probing)
    }

    /// Where seq `after + 1` should lie if seqs spread evenly between the
    /// message before `lo` and the one at `hi`.
    fn interpolated(&self) -> Option<u64> {
        if self.lo_seq == self.after {
            // The message before `lo` ends right before the tail: the next
            // message is its head.
            return Some(self.lo);
        }
        let high = self.hi_seq?;
        let (from, span) = (self.lo - 1, u128::from(self.hi - (self.lo - 1)));
        let wanted = u128::from((self.after + 1).checked_sub(self.lo_seq)?);
        let seqs = u128::from(high.checked_sub(self.lo_seq)?);
        if seqs == 0 {
            return None;
        }
        let offset = u64::try_from(span * wanted / seqs).ok()?;
        Some(from.saturating_add(offset).clamp(self.lo, self.hi - 1))
    }

    /// The first message at or after the probed position: its position and
    /// what it says, or `None` if the log has none there.
    pub fn observe(&mut self, found: Option<(u64, Probe)>) {
        self.probes_left = self.probes_left.saturating_sub(1);
        let point = self.run.map_or(self.probing, |(point, _)| point);
        self.run = None;
        match found {
            // The server answered with a message before the one asked for:
            // trust nothing more and keep the start proven so far.
            Some((at, _)) if at < self.probing => self.probes_left = 0,
            Some((at, probe)) if at < self.hi => match probe {
                Probe::Before { last } => {
                    self.lo = at + 1;
                    self.lo_seq = self.lo_seq.max(last);
                }
                // The head itself: every message before it holds seqs
                // below `first`, so at or below `after`; only undecided
                // messages (or none) lie between `point` and it.
                Probe::AtOrAfter { first } if first <= self.after.saturating_add(1) => {
                    self.lo = point;
                    self.hi = point;
                }
                Probe::AtOrAfter { first } => {
                    self.hi = point;
                    self.hi_seq = Some(first);
                }
                Probe::Undecided if at + 1 < self.hi => self.run = Some((point, at + 1)),
                Probe::Undecided => self.hi = point,
            },
            // Nothing readable between `point` and the end searched.
            _ => self.hi = point,
        }
    }

    /// Where to start reading: tight once the search is done, and correct
    /// (if earlier than needed) when it ran out of probes.
    pub fn start(&self) -> u64 {
        self.lo
    }
}

/// The log's last message, `None` for an empty log.
async fn last_message(
    events: &stream::Stream,
    subject: &str,
) -> Result<Option<async_nats::jetstream::message::StreamMessage>, LogError> {
    match events.direct_get_last_for_subject(subject).await {
        Ok(message) => Ok(Some(message)),
        Err(e) if e.kind() == stream::DirectGetErrorKind::NotFound => Ok(None),
        Err(e) => Err(nats(e)),
    }
}

/// The stream position to read `subject`'s log from to get every event
/// with a seq above `after_seq`, found with a few direct gets ([`StartSearch`])
/// instead of reading the log from its start. Past the log's end when it
/// holds no such event yet.
pub async fn start_position(
    events: &stream::Stream,
    subject: &str,
    after_seq: u64,
) -> Result<u64, LogError> {
    let last = last_message(events, subject).await?;
    Ok(search_start(events, subject, after_seq, last.as_ref())
        .await?
        .0)
}

/// The start for `after_seq` and the log's end, given its last message.
async fn search_start(
    events: &stream::Stream,
    subject: &str,
    after_seq: u64,
    last: Option<&async_nats::jetstream::message::StreamMessage>,
) -> Result<(u64, u64), LogError> {
    let Some(last) = last else {
        return Ok((1, 0));
    };
    let end = last.sequence;
    if after_seq == 0 {
        return Ok((1, end));
    }
    let mut search = StartSearch::new(after_seq, 1, end);
    search.seed(end, probe_message(&last.payload, after_seq));
    while let Some(at) = search.next_probe() {
        let found = match events.direct_get_next_for_subject(subject, Some(at)).await {
            Ok(message) => Some((message.sequence, probe_message(&message.payload, after_seq))),
            Err(e) if e.kind() == stream::DirectGetErrorKind::NotFound => None,
            Err(e) => return Err(nats(e)),
        };
        search.observe(found);
    }
    Ok((search.start(), end))
}

/// One page of a log, as read by [`read_page`].
#[derive(Debug, Default)]
pub struct Page {
    /// Events with a seq above the page's `after_seq`, in order, at most `limit`.
    pub events: Vec<Event>,
    /// The log's last position when the read started (0: empty log).
    pub end: u64,
}

/// Reads at most `limit` events with a seq above `after_seq`: finds where
/// they start ([`start_position`]), reads from there (the first messages with
/// direct gets, the rest with an ordered consumer) and stops as soon as
/// `limit` events are in or the log's end as it stood at the start is
/// reached. Unreadable messages and markers are skipped.
pub async fn read_page(
    events: &stream::Stream,
    subject: &str,
    after_seq: u64,
    limit: usize,
) -> Result<Page, LogError> {
    let last = last_message(events, subject).await?;
    let (start, end) = search_start(events, subject, after_seq, last.as_ref()).await?;
    let mut page = Page {
        events: Vec::new(),
        end,
    };
    if limit == 0 {
        return Ok(page);
    }
    visit_messages(
        events,
        subject,
        start,
        end,
        last.as_ref(),
        |position, payload| {
            take(&mut page, subject, position, payload, after_seq, limit);
            page.events.len() < limit
        },
    )
    .await?;
    Ok(page)
}

/// Adds the events above `after_seq` of one message to `page`, up to `limit`.
fn take(
    page: &mut Page,
    subject: &str,
    position: u64,
    payload: &[u8],
    after_seq: u64,
    limit: usize,
) {
    match serde_json::from_slice::<LogEntry>(payload) {
        Ok(LogEntry::Events { events, .. }) => {
            let wanted = limit.saturating_sub(page.events.len());
            page.events.extend(
                events
                    .into_iter()
                    .filter(|e| e.seq > after_seq)
                    .take(wanted),
            );
        }
        Ok(LogEntry::Takeover { .. }) => {}
        Err(e) => {
            tracing::warn!(subject, position, error = %e, "skipping an unreadable event log message")
        }
    }
}

/// The next message of an ordered read, `None` when the stream ends; an
/// error when none came for 5 s before the log's `end` was reached.
async fn next_message(
    messages: &mut (impl Stream<Item = Result<async_nats::jetstream::Message, consumer::pull::OrderedError>>
              + Unpin),
    subject: &str,
    end: u64,
) -> Result<Option<async_nats::jetstream::Message>, LogError> {
    match tokio::time::timeout(std::time::Duration::from_secs(5), messages.next()).await {
        Ok(Some(message)) => message.map(Some).map_err(nats),
        Ok(None) => Ok(None),
        Err(_) => Err(LogError::Nats(format!(
            "reading {subject} stalled before position {end}"
        ))),
    }
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
    fn a_read_reports_only_the_end_it_saw_through() {
        // Nothing after `from`: the log's end as it stands.
        assert_eq!(read_through(10, 9, None), 9);
        assert_eq!(read_through(1, 0, None), 0);
        // The read reached the end.
        assert_eq!(read_through(10, 14, Some(14)), 14);
        // Cut short (its consumer on a replica behind the end's): the last
        // message it saw, which the log has moved past, so an append
        // expecting it is refused.
        assert_eq!(read_through(10, 14, Some(12)), 12);
        assert_eq!(read_through(10, 14, None), 9);
    }

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

    fn event(seq: u64) -> Event {
        Event {
            v: 1,
            op: Uuid::nil(),
            seq,
            key: None,
            data: Value::Null,
            node: "n1".into(),
            epoch: 1,
            at: OffsetDateTime::UNIX_EPOCH,
        }
    }

    fn batch(seqs: std::ops::RangeInclusive<u64>) -> Vec<u8> {
        let entry = LogEntry::Events {
            v: 1,
            events: seqs.map(event).collect(),
        };
        serde_json::to_vec(&entry).expect("json")
    }

    fn marker(after_seq: u64) -> Vec<u8> {
        let entry = LogEntry::Takeover {
            v: 1,
            op: Uuid::nil(),
            node: "n2".into(),
            epoch: 2,
            after_seq,
        };
        serde_json::to_vec(&entry).expect("json")
    }

    #[test]
    fn encoded_events_are_the_entry_serde_writes() {
        let mut events: Vec<Event> = (1..=3).map(event).collect();
        events[1].key = Some("k\"1".into());
        events[2].data = serde_json::json!({"n": [1, "two", null], "s": "é\n"});
        let expected = LogEntry::Events {
            v: crate::protocol::PROTOCOL_VERSION,
            events: events.clone(),
        };
        let encoded = EncodedEvents::of(&events);
        assert_eq!(encoded.len(), 3);
        assert_eq!(encoded.first_seq(), Some(1));
        assert_eq!(
            encoded.entry(),
            serde_json::to_vec(&expected).expect("json"),
            "the same bytes as serde's"
        );
        assert_eq!(
            serde_json::from_slice::<LogEntry>(&encoded.entry()).expect("parses"),
            expected
        );
        let empty = EncodedEvents::default();
        assert!(empty.is_empty());
        assert_eq!(empty.first_seq(), None);
    }

    #[test]
    fn a_probe_decides_by_the_last_event_and_markers_only_forward() {
        let events = |seqs| serde_json::from_slice::<LogEntry>(&batch(seqs)).ok();
        assert_eq!(
            probe(events(1..=10).as_ref(), 10),
            Probe::Before { last: 10 }
        );
        assert_eq!(
            probe(events(1..=10).as_ref(), 9),
            Probe::AtOrAfter { first: 1 }
        );
        assert_eq!(
            probe(events(5..=10).as_ref(), 0),
            Probe::AtOrAfter { first: 5 }
        );
        let empty = LogEntry::Events {
            v: 1,
            events: Vec::new(),
        };
        assert_eq!(probe(Some(&empty), 3), Probe::Undecided);
        assert_eq!(
            probe_message(&marker(20), 19),
            Probe::AtOrAfter { first: 21 },
            "a marker is never the head itself"
        );
        assert_eq!(probe_message(&marker(20), 20), Probe::Undecided);
        assert_eq!(probe_message(b"not json", 1), Probe::Undecided);
        assert_eq!(
            probe_message(br#"{"kind":"events","events":[{"seq":99}]}"#, 1),
            Probe::Undecided,
            "what does not parse as a LogEntry is junk, however it looks"
        );
    }

    /// Runs a search over a log in memory (`(position, payload)` in
    /// position order), seeded with its last message as the reads do:
    /// the start and the probes spent.
    fn search(log: &[(u64, Vec<u8>)], after: u64) -> (u64, u32) {
        let end = log.last().map_or(0, |(p, _)| *p);
        let mut search = StartSearch::new(after, 1, end);
        if let Some((position, payload)) = log.last() {
            search.seed(*position, probe_message(payload, after));
        }
        let mut probes = 0;
        while let Some(at) = search.next_probe() {
            probes += 1;
            let found = log
                .iter()
                .find(|(p, _)| *p >= at)
                .map(|(p, payload)| (*p, probe_message(payload, after)));
            search.observe(found);
        }
        (search.start(), probes)
    }

    /// The start is right: reading from it yields exactly the events above
    /// `after`, and reads no message that holds only earlier events.
    fn check(log: &[(u64, Vec<u8>)], after: u64, start: u64) {
        let last = events_from(log, 0, 0).last().copied().unwrap_or(0);
        assert_eq!(
            events_from(log, start, after),
            (after + 1..=last).collect::<Vec<u64>>(),
            "after {after}, start {start}"
        );
        let wasted = log
            .iter()
            .filter(|(p, _)| *p >= start)
            .filter(|(_, payload)| matches!(probe_message(payload, after), Probe::Before { .. }))
            .count();
        assert_eq!(wasted, 0, "after {after}, start {start}: reads too early");
    }

    fn events_from(log: &[(u64, Vec<u8>)], start: u64, after: u64) -> Vec<u64> {
        log.iter()
            .filter(|(p, _)| *p >= start)
            .filter_map(|(_, payload)| serde_json::from_slice::<LogEntry>(payload).ok())
            .flat_map(|e| events_of(vec![(0, e)]))
            .map(|e| e.seq)
            .filter(|s| *s > after)
            .collect()
    }

    #[test]
    fn the_search_finds_the_head_among_other_subjects_in_few_probes() {
        // Batches of 10 events at every third position (other operations'
        // messages in between), 100 batches.
        let log: Vec<(u64, Vec<u8>)> = (0..100u64)
            .map(|i| (3 * i + 2, batch(i * 10 + 1..=i * 10 + 10)))
            .collect();
        for after in [0, 1, 9, 10, 11, 500, 995, 999, 1000, 5000] {
            let (start, probes) = search(&log, after);
            check(&log, after, start);
            assert!(probes <= 4, "after {after}: {probes} probes");
        }
        assert_eq!(search(&log, 990), (299, 0), "the last batch: no probe");
        assert_eq!(search(&log, 1000).0, 300, "past the end: nothing to read");
        assert_eq!(search(&[], 5), (1, 0), "an empty log");
    }

    #[test]
    fn uneven_batches_cost_about_log2_probes_at_worst() {
        // One huge batch, then thousands of single events, with gaps in
        // the positions: interpolation guesses badly, bisection bounds it.
        let mut log = vec![(1, batch(1..=5_000))];
        let mut position = 1;
        for seq in 5_001..=9_000u64 {
            position += seq % 5 + 1;
            log.push((position, batch(seq..=seq)));
        }
        for after in [1, 2_500, 4_999, 5_000, 5_001, 7_345, 8_999, 9_000] {
            let (start, probes) = search(&log, after);
            check(&log, after, start);
            assert!(probes <= 40, "after {after}: {probes} probes");
        }
    }

    #[test]
    fn junk_and_markers_never_hide_an_event() {
        let mut log = Vec::new();
        let mut position = 0;
        let mut push = |log: &mut Vec<(u64, Vec<u8>)>, payload: Vec<u8>| {
            position += 1;
            log.push((position, payload));
        };
        for i in 0..40u64 {
            push(&mut log, batch(i * 5 + 1..=i * 5 + 5));
            if i % 7 == 3 {
                push(&mut log, b"junk".to_vec());
                push(&mut log, br#"{"kind":"nonsense"}"#.to_vec());
            }
            if i % 11 == 5 {
                // A takeover after event i*5+5; fencing keeps the old
                // owner's batches before it.
                push(&mut log, marker(i * 5 + 5));
            }
        }
        // A run of junk at the very end.
        push(&mut log, b"{".to_vec());
        push(&mut log, b"}".to_vec());
        for after in 0..=205 {
            let (start, _) = search(&log, after);
            check(&log, after, start);
        }
        let junk: Vec<(u64, Vec<u8>)> = (1..=50).map(|p| (p, b"x".to_vec())).collect();
        assert_eq!(search(&junk, 3).0, 1, "all junk: start anywhere");
    }

    #[test]
    fn a_marker_above_the_seq_bounds_the_search() {
        // The old owner wrote 11..=12 after its checkpoint, the new owner
        // took over after 12 and goes on with 13.
        let log = vec![
            (1, batch(1..=10)),
            (2, batch(11..=12)),
            (3, marker(12)),
            (4, batch(13..=20)),
        ];
        for after in 0..=21 {
            let (start, _) = search(&log, after);
            check(&log, after, start);
        }
        assert_eq!(search(&log, 10).0, 2);
        assert_eq!(search(&log, 11).0, 2);
        assert!(
            [3, 4].contains(&search(&log, 12).0),
            "the marker may be read"
        );
        assert_eq!(search(&log, 20).0, 5);
    }

    #[test]
    fn a_search_out_of_probes_keeps_a_correct_start() {
        let mut search = StartSearch::new(700, 1, 1000);
        search.probes_left = 2;
        let mut probes = 0;
        while let Some(at) = search.next_probe() {
            probes += 1;
            // One event per position, seq = position, reported a bit off.
            let probe = if at <= 700 {
                Probe::Before { last: at }
            } else {
                Probe::AtOrAfter { first: at + 1 }
            };
            search.observe(Some((at, probe)));
        }
        assert_eq!(probes, 2);
        assert!(search.start() <= 701, "never past the first wanted message");
        let mut odd = StartSearch::new(5, 10, 20);
        let at = odd.next_probe().expect("a probe");
        odd.observe(Some((at - 1, Probe::Before { last: 1 })));
        assert_eq!(
            odd.next_probe(),
            None,
            "a server answering backwards stops it"
        );
        assert_eq!(odd.start(), 10);
    }
}
