//! The execution context state table (SPEC §5) as typed reads and writes:
//! load with its KV revision, create once, and compare-and-set. Management
//! and nodes go through this one place, so "someone else wrote meanwhile"
//! is a typed answer ([`ContextStoreError::Conflict`]) and never a string to
//! parse.

use async_nats::jetstream::kv;
use uuid::Uuid;

use crate::protocol::{decode, encode, ExecutionContext};

#[derive(Debug, thiserror::Error)]
pub enum ContextStoreError {
    /// The context changed since the revision the writer holds (or exists
    /// already, for a create): another writer won.
    #[error("operation {op} changed meanwhile: another writer has it")]
    Conflict { op: Uuid },
    #[error("the context of {op} is unreadable: {source}")]
    Unreadable {
        op: Uuid,
        #[source]
        source: crate::protocol::DecodeError,
    },
    #[error("cannot reach the contexts bucket for {op}: {message}")]
    Unavailable { op: Uuid, message: String },
}

impl ContextStoreError {
    pub fn is_conflict(&self) -> bool {
        matches!(self, Self::Conflict { .. })
    }
}

/// A context and the KV revision it was read at.
#[derive(Clone, Debug)]
pub struct Stored {
    pub ctx: ExecutionContext,
    pub revision: u64,
}

#[derive(Clone)]
pub struct ContextStore {
    kv: kv::Store,
}

impl ContextStore {
    pub fn new(kv: kv::Store) -> Self {
        Self { kv }
    }

    pub fn bucket(&self) -> &kv::Store {
        &self.kv
    }

    /// The context of `op` as it stands in KV, or `None` if there is none.
    pub async fn load(&self, op: Uuid) -> Result<Option<Stored>, ContextStoreError> {
        let entry =
            self.kv
                .entry(op.to_string())
                .await
                .map_err(|e| ContextStoreError::Unavailable {
                    op,
                    message: e.to_string(),
                })?;
        match entry {
            Some(entry) if entry.operation == kv::Operation::Put => {
                let ctx = decode::<ExecutionContext>(&entry.value)
                    .map_err(|source| ContextStoreError::Unreadable { op, source })?;
                Ok(Some(Stored {
                    ctx,
                    revision: entry.revision,
                }))
            }
            _ => Ok(None),
        }
    }

    /// Records a new context; [`ContextStoreError::Conflict`] if one exists.
    pub async fn create(&self, ctx: &ExecutionContext) -> Result<u64, ContextStoreError> {
        let op = ctx.id;
        self.kv
            .create(op.to_string(), encode(ctx))
            .await
            .map_err(|e| match e.kind() {
                kv::CreateErrorKind::AlreadyExists => ContextStoreError::Conflict { op },
                _ => ContextStoreError::Unavailable {
                    op,
                    message: e.to_string(),
                },
            })
    }

    /// Writes `ctx` if the stored revision is still `revision`; the new revision.
    pub async fn cas(
        &self,
        ctx: &ExecutionContext,
        revision: u64,
    ) -> Result<u64, ContextStoreError> {
        let op = ctx.id;
        self.kv
            .update(op.to_string(), encode(ctx), revision)
            .await
            .map_err(|e| match e.kind() {
                kv::UpdateErrorKind::WrongLastRevision => ContextStoreError::Conflict { op },
                _ => ContextStoreError::Unavailable {
                    op,
                    message: e.to_string(),
                },
            })
    }
}
