//! Handing a new sync operation to a node of its zone (`op.submit`, one
//! queue group per zone): the node records it as its own before it answers,
//! one KV write before the driver starts. Management submits this way, and
//! so does the lead running a batch for each child.

use std::time::Duration;

use async_nats::client::RequestErrorKind;

use crate::context_store::{ContextStore, ContextStoreError};
use crate::names::Names;
use crate::protocol::{
    encode, ExecutionContext, Reply, SubmitAccepted, SubmitOperation, PROTOCOL_VERSION,
};

/// Pauses between submissions that found no node at all (about 1.5 s in all).
const NO_NODE_RETRIES: [Duration; 5] = [
    Duration::from_millis(50),
    Duration::from_millis(100),
    Duration::from_millis(200),
    Duration::from_millis(400),
    Duration::from_millis(800),
];
/// How long a node has to accept a submission.
const SUBMIT_TIMEOUT: Duration = Duration::from_secs(5);

/// Where a handed-over operation stands.
#[derive(Debug, PartialEq, Eq)]
pub enum Handed {
    /// A node recorded it and runs it.
    Taken { node: String },
    /// Recorded, but no node confirmed taking it: here as `pending` (the
    /// zone's sweepers take it), or earlier (a repeated hand-over of the
    /// same id), in whatever state it is in now.
    Recorded,
    /// No node of its zone was running: it was recorded `failed`, saying so.
    NoNode,
}

/// Hands `ctx` (new, `pending`, not yet in KV) to a node of its zone. When
/// this returns `Ok`, the operation is recorded: by a node, here as
/// `pending`, or here as failed when its zone has no node at all.
pub async fn hand_over(
    client: &async_nats::Client,
    names: &Names,
    store: &ContextStore,
    ctx: &ExecutionContext,
) -> Result<Handed, ContextStoreError> {
    let request = SubmitOperation {
        v: PROTOCOL_VERSION,
        op: ctx.id,
        context: Box::new(ctx.clone()),
    };
    let payload = encode(&request);
    // No responders while a node restarts: give the queue group a moment.
    let mut answer = None;
    for pause in NO_NODE_RETRIES {
        let attempt = tokio::time::timeout(
            SUBMIT_TIMEOUT,
            client.request(names.op_submit(&ctx.zone), payload.clone()),
        )
        .await;
        let no_node = matches!(&attempt, Ok(Err(e)) if e.kind() == RequestErrorKind::NoResponders);
        answer = Some(attempt);
        if !no_node {
            break;
        }
        tokio::time::sleep(pause).await;
    }
    match answer {
        Some(Ok(Ok(message))) => {
            match serde_json::from_slice::<Reply<SubmitAccepted>>(&message.payload) {
                Ok(Reply::Ok(accepted)) => {
                    tracing::debug!(op = %ctx.id, node = %accepted.node, "taken");
                    return Ok(Handed::Taken {
                        node: accepted.node,
                    });
                }
                Ok(Reply::Error(e)) => {
                    tracing::warn!(op = %ctx.id, error = %e, "the node refused the submission")
                }
                Err(e) => {
                    tracing::warn!(op = %ctx.id, error = %e, "unreadable answer to a submission")
                }
            }
        }
        Some(Ok(Err(e))) if e.kind() == RequestErrorKind::NoResponders => {
            let mut failed = ctx.clone();
            failed.fail(format!(
                "no agent node of zone {} was running to take the operation",
                ctx.zone
            ));
            return match store.create(&failed).await {
                Ok(_) => Ok(Handed::NoNode),
                // A node recorded it after all.
                Err(e) if e.is_conflict() => Ok(Handed::Recorded),
                Err(e) => Err(e),
            };
        }
        Some(Ok(Err(e))) => tracing::warn!(op = %ctx.id, error = %e, "submission not confirmed"),
        Some(Err(_)) | None => tracing::warn!(op = %ctx.id, "submission not confirmed in time"),
    }
    // Unless a node recorded it meanwhile, record it as pending: the nodes'
    // sweepers take pending operations that nobody took.
    match store.create(ctx).await {
        Ok(_) => {
            tracing::info!(op = %ctx.id, "recorded as pending; a node will sweep it up");
            Ok(Handed::Recorded)
        }
        Err(e) if e.is_conflict() => Ok(Handed::Recorded),
        Err(e) => Err(e),
    }
}
