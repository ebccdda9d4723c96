//! Runs operations on this node: takes them (owner and attempt written by
//! compare-and-set on the context's KV revision), fetches the module, runs the
//! driver, masks the resource's secrets in everything the driver wrote, and
//! stores the outcome with compare-and-set, so a node that was replaced can
//! never overwrite what its successor wrote.

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_nats::jetstream::kv;
use serde_json::{json, Value};
use tokio::sync::{mpsc, oneshot};
use tokio_util::sync::CancellationToken;
use tracing::Instrument;
use uuid::Uuid;
use zerofoot_shared::assets::Assets;
use zerofoot_shared::protocol::{
    decode, encode, mask_secrets, mask_str, ExecutionContext, OperationState, RemoteError,
    ResourceRecord,
};

use crate::cache::ModuleCache;
use crate::driver::{self, Invocation, Output};

/// How a node comes to take an operation.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Taking {
    /// Submitted to this node, or pending for too long.
    Pending,
    /// Its owner, this node, is gone.
    FromLostOwner(String),
}

#[derive(Clone)]
pub struct Executor {
    pub node: String,
    /// Signatures a module must carry to run here (off when empty).
    pub trusted: zerofoot_shared::signing::TrustedKeys,
    /// Module versions (name, version, digest) whose signature already
    /// verified: versions are immutable, so one index read per version does.
    pub verified: Arc<Mutex<std::collections::HashSet<(String, String, String)>>>,
    /// Opens resource secrets for drivers; `None` when this node has no key.
    pub secrets_key: Option<zerofoot_shared::sealing::SecretsKey>,
    pub names: zerofoot_shared::names::Names,
    pub assets: Assets,
    pub cache: ModuleCache,
    pub scratch_root: PathBuf,
    pub running: Arc<AtomicU32>,
    /// Operations running on this node now, each with the token that cancels it.
    pub local: Arc<Mutex<HashMap<Uuid, CancellationToken>>>,
    pub cancel: CancellationToken,
}

fn conflict(message: String) -> RemoteError {
    RemoteError::new(409, "not_available", message)
}

impl Executor {
    pub fn is_running_here(&self, op: &Uuid) -> bool {
        self.local
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .contains_key(op)
    }

    /// Lists `op` as running here, cancelled by `token`; false if it already is.
    pub fn claim_local(&self, op: Uuid, token: CancellationToken) -> bool {
        let mut local = self.local.lock().unwrap_or_else(|e| e.into_inner());
        if local.contains_key(&op) {
            return false;
        }
        local.insert(op, token);
        true
    }

    pub fn release_local(&self, op: &Uuid) {
        self.local
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .remove(op);
    }

    /// Cancels `op` if it runs here; true if it did.
    pub fn cancel_local(&self, op: &Uuid) -> bool {
        match self.local.lock().unwrap_or_else(|e| e.into_inner()).get(op) {
            Some(token) => {
                token.cancel();
                true
            }
            None => false,
        }
    }

    /// Reads the context and its revision straight from KV.
    pub async fn read(&self, op: &Uuid) -> Result<Option<(ExecutionContext, u64)>, RemoteError> {
        let entry = self
            .assets
            .contexts
            .entry(op.to_string())
            .await
            .map_err(|e| {
                RemoteError::new(
                    503,
                    "unavailable",
                    format!("cannot read the context of {op}: {e}"),
                )
            })?;
        match entry {
            Some(entry) if entry.operation == kv::Operation::Put => {
                decode::<ExecutionContext>(&entry.value)
                    .map(|ctx| Some((ctx, entry.revision)))
                    .map_err(|e| {
                        RemoteError::new(500, "internal", format!("unreadable context {op}: {e}"))
                    })
            }
            _ => Ok(None),
        }
    }

