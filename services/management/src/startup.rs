//! Builds the management service from its config: binds the HTTP listener
//! first (so /healthz answers 503 while NATS is away), connects to NATS in the
//! background, then serves until the shutdown token fires.

use std::sync::{Arc, OnceLock};
use std::time::Duration;

use anyhow::Context as _;
use async_nats::service::ServiceExt;
use tokio_util::sync::CancellationToken;
use zerofoot_shared::assets::Assets;
use zerofoot_shared::modules::ModuleCatalog;
use zerofoot_shared::names::{Names, MANAGEMENT_SERVICE};
use zerofoot_shared::nats::{connect_with_retry, service_metadata, ConnectSettings};
use zerofoot_shared::nats_auth::ServiceRole;

use crate::cluster_view::ClusterView;
use crate::config::Config;
use crate::error::ApiError;

/// What exists once NATS is reachable.
pub struct Nats {
    pub client: async_nats::Client,
    pub assets: Assets,
    pub catalog: ModuleCatalog,
    pub contexts: crate::context_watch::ContextWatch,
    /// Typed reads and compare-and-set writes of contexts.
    pub store: zerofoot_shared::context_store::ContextStore,
    _service: async_nats::service::Service,
}

#[derive(Clone)]
pub struct AppState {
    inner: Arc<Inner>,
}

struct Inner {
    secrets_key: Option<zerofoot_shared::sealing::SecretsKey>,
    shutdown: CancellationToken,
    config: Config,
    tokens: crate::auth::Tokens,
    id: String,
    names: Names,
    nats: OnceLock<Nats>,
    view: ClusterView,
    stream_slots: crate::client_limits::StreamSlots,
    metrics: metrics_exporter_prometheus::PrometheusHandle,
}

impl AppState {
    fn new(
        config: Config,
        tokens: crate::auth::Tokens,
        secrets_key: Option<zerofoot_shared::sealing::SecretsKey>,
        metrics: metrics_exporter_prometheus::PrometheusHandle,
        shutdown: CancellationToken,
    ) -> Self {
        let id = config
            .id
            .clone()
            .unwrap_or_else(|| format!("mgmt-{}", &uuid::Uuid::new_v4().simple().to_string()[..8]));
        let names = config.nats.names();
        let stream_slots =
            crate::client_limits::StreamSlots::new(config.max_event_streams_per_client as usize);
        metrics::gauge!("zf_sse_clients").set(0.0);
        Self {
            inner: Arc::new(Inner {
                secrets_key,
                shutdown,
                config,
                tokens,
                id,
                names,
                nats: OnceLock::new(),
                view: ClusterView::default(),
                stream_slots,
                metrics,
            }),
        }
    }

    /// The NATS handles, or 503 while the service is still connecting.
    pub fn nats(&self) -> Result<&Nats, ApiError> {
        self.inner.nats.get().ok_or_else(|| {
            ApiError::unavailable(format!(
                "not connected to NATS at {} yet; retrying in the background",
                self.inner.config.nats.nats_url
            ))
        })
    }

    pub fn id(&self) -> &str {
        &self.inner.id
    }
    pub fn names(&self) -> &Names {
        &self.inner.names
    }
    pub fn view(&self) -> &ClusterView {
        &self.inner.view
    }
    pub fn secrets_key(&self) -> Option<&zerofoot_shared::sealing::SecretsKey> {
        self.inner.secrets_key.as_ref()
    }
    /// Fires when the service shuts down; long-lived responses end with it.
    pub fn shutdown(&self) -> &CancellationToken {
        &self.inner.shutdown
    }
    pub fn tokens(&self) -> &crate::auth::Tokens {
        &self.inner.tokens
    }
    pub fn config(&self) -> &Config {
        &self.inner.config
    }
    /// This process's metrics recorder.
    pub fn metrics(&self) -> &metrics_exporter_prometheus::PrometheusHandle {
        &self.inner.metrics
    }
    /// Live event streams per client on this instance.
    pub fn stream_slots(&self) -> &crate::client_limits::StreamSlots {
        &self.inner.stream_slots
    }
}

