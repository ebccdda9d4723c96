//! The execution context (SPEC §5): one entry of the execution context state
//! table per operation, with the pure state transitions owners apply before
//! writing it back with compare-and-set.

use serde::{Deserialize, Serialize};
use serde_json::Value;
use time::OffsetDateTime;
use utoipa::ToSchema;
use uuid::Uuid;

use super::{v1, OperationKind};

/// Where an operation stands; `complete`, `failed` and `cancelled` are final.
#[derive(Clone, Copy, Debug, Serialize, Deserialize, PartialEq, Eq, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum OperationState {
    Pending,
    Running,
    /// A cancel was asked for and acknowledged; whichever node owns the
    /// operation next stops its driver and writes `cancelled`.
    Cancelling,
    Complete,
    Failed,
    Cancelled,
}

impl OperationState {
    pub fn is_terminal(self) -> bool {
        matches!(self, Self::Complete | Self::Failed | Self::Cancelled)
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Self::Pending => "pending",
            Self::Running => "running",
            Self::Cancelling => "cancelling",
            Self::Complete => "complete",
            Self::Failed => "failed",
            Self::Cancelled => "cancelled",
        }
    }
}

impl std::str::FromStr for OperationState {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Ok(match s {
            "pending" => Self::Pending,
            "running" => Self::Running,
            "cancelling" => Self::Cancelling,
            "complete" => Self::Complete,
            "failed" => Self::Failed,
            "cancelled" => Self::Cancelled,
            other => {
                return Err(format!(
                    "unknown state {other:?}: use pending, running, cancelling, complete, failed or cancelled"
                ))
            }
        })
    }
}

/// How one attempt ended (`running` while it runs).
#[derive(Clone, Copy, Debug, Serialize, Deserialize, PartialEq, Eq, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum AttemptOutcome {
    Running,
    Complete,
    Failed,
    /// The owner died or was replaced before it finished.
    Lost,
    Cancelled,
}

/// One try at running the operation, on one node.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, ToSchema)]
pub struct Attempt {
    pub node: String,
    pub epoch: u64,
    pub outcome: AttemptOutcome,
    #[serde(with = "time::serde::rfc3339")]
    pub started_at: OffsetDateTime,
}

/// Where in the event log a checkpoint stands.
#[derive(Clone, Copy, Debug, Serialize, Deserialize, PartialEq, Eq, ToSchema)]
pub struct CheckpointPosition {
    pub seq: u64,
    pub log_position: u64,
}

/// The execution context of one operation: what it runs, who owns it,
/// its attempts and, once final, its result or error. (`Option` fields the
/// API always writes are marked required: they are `null`, never missing.)
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, ToSchema)]
pub struct ExecutionContext {
    #[serde(default = "v1")]
    #[schema(required = true)]
    pub v: u32,
    pub id: Uuid,
    pub module: String,
    pub version: String,
    pub digest: String,
    pub operation: String,
    pub kind: OperationKind,
    #[schema(required = true)]
    pub resource: Option<String>,
    /// The zone whose nodes may run it: its resource's, else `default`.
    #[serde(default = "crate::names::default_zone")]
    pub zone: String,
    pub params: Value,
    pub state: OperationState,
    #[schema(required = true)]
    pub checkpoint: Option<Value>,
    #[schema(required = true)]
    pub checkpoint_at: Option<CheckpointPosition>,
    #[schema(required = true)]
    pub owner: Option<String>,
    pub epoch: u64,
    pub attempts: Vec<Attempt>,
    /// How long one attempt of a sync operation may run.
    pub timeout_ms: u64,
    /// How many more attempts a sync operation gets after losing its node.
    pub retries: u32,
    #[schema(required = true)]
    pub result: Option<Value>,
    #[schema(required = true)]
    pub error: Option<String>,
    /// Who submitted it: the API client's label (role and a digest of its
    /// token, never the token), counted against its limit of unfinished operations.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schema(nullable = false)]
    pub client: Option<String>,
    /// The batch this operation is one target of.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schema(nullable = false)]
    pub parent: Option<Uuid>,
    /// Set on a batch: its targets and how they are run. A batch runs on its
    /// zone's lead, which starts the children (`checkpoint.launched` says
    /// how many so far).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schema(nullable = false)]
    pub batch: Option<crate::batch::BatchPlan>,
    #[serde(with = "time::serde::rfc3339")]
    pub created_at: OffsetDateTime,
    #[serde(with = "time::serde::rfc3339")]
    pub updated_at: OffsetDateTime,
}

/// What a new operation is made of; the rest of the context starts empty.
pub struct NewOperation {
    pub module: String,
    pub version: String,
    pub digest: String,
    pub operation: String,
    pub kind: OperationKind,
    pub resource: Option<String>,
    pub zone: String,
    pub params: Value,
    pub timeout_ms: u64,
    pub retries: u32,
    pub client: Option<String>,
}

impl ExecutionContext {
    pub fn new(op: NewOperation) -> Self {
        let now = crate::time::now();
        Self {
            v: v1(),
            id: Uuid::new_v4(),
            module: op.module,
            version: op.version,
            digest: op.digest,
            operation: op.operation,
            kind: op.kind,
            resource: op.resource,
            zone: op.zone,
            params: op.params,
            state: OperationState::Pending,
            checkpoint: None,
            checkpoint_at: None,
            owner: None,
            epoch: 0,
            attempts: Vec::new(),
            timeout_ms: op.timeout_ms,
            retries: op.retries,
            result: None,
            error: None,
            client: op.client,
            parent: None,
            batch: None,
            created_at: now,
            updated_at: now,
        }
    }

