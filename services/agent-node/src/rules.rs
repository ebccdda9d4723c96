//! The rules of owning an operation that need no IO, as plain functions and
//! types the unit tests drive: when a node may take an operation and what it
//! writes, how a monitor numbers its events and drops keyed ones already in
//! the log after a checkpoint, how appends are batched (by count and bytes),
//! and the restart backoff. The ownership shell (`ownership.rs`) and the
//! monitor only move messages around these.

use std::collections::HashSet;
use std::time::Duration;

use serde_json::Value;
use zerofoot_shared::protocol::{ExecutionContext, OperationKind, OperationState};

/// Why a node takes an operation.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Why {
    /// A new sync operation submitted to this node (`op.submit`).
    Submitted,
    /// A sync operation left pending longer than the lapse.
    Pending,
    /// A sync operation whose owner (named) was judged lost.
    LostOwner(String),
    /// The lead takes an unfinished async operation at its term.
    Lead { term: u64 },
}

/// What taking an operation comes to.
#[derive(Debug, Clone, PartialEq)]
pub enum Decision {
    /// Write `ctx` (now owned by this node) and run it.
    Run(Box<ExecutionContext>),
    /// Write `ctx`, which reached a final state without running (a cancel
    /// asked for before this take, or no retries left after a lost owner).
    Close(Box<ExecutionContext>),
    /// Leave it: someone else has it, or it is not in the expected state.
    Refuse(String),
}

/// Decides a take of `ctx` by node `me`.
/// Whether this node already runs it is the shell's business (its local slots).
pub fn decide(mut ctx: ExecutionContext, why: &Why, me: &str) -> Decision {
    let op = ctx.id;
    let state = ctx.state;
    let refuse = |reason: String| Decision::Refuse(reason);
    match why {
        Why::Submitted => {
            if state != OperationState::Pending || ctx.kind != OperationKind::Sync {
                return refuse(format!(
                    "operation {op} is not a new sync operation (state {}); only those are submitted",
                    state.as_str()
                ));
            }
        }
        Why::Pending => {
            if state != OperationState::Pending {
                return refuse(format!("operation {op} is {}, not pending", state.as_str()));
            }
        }
        Why::LostOwner(lost) => {
            let live = matches!(state, OperationState::Running | OperationState::Cancelling);
            if !live || ctx.owner.as_deref() != Some(lost.as_str()) {
                return refuse(format!(
                    "operation {op} is {} on {:?}, no longer running on {lost}",
                    state.as_str(),
                    ctx.owner
                ));
            }
            ctx.owner_lost();
        }
        Why::Lead { term } => {
            if ctx.kind != OperationKind::Async || state.is_terminal() {
                return refuse(format!("operation {op} is not an unfinished monitor"));
            }
            if ctx.epoch > *term {
                return refuse(format!(
                    "operation {op} is owned at term {}, newer than this lead's {term}",
                    ctx.epoch
                ));
            }
            // Owned at an older term, or by this node before a restart or
            // after its monitor stopped here: that run is lost.
            if matches!(state, OperationState::Running | OperationState::Cancelling) {
                ctx.owner_lost();
            }
        }
    }
    if ctx.state == OperationState::Cancelling {
        ctx.cancel();
    }
    if ctx.state.is_terminal() {
        return Decision::Close(Box::new(ctx));
    }
    let epoch = match why {
        Why::Lead { term } => *term,
        _ => ctx.epoch,
    };
    ctx.take(me, epoch);
    Decision::Run(Box::new(ctx))
}

/// Why a node stops running an operation it owns before the driver ends.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StopWhy {
    /// A user cancelled it: write `cancelled`.
    Cancel,
    /// Another owner has it, or it was finished elsewhere: write nothing.
    Lost,
    /// This node cannot confirm it may still act: write nothing.
    Fenced,
}

/// What a change of a context this node runs (seen in its mirror) means for
/// the local run, which wrote attempt number `our_attempts` at `epoch`.
pub fn on_change(
    ctx: &ExecutionContext,
    me: &str,
    epoch: u64,
    our_attempts: usize,
) -> Option<StopWhy> {
    let attempts = ctx.attempts.len();
    if attempts < our_attempts {
        return None; // older than our take
    }
    if attempts > our_attempts || ctx.owner.as_deref() != Some(me) || ctx.epoch != epoch {
        return Some(StopWhy::Lost);
    }
    match ctx.state {
        OperationState::Cancelling => Some(StopWhy::Cancel),
        // Finished (by this run's own last write, when the run is over
        // anyway, or elsewhere): nothing more to run.
        OperationState::Pending => Some(StopWhy::Lost),
        state if state.is_terminal() => Some(StopWhy::Lost),
        _ => None,
    }
}

/// Numbers a monitor's events and drops keyed events the log already holds
/// after the last checkpoint, so a resumed driver's replay is applied once.
#[derive(Debug, Default, Clone)]
pub struct Sequencer {
    last_seq: u64,
    keys_after_checkpoint: HashSet<String>,
}