    /// Takes operation `op` if it is still in the state `how` expects, and
    /// starts running it. Returns once the take is written.
    pub async fn take_and_run(&self, op: Uuid, how: Taking) -> Result<(), RemoteError> {
        let (mut ctx, revision) = self.read(&op).await?.ok_or_else(|| {
            RemoteError::new(404, "operation_not_found", format!("no operation {op}"))
        })?;
        match how {
            Taking::Pending if ctx.state != OperationState::Pending => {
                return Err(conflict(format!(
                    "operation {op} is {}, not pending",
                    ctx.state.as_str()
                )))
            }
            // Judged lost on an older view: only the owner judged lost may be replaced.
            Taking::FromLostOwner(ref lost)
                if ctx.state != OperationState::Running
                    || ctx.owner.as_deref() != Some(lost.as_str()) =>
            {
                return Err(conflict(format!(
                    "operation {op} is {} on {:?}, no longer running on {lost}",
                    ctx.state.as_str(),
                    ctx.owner
                )))
            }
            _ => {}
        }
        if matches!(how, Taking::FromLostOwner(_)) {
            let lost = ctx.owner.clone().unwrap_or_default();
            ctx.owner_lost();
            tracing::warn!(op = %op, lost_node = %lost, state = ctx.state.as_str(), "took over an operation whose node was lost");
            if ctx.state.is_terminal() {
                self.write(&ctx, revision).await?;
                return Ok(());
            }
        }
        ctx.take(&self.node, ctx.epoch);
        self.own_and_run(ctx, Some(revision)).await
    }

    /// Records a new sync operation (`op.submit`) as this node's and runs it:
    /// one KV create, which fails if the operation was recorded already.
    pub async fn record_and_run(&self, mut ctx: ExecutionContext) -> Result<(), RemoteError> {
        if ctx.state != OperationState::Pending
            || ctx.kind != zerofoot_shared::protocol::OperationKind::Sync
        {
            return Err(RemoteError::new(
                400,
                "invalid_request",
                format!(
                    "operation {} is not a new sync operation (state {}); only those are submitted",
                    ctx.id,
                    ctx.state.as_str()
                ),
            ));
        }
        ctx.take(&self.node, ctx.epoch);
        self.own_and_run(ctx, None).await
    }

    /// Writes `ctx` as taken by this node (an update at `revision`, or a
    /// create without one) and runs its driver in the background.
    async fn own_and_run(
        &self,
        ctx: ExecutionContext,
        revision: Option<u64>,
    ) -> Result<(), RemoteError> {
        let op = ctx.id;
        // Listed as local before the write lands, so this node's own sweeper
        // never mistakes it for an orphan.
        let token = self.cancel.child_token();
        if !self.claim_local(op, token.clone()) {
            return Err(conflict(format!(
                "operation {op} already runs on this node"
            )));
        }
        // The driver starts while the take is written; it gets its input
        // only once the write has landed.
        let (recorded_tx, recorded_rx) = oneshot::channel();
        let this = self.clone();
        let span = tracing::info_span!("operation", op = %op, module = %ctx.module, operation = %ctx.operation);
        let task_ctx = ctx.clone();
        tokio::spawn(
            async move {
                this.running.fetch_add(1, Ordering::Relaxed);
                this.run_sync(task_ctx, recorded_rx, token).await;
                this.running.fetch_sub(1, Ordering::Relaxed);
                this.release_local(&op);
            }
            .instrument(span),
        );
        let written = match revision {
            Some(revision) => self.write(&ctx, revision).await,
            None => self
                .assets
                .contexts
                .create(op.to_string(), encode(&ctx))
                .await
                .map_err(|e| match e.kind() {
                    kv::CreateErrorKind::AlreadyExists => {
                        conflict(format!("operation {op} is recorded already"))
                    }
                    _ => RemoteError::new(
                        503,
                        "unavailable",
                        format!("cannot record operation {op}: {e}"),
                    ),
                }),
        };
        // Dropping the sender when the write failed stops the driver unfed.
        let revision = written?;
        let _ = recorded_tx.send(revision);
        Ok(())
    }

    /// Compare-and-set write of a context; returns the new revision.
    pub async fn write(&self, ctx: &ExecutionContext, revision: u64) -> Result<u64, RemoteError> {
        self.assets
            .contexts
            .update(ctx.id.to_string(), encode(ctx), revision)
            .await
            .map_err(|e| {
                conflict(format!(
                    "operation {} changed meanwhile ({e}); another node has it",
                    ctx.id
                ))
            })
    }

    pub async fn resource(&self, id: &str) -> Result<ResourceRecord, String> {
        match self.assets.resources.get(id).await {
            Ok(Some(bytes)) => decode::<ResourceRecord>(&bytes)
                .map_err(|e| format!("resource {id} is unreadable: {e}")),
            Ok(None) => Err(format!("resource {id} does not exist (any more)")),
            Err(e) => Err(format!("cannot read resource {id}: {e}")),
        }
    }

