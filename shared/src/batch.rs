//! Batches: one operation over many resources. A batch is an execution
//! context of its own (its [`BatchPlan`] says what to run where); its
//! children are ordinary contexts whose ids follow from the batch's id and
//! the target's index ([`child_id`]), so whoever starts or cancels a child
//! (the zone lead running the batch, a new lead after a failover, a
//! management instance) names the same one, and creating it twice fails.
//!
//! The batch's progress is its checkpoint ([`BatchCheckpoint`]): how many
//! targets have been started, written through the lead's owner guard before
//! they start, so it lives in NATS and never runs ahead of what a failover
//! can see.

use serde::{Deserialize, Serialize};
use serde_json::Value;
use utoipa::ToSchema;
use uuid::Uuid;

use crate::context_store::{ContextStore, ContextStoreError};
use crate::protocol::{ExecutionContext, NewOperation, OperationKind, OperationState};

/// The most targets one batch may name.
pub const MAX_TARGETS: usize = 10_000;
/// The most children of a batch that may run at once.
pub const MAX_PARALLEL: u32 = 1_000;
/// `max_parallel` when the request leaves it out.
pub const DEFAULT_MAX_PARALLEL: u32 = 10;

/// One resource a batch runs its operation on.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq, ToSchema)]
pub struct Target {
    pub resource: String,
    /// The resource's zone when the batch was submitted: its nodes run the child.
    pub zone: String,
}

/// What a batch runs, over which targets, and how.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, ToSchema)]
pub struct BatchPlan {
    /// In the order they are started.
    pub targets: Vec<Target>,
    /// How many children may be unfinished at once.
    pub max_parallel: u32,
    pub fail_policy: FailPolicy,
    /// The selector the targets were picked by, when they were.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schema(nullable = false)]
    pub selector: Option<String>,
    /// Whether each child is a sync operation or a monitor (the module
    /// operation's kind; the batch itself is run by a zone lead).
    pub child_kind: OperationKind,
}

/// What a batch does when children fail.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, ToSchema)]
#[serde(untagged)]
pub enum FailPolicy {
    /// `"continue"`: start every target whatever fails; `"stop"`: start
    /// nothing more after the first failure.
    Named(NamedPolicy),
    /// Start nothing more once this many children failed.
    StopAfter { stop_after: u32 },
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum NamedPolicy {
    Continue,
    Stop,
}

impl Default for FailPolicy {
    fn default() -> Self {
        Self::Named(NamedPolicy::Continue)
    }
}

impl FailPolicy {
    /// After how many failures nothing more is started (`None`: never stop).
    pub fn stop_after(self) -> Option<u32> {
        match self {
            Self::Named(NamedPolicy::Continue) => None,
            Self::Named(NamedPolicy::Stop) => Some(1),
            Self::StopAfter { stop_after } => Some(stop_after),
        }
    }

    fn from_value(value: &Value) -> Result<Self, String> {
        const USE: &str = "use \"continue\", \"stop\" or {\"stop_after\": N} with N ≥ 1";
        match value {
            Value::String(s) if s == "continue" => Ok(Self::Named(NamedPolicy::Continue)),
            Value::String(s) if s == "stop" => Ok(Self::Named(NamedPolicy::Stop)),
            Value::Object(map) if map.len() == 1 => match map.get("stop_after") {
                Some(n) => match n.as_u64().and_then(|n| u32::try_from(n).ok()) {
                    Some(n) if n >= 1 => Ok(Self::StopAfter { stop_after: n }),
                    _ => Err(format!("fail_policy.stop_after is {n}: {USE}")),
                },
                None => Err(format!("fail_policy {value} is not a policy: {USE}")),
            },
            other => Err(format!("fail_policy {other} is not a policy: {USE}")),
        }
    }
}

impl<'de> Deserialize<'de> for FailPolicy {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let value = Value::deserialize(d)?;
        Self::from_value(&value).map_err(serde::de::Error::custom)
    }
}

/// A batch's checkpoint: targets `0..launched` have been started.
#[derive(Clone, Copy, Debug, Default, Serialize, Deserialize, PartialEq, Eq)]
pub struct BatchCheckpoint {
    pub launched: u32,
}

impl BatchCheckpoint {
    pub fn of(batch: &ExecutionContext) -> Self {
        batch
            .checkpoint
            .as_ref()
            .and_then(|c| serde_json::from_value(c.clone()).ok())
            .unwrap_or_default()
    }

    pub fn to_value(self) -> Value {
        serde_json::json!({ "launched": self.launched })
    }
}

/// The id of a batch's child for target `index`: the same wherever it is
/// computed, and never another operation's.
pub fn child_id(batch: Uuid, index: u32) -> Uuid {
    Uuid::new_v5(&batch, format!("target-{index}").as_bytes())
}

