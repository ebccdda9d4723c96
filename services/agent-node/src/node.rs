//! Wires the parts of an agent node under one cancellation token: data dir,
//! NATS, JetStream assets, redb mirror, module cache, the driver watchdog,
//! the liveness check that fences the node, heartbeats, the election, the
//! `op.submit` queue endpoint, the lead's scheduler and the sweeper. On
//! shutdown every operation task is awaited (drivers get TERM, then KILL).

use std::sync::Arc;
use std::time::Duration;

use anyhow::Context as _;
use async_nats::service::ServiceExt;
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;
use tracing::Instrument;
use zerofoot_shared::assets::Assets;
use zerofoot_shared::names::{AGENT_NODE_SERVICE, AGENT_QUEUE_GROUP};
use zerofoot_shared::nats::{connect_with_retry, service_metadata, ConnectSettings};
use zerofoot_shared::nats_auth::ServiceRole;
use zerofoot_shared::protocol::{
    encode, RemoteError, Reply, Role, SubmitAccepted, SubmitOperation, PROTOCOL_VERSION,
};

use crate::cache::ModuleCache;
use crate::config::RunArgs;
use crate::datadir::DataDir;
use crate::heartbeat::{Beat, Standing};
use crate::liveness::Liveness;
use crate::membership::Membership;
use crate::ownership::Owners;
use crate::rules::{StopWhy, Why};
use crate::run::Runner;
use crate::store::{Mirrored, Store};
use zerofoot_shared::telemetry::{micros_since, TIMING};

/// How long shutdown may take once the drivers are told to stop (they get
/// SIGTERM, then SIGKILL after 5 s); the watchdog kills whatever is left
/// when the node exits.
const SHUTDOWN_GRACE: Duration = Duration::from_secs(7);

pub async fn run(args: RunArgs, shutdown: CancellationToken) -> anyhow::Result<()> {
    let data_dir = {
        let (root, wanted) = (args.data_dir.clone(), args.id.clone());
        tokio::task::spawn_blocking(move || DataDir::open(&root, wanted.as_deref()))
            .await
            .context("data dir task failed")??
    };
    let names = args.nats.names();
    let span = tracing::info_span!("node", node = %data_dir.node_id(), zone = %args.zone, cluster = %names.cluster());
    serve(args, data_dir, shutdown).instrument(span).await
}

