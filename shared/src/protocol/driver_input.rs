//! What a driver reads on stdin (SPEC §3): one JSON document naming the
//! operation, its parameters, the resource with its opened secrets, and the
//! checkpoint to resume from. Built by the node, never sent over NATS (it
//! holds secrets in the clear).

use serde::Serialize;
use serde_json::Value;
use std::collections::BTreeMap;
use uuid::Uuid;

#[derive(Debug, Serialize)]
pub struct DriverInput<'a> {
    pub v: u32,
    pub operation_id: Uuid,
    pub operation: &'a str,
    pub params: &'a Value,
    pub resource: Option<DriverResource<'a>>,
    pub checkpoint: Option<&'a Value>,
}

#[derive(Debug, Serialize)]
pub struct DriverResource<'a> {
    pub id: &'a str,
    pub kind: &'a str,
    pub config: &'a Value,
    pub secrets: &'a BTreeMap<String, String>,
}