impl Sequencer {
    /// Resumes after `last_seq`, with the keys found after the checkpoint.
    pub fn resume(last_seq: u64, keys_after_checkpoint: HashSet<String>) -> Self {
        Self {
            last_seq,
            keys_after_checkpoint,
        }
    }

    pub fn last_seq(&self) -> u64 {
        self.last_seq
    }

    /// The seq of a new event, or `None` if its key is in the log already.
    pub fn next(&mut self, key: Option<&str>) -> Option<u64> {
        if let Some(key) = key {
            if !self.keys_after_checkpoint.insert(key.to_string()) {
                return None;
            }
        }
        self.last_seq += 1;
        Some(self.last_seq)
    }

    /// A checkpoint was written: keys before it can no longer come back.
    pub fn checkpointed(&mut self) {
        self.keys_after_checkpoint.clear();
    }
}

/// Events in one append at most.
pub const MAX_BATCH_EVENTS: usize = 1000;
/// Bytes in one append at most: well below NATS's default max_payload (1 MiB),
/// with room for the batch's own framing.
pub const MAX_BATCH_BYTES: usize = 512 * 1024;
/// Largest encoded event; a larger one is replaced by an error event.
pub const MAX_EVENT_BYTES: usize = MAX_BATCH_BYTES - 1024;

/// The data that stands in for an event too large to append.
pub fn oversized_event(bytes: usize) -> Value {
    serde_json::json!({
        "error": "event_too_large",
        "message": format!(
            "the driver wrote an event of {bytes} bytes; events are limited to {MAX_EVENT_BYTES} bytes (split it, or keep large data out of events)"
        ),
    })
}

/// Whether a batch of `events` events and `bytes` bytes must be appended
/// before another event of `next_bytes` joins it.
pub fn batch_full(events: usize, bytes: usize, next_bytes: usize) -> bool {
    events > 0 && (events >= MAX_BATCH_EVENTS || bytes + next_bytes > MAX_BATCH_BYTES)
}

/// Driver failures in a row before a monitor fails.
pub const MAX_FAILURES: u32 = 5;

/// Restart backoff: doubles from 100 ms up to 30 s, and starts over after a
/// run that made progress (wrote a checkpoint).
#[derive(Debug, Clone)]
pub struct Backoff {
    failures: u32,
    delay: Duration,
}

impl Default for Backoff {
    fn default() -> Self {
        Self {
            failures: 0,
            delay: Self::FIRST,
        }
    }
}

impl Backoff {
    const FIRST: Duration = Duration::from_millis(100);
    const MAX: Duration = Duration::from_secs(30);

    /// Records a failed run; the delay before the next one, or `None` once
    /// [`MAX_FAILURES`] in a row are reached.
    pub fn failed(&mut self, made_progress: bool) -> Option<Duration> {
        if made_progress {
            self.failures = 0;
            self.delay = Self::FIRST;
        }
        self.failures += 1;
        if self.failures >= MAX_FAILURES {
            return None;
        }
        let delay = self.delay;
        self.delay = (self.delay * 2).min(Self::MAX);
        Some(delay)
    }

