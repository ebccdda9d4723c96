//! `module.json`, the manifest at the root of every module bundle (SPEC §3),
//! and the module index record built from it. Parsing and checking a manifest
//! is pure: the repository and the nodes use the same rules.

use std::collections::BTreeMap;
use std::path::{Component, Path};

use serde::{Deserialize, Serialize};
use time::OffsetDateTime;
use utoipa::ToSchema;

use super::v1;

/// Sync timeout when the manifest names none.
pub const DEFAULT_SYNC_TIMEOUT_MS: u64 = 30_000;
/// Retries of a sync operation whose node was lost, when the manifest names none.
pub const DEFAULT_RETRIES: u32 = 1;

/// `sync` operations answer with a result; `async` ones are monitors that stream events.
#[derive(Clone, Copy, Debug, Serialize, Deserialize, PartialEq, Eq, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum OperationKind {
    Sync,
    Async,
}

impl OperationKind {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Sync => "sync",
            Self::Async => "async",
        }
    }
}

/// One operation of a module, as its manifest declares it.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct OperationSpec {
    pub kind: OperationKind,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schema(nullable = false)]
    pub timeout_ms: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schema(nullable = false)]
    pub retries: Option<u32>,
    /// Resource limits of this operation's driver, each under the node's
    /// ceiling (a larger value gets the ceiling).
    #[serde(default, skip_serializing_if = "DriverLimits::is_empty")]
    pub limits: DriverLimits,
    /// What the operation does, for people.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schema(nullable = false)]
    pub description: Option<String>,
    /// A JSON Schema its `params` must match; management refuses a
    /// submission that does not (422, every violation listed).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schema(nullable = false)]
    pub params: Option<serde_json::Value>,
}

/// Per-driver resource limits (setrlimit); unset means the node's ceiling.
#[derive(Clone, Copy, Debug, Default, Serialize, Deserialize, PartialEq, Eq, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct DriverLimits {
    /// Address space, MiB.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schema(nullable = false)]
    pub memory_mb: Option<u64>,
    /// Open file descriptors.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schema(nullable = false)]
    pub open_files: Option<u64>,
    /// Processes (and threads) the driver may have at once.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schema(nullable = false)]
    pub processes: Option<u64>,
    /// CPU time, seconds.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schema(nullable = false)]
    pub cpu_s: Option<u64>,
}

impl DriverLimits {
    pub fn is_empty(&self) -> bool {
        *self == Self::default()
    }

    /// Each of these limits, capped by `ceiling`'s; unset ones are the ceiling's.
    pub fn under(&self, ceiling: &DriverLimits) -> DriverLimits {
        let cap = |wanted: Option<u64>, max: Option<u64>| match (wanted, max) {
            (Some(w), Some(m)) => Some(w.min(m)),
            (w, m) => m.or(w),
        };
        DriverLimits {
            memory_mb: cap(self.memory_mb, ceiling.memory_mb),
            open_files: cap(self.open_files, ceiling.open_files),
            processes: cap(self.processes, ceiling.processes),
            cpu_s: cap(self.cpu_s, ceiling.cpu_s),
        }
    }
}

impl OperationSpec {
    pub fn timeout_ms(&self) -> u64 {
        self.timeout_ms.unwrap_or(DEFAULT_SYNC_TIMEOUT_MS)
    }
    pub fn retries(&self) -> u32 {
        self.retries.unwrap_or(DEFAULT_RETRIES)
    }
}

/// The contents of `module.json`.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
pub struct Manifest {
    pub name: String,
    pub version: semver::Version,
    #[serde(default)]
    pub description: String,
    pub entrypoint: String,
    pub operations: BTreeMap<String, OperationSpec>,
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum ManifestError {
    #[error("module.json is not valid: {0}")]
    Json(String),
    #[error("module.json: name {0:?} is invalid: use a-z, 0-9 and '-', starting with a letter or digit, at most 63 characters")]
    Name(String),
    #[error(
        "module.json: entrypoint {0:?} must be a relative path inside the bundle without '..'"
    )]
    Entrypoint(String),
    #[error("module.json: operations must name at least one operation")]
    NoOperations,
    #[error("module.json: operation name {0:?} is invalid: use a-z, 0-9, '-' and '_', at most 63 characters")]
    OperationName(String),
    #[error(
        "module.json: operation {0:?} has timeout_ms 0; leave it out for the default of 30000"
    )]
    ZeroTimeout(String),
    #[error("module.json: operation {op:?}: params is not a valid JSON Schema: {reason}")]
    ParamsSchema { op: String, reason: String },
}

