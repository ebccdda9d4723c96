//! One run of a driver, the same for sync operations and monitors: checks
//! the module's signature (when trusted keys are set), leases the bundle from
//! the cache, reads the resource and opens its secrets, makes a fresh scratch
//! dir and builds the typed stdin. A [`Run`] holds all of that for as long as
//! the driver runs; dropping it gives the lease back and removes the scratch
//! dir. It also writes the driver's `resource_state` reports and its log
//! lines, to the node's log and to the operation's own ([`Run::log`]).

use std::collections::{BTreeMap, HashSet};
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_nats::jetstream::kv;
use serde_json::Value;
use tokio::sync::mpsc;
use zerofoot_shared::assets::Assets;
use zerofoot_shared::oplog;
use zerofoot_shared::protocol::{
    decode, encode, mask_secrets, mask_str, DriverInput, DriverResource, ExecutionContext,
    OperationKind, ResourceRecord, PROTOCOL_VERSION,
};

use crate::cache::{Lease, ModuleCache};
use crate::driver::{self, Invocation};
use crate::launcher::Launcher;

/// Why a run could not start; the message is what the operation's error says.
#[derive(Debug, thiserror::Error)]
pub enum PrepareError {
    #[error("module {module} {version}: {reason}")]
    Signature {
        module: String,
        version: String,
        reason: String,
    },
    #[error("cannot read the module index: {0}")]
    Index(String),
    #[error("{0}")]
    Cache(String),
    #[error("resource {id} does not exist (any more)")]
    NoResource { id: String },
    #[error("cannot read resource {id}: {reason}")]
    Resource { id: String, reason: String },
    #[error("resource {id} has secrets but this node has no secrets key; start it with ZF_SECRETS_KEY or --secrets-key-file")]
    NoSecretsKey { id: String },
    #[error("cannot open the secrets of resource {id}: {reason}")]
    Secrets { id: String, reason: String },
    #[error("cannot create the scratch dir {path}: {source}")]
    Scratch {
        path: String,
        #[source]
        source: std::io::Error,
    },
}

/// What every run on this node shares.
#[derive(Clone)]
pub struct Runner {
    pub node: String,
    pub names: zerofoot_shared::names::Names,
    pub assets: Assets,
    pub cache: ModuleCache,
    pub scratch_root: PathBuf,
    /// Signatures a module must carry to run here (off when empty).
    pub trusted: zerofoot_shared::signing::TrustedKeys,
    /// Module versions whose signature verified: versions are immutable, so
    /// one index read per version does.
    pub verified: Arc<Mutex<HashSet<(String, String, String)>>>,
    /// Opens resource secrets for drivers; `None` when this node has no key.
    pub secrets_key: Option<zerofoot_shared::sealing::SecretsKey>,
    pub launcher: Launcher,
    pub sandboxes: crate::sandbox::Sandboxes,
    /// Connections kept to the hosts of `ssh` resources.
    pub ssh_masters: crate::ssh_masters::SshMasters,
}

/// A prepared run: what its driver needs held until it is dropped (the
/// invocation itself goes to the driver).
pub struct Run {
    /// The resource's secrets, masked in everything the driver writes.
    pub secrets: BTreeMap<String, String>,
    _lease: Lease,
    _slot: crate::sandbox::DriverSlot,
    /// The driver's way to its resource's ssh master, closed with the run.
    _ssh_relay: Option<crate::ssh_masters::Relay>,
    scratch: PathBuf,
    log: OperationLog,
}

/// Where a run's log lines go besides the node's own log.
struct OperationLog {
    jetstream: async_nats::jetstream::Context,
    subject: String,
    node: String,
}

impl Drop for Run {
    fn drop(&mut self) {
        let dir = std::mem::take(&mut self.scratch);
        if dir.as_os_str().is_empty() {
            return;
        }
        // Removing a tree is blocking IO; without a runtime (tests) it waits.
        match tokio::runtime::Handle::try_current() {
            Ok(handle) => {
                handle.spawn_blocking(move || std::fs::remove_dir_all(dir));
            }
            Err(_) => {
                let _ = std::fs::remove_dir_all(dir);
            }
        }
    }
}

impl Run {
    /// Masks the resource's secrets in a value the driver wrote.
    pub fn mask(&self, data: &mut Value) {
        mask_secrets(data, &self.secrets);
    }

    pub fn mask_str(&self, text: &str) -> String {
        mask_str(text, &self.secrets)
    }