    pub fn failures(&self) -> u32 {
        self.failures
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use zerofoot_shared::protocol::{AttemptOutcome, NewOperation};

    fn op(kind: OperationKind, retries: u32) -> ExecutionContext {
        ExecutionContext::new(NewOperation {
            module: "m".into(),
            version: "1.0.0".into(),
            digest: "sha256:00".into(),
            operation: "o".into(),
            kind,
            resource: None,
            zone: "default".into(),
            params: serde_json::json!({}),
            timeout_ms: 1000,
            retries,
            client: None,
        })
    }

    fn run(d: Decision) -> ExecutionContext {
        match d {
            Decision::Run(ctx) => *ctx,
            other => panic!("expected Run, got {other:?}"),
        }
    }

    #[test]
    fn a_submitted_sync_operation_is_taken_once() {
        let ctx = run(decide(op(OperationKind::Sync, 0), &Why::Submitted, "a"));
        assert_eq!(ctx.owner.as_deref(), Some("a"));
        assert_eq!(ctx.state, OperationState::Running);
        assert!(matches!(
            decide(ctx, &Why::Submitted, "b"),
            Decision::Refuse(_)
        ));
        assert!(matches!(
            decide(op(OperationKind::Async, 0), &Why::Submitted, "a"),
            Decision::Refuse(_)
        ));
    }

    #[test]
    fn only_the_owner_judged_lost_is_replaced() {
        let taken = run(decide(op(OperationKind::Sync, 1), &Why::Pending, "a"));
        assert!(matches!(
            decide(taken.clone(), &Why::LostOwner("b".into()), "c"),
            Decision::Refuse(_)
        ));
        let retaken = run(decide(taken, &Why::LostOwner("a".into()), "c"));
        assert_eq!(retaken.owner.as_deref(), Some("c"));
        assert_eq!(retaken.attempts[0].outcome, AttemptOutcome::Lost);
        // No retries left: closed as failed, not run.
        match decide(retaken, &Why::LostOwner("c".into()), "d") {
            Decision::Close(ctx) => assert_eq!(ctx.state, OperationState::Failed),
            other => panic!("expected Close, got {other:?}"),
        }
    }

    #[test]
    fn a_cancel_asked_before_the_take_is_honoured_by_the_next_owner() {
        let mut ctx = run(decide(
            op(OperationKind::Async, 0),
            &Why::Lead { term: 1 },
            "a",
        ));
        ctx.request_cancel();
        match decide(ctx.clone(), &Why::Lead { term: 2 }, "b") {
            Decision::Close(closed) => assert_eq!(closed.state, OperationState::Cancelled),
            other => panic!("expected Close, got {other:?}"),
        }
        let mut sync = run(decide(op(OperationKind::Sync, 3), &Why::Submitted, "a"));
        sync.request_cancel();
        match decide(sync, &Why::LostOwner("a".into()), "b") {
            Decision::Close(closed) => assert_eq!(closed.state, OperationState::Cancelled),
            other => panic!("expected Close, got {other:?}"),
        }
    }

    #[test]
    fn a_lead_takes_monitors_of_older_terms_but_not_newer() {
        let mine = run(decide(
            op(OperationKind::Async, 0),
            &Why::Lead { term: 3 },
            "a",
        ));
        assert_eq!(mine.epoch, 3);
        assert!(matches!(
            decide(mine.clone(), &Why::Lead { term: 2 }, "b"),
            Decision::Refuse(_)
        ));
        let next = run(decide(mine.clone(), &Why::Lead { term: 4 }, "b"));
        assert_eq!((next.owner.as_deref(), next.epoch), (Some("b"), 4));
        assert_eq!(next.attempts[0].outcome, AttemptOutcome::Lost);
        // The same node at the same term after a restart: a new attempt.
        let again = run(decide(mine, &Why::Lead { term: 3 }, "a"));
        assert_eq!(again.attempts.len(), 2);
    }

    #[test]
    fn a_run_stops_when_its_context_says_cancel_or_another_owner() {
        let mine = run(decide(
            op(OperationKind::Async, 0),
            &Why::Lead { term: 2 },
            "a",
        ));
        let n = mine.attempts.len();
        assert_eq!(on_change(&mine, "a", 2, n), None, "our own take");
        let mut older = mine.clone();
        older.attempts.clear();
        older.owner = None;
        assert_eq!(
            on_change(&older, "a", 2, n),
            None,
            "a change older than our take"
        );
        let mut cancelling = mine.clone();
        cancelling.request_cancel();
        assert_eq!(on_change(&cancelling, "a", 2, n), Some(StopWhy::Cancel));
        let theirs = run(decide(mine.clone(), &Why::Lead { term: 3 }, "b"));
        assert_eq!(on_change(&theirs, "a", 2, n), Some(StopWhy::Lost));
        let mut done = mine;
        done.complete(None);
        assert_eq!(
            on_change(&done, "a", 2, n),
            Some(StopWhy::Lost),
            "finished: stop"
        );
    }

    #[test]
    fn keyed_events_after_a_checkpoint_are_applied_once() {
        let mut seq = Sequencer::resume(10, HashSet::from(["k1".to_string()]));
        assert_eq!(seq.next(Some("k1")), None, "already in the log");
        assert_eq!(seq.next(Some("k2")), Some(11));
        assert_eq!(seq.next(Some("k2")), None);
        assert_eq!(seq.next(None), Some(12));
        assert_eq!(seq.next(None), Some(13), "unkeyed events always count");
        seq.checkpointed();
        assert_eq!(
            seq.next(Some("k2")),
            Some(14),
            "a key may recur after a checkpoint"
        );
        assert_eq!(seq.last_seq(), 14);
    }

    #[test]
    fn batches_are_bounded_in_events_and_bytes() {
        assert!(
            !batch_full(0, 0, MAX_BATCH_BYTES * 2),
            "an empty batch takes any event"
        );
        assert!(!batch_full(10, 1000, 1000));
        assert!(batch_full(MAX_BATCH_EVENTS, 10, 10));
        assert!(batch_full(3, MAX_BATCH_BYTES - 10, 11));
        let text = oversized_event(2_000_000).to_string();
        assert!(text.contains("2000000") && text.contains("event_too_large"));
    }

    #[test]
    fn backoff_doubles_and_gives_up_after_five_failures_in_a_row() {
        let mut b = Backoff::default();
        assert_eq!(b.failed(false), Some(Duration::from_millis(100)));
        assert_eq!(b.failed(false), Some(Duration::from_millis(200)));
        assert_eq!(
            b.failed(true),
            Some(Duration::from_millis(100)),
            "progress resets"
        );
        assert_eq!(b.failed(false), Some(Duration::from_millis(200)));
        assert_eq!(b.failed(false), Some(Duration::from_millis(400)));
        assert_eq!(b.failed(false), Some(Duration::from_millis(800)));
        assert_eq!(b.failed(false), None);
        assert_eq!(b.failures(), MAX_FAILURES);
    }
}