    /// `node` takes the operation at `epoch`: it becomes the owner and a new
    /// attempt is listed.
    pub fn take(&mut self, node: &str, epoch: u64) {
        let now = crate::time::now();
        self.state = OperationState::Running;
        self.owner = Some(node.to_string());
        self.epoch = epoch;
        self.attempts.push(Attempt {
            node: node.to_string(),
            epoch,
            outcome: AttemptOutcome::Running,
            started_at: now,
        });
        self.updated_at = now;
    }

    fn close_attempt(&mut self, outcome: AttemptOutcome) {
        if let Some(last) = self.attempts.last_mut() {
            if last.outcome == AttemptOutcome::Running {
                last.outcome = outcome;
            }
        }
        self.updated_at = crate::time::now();
    }

    pub fn complete(&mut self, result: Option<Value>) {
        self.close_attempt(AttemptOutcome::Complete);
        self.state = OperationState::Complete;
        self.result = result;
        self.error = None;
    }

    pub fn fail(&mut self, error: String) {
        self.close_attempt(AttemptOutcome::Failed);
        self.state = OperationState::Failed;
        self.error = Some(error);
    }

    pub fn cancel(&mut self) {
        self.close_attempt(AttemptOutcome::Cancelled);
        self.state = OperationState::Cancelled;
    }

    /// Records a cancel request: a pending operation is cancelled at once,
    /// a running one turns `cancelling` and its owner (this one, or the next
    /// after a failover) stops the driver and writes `cancelled`.
    pub fn request_cancel(&mut self) {
        match self.state {
            OperationState::Running => {
                self.state = OperationState::Cancelling;
                self.updated_at = crate::time::now();
            }
            state if state.is_terminal() => {}
            _ => self.cancel(),
        }
    }

    /// The owner is gone. A sync operation with retries left is pending again;
    /// one without fails, saying so.
    pub fn owner_lost(&mut self) {
        self.close_attempt(AttemptOutcome::Lost);
        self.owner = None;
        if self.state == OperationState::Cancelling {
            self.state = OperationState::Cancelled;
            return;
        }
        let lost = self
            .attempts
            .iter()
            .filter(|a| a.outcome == AttemptOutcome::Lost)
            .count() as u32;
        if self.kind == OperationKind::Async || lost <= self.retries {
            self.state = OperationState::Pending;
        } else {
            self.state = OperationState::Failed;
            self.error = Some(format!(
                "the node running this operation was lost {lost} time(s); no retries left (retries = {})",
                self.retries
            ));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sync_op(retries: u32) -> ExecutionContext {
        ExecutionContext::new(NewOperation {
            module: "shell".into(),
            version: "1.0.0".into(),
            digest: "sha256:00".into(),
            operation: "run".into(),
            kind: OperationKind::Sync,
            resource: None,
            zone: "default".into(),
            params: serde_json::json!({}),
            timeout_ms: 1000,
            retries,
            client: None,
        })
    }

    #[test]
    fn a_lost_sync_operation_is_retried_then_fails() {
        let mut ctx = sync_op(1);
        ctx.take("a", 0);
        ctx.owner_lost();
        assert_eq!(ctx.state, OperationState::Pending);
        assert_eq!(ctx.owner, None);
        ctx.take("b", 0);
        ctx.owner_lost();
        assert_eq!(ctx.state, OperationState::Failed);
        assert!(ctx
            .error
            .as_deref()
            .unwrap_or("")
            .contains("lost 2 time(s)"));
        let outcomes: Vec<_> = ctx
            .attempts
            .iter()
            .map(|a| (a.node.as_str(), a.outcome))
            .collect();
        assert_eq!(
            outcomes,
            [("a", AttemptOutcome::Lost), ("b", AttemptOutcome::Lost)]
        );
    }

    #[test]
    fn completion_closes_the_running_attempt() {
        let mut ctx = sync_op(1);
        ctx.take("a", 0);
        ctx.owner_lost();
        ctx.take("b", 0);
        ctx.complete(Some(serde_json::json!(7)));
        assert_eq!(ctx.state, OperationState::Complete);
        assert_eq!(ctx.attempts[1].outcome, AttemptOutcome::Complete);
        assert_eq!(ctx.attempts[0].outcome, AttemptOutcome::Lost);
    }

    #[test]
    fn a_cancel_request_survives_the_owner() {
        let mut ctx = sync_op(3);
        ctx.request_cancel();
        assert_eq!(ctx.state, OperationState::Cancelled, "pending: at once");
        let mut ctx = sync_op(3);
        ctx.take("a", 0);
        ctx.request_cancel();
        assert_eq!(ctx.state, OperationState::Cancelling);
        assert_eq!(ctx.owner.as_deref(), Some("a"), "the owner stops it");
        ctx.owner_lost();
        assert_eq!(ctx.state, OperationState::Cancelled, "never retried");
        assert_eq!(ctx.attempts[0].outcome, AttemptOutcome::Lost);
    }

    #[test]
    fn states_parse_from_query_words() {
        assert_eq!("running".parse(), Ok(OperationState::Running));
        assert!("done".parse::<OperationState>().is_err());
    }
}