    /// A driver's log line (or its stderr tail, level `stderr`), masked:
    /// logged by the node and kept in the operation's log. Only the send is
    /// awaited: a line that JetStream does not store is not worth stalling
    /// the driver for.
    pub async fn log(&self, level: &str, msg: &str) {
        let msg = self.mask_str(msg);
        driver::log_line(level, &msg);
        let line = oplog::LogLine::new(level, &msg, &self.log.node);
        let Ok(payload) = serde_json::to_vec(&line) else {
            return;
        };
        if let Err(e) = self
            .log
            .jetstream
            .publish(self.log.subject.clone(), payload.into())
            .await
        {
            tracing::debug!(error = %e, "a driver log line was not kept in the operation's log");
        }
    }
}

impl Runner {
    /// Prepares a run of `ctx`'s driver; `run_name` keeps scratch dirs of
    /// successive runs apart.
    pub async fn prepare(
        &self,
        ctx: &ExecutionContext,
        run_name: &str,
    ) -> Result<(Run, Invocation), PrepareError> {
        self.check_signature(ctx).await?;
        let lease = self
            .cache
            .acquire(&ctx.digest)
            .await
            .map_err(|e| PrepareError::Cache(e.to_string()))?;
        let resource = match &ctx.resource {
            Some(id) => Some(self.resource(id).await?),
            None => None,
        };
        let secrets = match &resource {
            Some(r) => self.open_secrets(r)?,
            None => BTreeMap::new(),
        };
        let slot = self.sandboxes.slot().await;
        let scratch = self.scratch_root.join(format!("{}-{run_name}", ctx.id));
        make_scratch(&scratch, self.sandboxes.user(&slot))
            .await
            .map_err(|source| PrepareError::Scratch {
                path: scratch.display().to_string(),
                source,
            })?;
        let limits = lease
            .manifest
            .operations
            .get(&ctx.operation)
            .map(|spec| spec.limits)
            .unwrap_or_default();
        let program = lease.dir.join(lease.manifest.entrypoint_path());
        let sandbox = self.sandboxes.sandbox(&slot, &lease.dir, &scratch, &limits);
        let input = DriverInput {
            v: PROTOCOL_VERSION,
            operation_id: ctx.id,
            operation: &ctx.operation,
            params: &ctx.params,
            resource: resource.as_ref().map(|r| DriverResource {
                id: &r.id,
                kind: &r.kind,
                config: &r.config,
                secrets: &secrets,
            }),
            checkpoint: ctx.checkpoint.as_ref(),
        };
        let stdin = serde_json::to_vec(&input).unwrap_or_default();
        let ssh_relay = match &resource {
            Some(r) => {
                let at = scratch.join("ssh-control");
                self.ssh_masters
                    .relay(r, &secrets, &at, self.sandboxes.user(&slot))
                    .await
            }
            None => None,
        };
        let mut env = driver::base_env(&scratch);
        if let Some(relay) = &ssh_relay {
            env.push((
                "ZF_SSH_CONTROL".to_string(),
                relay.path().display().to_string(),
            ));
        }
        env.extend([
            ("ZF_OPERATION".to_string(), ctx.operation.clone()),
            ("ZF_OPERATION_ID".to_string(), ctx.id.to_string()),
            ("ZF_MODULE".to_string(), ctx.module.clone()),
            ("ZF_MODULE_VERSION".to_string(), ctx.version.clone()),
            ("ZF_NODE_ID".to_string(), self.node.clone()),
        ]);
        let sync = ctx.kind == OperationKind::Sync;
        let invocation = Invocation {
            program,
            sandbox,
            operation: ctx.operation.clone(),
            scratch: scratch.clone(),
            env,
            stdin,
            stdin_after: None,
            timeout: sync.then(|| Duration::from_millis(ctx.timeout_ms)),
            max_output: sync.then_some(driver::MAX_SYNC_OUTPUT_BYTES),
            launcher: self.launcher.clone(),
        };
        let run = Run {
            secrets,
            _lease: lease,
            _slot: slot,
            _ssh_relay: ssh_relay,
            scratch,
            log: OperationLog {
                jetstream: self.assets.jetstream.clone(),
                subject: self.names.op_logs(&ctx.id.to_string()),
                node: self.node.clone(),
            },
        };
        Ok((run, invocation))
    }

    async fn resource(&self, id: &str) -> Result<ResourceRecord, PrepareError> {
        match self.assets.resources.get(id).await {
            Ok(Some(bytes)) => {
                decode::<ResourceRecord>(&bytes).map_err(|e| PrepareError::Resource {
                    id: id.into(),
                    reason: format!("unreadable: {e}"),
                })
            }
            Ok(None) => Err(PrepareError::NoResource { id: id.into() }),
            Err(e) => Err(PrepareError::Resource {
                id: id.into(),
                reason: e.to_string(),
            }),
        }
    }