/// The new context of the child for target `index`, `pending`; `None` when
/// `batch` is not a batch or has no such target.
pub fn child_context(batch: &ExecutionContext, index: u32) -> Option<ExecutionContext> {
    let plan = batch.batch.as_ref()?;
    let target = plan.targets.get(index as usize)?;
    let mut child = ExecutionContext::new(NewOperation {
        module: batch.module.clone(),
        version: batch.version.clone(),
        digest: batch.digest.clone(),
        operation: batch.operation.clone(),
        kind: plan.child_kind,
        resource: Some(target.resource.clone()),
        zone: target.zone.clone(),
        params: batch.params.clone(),
        timeout_ms: batch.timeout_ms,
        retries: batch.retries,
        client: batch.client.clone(),
    });
    child.id = child_id(batch.id, index);
    child.parent = Some(batch.id);
    Some(child)
}

/// How many of a batch's targets stand where.
#[derive(Clone, Copy, Debug, Default, Serialize, Deserialize, PartialEq, Eq, ToSchema)]
pub struct BatchCounts {
    /// Not started (yet, or ever: after a stop or a cancel).
    pub not_started: u32,
    pub pending: u32,
    pub running: u32,
    pub cancelling: u32,
    pub complete: u32,
    pub failed: u32,
    pub cancelled: u32,
}

impl BatchCounts {
    pub fn add(&mut self, state: Option<OperationState>) {
        let count = match state {
            None => &mut self.not_started,
            Some(OperationState::Pending) => &mut self.pending,
            Some(OperationState::Running) => &mut self.running,
            Some(OperationState::Cancelling) => &mut self.cancelling,
            Some(OperationState::Complete) => &mut self.complete,
            Some(OperationState::Failed) => &mut self.failed,
            Some(OperationState::Cancelled) => &mut self.cancelled,
        };
        *count += 1;
    }

    pub fn of<I: IntoIterator<Item = Option<OperationState>>>(states: I) -> Self {
        let mut counts = Self::default();
        for state in states {
            counts.add(state);
        }
        counts
    }
}

/// What the batch owner does next, decided from the children's states
/// (`states[i]` for target `i`; `None` for one not started or not seen yet).
#[derive(Debug, PartialEq, Eq)]
pub enum Step {
    /// Start targets `from..to`.
    Launch { from: u32, to: u32 },
    /// Wait for children to change.
    Wait,
    /// Every started child is finished and nothing more will start.
    Done(Summary),
}

/// How a batch ended.
#[derive(Debug, PartialEq, Eq, Serialize)]
pub struct Summary {
    pub counts: BatchCounts,
    /// Whether the fail policy stopped it.
    pub stopped: bool,
}

impl Summary {
    /// `Ok(result)` for a batch whose every target completed, else `Err`
    /// with the error to record.
    pub fn outcome(&self) -> Result<Value, String> {
        let c = &self.counts;
        let total = c.not_started
            + c.pending
            + c.running
            + c.cancelling
            + c.complete
            + c.failed
            + c.cancelled;
        if c.complete == total {
            return Ok(serde_json::json!({ "counts": c }));
        }
        let mut error = format!("{} of {total} targets failed", c.failed);
        if c.cancelled > 0 {
            error.push_str(&format!(", {} cancelled", c.cancelled));
        }
        if self.stopped {
            error.push_str(&format!(
                "; the fail policy stopped the batch, {} targets not started",
                c.not_started
            ));
        }
        Err(error)
    }
}

/// The next step of a batch that started `launched` targets, whose
/// children stand at `states` (one per target).
pub fn next_step(plan: &BatchPlan, launched: u32, states: &[Option<OperationState>]) -> Step {
    let total = plan.targets.len() as u32;
    let started = &states[..launched as usize];
    let failed = started
        .iter()
        .filter(|s| **s == Some(OperationState::Failed))
        .count() as u32;
    // A child started but not seen yet counts as running: never more than
    // `max_parallel` at once, even while the mirror catches up.
    let unfinished = started
        .iter()
        .filter(|s| !s.is_some_and(OperationState::is_terminal))
        .count() as u32;
    let stopped = plan.fail_policy.stop_after().is_some_and(|n| failed >= n);
    if !stopped && launched < total && unfinished < plan.max_parallel {
        let to = (launched + plan.max_parallel - unfinished).min(total);
        return Step::Launch { from: launched, to };
    }
    if unfinished > 0 || (!stopped && launched < total) {
        return Step::Wait;
    }
    Step::Done(Summary {
        counts: BatchCounts::of(states.iter().copied()),
        stopped: stopped && launched < total,
    })
}