/// Every way `params` breaks `schema`, as `<path>: <what>` (path `/` is
/// the params object itself); empty when they match. `Err` when the schema
/// itself cannot be used.
pub fn params_violations(
    schema: &serde_json::Value,
    params: &serde_json::Value,
) -> Result<Vec<String>, String> {
    let validator = jsonschema::validator_for(schema).map_err(|e| e.to_string())?;
    Ok(validator
        .iter_errors(params)
        .map(|e| {
            let path = e.instance_path.to_string();
            let path = if path.is_empty() {
                "/".to_string()
            } else {
                path
            };
            format!("{path}: {e}")
        })
        .collect())
}

impl Manifest {
    /// Parses and checks `module.json`. The error names the field at fault.
    pub fn parse(bytes: &[u8]) -> Result<Self, ManifestError> {
        let manifest: Manifest =
            serde_json::from_slice(bytes).map_err(|e| ManifestError::Json(e.to_string()))?;
        manifest.check()?;
        Ok(manifest)
    }

    fn check(&self) -> Result<(), ManifestError> {
        if !is_module_name(&self.name) {
            return Err(ManifestError::Name(self.name.clone()));
        }
        if !is_inside_root(&self.entrypoint) {
            return Err(ManifestError::Entrypoint(self.entrypoint.clone()));
        }
        if self.operations.is_empty() {
            return Err(ManifestError::NoOperations);
        }
        for (name, spec) in &self.operations {
            let ok = (1..=63).contains(&name.len())
                && name.bytes().all(|b| {
                    b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-' || b == b'_'
                });
            if !ok {
                return Err(ManifestError::OperationName(name.clone()));
            }
            if spec.timeout_ms == Some(0) {
                return Err(ManifestError::ZeroTimeout(name.clone()));
            }
            if let Some(schema) = &spec.params {
                jsonschema::validator_for(schema).map_err(|e| ManifestError::ParamsSchema {
                    op: name.clone(),
                    reason: e.to_string(),
                })?;
            }
        }
        Ok(())
    }

    /// The entrypoint as a normalised relative path (`./bin/run` → `bin/run`).
    pub fn entrypoint_path(&self) -> std::path::PathBuf {
        Path::new(&self.entrypoint)
            .components()
            .filter(|c| matches!(c, Component::Normal(_)))
            .collect()
    }
}

/// `[a-z0-9][a-z0-9-]{0,62}`
pub fn is_module_name(name: &str) -> bool {
    let bytes = name.as_bytes();
    !bytes.is_empty()
        && bytes.len() <= 63
        && (bytes[0].is_ascii_lowercase() || bytes[0].is_ascii_digit())
        && bytes
            .iter()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || *b == b'-')
}

/// True for a relative path that stays inside its root (no `..`, not absolute,
/// not empty).
pub fn is_inside_root(path: &str) -> bool {
    let mut depth = 0usize;
    for component in Path::new(path).components() {
        match component {
            Component::Normal(_) => depth += 1,
            Component::CurDir => {}
            Component::ParentDir | Component::RootDir | Component::Prefix(_) => return false,
        }
    }
    depth > 0
}

/// One stored module version: the module index value, key `<name>.<version>`.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, ToSchema)]
pub struct ModuleRecord {
    #[serde(default = "v1")]
    #[schema(required = true)]
    pub v: u32,
    pub name: String,
    /// A semantic version, e.g. `1.2.0`.
    #[schema(value_type = String)]
    pub version: semver::Version,
    /// `sha256:<hex>` of the bundle bytes.
    pub digest: String,
    /// Bundle size in bytes.
    pub size: u64,
    #[serde(default)]
    #[schema(required = true)]
    pub description: String,
    pub entrypoint: String,
    pub operations: BTreeMap<String, OperationSpec>,
    #[serde(with = "time::serde::rfc3339")]
    pub published_at: OffsetDateTime,
    /// The repository's ed25519 signature of (name, version, digest), hex.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schema(nullable = false)]
    pub signature: Option<String>,
}