    fn open_secrets(
        &self,
        resource: &ResourceRecord,
    ) -> Result<BTreeMap<String, String>, PrepareError> {
        match (&resource.sealed_secrets, &self.secrets_key) {
            (None, _) => Ok(BTreeMap::new()),
            (Some(sealed), Some(key)) => {
                key.open(&resource.id, sealed)
                    .map_err(|e| PrepareError::Secrets {
                        id: resource.id.clone(),
                        reason: e.to_string(),
                    })
            }
            (Some(_), None) => Err(PrepareError::NoSecretsKey {
                id: resource.id.clone(),
            }),
        }
    }

    /// With trusted keys configured, the module's index entry must name this
    /// digest and carry a signature of one of them: checked before anything
    /// is fetched or unpacked.
    async fn check_signature(&self, ctx: &ExecutionContext) -> Result<(), PrepareError> {
        if !self.trusted.is_on() {
            return Ok(());
        }
        let id = (ctx.module.clone(), ctx.version.clone(), ctx.digest.clone());
        if self
            .verified
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .contains(&id)
        {
            return Ok(());
        }
        let refused = |reason: String| PrepareError::Signature {
            module: ctx.module.clone(),
            version: ctx.version.clone(),
            reason,
        };
        let version: semver::Version = ctx
            .version
            .parse()
            .map_err(|e| refused(format!("bad module version: {e}")))?;
        let key = zerofoot_shared::names::module_index_key(&ctx.module, &version);
        let record = match self.assets.module_index.get(key).await {
            Ok(Some(bytes)) => decode::<zerofoot_shared::protocol::ModuleRecord>(&bytes)
                .map_err(|e| refused(e.to_string()))?,
            Ok(None) => return Err(refused("is not in the module index".into())),
            Err(e) => return Err(PrepareError::Index(e.to_string())),
        };
        if record.digest != ctx.digest {
            return Err(refused(format!(
                "is indexed with digest {}, not {}: refused",
                record.digest, ctx.digest
            )));
        }
        self.trusted
            .verify(&record)
            .map_err(|e| refused(e.to_string()))?;
        self.verified
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert(id);
        Ok(())
    }

    /// Writes `resource_state` reports in order, each with compare-and-set so
    /// a concurrent change of the resource's configuration is never
    /// overwritten. Runs until the sender is dropped.
    pub async fn report_states(self, resource: Option<String>, mut states: mpsc::Receiver<Value>) {
        while let Some(state) = states.recv().await {
            let Some(id) = &resource else {
                tracing::warn!(
                    "the driver reported resource_state but the operation has no resource; ignored"
                );
                continue;
            };
            // Boxed: this task lives as long as the driver, the write only
            // as long as itself.
            Box::pin(self.report_state(id, state)).await;
        }
    }

    /// Writes `state` into resource `id`'s record (compare-and-set, a few
    /// tries against concurrent writers).
    async fn report_state(&self, id: &str, state: Value) {
        for _ in 0..10 {
            let entry = match self.assets.resources.entry(id).await {
                Ok(Some(entry)) if entry.operation == kv::Operation::Put => entry,
                _ => {
                    tracing::warn!(resource = %id, "resource gone; state report dropped");
                    return;
                }
            };
            let Ok(mut record) = decode::<ResourceRecord>(&entry.value) else {
                return;
            };
            record.state = Some(state.clone());
            record.state_updated_at = Some(zerofoot_shared::time::now());
            record.reported_by = Some(self.node.clone());
            if self
                .assets
                .resources
                .update(id, encode(&record), entry.revision)
                .await
                .is_ok()
            {
                return;
            }
        }
    }
}

/// A fresh scratch dir that only the driver's user may enter.
async fn make_scratch(
    dir: &std::path::Path,
    user: Option<crate::shim_spec::DriverUser>,
) -> std::io::Result<()> {
    let dir = dir.to_path_buf();
    tokio::task::spawn_blocking(move || {
        use std::os::unix::fs::PermissionsExt;
        std::fs::create_dir_all(&dir)?;
        if let Some(user) = user {
            std::os::unix::fs::chown(&dir, Some(user.uid), Some(user.gid))?;
        }
        std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o700))
    })
    .await
    .map_err(std::io::Error::other)?
}
