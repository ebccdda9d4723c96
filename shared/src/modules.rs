//! The read side of the module index: an in-memory copy of
//! `zf_<cluster>_modules` kept current by a KV watch, so that resolving a
//! module for an operation costs no NATS round trip.

use std::collections::BTreeMap;
use std::sync::{Arc, RwLock};
use std::time::Duration;

use async_nats::jetstream::kv;
use futures::StreamExt;
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

use crate::protocol::{decode, ModuleRecord};

type Index = BTreeMap<(String, semver::Version), ModuleRecord>;

#[derive(Debug, thiserror::Error)]
pub enum CatalogError {
    #[error("the module index is not loaded yet (waited {0:?}); check the NATS connection")]
    NotReady(Duration),
}

/// A live copy of the module index.
#[derive(Clone)]
pub struct ModuleCatalog {
    index: Arc<RwLock<Index>>,
    ready: watch::Receiver<bool>,
}

impl ModuleCatalog {
    /// Starts watching `store`; the copy follows it until `cancel` fires.
    pub fn start(store: kv::Store, cancel: CancellationToken) -> Self {
        let index = Arc::new(RwLock::new(Index::new()));
        let (ready_tx, ready) = watch::channel(false);
        tokio::spawn(follow(store, index.clone(), ready_tx, cancel));
        Self { index, ready }
    }

    async fn wait_ready(&self) -> Result<(), CatalogError> {
        let limit = Duration::from_secs(5);
        let mut ready = self.ready.clone();
        let waited = tokio::time::timeout(limit, ready.wait_for(|r| *r))
            .await
            .map(|r| r.is_ok());
        match waited {
            Ok(true) => Ok(()),
            _ => Err(CatalogError::NotReady(limit)),
        }
    }

    fn read(&self) -> std::sync::RwLockReadGuard<'_, Index> {
        // A panic while holding the lock leaves the map itself intact.
        self.index.read().unwrap_or_else(|e| e.into_inner())
    }

    /// Every version of every module, by name, newest version first.
    pub async fn list(&self) -> Result<Vec<ModuleRecord>, CatalogError> {
        self.wait_ready().await?;
        let index = self.read();
        let mut all: Vec<ModuleRecord> = index.values().cloned().collect();
        all.sort_by(|a, b| a.name.cmp(&b.name).then(b.version.cmp(&a.version)));
        Ok(all)
    }

    /// Every version of one module, newest first.
    pub async fn versions(&self, name: &str) -> Result<Vec<ModuleRecord>, CatalogError> {
        self.wait_ready().await?;
        let index = self.read();
        let mut versions: Vec<ModuleRecord> = index
            .iter()
            .filter(|((n, _), _)| n == name)
            .map(|(_, r)| r.clone())
            .collect();
        versions.reverse();
        Ok(versions)
    }

    /// One version, or the newest when `version` is `None`.
    pub async fn resolve(
        &self,
        name: &str,
        version: Option<&semver::Version>,
    ) -> Result<Option<ModuleRecord>, CatalogError> {
        match version {
            Some(v) => {
                self.wait_ready().await?;
                Ok(self.read().get(&(name.to_string(), v.clone())).cloned())
            }
            None => Ok(self.versions(name).await?.into_iter().next()),
        }
    }

    pub async fn by_digest(&self, digest: &str) -> Result<Option<ModuleRecord>, CatalogError> {
        self.wait_ready().await?;
        Ok(self.read().values().find(|r| r.digest == digest).cloned())
    }
}

async fn follow(
    store: kv::Store,
    index: Arc<RwLock<Index>>,
    ready: watch::Sender<bool>,
    cancel: CancellationToken,
) {
    let mut backoff = Duration::from_millis(100);
    loop {
        // `watch_with_history` delivers every current entry, then changes;
        // `watch_all` would deliver only changes made after it started.
        let watch = match empty_bucket(&store).await {
            Ok(true) => {
                ready.send_replace(true);
                store.watch_with_history(">").await
            }
            Ok(false) => store.watch_with_history(">").await,
            Err(e) => Err(e),
        };
        match watch {
            Ok(mut entries) => {
                backoff = Duration::from_millis(100);
                loop {
                    let entry = tokio::select! {
                        _ = cancel.cancelled() => return,
                        e = entries.next() => e,
                    };
                    let Some(Ok(entry)) = entry else { break };
                    apply(&index, &entry);
                    if entry.delta == 0 {
                        ready.send_replace(true);
                    }
                }
                tracing::warn!("module index watch ended; restarting it");
            }
            Err(e) => tracing::warn!(error = %e, "cannot watch the module index; retrying"),
        }
        tokio::select! {
            _ = cancel.cancelled() => return,
            _ = tokio::time::sleep(backoff) => {}
        }
        backoff = (backoff * 2).min(Duration::from_secs(5));
    }
}

async fn empty_bucket(store: &kv::Store) -> Result<bool, kv::WatchError> {
    match store.status().await {
        Ok(status) => Ok(status.values() == 0),
        Err(e) => Err(kv::WatchError::with_source(kv::WatchErrorKind::Other, e)),
    }
}

fn apply(index: &RwLock<Index>, entry: &kv::Entry) {
    let mut index = index.write().unwrap_or_else(|e| e.into_inner());
    match entry.operation {
        kv::Operation::Put => match decode::<ModuleRecord>(&entry.value) {
            Ok(record) => {
                index.insert((record.name.clone(), record.version.clone()), record);
            }
            Err(e) => {
                tracing::warn!(key = entry.key, error = %e, "skipping an unreadable module index entry")
            }
        },
        kv::Operation::Delete | kv::Operation::Purge => {
            index.retain(|(name, version), _| {
                crate::names::module_index_key(name, version) != entry.key
            });
        }
    }
}
