//! The repository's micro-service endpoints (`zf.<cluster>.repo.put|get|list`)
//! and its start-up: connect, open assets, load the stock modules, serve.

use std::time::Duration;

use anyhow::Context as _;
use async_nats::service::{self, ServiceExt};
use tokio_util::sync::CancellationToken;
use tracing::Instrument;
use zerofoot_shared::assets::Assets;
use zerofoot_shared::modules::ModuleCatalog;
use zerofoot_shared::names::REPOSITORY_SERVICE;
use zerofoot_shared::nats::{connect_with_retry, service_metadata, ConnectSettings};
use zerofoot_shared::nats_auth::ServiceRole;
use zerofoot_shared::protocol::{encode, GetModule, ModuleRecord, PutModule, RemoteError, Reply};

use crate::config::Config;
use crate::store::ModuleStore;

pub async fn run(config: Config, shutdown: CancellationToken) -> anyhow::Result<()> {
    let id = config
        .id
        .clone()
        .unwrap_or_else(|| format!("repo-{}", &uuid::Uuid::new_v4().simple().to_string()[..8]));
    zerofoot_shared::names::validate_instance_id(&id)?;
    let names = config.nats.names();
    let span = tracing::info_span!("repository", id = %id, cluster = %names.cluster());
    serve(config, id, shutdown).instrument(span).await
}

async fn serve(config: Config, id: String, shutdown: CancellationToken) -> anyhow::Result<()> {
    let names = config.nats.names();
    let settings = ConnectSettings::from_args(&config.nats, ServiceRole::Repository).await?;
    let Ok(client) = connect_with_retry(&settings, &format!("zf-repository {id}"), &shutdown).await
    else {
        return Ok(());
    };
    let metrics = match config.endpoints.metrics_addr {
        Some(_) => Some(zerofoot_shared::metrics::install(
            "repository",
            shutdown.clone(),
        )?),
        None => None,
    };
    let health_client = client.clone();
    let check: zerofoot_shared::health::Check = std::sync::Arc::new(move || {
        let client = health_client.clone();
        Box::pin(async move {
            zerofoot_shared::health::nats_connected(&client)?;
            Ok(serde_json::json!({"nats": "connected"}))
        })
    });
    let endpoints = config.endpoints.clone();
    let served = shutdown.clone();
    tokio::spawn(
        async move { zerofoot_shared::health::serve(endpoints, check, metrics, served).await },
    );
    let assets = loop {
        match Assets::open(client.clone(), &names, &config.nats.asset_settings()).await {
            Ok(assets) => break assets,
            Err(e) => tracing::warn!(error = %e, "retrying"),
        }
        tokio::select! {
            _ = shutdown.cancelled() => return Ok(()),
            _ = tokio::time::sleep(Duration::from_millis(500)) => {}
        }
    };
    let signer = zerofoot_shared::signing::ModuleSigner::load(
        config.signing_key.as_deref(),
        config.signing_key_file.as_deref(),
    )?;
    match &signer {
        Some(signer) => tracing::info!(public_key = %signer.public_hex(), "signing every new module version"),
        None => tracing::warn!("no signing key: new modules are stored unsigned, and nodes that verify signatures will refuse them"),
    }
    let store = ModuleStore {
        signer: signer.map(std::sync::Arc::new),
        client: client.clone(),
        assets: assets.clone(),
        names: names.clone(),
        max_bundle_bytes: config.max_bundle_bytes,
    };
    if !config.no_stock_modules {
        crate::stock::load(&store).await;
    }
    let catalog = ModuleCatalog::start(assets.module_index.clone(), shutdown.clone());

    let service = client
        .service_builder()
        .description("zerofoot module repository")
        .metadata(service_metadata(names.cluster().as_str(), &id))
        .start(REPOSITORY_SERVICE, zerofoot_shared::VERSION)
        .await
        .map_err(|e| anyhow::anyhow!("cannot register the micro service: {e}"))?;
    let group = service.group(names.repository_prefix());
    let put = group
        .endpoint("put")
        .await
        .map_err(|e| anyhow::anyhow!("{e}"))
        .context("put endpoint")?;
    let get = group
        .endpoint("get")
        .await
        .map_err(|e| anyhow::anyhow!("{e}"))
        .context("get endpoint")?;
    let list = group
        .endpoint("list")
        .await
        .map_err(|e| anyhow::anyhow!("{e}"))
        .context("list endpoint")?;
    tracing::info!("ready");

    let tasks = [
        tokio::spawn(handle(put, "put", shutdown.clone(), {
            let store = store.clone();
            move |req: PutModule| {
                let store = store.clone();
                async move { store.accept_upload(&req.upload).await }
            }
        })),
        tokio::spawn(handle(get, "get", shutdown.clone(), {
            let catalog = catalog.clone();
            move |req: GetModule| {
                let catalog = catalog.clone();
                async move { get_module(&catalog, req).await }
            }
        })),
        tokio::spawn(handle(list, "list", shutdown.clone(), {
            let catalog = catalog.clone();
            move |_: serde_json::Value| {
                let catalog = catalog.clone();
                async move {
                    catalog
                        .list()
                        .await
                        .map(|modules| serde_json::json!({"v": 1, "modules": modules}))
                        .map_err(|e| RemoteError::new(503, "unavailable", e.to_string()))
                }
            }
        })),
    ];
    for task in tasks {
        let _ = task.await;
    }
    // NATS may be gone already: do not wait for it for ever.
    let _ = tokio::time::timeout(Duration::from_secs(2), service.stop()).await;
    tracing::info!("stopped");
    Ok(())
}