async fn serve(
    args: RunArgs,
    data_dir: DataDir,
    shutdown: CancellationToken,
) -> anyhow::Result<()> {
    let started_at = zerofoot_shared::time::now();
    let node_id = data_dir.node_id().to_string();
    let names = args.nats.names();
    tracing::info!(data_dir = %data_dir.root().display(), "starting");
    let shim = crate::launcher::locate_shim(args.driver_shim.as_deref())?;
    let sandboxes = {
        let (sandbox_args, node_id, shim) = (args.sandbox.clone(), node_id.clone(), shim.clone());
        tokio::task::spawn_blocking(move || {
            crate::sandbox::Sandboxes::new(&sandbox_args, &node_id, &shim)
        })
        .await
        .context("sandbox task failed")??
    };
    let scratch_root = data_dir.root().join("scratch");
    let cache_root = data_dir.root().join("modules");
    {
        let sandboxes = sandboxes.clone();
        let dirs = [
            data_dir.root().to_path_buf(),
            scratch_root.clone(),
            cache_root.clone(),
        ];
        tokio::task::spawn_blocking(move || {
            for dir in &dirs {
                std::fs::create_dir_all(dir)?;
                sandboxes.make_reachable(dir)?;
            }
            anyhow::Ok(())
        })
        .await
        .context("data dir task failed")??;
    }
    let store = {
        let path = data_dir.root().join("node.redb");
        tokio::task::spawn_blocking(move || Store::open(&path))
            .await
            .context("store task failed")??
    };

    let settings = ConnectSettings::from_args(&args.nats, ServiceRole::Agent).await?;
    let Ok(client) =
        connect_with_retry(&settings, &format!("zf-agent-node {node_id}"), &shutdown).await
    else {
        return Ok(());
    };
    let assets = open_assets(&client, &args, &shutdown).await?;
    let lapse = Duration::from_millis(args.lapse_ms);

    let mut tasks = tokio::task::JoinSet::new();
    // A mirror announces a whole batch at once: each channel holds two.
    let capacity = 2 * crate::mirror::MAX_BATCH;
    let (changes_tx, changes) = tokio::sync::broadcast::channel(capacity);
    let changes_tx_for_owners = changes_tx.clone();
    let (resource_changes_tx, resource_changes) = tokio::sync::broadcast::channel(capacity);
    tasks.spawn(
        crate::mirror::follow(
            assets.contexts.clone(),
            store.clone(),
            Mirrored::Contexts,
            Some(changes_tx),
            shutdown.clone(),
        )
        .in_current_span(),
    );
    tasks.spawn(
        crate::mirror::follow(
            assets.resources.clone(),
            store.clone(),
            Mirrored::Resources,
            Some(resource_changes_tx),
            shutdown.clone(),
        )
        .in_current_span(),
    );

    let cache = {
        let (root, objects, ttl) = (
            cache_root,
            assets.modules.clone(),
            Duration::from_secs(args.module_cache_ttl_s),
        );
        tokio::task::spawn_blocking(move || ModuleCache::open(root, objects, ttl))
            .await
            .context("cache task failed")??
    };
    tasks.spawn(cache.clone().evict_loop(shutdown.clone()).in_current_span());

    let members = Membership::new(&node_id, &args.zone, lapse);
    tasks.spawn(
        members
            .clone()
            .follow(client.clone(), names.clone(), shutdown.clone())
            .in_current_span(),
    );

    let interval = Duration::from_millis(args.heartbeat_ms);
    let watchdog = {
        let program = std::env::current_exe()
            .context("cannot find this program to start the driver watchdog")?;
        crate::watchdog::Watchdog::start(&program, lapse + interval)?
    };
    let launcher = crate::launcher::Launcher::new(shim, Some(watchdog));
    let liveness = Liveness::new(lapse, interval);
    let metrics = match args.endpoints.metrics_addr {
        Some(_) => Some(zerofoot_shared::metrics::install(
            "agent-node",
            shutdown.clone(),
        )?),
        None => None,
    };
    let check = node_health(
        client.clone(),
        liveness.clone(),
        assets.clone(),
        store.clone(),
    );
    tasks.spawn(
        zerofoot_shared::health::serve(args.endpoints.clone(), check, metrics, shutdown.clone())
            .in_current_span(),
    );
    tracing::info!(fence_budget = ?liveness.budget(), "this node fences itself when NATS has not answered for the fence budget");
    tasks.spawn(
        crate::liveness::run(
            liveness.clone(),
            assets.lead.clone(),
            (interval / 2).max(Duration::from_millis(5)),
            shutdown.clone(),
        )
        .in_current_span(),
    );
    let owners = Owners::new(
        &node_id,
        zerofoot_shared::context_store::ContextStore::new(assets.contexts.clone()),
        liveness.clone(),
    );
    tasks.spawn(
        fence_on_silence(liveness.clone(), owners.clone(), shutdown.clone()).in_current_span(),
    );
    tasks.spawn(
        follow_contexts(
            changes_tx_for_owners.subscribe(),
            owners.clone(),
            shutdown.clone(),
        )
        .in_current_span(),
    );
    let ssh_masters = crate::ssh_masters::SshMasters::new(data_dir.root().join("ssh"))
        .await
        .context("cannot prepare the ssh masters' dir under the data dir")?;
    tasks.spawn(
        ssh_masters
            .clone()
            .close_idle(shutdown.clone())
            .in_current_span(),
    );
    let runner = Runner {
        node: node_id.clone(),
        names: names.clone(),
        assets: assets.clone(),
        cache,
        scratch_root,
        sandboxes: sandboxes.clone(),
        trusted: zerofoot_shared::signing::TrustedKeys::load(
            args.trusted_keys.as_deref(),
            args.trusted_keys_file.as_deref(),
        )?,
        verified: Arc::default(),
        secrets_key: args.secrets.load()?,
        launcher,
        ssh_masters,
    };
    tasks.spawn(
        crate::sweeper::Sweeper {
            owners: owners.clone(),
            runner: runner.clone(),
            store: store.clone(),
            members: members.clone(),
            lapse,
            zone: args.zone.clone(),
        }
        .run(shutdown.clone())
        .in_current_span(),
    );

    let service = client
        .service_builder()
        .description("zerofoot agent node: runs module drivers")
        .metadata(service_metadata(names.cluster().as_str(), &node_id))
        .start(AGENT_NODE_SERVICE, zerofoot_shared::VERSION)
        .await
        .map_err(|e| anyhow::anyhow!("cannot register the micro service: {e}"))?;
    // The zone's queue group, and this node's own subject: operations on
    // the resources this node is preferred for come there first (see
    // `zerofoot_shared::submit::preferred_node`).
    for (name, queue_group, subject) in [
        (
            "submit",
            AGENT_QUEUE_GROUP.to_string(),
            names.op_submit(&args.zone),
        ),
        (
            "submit-here",
            format!("submit-{node_id}"),
            names.node_submit(&node_id),
        ),
    ] {
        let endpoint = service
            .endpoint_builder()
            .name(name)
            .queue_group(queue_group)
            .add(subject.clone())
            .await
            .map_err(|e| anyhow::anyhow!("cannot serve {subject}: {e}"))?;
        tasks.spawn(
            serve_submissions(
                endpoint,
                args.zone.clone(),
                owners.clone(),
                runner.clone(),
                shutdown.clone(),
            )
            .in_current_span(),
        );
    }
    let mirror = service
        .endpoint_builder()
        .name("mirror")
        .queue_group(format!("mirror-{node_id}"))
        .add(names.node_mirror(&node_id))
        .await
        .map_err(|e| anyhow::anyhow!("cannot serve the mirror endpoint: {e}"))?;
    tasks.spawn(serve_mirror(mirror, store.clone(), shutdown.clone()).in_current_span());

    let (standing_tx, standing) = watch::channel(Standing {
        role: Role::Auxiliary,
        term: 0,
    });
    tasks.spawn(
        crate::election::run(
            crate::election::Shell {
                me: node_id.clone(),
                names: names.clone(),
                client: client.clone(),
                lead_bucket: assets.lead.clone(),
                lapse,
                reconnect_grace: Duration::from_millis(args.reconnect_grace_ms),
                // A lapse is noticed at most a tick late.
                tick_every: Duration::from_millis(args.heartbeat_ms / 5)
                    .max(Duration::from_millis(5)),
                standing: standing_tx,
                liveness,
                zone: args.zone.clone(),
                link: settings.link(),
            },
            shutdown.clone(),
        )
        .in_current_span(),
    );
    tasks.spawn(
        crate::scheduler::Scheduler {
            owners: owners.clone(),
            client: client.clone(),
            runner,
            names: names.clone(),
            assets: assets.clone(),
            store: store.clone(),
            standing: standing.clone(),
            changes,
            rescan_every: lapse,
            retention: Duration::from_secs(args.context_retention_s),
            zone: args.zone.clone(),
            members,
        }
        .run(shutdown.clone())
        .in_current_span(),
    );
    tasks.spawn(
        serve_cancels(
            client.clone(),
            names.op_cancel("*"),
            owners.clone(),
            shutdown.clone(),
        )
        .in_current_span(),
    );
    let registered_with = crate::registrar::RegisteredWith::default();
    let beat = Beat {
        client: client.clone(),
        subject: names.heartbeat(&node_id),
        node: node_id.clone(),
        interval,
        lapse,
        started_at,
        standing,
        owners: owners.clone(),
        registered_with: registered_with.clone(),
        sandbox: sandboxes.kind(),
        zone: args.zone.clone(),
        labels: args.labels.iter().cloned().collect(),
    };
    tasks.spawn(beat.run(shutdown.clone()).in_current_span());
    let registrar = crate::registrar::Registrar {
        client: client.clone(),
        names: names.clone(),
        node: node_id.clone(),
        store: store.clone(),
        registered: registered_with,
    };
    tasks.spawn(
        registrar
            .run(resource_changes, shutdown.clone())
            .in_current_span(),
    );
    tracing::info!("ready");

    shutdown.cancelled().await;
    // With NATS already gone, stopping the service or flushing would wait
    // for a reconnection that never comes: shutdown is bounded.
    let stopped = tokio::time::timeout(SHUTDOWN_GRACE, async {
        let _ = service.stop().await;
        while tasks.join_next().await.is_some() {}
        owners.wait().await;
        let _ = client.flush().await;
    })
    .await;
    if stopped.is_err() {
        tracing::warn!(grace = ?SHUTDOWN_GRACE, "stopped without a clean goodbye to NATS");
    }
    tracing::info!("stopped");
    Ok(())
}

