//! Membership messages: the heartbeat every agent node publishes, and the lead
//! claim kept in the lead bucket (SPEC §6).

use serde::{Deserialize, Serialize};
use time::OffsetDateTime;
use utoipa::ToSchema;

use super::v1;

/// A node's part in the cluster: the one `lead` runs the monitors.
#[derive(Clone, Copy, Debug, Serialize, Deserialize, PartialEq, Eq, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum Role {
    Lead,
    Auxiliary,
}

/// Published on `zf.<cluster>.node.<node>.heartbeat` every heartbeat interval.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct Heartbeat {
    #[serde(default = "v1")]
    pub v: u32,
    pub node: String,
    pub role: Role,
    /// The newest lead term this node has seen.
    pub term: u64,
    /// Driver processes running on the node now.
    pub running: u32,
    /// The node's build version.
    pub version: String,
    /// How often this node beats, and after how long without a beat others
    /// count it gone.
    pub interval_ms: u64,
    pub lapse_ms: u64,
    /// Management instances this node is registered with.
    #[serde(default)]
    pub registered_with: Vec<String>,
    #[serde(with = "time::serde::rfc3339")]
    pub started_at: OffsetDateTime,
    /// How the node confines its drivers' filesystem access: `landlock`, or
    /// `none` where the kernel has no Landlock.
    #[serde(default)]
    pub sandbox: String,
    /// The zone whose sync operations this node takes.
    #[serde(default = "crate::names::default_zone")]
    pub zone: String,
    /// The node's labels (`--label`).
    #[serde(default, skip_serializing_if = "std::collections::BTreeMap::is_empty")]
    pub labels: crate::selector::Labels,
}

/// A lead claim, key `lead` in `zf_<cluster>_lead`.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct LeadClaim {
    #[serde(default = "v1")]
    pub v: u32,
    pub term: u64,
    pub node: String,
    #[serde(with = "time::serde::rfc3339")]
    pub at: OffsetDateTime,
    /// The holder's NATS connection: a disconnect notice for it lets the
    /// other nodes claim at once instead of after the lapse. The holder
    /// writes it again, same term, when it reconnects.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub connection: Option<NatsConnection>,
}

/// One client connection as nats-server names it: the server's id and the
/// client id that server gave it (ids are per server).
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
pub struct NatsConnection {
    pub server: String,
    pub client: u64,
}