/// Runs the service until `shutdown` fires.
pub async fn run(config: Config, shutdown: CancellationToken) -> anyhow::Result<()> {
    let tokens =
        crate::auth::Tokens::load(config.api_tokens.as_deref(), config.tokens_file.as_deref())?;
    if tokens.is_empty() && !config.http_addr.ip().is_loopback() {
        anyhow::bail!(
            "no API token is configured, so the API may only listen on a loopback address, not {}; set ZF_API_TOKENS (e.g. admin:<secret>) or --tokens-file, or use --http-addr 127.0.0.1:{}",
            config.http_addr,
            config.http_addr.port()
        );
    }
    let listener = tokio::net::TcpListener::bind(config.http_addr)
        .await
        .with_context(|| format!("cannot listen on {}", config.http_addr))?;
    let secrets_key = config.secrets.load()?;
    if secrets_key.is_none() {
        tracing::warn!("no secrets key (ZF_SECRETS_KEY): resources with secrets will be refused");
    }
    let nats_settings = ConnectSettings::from_args(&config.nats, ServiceRole::Management).await?;
    let metrics = zerofoot_shared::metrics::install("management", shutdown.clone())?;
    let state = AppState::new(config, tokens, secrets_key, metrics, shutdown.clone());
    let span =
        tracing::info_span!("management", id = %state.id(), cluster = %state.names().cluster());
    let _enter = span.enter();
    tracing::info!(addr = %listener.local_addr()?, "HTTP API listening");

    tokio::spawn(connect(state.clone(), nats_settings, shutdown.clone()));

    let app = crate::routes::router(state.clone());
    axum::serve(listener, app)
        .with_graceful_shutdown(shutdown.clone().cancelled_owned())
        .await
        .context("HTTP server failed")?;
    tracing::info!("stopped");
    Ok(())
}

async fn connect(state: AppState, settings: ConnectSettings, shutdown: CancellationToken) {
    let config = state.config();
    let name = format!("zf-management {}", state.id());
    let Ok(client) = connect_with_retry(&settings, &name, &shutdown).await else {
        return;
    };
    let mut delay = Duration::from_millis(200);
    let assets = loop {
        match Assets::open(client.clone(), state.names(), &config.nats.asset_settings()).await {
            Ok(assets) => break assets,
            Err(e) => {
                tracing::warn!(error = %e, "retrying");
                tokio::select! {
                    _ = shutdown.cancelled() => return,
                    _ = tokio::time::sleep(delay) => {}
                }
                delay = (delay * 2).min(Duration::from_secs(5));
            }
        }
    };
    let service = match client
        .service_builder()
        .description("zerofoot management: HTTP API of the cluster")
        .metadata(service_metadata(
            state.names().cluster().as_str(),
            state.id(),
        ))
        .start(MANAGEMENT_SERVICE, zerofoot_shared::VERSION)
        .await
    {
        Ok(service) => service,
        Err(e) => {
            tracing::error!(error = %e, "cannot register the micro service; restart the process");
            return;
        }
    };
    match service
        .endpoint_builder()
        .name("register")
        .queue_group(format!("register-{}", state.id()))
        .add(state.names().management_register(state.id()))
        .await
    {
        Ok(endpoint) => {
            tokio::spawn(serve_registrations(
                endpoint,
                state.clone(),
                shutdown.clone(),
            ));
        }
        Err(e) => {
            tracing::error!(error = %e, "cannot serve registrations; nodes will not register here")
        }
    }
    let catalog = ModuleCatalog::start(assets.module_index.clone(), shutdown.clone());
    let contexts = crate::context_watch::ContextWatch::new(
        crate::client_limits::ClientLimits::new(config.max_operations_per_client as usize),
    );
    tokio::spawn(
        contexts
            .clone()
            .follow(assets.contexts.clone(), shutdown.clone()),
    );
    state
        .view()
        .start(client.clone(), state.names().clone(), shutdown.clone());
    let store = zerofoot_shared::context_store::ContextStore::new(assets.contexts.clone());
    let _ = state.inner.nats.set(Nats {
        client,
        assets,
        catalog,
        contexts,
        store,
        _service: service,
    });
    tracing::info!("ready");
}

/// `zf.<cluster>.mgmt.<id>.register`: a node's registration and inventory,
/// a whole inventory coming in chunks (see [`ClusterView::register`]). A
/// chunk out of order is refused (409), and the node registers again.
async fn serve_registrations(
    mut endpoint: async_nats::service::endpoint::Endpoint,
    state: AppState,
    shutdown: CancellationToken,
) {
    use crate::cluster_view::RegisterOutcome;
    use zerofoot_shared::protocol::{
        decode, encode, Registered, Registration, RemoteError, Reply, PROTOCOL_VERSION,
    };
    while let Some(request) =
        zerofoot_shared::nats::next_or_cancelled(&mut endpoint, &shutdown).await
    {
        let reply: Reply<Registered> = match decode::<Registration>(&request.message.payload) {
            Ok(registration) => {
                let node = registration.node.clone();
                match state.view().register(registration) {
                    Ok(outcome) => {
                        if let RegisterOutcome::Complete { resources } = outcome {
                            tracing::info!(%node, resources, "node registered");
                        }
                        Reply::Ok(Registered {
                            v: PROTOCOL_VERSION,
                            management: state.id().to_string(),
                        })
                    }
                    Err(e) => {
                        tracing::debug!(%node, error = %e, "registration chunk refused");
                        Reply::Error(RemoteError::new(
                            409,
                            "registration_out_of_order",
                            e.to_string(),
                        ))
                    }
                }
            }
            Err(e) => Reply::Error(RemoteError::new(400, "invalid_registration", e.to_string())),
        };
        let _ = request.respond(Ok(encode(&reply))).await;
    }
}
