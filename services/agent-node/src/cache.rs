//! The node's module cache: fetches a bundle by digest from the object store,
//! verifies the digest, unpacks it under the bundle rules into a temporary
//! folder and renames it into `<data-dir>/modules/<digest>/`, so a folder
//! there is always complete. Concurrent requests for one digest fetch it
//! once. Bundles no running operation uses are removed after the TTL.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use async_nats::jetstream::object_store::ObjectStore;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio_util::sync::CancellationToken;
use zerofoot_shared::bundle::{self, Digester};
use zerofoot_shared::protocol::Manifest;

const TMP_PREFIX: &str = ".tmp-";

#[derive(Debug, thiserror::Error)]
pub enum CacheError {
    #[error("bundle {0} is not in the module object store ({1})")]
    Missing(String, String),
    #[error(
        "bundle {wanted} from the object store has digest {actual}: refused, never unpacked or run"
    )]
    DigestMismatch { wanted: String, actual: String },
    #[error("bundle {0} breaks the bundle rules: {1}")]
    Invalid(String, String),
    #[error("cannot fetch bundle {0}: {1}")]
    Io(String, String),
}

#[derive(Default)]
struct Usage {
    in_use: usize,
    last_used: Option<Instant>,
}

struct Inner {
    root: PathBuf,
    objects: ObjectStore,
    ttl: Duration,
    /// One lock per digest: the first caller fetches, the others wait for it.
    fetching: Mutex<HashMap<String, Arc<tokio::sync::Mutex<()>>>>,
    usage: Mutex<HashMap<String, Usage>>,
    /// Manifests of the bundles unpacked here, so a run reads no file to start.
    manifests: Mutex<HashMap<String, Manifest>>,
}

#[derive(Clone)]
pub struct ModuleCache {
    inner: Arc<Inner>,
}

/// An unpacked bundle held for one run; the cache will not evict it while
/// any lease on it lives.
pub struct Lease {
    _in_use: InUse,
    pub dir: PathBuf,
    pub manifest: Manifest,
}

/// Counts one use of a digest for as long as it lives.
struct InUse {
    cache: ModuleCache,
    digest: String,
}

impl Drop for InUse {
    fn drop(&mut self) {
        let mut usage = self
            .cache
            .inner
            .usage
            .lock()
            .unwrap_or_else(|e| e.into_inner());
        let u = usage.entry(self.digest.clone()).or_default();
        u.in_use = u.in_use.saturating_sub(1);
        u.last_used = Some(Instant::now());
    }
}

impl ModuleCache {
    /// Opens the cache folder, removing half-unpacked folders a killed node left.
    pub fn open(root: PathBuf, objects: ObjectStore, ttl: Duration) -> std::io::Result<Self> {
        std::fs::create_dir_all(&root)?;
        for entry in std::fs::read_dir(&root)? {
            let entry = entry?;
            if entry.file_name().to_string_lossy().starts_with(TMP_PREFIX) {
                tracing::info!(path = %entry.path().display(), "removing a half-unpacked bundle");
                remove_sealed(&entry.path())?;
            }
        }
        Ok(Self {
            inner: Arc::new(Inner {
                root,
                objects,
                ttl,
                fetching: Mutex::default(),
                usage: Mutex::default(),
                manifests: Mutex::default(),
            }),
        })
    }

    fn dir_of(&self, digest: &str) -> PathBuf {
        self.inner.root.join(digest)
    }