async fn get_module(catalog: &ModuleCatalog, req: GetModule) -> Result<ModuleRecord, RemoteError> {
    let unavailable = |e: zerofoot_shared::modules::CatalogError| {
        RemoteError::new(503, "unavailable", e.to_string())
    };
    let found = match (&req.digest, &req.name) {
        (Some(digest), _) => catalog.by_digest(digest).await.map_err(unavailable)?,
        (None, Some(name)) => {
            let version = req
                .version
                .as_deref()
                .map(str::parse::<semver::Version>)
                .transpose()
                .map_err(|e| {
                    RemoteError::new(
                        400,
                        "invalid_version",
                        format!("version is not semver: {e}"),
                    )
                })?;
            catalog
                .resolve(name, version.as_ref())
                .await
                .map_err(unavailable)?
        }
        (None, None) => {
            return Err(RemoteError::new(
                400,
                "invalid_request",
                "give a module name (and optionally a version) or a digest",
            ))
        }
    };
    found.ok_or_else(|| {
        RemoteError::new(
            404,
            "module_not_found",
            format!(
                "no module matches {}",
                serde_json::json!({"name": req.name, "version": req.version, "digest": req.digest})
            ),
        )
    })
}

/// Serves one endpoint: decode the request, run `f` in its own task, answer
/// with a [`Reply`]. A malformed request gets an error reply, never a crash.
/// Counted in `zf_repository_requests_total` by outcome, timed in
/// `zf_repository_request_seconds`.
async fn handle<Req, Resp, F, Fut>(
    mut endpoint: service::endpoint::Endpoint,
    name: &'static str,
    cancel: CancellationToken,
    f: F,
) where
    Req: serde::de::DeserializeOwned + Send + 'static,
    Resp: serde::Serialize + Send + 'static,
    F: Fn(Req) -> Fut + Send + 'static,
    Fut: std::future::Future<Output = Result<Resp, RemoteError>> + Send + 'static,
{
    while let Some(request) = zerofoot_shared::nats::next_or_cancelled(&mut endpoint, &cancel).await
    {
        let parsed: Result<Req, RemoteError> = serde_json::from_slice(&request.message.payload)
            .map_err(|e| {
                RemoteError::new(
                    400,
                    "invalid_request",
                    format!("the request is not valid: {e}"),
                )
            });
        let work = parsed.map(&f);
        tokio::spawn(async move {
            let started = std::time::Instant::now();
            let reply: Reply<Resp> = match work {
                Ok(fut) => fut.await.into(),
                Err(e) => Reply::Error(e),
            };
            let outcome = match &reply {
                Reply::Error(e) => e.code.clone(),
                _ => "ok".to_string(),
            };
            metrics::counter!("zf_repository_requests_total", "endpoint" => name, "outcome" => outcome)
                .increment(1);
            metrics::histogram!("zf_repository_request_seconds", "endpoint" => name)
                .record(started.elapsed().as_secs_f64());
            if let Err(e) = request.respond(Ok(encode(&reply))).await {
                tracing::debug!(error = %e, "cannot answer a request (requester gone?)");
            }
        });
    }
}
