//! Per-client limits, so that one API client cannot fill the cluster or
//! this instance: how many unfinished operations each client has
//! (`--max-operations-per-client`), and how many live event streams it holds
//! open here (`--max-event-streams-per-client`).
//!
//! The operation counts follow the contexts bucket (every management
//! instance sees every client's operations, whichever instance took them),
//! plus the submissions this instance is recording right now. Two instances
//! admitting the same client at the same instant can overshoot by one each.
//! Operations count as unfinished until their state is terminal, so a
//! `cancelling` one still counts. Event streams are counted per instance:
//! each holds a connection and a consumer of this process.

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex};

use uuid::Uuid;

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error("client {client} already has {unfinished} unfinished operations, the limit (--max-operations-per-client); wait for some to finish or cancel them")]
pub struct LimitReached {
    pub client: String,
    pub unfinished: usize,
}

#[derive(Default)]
struct Counts {
    unfinished: HashMap<String, HashSet<Uuid>>,
    client_of: HashMap<Uuid, String>,
    /// Admitted here, not yet recorded.
    pending: HashMap<String, usize>,
}

impl Counts {
    fn remove(&mut self, op: &Uuid) {
        if let Some(client) = self.client_of.remove(op) {
            if let Some(ops) = self.unfinished.get_mut(&client) {
                ops.remove(op);
                if ops.is_empty() {
                    self.unfinished.remove(&client);
                }
            }
        }
    }

    fn insert(&mut self, op: Uuid, client: &str) {
        self.client_of.insert(op, client.to_string());
        self.unfinished
            .entry(client.to_string())
            .or_default()
            .insert(op);
    }
}

#[derive(Clone)]
pub struct ClientLimits {
    limit: usize,
    counts: Arc<Mutex<Counts>>,
}

impl ClientLimits {
    pub fn new(limit: usize) -> Self {
        Self {
            limit,
            counts: Arc::default(),
        }
    }

    fn counts(&self) -> std::sync::MutexGuard<'_, Counts> {
        self.counts.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// A context was written: `op` of `client` is unfinished or not.
    pub fn observe(&self, op: Uuid, client: Option<&str>, finished: bool) {
        let mut counts = self.counts();
        match client {
            Some(client) if !finished => counts.insert(op, client),
            _ => counts.remove(&op),
        }
    }

    /// A context was deleted or purged.
    pub fn forget(&self, op: &Uuid) {
        self.counts().remove(op);
    }

    /// Admits one more operation of `client`, or says why not.
    pub fn admit(&self, client: &str) -> Result<Admission, LimitReached> {
        let mut counts = self.counts();
        let pending = counts.pending.get(client).copied().unwrap_or(0);
        let unfinished = counts.unfinished.get(client).map_or(0, HashSet::len) + pending;
        if unfinished >= self.limit {
            return Err(LimitReached {
                client: client.to_string(),
                unfinished,
            });
        }
        *counts.pending.entry(client.to_string()).or_default() += 1;
        Ok(Admission {
            limits: self.clone(),
            client: client.to_string(),
        })
    }
}

/// One admitted submission; dropping it without [`Admission::recorded`]
/// gives the place back.
pub struct Admission {
    limits: ClientLimits,
    client: String,
}

impl Admission {
    /// The context of `op` is in KV: it counts as unfinished from now on.
    pub fn recorded(self, op: Uuid) {
        self.limits.counts().insert(op, &self.client);
    }
}

impl Drop for Admission {
    fn drop(&mut self) {
        let mut counts = self.limits.counts();
        if let Some(pending) = counts.pending.get_mut(&self.client) {
            *pending = pending.saturating_sub(1);
            if *pending == 0 {
                counts.pending.remove(&self.client);
            }
        }
    }
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error("client {client} already has {open} live event streams open on this management instance, the limit; close one (SSE streams end when the client disconnects), page with GET /v1/operations/{{id}}/events?after=&limit= instead, or raise the limit with --max-event-streams-per-client / ZF_MAX_EVENT_STREAMS_PER_CLIENT")]
pub struct StreamsFull {
    pub client: String,
    pub open: usize,
}

