//! Versioned JSON types that cross NATS. Every top-level message carries
//! `"v": 1` so that the format can evolve; readers refuse versions they do not
//! know rather than guess.

mod context;
mod driver_input;
mod driver_output;
mod heartbeat;
mod manifest;
mod reply;
mod resource;

pub use context::{
    Attempt, AttemptOutcome, CheckpointPosition, ExecutionContext, NewOperation, OperationState,
};
pub use driver_input::{DriverInput, DriverResource};
pub use driver_output::{parse_line, Output};
pub use heartbeat::{Heartbeat, LeadClaim, NatsConnection, Role};
pub use manifest::{
    params_violations, DriverLimits, Manifest, ManifestError, ModuleRecord, OperationKind,
    OperationSpec, DEFAULT_RETRIES, DEFAULT_SYNC_TIMEOUT_MS,
};
pub use reply::{RemoteError, Reply};
pub use resource::{mask_secrets, mask_str, ResourceRecord, ResourceView};

use serde::{Deserialize, Serialize};

/// The protocol version this build speaks.
pub const PROTOCOL_VERSION: u32 = 1;

pub(crate) fn v1() -> u32 {
    PROTOCOL_VERSION
}

/// Decodes a protocol message, refusing a `"v"` this build does not know.
pub fn decode<T: serde::de::DeserializeOwned + Versioned>(bytes: &[u8]) -> Result<T, DecodeError> {
    let value: T = serde_json::from_slice(bytes).map_err(DecodeError::Json)?;
    if value.version() != PROTOCOL_VERSION {
        return Err(DecodeError::Version(value.version()));
    }
    Ok(value)
}

/// Encodes a protocol message. Serialising these types cannot fail (no maps
/// with non-string keys), so this returns bytes directly.
pub fn encode<T: Serialize>(value: &T) -> bytes::Bytes {
    serde_json::to_vec(value)
        .expect("protocol types always serialise")
        .into()
}

/// A message that carries a protocol version.
pub trait Versioned {
    fn version(&self) -> u32;
}

#[derive(Debug, thiserror::Error)]
pub enum DecodeError {
    #[error("not a valid message: {0}")]
    Json(serde_json::Error),
    #[error("protocol version {0} is not supported (this build speaks version 1)")]
    Version(u32),
}

/// Request on `op.submit`: record this new sync operation as yours and run
/// it. The node that takes it writes the context (a KV create, so the
/// operation is recorded once) before it answers; the context then carries
/// the result.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct SubmitOperation {
    #[serde(default = "v1")]
    pub v: u32,
    pub op: uuid::Uuid,
    /// The new operation, `pending` and not yet in KV.
    pub context: Box<ExecutionContext>,
}

/// Answer to [`SubmitOperation`]: the node that took it.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct SubmitAccepted {
    #[serde(default = "v1")]
    pub v: u32,
    pub node: String,
}

/// Request on `zf.<cluster>.mgmt.<id>.register`: a node registers with a
/// management instance, with the inventory it keeps (resources' configuration
/// and state, never secrets). `full` says whether `resources` is the whole
/// inventory or only what changed since the last registration.
///
/// A whole inventory is sent in chunks (so that no message nears the
/// server's `max_payload`), each with a [`RegistrationChunk`]: the first has
/// `full: true`, the others `full: false`. Management builds the new
/// inventory aside and shows it only once every chunk arrived, in order.
/// A message without `chunk` is a whole registration or a change on its own
/// (what nodes sent before chunks existed); an instance that does not know
/// `chunk` ignores it and applies the chunks as a registration followed by
/// changes, which ends with the same inventory.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct Registration {
    #[serde(default = "v1")]
    pub v: u32,
    pub node: String,
    pub full: bool,
    pub resources: Vec<ResourceView>,
    /// Resources deleted since the last registration.
    #[serde(default)]
    pub removed: Vec<String>,
    /// Which part of a chunked whole inventory this is.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub chunk: Option<RegistrationChunk>,
}

/// One chunk of a whole inventory: `seq` counts from 0 to `total - 1`; every
/// chunk of one registration carries the same `registration` id.
#[derive(Clone, Copy, Debug, Serialize, Deserialize, PartialEq, Eq)]
pub struct RegistrationChunk {
    pub registration: uuid::Uuid,
    pub seq: u32,
    pub total: u32,
}

/// Answer to [`Registration`].
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct Registered {
    #[serde(default = "v1")]
    pub v: u32,
    pub management: String,
}

/// Request on `repo.put`: validate and store the bundle uploaded as `upload`
/// in the uploads object store.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct PutModule {
    #[serde(default = "v1")]
    pub v: u32,
    pub upload: String,
}

/// Answer to [`PutModule`].
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct PutModuleOutcome {
    #[serde(default = "v1")]
    pub v: u32,
    /// False when the same bytes were already stored (a no-op).
    pub created: bool,
    pub module: ModuleRecord,
}

/// Request on `repo.get`: one module by name (newest or `version`) or by digest.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Default)]
pub struct GetModule {
    #[serde(default = "v1")]
    pub v: u32,
    #[serde(default)]
    pub name: Option<String>,
    #[serde(default)]
    pub version: Option<String>,
    #[serde(default)]
    pub digest: Option<String>,
}

macro_rules! versioned {
    ($($t:ty),*) => {$(
        impl Versioned for $t {
            fn version(&self) -> u32 { self.v }
        }
    )*};
}
versioned!(
    Registration,
    Registered,
    SubmitOperation,
    SubmitAccepted,
    PutModule,
    PutModuleOutcome,
    GetModule,
    ExecutionContext,
    Heartbeat,
    LeadClaim,
    ModuleRecord,
    ResourceRecord
);
