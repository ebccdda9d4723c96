//! The JetStream assets of one cluster and their settings, in one place
//! (SPEC §2, §12). Every service opens them through [`Assets::open`], which
//! creates what is missing and warns about existing assets whose settings
//! could lose data (fewer replicas than asked for, memory storage).

use std::time::Duration;

use async_nats::jetstream::{self, kv, object_store, stream};

use crate::names::Names;

/// Objects in the uploads store that nobody picked up are dropped after this.
const UPLOAD_MAX_AGE: Duration = Duration::from_secs(3600);
/// Lead claims kept per key, so that `nats kv history` shows the terms.
const LEAD_HISTORY: i64 = 64;
/// `Nats-Msg-Id` deduplication window of the events stream.
pub const EVENTS_DUPLICATE_WINDOW: Duration = Duration::from_secs(120);
/// How long the marker of a purged context stays in the contexts bucket
/// before the server drops it (per-message TTL, nats-server 2.11 or newer):
/// long enough for every live watcher to see the delete. The contexts
/// bucket is created with `allow_msg_ttl` for it (its delete marker TTL is
/// set to the same; the bucket has no max age, so none is ever placed).
pub const CONTEXT_MARKER_TTL: Duration = Duration::from_secs(3600);

#[derive(Debug, thiserror::Error)]
#[error("cannot open or create the JetStream asset {asset}: {message}; check that nats-server runs with JetStream enabled")]
pub struct AssetError {
    pub asset: String,
    pub message: String,
}

impl AssetError {
    fn new(asset: &str, err: impl std::fmt::Display) -> Self {
        Self {
            asset: asset.to_string(),
            message: err.to_string(),
        }
    }
}

/// How the assets a process creates are set up.
#[derive(Clone, Debug)]
pub struct AssetSettings {
    pub replicas: u8,
    pub events_max_age: Duration,
    /// 0: no limit.
    pub events_max_bytes: u64,
}

/// Handles on every bucket, object store and stream of one cluster, shared:
/// a clone is a reference count, not a copy. Every operation and monitor
/// holds the assets, and the handles by value are over 12 KiB (each keeps
/// its stream's configuration), which at ten thousand monitors was most of
/// a node's memory per monitor.
#[derive(Clone)]
pub struct Assets(std::sync::Arc<AssetHandles>);

impl std::ops::Deref for Assets {
    type Target = AssetHandles;

    fn deref(&self) -> &AssetHandles {
        &self.0
    }
}

/// What [`Assets`] shares.
pub struct AssetHandles {
    pub jetstream: jetstream::Context,
    pub contexts: kv::Store,
    pub lead: kv::Store,
    pub resources: kv::Store,
    pub module_index: kv::Store,
    pub modules: object_store::ObjectStore,
    pub uploads: object_store::ObjectStore,
    pub events: stream::Stream,
    /// Driver log lines, per operation ([`crate::oplog`]).
    pub logs: stream::Stream,
}

impl Assets {
    /// Opens every asset, creating the missing ones with `replicas` replicas.
    pub async fn open(
        client: async_nats::Client,
        names: &Names,
        settings: &AssetSettings,
    ) -> Result<Self, AssetError> {
        let js = jetstream::new(client);
        let replicas = usize::from(settings.replicas);
        let kv_config = |bucket: String, history: i64| kv::Config {
            bucket,
            history,
            num_replicas: replicas,
            storage: jetstream::stream::StorageType::File,
            ..Default::default()
        };
        let contexts = open_kv(
            &js,
            kv::Config {
                limit_markers: Some(CONTEXT_MARKER_TTL),
                ..kv_config(names.contexts_bucket(), 1)
            },
            replicas,
        )
        .await?;
        let lead = open_kv(&js, kv_config(names.lead_bucket(), LEAD_HISTORY), replicas).await?;
        let resources = open_kv(&js, kv_config(names.resources_bucket(), 1), replicas).await?;
        let module_index =
            open_kv(&js, kv_config(names.module_index_bucket(), 1), replicas).await?;
        let modules = open_objects(
            &js,
            object_store::Config {
                bucket: names.module_objects(),
                description: Some("zerofoot module bundles, by digest".into()),
                num_replicas: replicas,
                ..Default::default()
            },
            replicas,
        )
        .await?;
        let uploads = open_objects(
            &js,
            object_store::Config {
                bucket: names.upload_objects(),
                description: Some("zerofoot bundles waiting for validation".into()),
                max_age: UPLOAD_MAX_AGE,
                num_replicas: replicas,
                ..Default::default()
            },
            replicas,
        )
        .await?;
        let events_name = names.events_stream();
        let events = js
            .get_or_create_stream(stream::Config {
                name: events_name.clone(),
                subjects: vec![names.all_op_events()],
                max_age: settings.events_max_age,
                max_bytes: if settings.events_max_bytes == 0 {
                    -1
                } else {
                    settings.events_max_bytes as i64
                },
                duplicate_window: EVENTS_DUPLICATE_WINDOW,
                num_replicas: replicas,
                storage: stream::StorageType::File,
                allow_direct: true,
                ..Default::default()
            })
            .await
            .map_err(|e| AssetError::new(&events_name, e))?;
        let mut events_probe = events.clone();
        check_stream(&mut events_probe, &events_name, replicas).await;
        if let Ok(info) = events_probe.info().await {
            if info.config.max_age != settings.events_max_age {
                tracing::warn!(
                    asset = %events_name,
                    found_s = info.config.max_age.as_secs(),
                    configured_s = settings.events_max_age.as_secs(),
                    "the events stream keeps events for another age than configured; change it with `nats stream edit --max-age`"
                );
            }
        }
        let logs_name = names.logs_stream();
        let mut logs = js
            .get_or_create_stream(stream::Config {
                name: logs_name.clone(),
                subjects: vec![names.all_op_logs()],
                max_age: settings.events_max_age,
                max_messages_per_subject: crate::oplog::LINES_PER_OPERATION,
                discard: stream::DiscardPolicy::Old,
                num_replicas: replicas,
                storage: stream::StorageType::File,
                allow_direct: true,
                ..Default::default()
            })
            .await
            .map_err(|e| AssetError::new(&logs_name, e))?;
        check_stream(&mut logs, &logs_name, replicas).await;
        Ok(Self(std::sync::Arc::new(AssetHandles {
            jetstream: js,
            contexts,
            lead,
            resources,
            module_index,
            modules,
            uploads,
            events,
            logs,
        })))
    }
}