/// Cancels the children of targets `0..launched` that have not finished: one
/// not created yet is created `cancelled` (so it never starts), a running
/// one turns `cancelling` for its owner to stop. Returns the children that
/// turned `cancelling`, whose owners may be told at once.
pub async fn cancel_children(
    store: &ContextStore,
    batch: &ExecutionContext,
    launched: u32,
) -> Result<Vec<ExecutionContext>, ContextStoreError> {
    let mut cancelling = Vec::new();
    for index in 0..launched {
        let Some(mut child) = child_context(batch, index) else {
            break;
        };
        child.cancel();
        match store.create(&child).await {
            Ok(_) => continue,
            Err(e) if e.is_conflict() => {}
            Err(e) => return Err(e),
        }
        let mut tries = 0;
        loop {
            let Some(stored) = store.load(child.id).await? else {
                break;
            };
            let mut ctx = stored.ctx;
            if ctx.state.is_terminal() || ctx.state == OperationState::Cancelling {
                break;
            }
            ctx.request_cancel();
            match store.cas(&ctx, stored.revision).await {
                Ok(_) => {
                    if ctx.state == OperationState::Cancelling {
                        cancelling.push(ctx);
                    }
                    break;
                }
                // The child kept changing (its owner writing): say so
                // rather than leave it running unnoticed.
                Err(e) if e.is_conflict() && tries < 5 => tries += 1,
                Err(e) => return Err(e),
            }
        }
    }
    Ok(cancelling)
}

#[cfg(test)]
mod tests {
    use super::*;
    use OperationState::*;

    fn plan(targets: usize, max_parallel: u32, fail_policy: FailPolicy) -> BatchPlan {
        BatchPlan {
            targets: (0..targets)
                .map(|i| Target {
                    resource: format!("r{i}"),
                    zone: "default".into(),
                })
                .collect(),
            max_parallel,
            fail_policy,
            selector: None,
            child_kind: OperationKind::Sync,
        }
    }

    #[test]
    fn launches_up_to_max_parallel_and_counts_unseen_children_as_running() {
        let p = plan(10, 3, FailPolicy::default());
        let mut states = vec![None; 10];
        assert_eq!(next_step(&p, 0, &states), Step::Launch { from: 0, to: 3 });
        // Started, not seen yet: no more.
        assert_eq!(next_step(&p, 3, &states), Step::Wait);
        states[0] = Some(Complete);
        states[1] = Some(Running);
        assert_eq!(next_step(&p, 3, &states), Step::Launch { from: 3, to: 4 });
    }

    #[test]
    fn stop_launches_nothing_after_the_first_failure() {
        let p = plan(5, 2, FailPolicy::Named(NamedPolicy::Stop));
        let mut states = vec![None; 5];
        states[0] = Some(Failed);
        states[1] = Some(Running);
        assert_eq!(next_step(&p, 2, &states), Step::Wait);
        states[1] = Some(Complete);
        let Step::Done(summary) = next_step(&p, 2, &states) else {
            panic!("a stopped batch with nothing running is done");
        };
        assert!(summary.stopped);
        assert_eq!(summary.counts.not_started, 3);
        let error = summary.outcome().expect_err("a failure fails the batch");
        assert!(error.contains("1 of 5 targets failed"), "{error}");
        assert!(error.contains("3 targets not started"), "{error}");
    }

    #[test]
    fn stop_after_n_and_continue() {
        let p = plan(4, 4, FailPolicy::StopAfter { stop_after: 2 });
        let states = vec![Some(Failed), Some(Complete), None, None];
        assert_eq!(next_step(&p, 2, &states), Step::Launch { from: 2, to: 4 });
        let p = plan(2, 1, FailPolicy::default());
        let states = vec![Some(Failed), Some(Complete)];
        let Step::Done(summary) = next_step(&p, 2, &states) else {
            panic!("all finished");
        };
        assert!(!summary.stopped);
        assert_eq!(summary.counts.failed, 1);
        let p = plan(2, 1, FailPolicy::default());
        let Step::Done(summary) = next_step(&p, 2, &[Some(Complete), Some(Complete)]) else {
            panic!("all finished");
        };
        assert_eq!(
            summary.outcome(),
            Ok(serde_json::json!({"counts": summary.counts}))
        );
    }

    #[test]
    fn policies_parse_with_clear_errors() {
        let parse = |v: Value| serde_json::from_value::<FailPolicy>(v).map_err(|e| e.to_string());
        assert_eq!(
            parse("stop".into()).map(FailPolicy::stop_after),
            Ok(Some(1))
        );
        assert_eq!(
            parse("continue".into()).map(FailPolicy::stop_after),
            Ok(None)
        );
        assert_eq!(
            parse(serde_json::json!({"stop_after": 3})).map(FailPolicy::stop_after),
            Ok(Some(3))
        );
        let bad = parse(serde_json::json!({"stop_after": 0})).unwrap_err();
        assert!(bad.contains("stop_after is 0"), "{bad}");
        assert!(parse("halt".into()).unwrap_err().contains("\"halt\""));
        assert_eq!(
            serde_json::to_value(FailPolicy::StopAfter { stop_after: 2 }).ok(),
            Some(serde_json::json!({"stop_after": 2}))
        );
    }

    #[test]
    fn child_ids_are_stable_and_distinct() {
        let batch = Uuid::new_v4();
        assert_eq!(child_id(batch, 3), child_id(batch, 3));
        assert_ne!(child_id(batch, 3), child_id(batch, 4));
        assert_ne!(child_id(batch, 3), child_id(Uuid::new_v4(), 3));
    }
}
