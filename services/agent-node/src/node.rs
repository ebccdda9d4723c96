//! Wires the parts of an agent node under one cancellation token: data dir,
//! NATS, JetStream assets, micro service, heartbeats.

use std::sync::atomic::AtomicU32;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context as _;
use async_nats::service::ServiceExt;
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;
use zerofoot_shared::assets::Assets;
use zerofoot_shared::names::AGENT_NODE_SERVICE;
use zerofoot_shared::nats::{connect_with_retry, service_metadata};
use zerofoot_shared::protocol::Role;

use crate::config::RunArgs;
use crate::datadir::DataDir;
use crate::heartbeat::{Beat, Standing};

pub async fn run(args: RunArgs, shutdown: CancellationToken) -> anyhow::Result<()> {
    let started_at = zerofoot_shared::time::now();
    let data_dir = {
        let (root, wanted) = (args.data_dir.clone(), args.id.clone());
        tokio::task::spawn_blocking(move || DataDir::open(&root, wanted.as_deref()))
            .await
            .context("data dir task failed")??
    };
    let node_id = data_dir.node_id().to_string();
    let names = args.nats.names();
    let span = tracing::info_span!("node", node = %node_id, cluster = %names.cluster());
    let _enter = span.enter();
    tracing::info!(data_dir = %data_dir.root().display(), "starting");

    let client = match connect_with_retry(
        &args.nats.nats_url,
        &format!("zf-agent-node {node_id}"),
        &shutdown,
    )
    .await
    {
        Ok(client) => client,
        Err(_) => return Ok(()),
    };
    let _assets = open_assets(&client, &args, &shutdown).await?;

    let _service = client
        .service_builder()
        .description("zerofoot agent node: runs module drivers")
        .metadata(service_metadata(names.cluster().as_str(), &node_id))
        .start(AGENT_NODE_SERVICE, zerofoot_shared::VERSION)
        .await
        .map_err(|e| anyhow::anyhow!("cannot register the micro service: {e}"))?;

    let (_standing_tx, standing) = watch::channel(Standing {
        role: Role::Auxiliary,
        term: 0,
    });
    let running = Arc::new(AtomicU32::new(0));
    let beat = Beat {
        client: client.clone(),
        subject: names.heartbeat(&node_id),
        node: node_id.clone(),
        interval: Duration::from_millis(args.heartbeat_ms),
        lapse: Duration::from_millis(args.lapse_ms),
        started_at,
        standing,
        running,
    };
    let heartbeats = tokio::spawn(beat.run(shutdown.clone()));
    tracing::info!("ready");

    shutdown.cancelled().await;
    let _ = heartbeats.await;
    let _ = client.flush().await;
    tracing::info!("stopped");
    Ok(())
}

/// Opens the cluster's JetStream assets, retrying while JetStream is not ready.
async fn open_assets(
    client: &async_nats::Client,
    args: &RunArgs,
    shutdown: &CancellationToken,
) -> anyhow::Result<Assets> {
    let mut delay = Duration::from_millis(200);
    loop {
        match Assets::open(client.clone(), &args.nats.names(), args.nats.replicas).await {
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