    /// The unpacked bundle `digest`, fetched if it is not here yet.
    pub async fn acquire(&self, digest: &str) -> Result<Lease, CacheError> {
        if !digest.starts_with("sha256:") || digest.contains('/') {
            return Err(CacheError::Invalid(
                digest.into(),
                "not a sha256 digest".into(),
            ));
        }
        {
            let mut usage = self.inner.usage.lock().unwrap_or_else(|e| e.into_inner());
            usage.entry(digest.to_string()).or_default().in_use += 1;
        }
        // From here on `in_use` owns the use count, also on error.
        let in_use = InUse {
            cache: self.clone(),
            digest: digest.to_string(),
        };
        let lock = {
            let mut fetching = self
                .inner
                .fetching
                .lock()
                .unwrap_or_else(|e| e.into_inner());
            fetching.entry(digest.to_string()).or_default().clone()
        };
        let _guard = lock.lock().await;
        let dir = self.dir_of(digest);
        let known = self.known_manifest(digest);
        let manifest = match known {
            Some(manifest) => {
                metrics::counter!("zf_module_cache_hits_total").increment(1);
                manifest
            }
            None => {
                metrics::counter!("zf_module_cache_misses_total").increment(1);
                // A tree this process did not unpack (an earlier run of the
                // node left it) may have been changed meanwhile: it is
                // fetched and verified again before anything runs from it.
                if tokio::fs::try_exists(&dir).await.unwrap_or(false) {
                    remove_tree(&dir).await.map_err(|e| {
                        CacheError::Io(
                            digest.to_string(),
                            format!("cannot replace an old unpacked copy: {e}"),
                        )
                    })?;
                }
                let manifest = self.fetch(digest).await?;
                self.inner
                    .manifests
                    .lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .insert(digest.to_string(), manifest.clone());
                manifest
            }
        };
        Ok(Lease {
            _in_use: in_use,
            dir,
            manifest,
        })
    }

    fn known_manifest(&self, digest: &str) -> Option<Manifest> {
        self.inner
            .manifests
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get(digest)
            .cloned()
    }

    async fn fetch(&self, digest: &str) -> Result<Manifest, CacheError> {
        let io = |e: std::io::Error| CacheError::Io(digest.to_string(), e.to_string());
        let mut object = self
            .inner
            .objects
            .get(digest)
            .await
            .map_err(|e| CacheError::Missing(digest.to_string(), e.to_string()))?;
        let file = tempfile::tempfile().map_err(io)?;
        let mut out = tokio::fs::File::from_std(file);
        let mut digester = Digester::default();
        let mut buf = vec![0u8; 128 * 1024];
        loop {
            let n = object.read(&mut buf).await.map_err(io)?;
            if n == 0 {
                break;
            }
            digester.update(&buf[..n]);
            metrics::counter!("zf_module_cache_fetched_bytes_total").increment(n as u64);
            out.write_all(&buf[..n]).await.map_err(io)?;
        }
        out.flush().await.map_err(io)?;
        let actual = digester.finish();
        if actual != digest {
            tracing::error!(wanted = digest, actual, "bundle digest mismatch: refused");
            return Err(CacheError::DigestMismatch {
                wanted: digest.to_string(),
                actual,
            });
        }
        let file = out.into_std().await;
        let root = self.inner.root.clone();
        let target = self.dir_of(digest);
        let digest_owned = digest.to_string();
        let started = Instant::now();
        let manifest = tokio::task::spawn_blocking(move || {
            unpack_atomically(file, &root, &target, &digest_owned)
        })
        .await
        .map_err(|e| CacheError::Io(digest.to_string(), e.to_string()))??;
        tracing::info!(digest, module = %manifest.name, version = %manifest.version, ms = started.elapsed().as_millis() as u64, "bundle fetched and unpacked");
        Ok(manifest)
    }

    /// Removes bundles unused for the TTL, every so often, until cancelled.
    pub async fn evict_loop(self, cancel: CancellationToken) {
        let period =
            (self.inner.ttl / 2).clamp(Duration::from_millis(100), Duration::from_secs(30));
        let started = Instant::now();
        loop {
            tokio::select! {
                _ = cancel.cancelled() => return,
                _ = tokio::time::sleep(period) => {}
            }
            let cache = self.clone();
            let _ = tokio::task::spawn_blocking(move || cache.evict_unused(started)).await;
        }
    }