/// `op.submit`: take the operation (or say why not) and answer at once; the
/// outcome goes to the context.
/// Takes the sync operations handed to this node, of its own `zone` only.
async fn serve_submissions(
    mut endpoint: async_nats::service::endpoint::Endpoint,
    zone: String,
    owners: Owners,
    runner: Runner,
    cancel: CancellationToken,
) {
    while let Some(request) = zerofoot_shared::nats::next_or_cancelled(&mut endpoint, &cancel).await
    {
        let (owners, runner, cancel) = (owners.clone(), runner.clone(), cancel.clone());
        let zone = zone.clone();
        tokio::spawn(
            async move {
                let reply: Reply<SubmitAccepted> = match zerofoot_shared::protocol::decode::<
                    SubmitOperation,
                >(&request.message.payload)
                {
                    Ok(submit) if submit.context.zone != zone => Reply::Error(RemoteError::new(
                        409,
                        "wrong_zone",
                        format!(
                            "operation {} belongs to zone {}; this node serves zone {zone}",
                            submit.op, submit.context.zone
                        ),
                    )),
                    Ok(submit) => submit_one(&owners, &runner, *submit.context, &cancel)
                        .await
                        .map(|()| SubmitAccepted {
                            v: PROTOCOL_VERSION,
                            node: owners.node().to_string(),
                        })
                        .map_err(|e| e.to_remote())
                        .into(),
                    Err(e) => Reply::Error(RemoteError::new(400, "invalid_request", e.to_string())),
                };
                let _ = request.respond(Ok(encode(&reply))).await;
            }
            .in_current_span(),
        );
    }
}

