//! The execution context state table (SPEC §5) as typed reads and writes:
//! load with its KV revision, create once, and compare-and-set. Management
//! and nodes go through this one place, so "someone else wrote meanwhile"
//! is a typed answer ([`ContextStoreError::Conflict`]) and never a string to
//! parse.

use async_nats::jetstream::kv;
use async_nats::jetstream::stream::LastRawMessageErrorKind;
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

    /// NATS did not answer (a timeout, a stream without a leader for the
    /// moment): the same request may succeed later, and a write may have
    /// landed although no answer came.
    pub fn is_unavailable(&self) -> bool {
        matches!(self, Self::Unavailable { .. })
    }
}

/// A context and the KV revision it was read at.
#[derive(Clone, Debug)]
pub struct Stored {
    pub ctx: ExecutionContext,
    pub revision: u64,
}

/// The header a KV bucket's stream marks deletes and purges with (the KV
/// protocol's own; a put carries none or `PUT`).
const KV_OPERATION: &str = "KV-Operation";
const KV_PUT: &str = "PUT";
/// The header of a marker the server writes itself (a subject's last
/// message aged out or was removed).
const NATS_MARKER_REASON: &str = "Nats-Marker-Reason";

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

    /// The context of `op` as the bucket's stream leader has it, or `None`
    /// if there is none.
    ///
    /// Not a KV get: that is a direct get, which any replica may answer,
    /// one still catching up after a partition too. On the HA deployment
    /// such reads showed an acknowledged operation as gone, or as still
    /// `running` after it had answered complete. The leader is the one
    /// replica that has every acknowledged write; while the servers elect
    /// one, this fails ([`ContextStoreError::Unavailable`]) rather than
    /// answer from the past.
    pub async fn load(&self, op: Uuid) -> Result<Option<Stored>, ContextStoreError> {
        let subject = format!("{}{op}", self.kv.prefix);
        match self
            .kv
            .stream
            .get_last_raw_message_by_subject(&subject)
            .await
        {
            Ok(message) => {
                let headers = &message.headers;
                // A delete or purge, or a marker the server wrote where a
                // message aged out (limit markers are on for this bucket).
                let removed = headers
                    .get(KV_OPERATION)
                    .is_some_and(|operation| operation.as_str() != KV_PUT)
                    || headers.get(NATS_MARKER_REASON).is_some();
                if removed {
                    return Ok(None);
                }
                Ok(Some(Stored {
                    ctx: Self::decode(op, &message.payload)?,
                    revision: message.sequence,
                }))
            }
            Err(e) if e.kind() == LastRawMessageErrorKind::NoMessageFound => Ok(None),
            Err(e) => Err(ContextStoreError::Unavailable {
                op,
                message: e.to_string(),
            }),
        }
    }

    fn decode(op: Uuid, value: &[u8]) -> Result<ExecutionContext, ContextStoreError> {
        decode::<ExecutionContext>(value)
            .map_err(|source| ContextStoreError::Unreadable { op, source })
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