impl ModuleRecord {
    pub fn new(manifest: Manifest, digest: String, size: u64) -> Self {
        Self {
            v: v1(),
            name: manifest.name,
            version: manifest.version,
            digest,
            size,
            description: manifest.description,
            entrypoint: manifest.entrypoint,
            operations: manifest.operations,
            published_at: crate::time::now(),
            signature: None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn manifest(patch: serde_json::Value) -> Result<Manifest, ManifestError> {
        let mut base = serde_json::json!({
            "name": "file-tail", "version": "1.2.0", "entrypoint": "bin/run",
            "operations": {"count": {"kind": "sync", "timeout_ms": 5000}, "follow": {"kind": "async"}}
        });
        if let (Some(base), Some(patch)) = (base.as_object_mut(), patch.as_object()) {
            for (k, v) in patch {
                base.insert(k.clone(), v.clone());
            }
        }
        Manifest::parse(&serde_json::to_vec(&base).expect("json"))
    }

    #[test]
    fn a_good_manifest_parses() {
        let m = manifest(serde_json::json!({})).expect("valid");
        assert_eq!(m.name, "file-tail");
        assert_eq!(m.operations["count"].timeout_ms(), 5000);
        assert_eq!(m.operations["follow"].kind, OperationKind::Async);
        assert_eq!(m.operations["follow"].retries(), DEFAULT_RETRIES);
    }

    #[test]
    fn params_are_checked_against_the_operation_schema() {
        let schema = serde_json::json!({"type": "object", "required": ["path"],
            "properties": {"path": {"type": "string"}, "lines": {"type": "integer", "minimum": 1}},
            "additionalProperties": false});
        let m = manifest(serde_json::json!({"operations": {"tail": {"kind": "sync",
            "description": "the last lines of a file", "params": schema}}}))
        .expect("valid");
        let schema = m.operations["tail"].params.as_ref().expect("schema");
        assert_eq!(
            params_violations(schema, &serde_json::json!({"path": "/var/log/x"})),
            Ok(vec![])
        );
        let found = params_violations(schema, &serde_json::json!({"lines": 0, "extra": 1}))
            .expect("usable schema");
        assert_eq!(
            found.len(),
            3,
            "missing path, lines below 1, extra key: {found:?}"
        );
        assert!(found.iter().any(|v| v.starts_with("/lines: ")), "{found:?}");
        assert!(found.iter().any(|v| v.contains("\"path\"")), "{found:?}");
    }

    #[test]
    fn an_unusable_schema_is_refused_with_the_upload() {
        let err = manifest(serde_json::json!({"operations": {"x": {"kind": "sync",
            "params": {"type": "no-such-type"}}}}))
        .expect_err("bad schema");
        assert!(
            err.to_string()
                .contains("operation \"x\": params is not a valid JSON Schema"),
            "{err}"
        );
    }

    #[test]
    fn an_operation_may_ask_for_limits() {
        let m = manifest(serde_json::json!({"operations": {"scan": {"kind": "sync",
            "limits": {"memory_mb": 256, "processes": 16}}}}))
        .expect("valid");
        assert_eq!(
            m.operations["scan"].limits,
            DriverLimits {
                memory_mb: Some(256),
                processes: Some(16),
                ..DriverLimits::default()
            }
        );
    }

    #[test]
    fn bad_fields_are_named() {
        let cases = [
            (serde_json::json!({"name": "Bad_Name"}), "name"),
            (serde_json::json!({"name": "-x"}), "name"),
            (serde_json::json!({"version": "1.2"}), "version"),
            (serde_json::json!({"entrypoint": "../run"}), "entrypoint"),
            (serde_json::json!({"entrypoint": "/bin/sh"}), "entrypoint"),
            (serde_json::json!({"entrypoint": ""}), "entrypoint"),
            (serde_json::json!({"operations": {}}), "operations"),
            (
                serde_json::json!({"operations": {"x": {"kind": "sync", "limits": {"memroy_mb": 5}}}}),
                "unknown field `memroy_mb`",
            ),
            (
                serde_json::json!({"operations": {"x": {"kind": "sync", "limits": {"processes": -1}}}}),
                "invalid value",
            ),
            (
                serde_json::json!({"operations": {"x": {"kind": "daily"}}}),
                "unknown variant",
            ),
            (
                serde_json::json!({"operations": {"x": {"kind": "sync", "timeout_ms": 0}}}),
                "timeout_ms",
            ),
            (
                serde_json::json!({"operations": {"a b": {"kind": "sync"}}}),
                "operation name",
            ),
        ];
        for (patch, expected) in cases {
            let err = manifest(patch.clone()).expect_err(&patch.to_string());
            assert!(err.to_string().contains(expected), "{patch}: {err}");
        }
    }

    #[test]
    fn paths_must_stay_inside() {
        assert!(is_inside_root("bin/run"));
        assert!(is_inside_root("./run"));
        assert!(!is_inside_root("a/../../b"));
        assert!(!is_inside_root("/etc/passwd"));
        assert!(!is_inside_root("."));
    }
}
