//! Handing a new sync operation to a node of its zone (`op.submit`, one
//! queue group per zone): the node records it as its own before it answers,
//! one KV write before the driver starts. Management submits this way, and
//! so does the lead running a batch for each child.
//!
//! An operation on a resource goes first to the resource's preferred node
//! among the zone's live nodes (rendezvous hashing, [`preferred_node`]), so
//! that what a node keeps for a resource (an SSH master connection) serves
//! its next operations too. Should that node not take it, the zone's queue
//! group does: the preference saves work, it never decides whether an
//! operation runs.

use std::time::Duration;

use async_nats::client::RequestErrorKind;
use sha2::{Digest as _, Sha256};

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
/// How long the preferred node has, before the zone's queue group is asked:
/// a node that answers at all takes a submission in one KV write, and one
/// that is paused must not hold the operation up for long.
const PREFERRED_TIMEOUT: Duration = Duration::from_secs(1);

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

/// What one submission request came to.
enum Answer {
    /// A node recorded the operation and runs it.
    Taken(String),
    /// Nobody serves the subject.
    NoResponders,
    /// Refused, unreadable, or not answered in time: why, in words.
    NotTaken(String),
}

/// Asks `subject` to take the operation in `payload`, waiting `within`.
async fn offer(
    client: &async_nats::Client,
    subject: String,
    payload: &bytes::Bytes,
    within: Duration,
) -> Answer {
    match tokio::time::timeout(within, client.request(subject, payload.clone())).await {
        Ok(Ok(message)) => {
            match serde_json::from_slice::<Reply<SubmitAccepted>>(&message.payload) {
                Ok(Reply::Ok(accepted)) => Answer::Taken(accepted.node),
                Ok(Reply::Error(e)) => Answer::NotTaken(format!("the node refused it: {e}")),
                Err(e) => Answer::NotTaken(format!("unreadable answer: {e}")),
            }
        }
        Ok(Err(e)) if e.kind() == RequestErrorKind::NoResponders => Answer::NoResponders,
        Ok(Err(e)) => Answer::NotTaken(e.to_string()),
        Err(_) => Answer::NotTaken(format!("no answer within {within:?}")),
    }
}

/// The node of `nodes` that operations on `resource` go to first: the one
/// whose hash with the resource is highest. Every submitter that sees the
/// same nodes picks the same one, and a node joining or leaving moves only
/// the resources it wins or held.
pub fn preferred_node<'a>(resource: &str, nodes: &'a [String]) -> Option<&'a str> {
    nodes
        .iter()
        .max_by_key(|node| {
            let digest = Sha256::new()
                .chain_update(resource.as_bytes())
                .chain_update([0])
                .chain_update(node.as_bytes())
                .finalize();
            let mut first = [0u8; 8];
            first.copy_from_slice(&digest[..8]);
            (u64::from_be_bytes(first), node.as_str())
        })
        .map(String::as_str)
}

/// Hands `ctx` (new, `pending`, not yet in KV) to a node of its zone:
/// first to its resource's preferred node of `live_nodes` (the zone's
/// nodes as the caller last heard them), then to the zone's queue group.
/// When this returns `Ok`, the operation is recorded: by a node, here as
/// `pending`, or here as failed when its zone has no node at all.
pub async fn hand_over(
    client: &async_nats::Client,
    names: &Names,
    store: &ContextStore,
    ctx: &ExecutionContext,
    live_nodes: &[String],
) -> Result<Handed, ContextStoreError> {
    let request = SubmitOperation {
        v: PROTOCOL_VERSION,
        op: ctx.id,
        context: Box::new(ctx.clone()),
    };
    let payload = encode(&request);
    let preferred = ctx
        .resource
        .as_deref()
        .and_then(|resource| preferred_node(resource, live_nodes));
    if let Some(node) = preferred {
        // Not taken (refused, no answer, no such node): the queue group
        // decides. A node that recorded it after all makes the next claim
        // a conflict, which ends as `Recorded` below.
        match offer(client, names.node_submit(node), &payload, PREFERRED_TIMEOUT).await {
            Answer::Taken(node) => {
                tracing::debug!(op = %ctx.id, %node, "taken by the resource's preferred node");
                return Ok(Handed::Taken { node });
            }
            Answer::NoResponders => {
                tracing::debug!(op = %ctx.id, node, "the preferred node is gone; the zone's queue group takes it")
            }
            Answer::NotTaken(why) => {
                tracing::debug!(op = %ctx.id, node, why, "the preferred node did not take it; the zone's queue group takes it")
            }
        }
    }
    // No responders while a node restarts: give the queue group a moment.
    let mut answer = Answer::NoResponders;
    for pause in NO_NODE_RETRIES {
        answer = offer(client, names.op_submit(&ctx.zone), &payload, SUBMIT_TIMEOUT).await;
        if !matches!(answer, Answer::NoResponders) {
            break;
        }
        tokio::time::sleep(pause).await;
    }
    match answer {
        Answer::Taken(node) => {
            tracing::debug!(op = %ctx.id, %node, "taken");
            return Ok(Handed::Taken { node });
        }
        Answer::NoResponders => {
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
        Answer::NotTaken(why) => tracing::warn!(op = %ctx.id, why, "submission not confirmed"),
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

#[cfg(test)]
mod tests {
    use super::*;

    fn nodes(n: usize) -> Vec<String> {
        (0..n).map(|i| format!("node-{i}")).collect()
    }

    #[test]
    fn every_submitter_prefers_the_same_node_whatever_order_it_heard_them_in() {
        let forward = nodes(5);
        let mut backward = forward.clone();
        backward.reverse();
        for r in 0..100 {
            let resource = format!("host-{r}");
            assert_eq!(
                preferred_node(&resource, &forward),
                preferred_node(&resource, &backward)
            );
        }
        assert_eq!(preferred_node("host-1", &[]), None);
    }

    #[test]
    fn resources_spread_over_nodes_and_a_leaving_node_moves_only_its_own() {
        let three = nodes(3);
        let two: Vec<String> = three[..2].to_vec();
        let mut per_node = std::collections::HashMap::new();
        for r in 0..3000 {
            let resource = format!("host-{r}");
            let before = preferred_node(&resource, &three).expect("a node");
            *per_node.entry(before.to_string()).or_insert(0) += 1;
            let after = preferred_node(&resource, &two).expect("a node");
            if before != "node-2" {
                assert_eq!(before, after, "{resource} moved although its node stayed");
            }
        }
        for node in &three {
            let count = per_node.get(node).copied().unwrap_or(0);
            assert!(
                (800..1200).contains(&count),
                "{node} is preferred for {count} of 3000 resources: {per_node:?}"
            );
        }
    }
}