async fn submit_one(
    owners: &Owners,
    runner: &Runner,
    ctx: zerofoot_shared::protocol::ExecutionContext,
    cancel: &CancellationToken,
) -> Result<(), crate::ownership::TakeError> {
    let received = std::time::Instant::now();
    let claim = owners
        .claim(ctx.id, Why::Submitted, Some(ctx), cancel)
        .await?;
    let claim_us = micros_since(received);
    let taken = crate::sync_op::start_claimed(owners, runner, claim).await;
    tracing::debug!(
        target: TIMING,
        claim_us,
        take_written_us = micros_since(received),
        "submission taken"
    );
    taken
}

/// `op.<id>.cancel`: the node running the operation stops it and answers;
/// the others stay silent. (Management records `cancelling` first; this is
/// the fast path to the driver.)
async fn serve_cancels(
    client: async_nats::Client,
    subject: String,
    owners: Owners,
    cancel: CancellationToken,
) {
    let mut sub = match client.subscribe(subject).await {
        Ok(sub) => sub,
        Err(e) => {
            tracing::error!(error = %e, "cannot subscribe to cancel requests");
            return;
        }
    };
    while let Some(msg) = zerofoot_shared::nats::next_or_cancelled(&mut sub, &cancel).await {
        // zf.<cluster>.op.<op-id>.cancel
        let op = msg
            .subject
            .split('.')
            .nth(3)
            .and_then(|id| id.parse::<uuid::Uuid>().ok());
        if let (Some(op), Some(reply)) = (op, msg.reply) {
            if owners.stop(&op, StopWhy::Cancel) {
                tracing::info!(op = %op, "cancel requested: stopping the driver");
                let ack = Reply::Ok(SubmitAccepted {
                    v: PROTOCOL_VERSION,
                    node: owners.node().to_string(),
                });
                let _ = client.publish(reply, encode(&ack)).await;
            }
        }
    }
}

/// Stops every local run while the node is fenced (NATS silent for the
/// fence budget): no driver of this node runs beside another owner's.
async fn fence_on_silence(liveness: Liveness, owners: Owners, cancel: CancellationToken) {
    let mut fenced = liveness.subscribe();
    loop {
        tokio::select! {
            _ = cancel.cancelled() => return,
            changed = fenced.changed() => {
                if changed.is_err() {
                    return;
                }
                if *fenced.borrow_and_update() {
                    let stopped = owners.stop_all(StopWhy::Fenced);
                    tracing::error!(stopped, "fenced: every driver on this node was stopped; the operations are left to their next owners");
                }
            }
        }
    }
}

/// Tells the local runs about changes of their contexts (a cancel recorded,
/// another owner), as this node's mirror sees them.
async fn follow_contexts(
    mut changes: tokio::sync::broadcast::Receiver<crate::store::Change>,
    owners: Owners,
    cancel: CancellationToken,
) {
    use tokio::sync::broadcast::error::RecvError;
    loop {
        let change = tokio::select! {
            _ = cancel.cancelled() => return,
            change = changes.recv() => change,
        };
        match change {
            Ok(crate::store::Change::Put { key, value }) => {
                // Every node hears every change; only its own runs' are decoded.
                let runs_here = key
                    .parse::<uuid::Uuid>()
                    .is_ok_and(|id| owners.runs_here(&id));
                if !runs_here {
                    continue;
                }
                if let Ok(ctx) = zerofoot_shared::protocol::decode::<
                    zerofoot_shared::protocol::ExecutionContext,
                >(&value)
                {
                    owners.context_changed(&ctx);
                }
            }
            Ok(crate::store::Change::Delete { .. }) => {}
            Err(RecvError::Lagged(missed)) => {
                tracing::warn!(missed, "context changes came faster than they were followed; re-reading the local runs' contexts");
                owners.recheck_all().await;
            }
            Err(RecvError::Closed) => return,
        }
    }
}