    /// Runs a sync operation's driver while its take is being written
    /// (`recorded` brings the new revision), then stores the outcome.
    async fn run_sync(
        &self,
        mut ctx: ExecutionContext,
        recorded: oneshot::Receiver<u64>,
        token: CancellationToken,
    ) {
        let started = std::time::Instant::now();
        let (feed, fed) = oneshot::channel();
        let recorded = async {
            match recorded.await {
                Ok(revision) => {
                    let _ = feed.send(());
                    Some(revision)
                }
                Err(_) => {
                    token.cancel();
                    None
                }
            }
        };
        let (outcome, revision) = tokio::join!(self.drive(&ctx, &token, Some(fed)), recorded);
        let Some(revision) = revision else {
            tracing::debug!("the take was not written; the driver was stopped before its input");
            return;
        };
        if self.cancel.is_cancelled() {
            // The node is shutting down: another node takes the operation over.
            tracing::info!("node stopping; the operation is left to another node");
            return;
        }
        match outcome {
            Ok(result) => ctx.complete(result),
            Err(_) if token.is_cancelled() => ctx.cancel(),
            Err(error) => ctx.fail(error),
        }
        match self.write(&ctx, revision).await {
            Ok(_) => tracing::info!(
                state = ctx.state.as_str(),
                ms = started.elapsed().as_millis() as u64,
                "operation finished"
            ),
            Err(e) => {
                tracing::warn!(error = %e, "outcome dropped: the operation was taken over by another node")
            }
        }
    }

    /// With trusted keys configured, the module's index entry must name this
    /// digest and carry a signature of one of them: checked before anything
    /// is fetched or unpacked.
    async fn check_signature(&self, ctx: &ExecutionContext) -> Result<(), String> {
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
        let version: semver::Version = ctx
            .version
            .parse()
            .map_err(|e| format!("bad module version {}: {e}", ctx.version))?;
        let key = zerofoot_shared::names::module_index_key(&ctx.module, &version);
        let record = match self.assets.module_index.get(key).await {
            Ok(Some(bytes)) => decode::<zerofoot_shared::protocol::ModuleRecord>(&bytes)
                .map_err(|e| e.to_string())?,
            Ok(None) => {
                return Err(format!(
                    "module {} {} is not in the module index",
                    ctx.module, ctx.version
                ))
            }
            Err(e) => return Err(format!("cannot read the module index: {e}")),
        };
        if record.digest != ctx.digest {
            return Err(format!(
                "module {} {} is indexed with digest {}, not {}: refused",
                ctx.module, ctx.version, record.digest, ctx.digest
            ));
        }
        self.trusted.verify(&record).map_err(|e| e.to_string())?;
        self.verified
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert(id);
        Ok(())
    }

    fn open_secrets(
        &self,
        resource: &ResourceRecord,
    ) -> Result<std::collections::BTreeMap<String, String>, String> {
        match (&resource.sealed_secrets, &self.secrets_key) {
            (None, _) => Ok(Default::default()),
            (Some(sealed), Some(key)) => key.open(&resource.id, sealed).map_err(|e| e.to_string()),
            (Some(_), None) => Err(format!(
                "resource {} has secrets but this node has no secrets key; start it with ZF_SECRETS_KEY or --secrets-key-file",
                resource.id
            )),
        }
    }