/// Live event streams per client on this instance.
#[derive(Clone)]
pub struct StreamSlots {
    limit: usize,
    open: Arc<Mutex<HashMap<String, usize>>>,
}

impl StreamSlots {
    pub fn new(limit: usize) -> Self {
        Self {
            limit,
            open: Arc::default(),
        }
    }

    fn open(&self) -> std::sync::MutexGuard<'_, HashMap<String, usize>> {
        self.open.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// One more stream of `client`, held until the slot drops, or why not.
    pub fn take(&self, client: &str) -> Result<StreamSlot, StreamsFull> {
        let mut open = self.open();
        let count = open.entry(client.to_string()).or_default();
        if *count >= self.limit {
            return Err(StreamsFull {
                client: client.to_string(),
                open: *count,
            });
        }
        *count += 1;
        metrics::gauge!("zf_sse_clients").increment(1.0);
        Ok(StreamSlot {
            slots: self.clone(),
            client: client.to_string(),
        })
    }

    #[cfg(test)]
    fn open_of(&self, client: &str) -> usize {
        self.open().get(client).copied().unwrap_or(0)
    }
}

/// A live event stream's place; dropped with the stream, it frees the place.
pub struct StreamSlot {
    slots: StreamSlots,
    client: String,
}

impl Drop for StreamSlot {
    fn drop(&mut self) {
        metrics::gauge!("zf_sse_clients").decrement(1.0);
        let mut open = self.slots.open();
        if let Some(count) = open.get_mut(&self.client) {
            *count = count.saturating_sub(1);
            if *count == 0 {
                open.remove(&self.client);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_client_holds_its_streams_until_they_drop() {
        let slots = StreamSlots::new(2);
        let first = slots.take("a").expect("first");
        let second = slots.take("a").expect("second");
        let full = slots.take("a").err().expect("third is refused");
        assert_eq!(full.open, 2);
        let message = full.to_string();
        assert!(
            message.contains("--max-event-streams-per-client")
                && message.contains("ZF_MAX_EVENT_STREAMS_PER_CLIENT"),
            "{message}"
        );
        let other = slots.take("b").expect("other clients are not affected");
        drop(first);
        let third = slots.take("a").expect("a dropped stream frees its slot");
        drop((second, third, other));
        assert_eq!(slots.open_of("a"), 0);
        assert!(slots.open().is_empty(), "no client left behind");
    }

    #[test]
    fn a_cancelling_operation_still_counts() {
        use zerofoot_shared::protocol::OperationState;
        let limits = ClientLimits::new(1);
        let op = Uuid::new_v4();
        let cancelling = OperationState::Cancelling;
        limits.observe(op, Some("a"), cancelling.is_terminal());
        assert!(limits.admit("a").is_err(), "cancelling is unfinished");
        limits.observe(op, Some("a"), OperationState::Cancelled.is_terminal());
        assert!(limits.admit("a").is_ok());
    }

    #[test]
    fn a_client_gets_its_limit_and_no_more() {
        let limits = ClientLimits::new(2);
        let first = limits.admit("a").expect("first");
        let second = limits.admit("a").expect("second");
        let err = limits.admit("a").err().expect("third is refused");
        assert_eq!(err.unfinished, 2);
        assert!(limits.admit("b").is_ok(), "other clients are not affected");
        let op = Uuid::new_v4();
        first.recorded(op);
        drop(second);
        assert!(
            limits.admit("a").is_ok(),
            "a dropped admission frees its place"
        );
        let _held = limits.admit("a").expect("one place left");
        assert!(limits.admit("a").is_err());
        limits.observe(op, Some("a"), true);
        assert!(
            limits.admit("a").is_ok(),
            "a finished operation frees its place"
        );
    }

    #[test]
    fn the_bucket_decides_and_deletes_count() {
        let limits = ClientLimits::new(1);
        let op = Uuid::new_v4();
        limits.observe(op, Some("a"), false);
        limits.observe(op, Some("a"), false);
        assert!(limits.admit("a").is_err(), "seen twice, counted once");
        limits.forget(&op);
        assert!(limits.admit("a").is_ok());
        limits.observe(Uuid::new_v4(), None, false);
        assert!(
            limits.counts().unfinished.is_empty(),
            "operations without a client are not counted"
        );
    }
}