    fn evict_unused(&self, started: Instant) {
        let Ok(entries) = std::fs::read_dir(&self.inner.root) else {
            return;
        };
        for entry in entries.flatten() {
            let name = entry.file_name().to_string_lossy().into_owned();
            if name.starts_with(TMP_PREFIX) {
                continue;
            }
            let lock = {
                let mut fetching = self
                    .inner
                    .fetching
                    .lock()
                    .unwrap_or_else(|e| e.into_inner());
                fetching.entry(name.clone()).or_default().clone()
            };
            // A bundle being fetched or handed out right now is not idle.
            let Ok(_guard) = lock.try_lock() else {
                continue;
            };
            let mut usage = self.inner.usage.lock().unwrap_or_else(|e| e.into_inner());
            let u = usage.entry(name.clone()).or_default();
            let idle_since = u.last_used.unwrap_or(started);
            if u.in_use == 0 && idle_since.elapsed() >= self.inner.ttl {
                usage.remove(&name);
                self.inner
                    .manifests
                    .lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .remove(&name);
                drop(usage);
                match remove_sealed(&entry.path()) {
                    Ok(()) => tracing::info!(digest = %name, "evicted an unused bundle"),
                    Err(e) => tracing::warn!(digest = %name, error = %e, "cannot evict a bundle"),
                }
            }
        }
    }
}

fn unpack_atomically(
    mut file: std::fs::File,
    root: &Path,
    target: &Path,
    digest: &str,
) -> Result<Manifest, CacheError> {
    use std::io::Seek;
    let io = |e: std::io::Error| CacheError::Io(digest.to_string(), e.to_string());
    file.rewind().map_err(io)?;
    let tmp = root.join(format!("{TMP_PREFIX}{}", uuid::Uuid::new_v4().simple()));
    std::fs::create_dir(&tmp).map_err(io)?;
    match bundle::unpack(&mut file, &tmp) {
        Ok(manifest) => {
            seal_read_only(&tmp).map_err(io)?;
            std::fs::rename(&tmp, target).map_err(io)?;
            Ok(manifest)
        }
        Err(e) => {
            let _ = remove_sealed(&tmp);
            Err(CacheError::Invalid(digest.to_string(), e.to_string()))
        }
    }
}

/// Makes an unpacked tree read-only for everyone, the node's user included:
/// files 0444 (0555 if executable), directories 0555. Drivers run as other
/// users (or under Landlock's read-only rule), so none can change a bundle
/// another run will execute.
fn seal_read_only(dir: &Path) -> std::io::Result<()> {
    use std::os::unix::fs::PermissionsExt;
    for entry in std::fs::read_dir(dir)? {
        let entry = entry?;
        let kind = entry.file_type()?;
        if kind.is_dir() {
            seal_read_only(&entry.path())?;
        } else if kind.is_file() {
            let mode = entry.metadata()?.permissions().mode();
            let sealed = if mode & 0o111 != 0 { 0o555 } else { 0o444 };
            std::fs::set_permissions(entry.path(), std::fs::Permissions::from_mode(sealed))?;
        }
    }
    std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o555))
}

/// Removes a sealed (read-only) tree: its directories are made writable first.
async fn remove_tree(dir: &Path) -> std::io::Result<()> {
    let dir = dir.to_path_buf();
    tokio::task::spawn_blocking(move || remove_sealed(&dir))
        .await
        .map_err(std::io::Error::other)?
}

/// Removes a tree [`seal_read_only`] made.
fn remove_sealed(dir: &Path) -> std::io::Result<()> {
    unseal(dir)?;
    std::fs::remove_dir_all(dir)
}

fn unseal(dir: &Path) -> std::io::Result<()> {
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o755))?;
    for entry in std::fs::read_dir(dir)? {
        let entry = entry?;
        if entry.file_type()?.is_dir() {
            unseal(&entry.path())?;
        }
    }
    Ok(())
}