    /// Everything a driver run needs: the bundle (held for the run), the
    /// invocation (stdin with the resource and the checkpoint), the secrets to
    /// mask, a fresh scratch dir named after `run`.
    pub async fn prepare(&self, ctx: &ExecutionContext, run: &str) -> Result<Prepared, String> {
        self.check_signature(ctx).await?;
        let lease = self
            .cache
            .acquire(&ctx.digest)
            .await
            .map_err(|e| e.to_string())?;
        let resource = match &ctx.resource {
            Some(id) => Some(self.resource(id).await?),
            None => None,
        };
        let secrets = match &resource {
            Some(r) => self.open_secrets(r)?,
            None => Default::default(),
        };
        let scratch = self.scratch_root.join(format!("{}-{run}", ctx.id));
        tokio::fs::create_dir_all(&scratch)
            .await
            .map_err(|e| format!("cannot create the scratch dir {}: {e}", scratch.display()))?;
        let stdin = json!({
            "v": 1,
            "operation_id": ctx.id,
            "operation": ctx.operation,
            "params": ctx.params,
            "resource": resource.as_ref().map(|r| json!({
                "id": r.id, "kind": r.kind, "config": r.config, "secrets": secrets,
            })),
            "checkpoint": ctx.checkpoint,
        });
        let mut env = driver::base_env(&scratch);
        env.extend([
            ("ZF_OPERATION".to_string(), ctx.operation.clone()),
            ("ZF_OPERATION_ID".to_string(), ctx.id.to_string()),
            ("ZF_MODULE".to_string(), ctx.module.clone()),
            ("ZF_MODULE_VERSION".to_string(), ctx.version.clone()),
            ("ZF_NODE_ID".to_string(), self.node.clone()),
        ]);
        let sync = ctx.kind == zerofoot_shared::protocol::OperationKind::Sync;
        let invocation = Invocation {
            program: lease.dir.join(lease.manifest.entrypoint_path()),
            operation: ctx.operation.clone(),
            scratch: scratch.clone(),
            env,
            stdin: serde_json::to_vec(&stdin).unwrap_or_default(),
            stdin_after: None,
            timeout: sync.then(|| Duration::from_millis(ctx.timeout_ms)),
            max_output: sync.then_some(driver::MAX_SYNC_OUTPUT_BYTES),
        };
        Ok(Prepared {
            lease,
            invocation,
            secrets,
            scratch,
        })
    }

    /// Runs the driver; the masked result, or a masked error message.
    async fn drive(
        &self,
        ctx: &ExecutionContext,
        token: &CancellationToken,
        stdin_after: Option<oneshot::Receiver<()>>,
    ) -> Result<Option<Value>, String> {
        let Prepared {
            lease,
            mut invocation,
            secrets,
            scratch,
        } = self.prepare(ctx, &ctx.attempts.len().to_string()).await?;
        invocation.stdin_after = stdin_after;
        let (state_tx, state_rx) = mpsc::unbounded_channel();
        let state_writer =
            tokio::spawn(report_states(self.clone(), ctx.resource.clone(), state_rx));
        let mut result = None;
        let run = driver::run(invocation, token, |output| match output {
            Output::Result(mut data) => {
                mask_secrets(&mut data, &secrets);
                result = Some(data);
            }
            Output::ResourceState(mut data) => {
                mask_secrets(&mut data, &secrets);
                let _ = state_tx.send(data);
            }
            Output::Log { level, msg } => {
                driver::log_line(&level, &mask_str(&msg, &secrets));
            }
            Output::Event { .. } | Output::Checkpoint(_) => {
                tracing::debug!("a sync operation wrote an event or checkpoint; ignored")
            }
        })
        .await;
        drop(state_tx);
        let _ = state_writer.await;
        drop(lease);
        remove_scratch(scratch).await;
        run.map(|()| result)
            .map_err(|e| mask_str(&e.to_string(), &secrets))
    }
}

/// What [`Executor::prepare`] hands to a run.
pub struct Prepared {
    pub lease: crate::cache::Lease,
    pub invocation: Invocation,
    pub secrets: std::collections::BTreeMap<String, String>,
    pub scratch: PathBuf,
}

pub async fn remove_scratch(dir: PathBuf) {
    let _ = tokio::task::spawn_blocking(move || std::fs::remove_dir_all(dir)).await;
}

/// Writes `resource_state` reports in order, each with compare-and-set so a
/// concurrent change of the resource's configuration is never overwritten.
pub async fn report_states(
    exec: Executor,
    resource: Option<String>,
    mut states: mpsc::UnboundedReceiver<Value>,
) {
    while let Some(state) = states.recv().await {
        let Some(id) = &resource else {
            tracing::warn!(
                "the driver reported resource_state but the operation has no resource; ignored"
            );
            continue;
        };
        for _ in 0..10 {
            let entry = match exec.assets.resources.entry(id.as_str()).await {
                Ok(Some(entry)) if entry.operation == kv::Operation::Put => entry,
                _ => {
                    tracing::warn!(resource = %id, "resource gone; state report dropped");
                    break;
                }
            };
            let Ok(mut record) = decode::<ResourceRecord>(&entry.value) else {
                break;
            };
            record.state = Some(state.clone());
            record.state_updated_at = Some(zerofoot_shared::time::now());
            record.reported_by = Some(exec.node.clone());
            if exec
                .assets
                .resources
                .update(id.as_str(), encode(&record), entry.revision)
                .await
                .is_ok()
            {
                break;
            }
        }
    }
}