impl Assets {
    /// Turns on per-message TTLs for a contexts bucket made without them (by
    /// an earlier zerofoot), so purge markers expire there too. The server
    /// allows turning it on, never off; one older than 2.11 refuses.
    pub async fn allow_context_marker_ttl(&self) -> Result<(), AssetError> {
        let name = self.contexts.stream_name.clone();
        let mut stream = self
            .jetstream
            .get_stream(&name)
            .await
            .map_err(|e| AssetError::new(&name, e))?;
        let info = stream.info().await.map_err(|e| AssetError::new(&name, e))?;
        if info.config.allow_message_ttl {
            return Ok(());
        }
        let config = stream::Config {
            allow_message_ttl: true,
            ..info.config.clone()
        };
        self.jetstream
            .update_stream(config)
            .await
            .map_err(|e| AssetError::new(&name, e))?;
        tracing::info!(stream = %name, "turned on per-message TTLs for a contexts bucket made without them: purge markers now expire");
        Ok(())
    }
}

async fn open_kv(
    js: &jetstream::Context,
    config: kv::Config,
    replicas: usize,
) -> Result<kv::Store, AssetError> {
    let bucket = config.bucket.clone();
    let store = match js.get_key_value(&bucket).await {
        Ok(store) => store,
        Err(_) => match create_kv(js, config).await {
            Ok(store) => store,
            // Another service created it between our get and create.
            Err(create_err) => js
                .get_key_value(&bucket)
                .await
                .map_err(|_| AssetError::new(&bucket, create_err))?,
        },
    };
    if let Ok(mut stream) = js.get_stream(format!("KV_{bucket}")).await {
        check_stream(&mut stream, &bucket, replicas).await;
    }
    Ok(store)
}

/// Creates a bucket; on a server older than 2.11, which has no per-message
/// TTL, without `limit_markers` (purge markers then stay).
async fn create_kv(
    js: &jetstream::Context,
    config: kv::Config,
) -> Result<kv::Store, jetstream::context::CreateKeyValueError> {
    use jetstream::context::CreateKeyValueErrorKind;
    match js.create_key_value(config.clone()).await {
        Err(e)
            if e.kind() == CreateKeyValueErrorKind::LimitMarkersNotSupported
                && config.limit_markers.is_some() =>
        {
            tracing::warn!(
                bucket = %config.bucket,
                "nats-server is older than 2.11: the bucket is created without per-message TTLs"
            );
            js.create_key_value(kv::Config {
                limit_markers: None,
                ..config
            })
            .await
        }
        other => other,
    }
}

async fn open_objects(
    js: &jetstream::Context,
    config: object_store::Config,
    replicas: usize,
) -> Result<object_store::ObjectStore, AssetError> {
    let bucket = config.bucket.clone();
    let store = match js.get_object_store(&bucket).await {
        Ok(store) => store,
        Err(_) => match js.create_object_store(config).await {
            Ok(store) => store,
            Err(create_err) => js
                .get_object_store(&bucket)
                .await
                .map_err(|_| AssetError::new(&bucket, create_err))?,
        },
    };
    if let Ok(mut stream) = js.get_stream(format!("OBJ_{bucket}")).await {
        check_stream(&mut stream, &bucket, replicas).await;
    }
    Ok(store)
}

/// Warns about settings that can lose acknowledged data.
async fn check_stream(stream: &mut stream::Stream, asset: &str, replicas: usize) {
    let Ok(info) = stream.info().await else {
        return;
    };
    let config = &info.config;
    if config.num_replicas < replicas {
        tracing::warn!(
            asset,
            found = config.num_replicas,
            wanted = replicas,
            "asset has fewer replicas than configured; a lost NATS node can lose its data. Raise them with `nats stream edit --replicas`"
        );
    }
    if config.storage == stream::StorageType::Memory {
        tracing::warn!(
            asset,
            "asset is stored in memory and is lost when nats-server restarts; recreate it with file storage"
        );
    }
}
