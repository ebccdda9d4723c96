//! Managed resources (SPEC §4): the record kept in `zf_<cluster>_resources`
//! and the view the API shows, which never carries secret values.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use serde_json::Value;
use time::OffsetDateTime;
use utoipa::ToSchema;

use super::v1;

/// A resource as stored at the cluster.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct ResourceRecord {
    #[serde(default = "v1")]
    pub v: u32,
    pub id: String,
    pub kind: String,
    pub config: Value,
    /// What selectors pick the resource by ([`crate::selector`]).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub labels: crate::selector::Labels,
    /// Where it can be reached from: only nodes of this zone run its sync
    /// operations.
    #[serde(default = "crate::names::default_zone")]
    pub zone: String,
    /// The secrets, sealed with the cluster's secrets key (see `sealing`):
    /// write-only, opened only to build a driver's stdin.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sealed_secrets: Option<String>,
    /// Names of the sealed secrets, which may be shown.
    #[serde(default)]
    pub secret_names: Vec<String>,
    #[serde(default)]
    pub state: Option<Value>,
    #[serde(default, with = "time::serde::rfc3339::option")]
    pub state_updated_at: Option<OffsetDateTime>,
    #[serde(default)]
    pub reported_by: Option<String>,
    #[serde(with = "time::serde::rfc3339")]
    pub updated_at: OffsetDateTime,
}

impl std::fmt::Display for ResourceRecord {
    /// A log-safe description: never the secrets.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "resource {} (kind {})", self.id, self.kind)
    }
}

/// What the API answers for a resource: secret names, never their values.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, ToSchema)]
pub struct ResourceView {
    pub id: String,
    pub kind: String,
    /// Always a JSON object.
    #[schema(value_type = Object)]
    pub config: Value,
    /// What selectors pick the resource by: `{}` when it has none.
    pub labels: crate::selector::Labels,
    /// The zone whose nodes run its sync operations.
    #[serde(default = "crate::names::default_zone")]
    pub zone: String,
    pub secret_names: Vec<String>,
    /// The state its drivers last reported, `null` until one did.
    #[schema(required = true)]
    pub state: Option<Value>,
    #[serde(with = "time::serde::rfc3339::option")]
    #[schema(required = true)]
    pub state_updated_at: Option<OffsetDateTime>,
    /// The node that reported the state.
    #[schema(required = true)]
    pub reported_by: Option<String>,
    #[serde(with = "time::serde::rfc3339")]
    pub updated_at: OffsetDateTime,
}

impl From<&ResourceRecord> for ResourceView {
    fn from(r: &ResourceRecord) -> Self {
        Self {
            id: r.id.clone(),
            kind: r.kind.clone(),
            config: r.config.clone(),
            labels: r.labels.clone(),
            zone: r.zone.clone(),
            secret_names: r.secret_names.clone(),
            state: r.state.clone(),
            state_updated_at: r.state_updated_at,
            reported_by: r.reported_by.clone(),
            updated_at: r.updated_at,
        }
    }
}

/// Replaces every occurrence of every secret value in the strings of `value`
/// (keys included) with `***`. Applied to everything a driver writes before it
/// leaves the node.
pub fn mask_secrets(value: &mut Value, secrets: &BTreeMap<String, String>) {
    let secrets: Vec<&str> = secrets
        .values()
        .map(String::as_str)
        .filter(|s| !s.is_empty())
        .collect();
    if secrets.is_empty() {
        return;
    }
    mask_value(value, &secrets);
}

/// Masks the secret values in one string.
pub fn mask_str(text: &str, secrets: &BTreeMap<String, String>) -> String {
    let mut out = text.to_string();
    for secret in secrets.values().filter(|s| !s.is_empty()) {
        if out.contains(secret.as_str()) {
            out = out.replace(secret.as_str(), "***");
        }
    }
    out
}

fn mask_value(value: &mut Value, secrets: &[&str]) {
    match value {
        Value::String(s) => {
            for secret in secrets {
                if s.contains(secret) {
                    *s = s.replace(secret, "***");
                }
            }
        }
        Value::Array(items) => items.iter_mut().for_each(|v| mask_value(v, secrets)),
        Value::Object(map) => {
            let masked: serde_json::Map<String, Value> = std::mem::take(map)
                .into_iter()
                .map(|(mut k, mut v)| {
                    for secret in secrets {
                        if k.contains(secret) {
                            k = k.replace(secret, "***");
                        }
                    }
                    mask_value(&mut v, secrets);
                    (k, v)
                })
                .collect();
            *map = masked;
        }
        _ => {}
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn secrets_are_masked_everywhere_in_a_value() {
        let secrets = BTreeMap::from([("password".to_string(), "hunter2".to_string())]);
        let mut v = serde_json::json!({
            "a": "pw=hunter2;", "list": ["hunter2", 3], "hunter2": {"deep": "xhunter2x"}
        });
        mask_secrets(&mut v, &secrets);
        assert_eq!(
            v,
            serde_json::json!({"a": "pw=***;", "list": ["***", 3], "***": {"deep": "x***x"}})
        );
        assert_eq!(mask_str("say hunter2", &secrets), "say ***");
    }
}