/// `node.<id>.mirror`: what this node's redb mirror holds, for operators and
/// tests; `{"only_revisions": true}` answers the applied revisions alone.
async fn serve_mirror(
    mut endpoint: async_nats::service::endpoint::Endpoint,
    store: Store,
    cancel: CancellationToken,
) {
    while let Some(request) = zerofoot_shared::nats::next_or_cancelled(&mut endpoint, &cancel).await
    {
        let only_revisions = serde_json::from_slice::<serde_json::Value>(&request.message.payload)
            .map(|v| v["only_revisions"] == true)
            .unwrap_or(false);
        let summary = store
            .run(move |s| {
                if only_revisions {
                    return Ok(serde_json::json!({
                        "v": 1,
                        "contexts_revision": s.revision(Mirrored::Contexts)?,
                        "resources_revision": s.revision(Mirrored::Resources)?,
                    }));
                }
                let dump = s.dump()?;
                Ok(serde_json::json!({
                    "v": 1,
                    "contexts_revision": dump.contexts_revision,
                    "resources_revision": dump.resources_revision,
                    "contexts": dump.contexts.iter().map(|c| serde_json::json!({"id": c.id, "state": c.state})).collect::<Vec<_>>(),
                    "resources": dump.resources,
                }))
            })
            .await;
        let reply: Reply<serde_json::Value> = summary
            .map_err(|e| RemoteError::new(500, "internal", e.to_string()))
            .into();
        let _ = request.respond(Ok(encode(&reply))).await;
    }
}

/// Opens the cluster's JetStream assets, retrying while JetStream is not ready.
async fn open_assets(
    client: &async_nats::Client,
    args: &RunArgs,
    shutdown: &CancellationToken,
) -> anyhow::Result<Assets> {
    let mut delay = Duration::from_millis(200);
    loop {
        match Assets::open(
            client.clone(),
            &args.nats.names(),
            &args.nats.asset_settings(),
        )
        .await
        {
            Ok(assets) => return Ok(assets),
            Err(e) => tracing::warn!(error = %e, "retrying"),
        }
        tokio::select! {
            _ = shutdown.cancelled() => anyhow::bail!("shutdown requested before JetStream was ready"),
            _ = tokio::time::sleep(delay) => {}
        }
        delay = (delay * 2).min(Duration::from_secs(5));
    }
}

/// How far behind the contexts bucket the mirror may be and still count as
/// current (it applies changes continuously; a node rebuilding after a long
/// absence is further behind).
const MIRROR_CURRENT_WITHIN: u64 = 1000;

/// The node is healthy while NATS is connected and answers within the fence
/// budget, and its mirror of the contexts is current.
fn node_health(
    client: async_nats::Client,
    liveness: Liveness,
    assets: Assets,
    store: Store,
) -> zerofoot_shared::health::Check {
    Arc::new(move || {
        let (client, liveness, assets, store) = (
            client.clone(),
            liveness.clone(),
            assets.clone(),
            store.clone(),
        );
        Box::pin(async move {
            zerofoot_shared::health::nats_connected(&client)?;
            if !liveness.may_act() {
                return Err(
                    "NATS has not answered within the fence budget: this node has fenced itself"
                        .into(),
                );
            }
            let contexts = assets.contexts.clone();
            let last = contexts
                .status()
                .await
                .map_err(|e| format!("cannot read the contexts bucket's state: {e}"))?
                .info
                .state
                .last_sequence;
            let applied = store
                .run(|s| s.revision(Mirrored::Contexts))
                .await
                .map_err(|e| format!("cannot read the mirror: {e}"))?;
            let lag = last.saturating_sub(applied);
            if lag > MIRROR_CURRENT_WITHIN {
                return Err(format!(
                    "the mirror is {lag} revisions behind the contexts bucket"
                ));
            }
            Ok(serde_json::json!({"nats": "connected", "mirror_lag": lag}))
        })
    })
}
