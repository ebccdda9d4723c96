//! Stores module bundles: the bytes in the object store under their digest,
//! the manifest in the module index under `<name>.<version>`. Versions are
//! immutable: the same bytes again are a no-op, other bytes a conflict. The
//! object is written before the index entry, so the index never names a
//! bundle that is not there.

use std::io::Seek;

use async_nats::jetstream::kv;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWriteExt};
use zerofoot_shared::assets::Assets;
use zerofoot_shared::bundle::{self, Digester};
use zerofoot_shared::names::{module_index_key, Names};
use zerofoot_shared::protocol::{
    decode, encode, ModuleRecord, PutModuleOutcome, RemoteError, PROTOCOL_VERSION,
};

#[derive(Clone)]
pub struct ModuleStore {
    pub client: async_nats::Client,
    /// Signs every new module version when set.
    pub signer: Option<std::sync::Arc<zerofoot_shared::signing::ModuleSigner>>,
    pub assets: Assets,
    pub names: Names,
    pub max_bundle_bytes: u64,
}

/// A bundle copied to a local temporary file, with its digest and size.
struct Staged {
    file: std::fs::File,
    digest: String,
    size: u64,
}

fn nats_error(context: &str, err: impl std::fmt::Display) -> RemoteError {
    tracing::warn!(error = %err, "{context}");
    RemoteError::new(503, "unavailable", format!("{context}: {err}"))
}

fn internal(context: &str, err: impl std::fmt::Display) -> RemoteError {
    tracing::error!(error = %err, "{context}");
    RemoteError::new(500, "internal", format!("{context}: {err}"))
}

impl ModuleStore {
    /// Validates and stores the bundle uploaded as `upload`, then drops the upload.
    pub async fn accept_upload(&self, upload: &str) -> Result<PutModuleOutcome, RemoteError> {
        let outcome = match self.assets.uploads.get(upload).await {
            Ok(object) => self.store(object).await,
            Err(e) => Err(RemoteError::new(
                404,
                "upload_not_found",
                format!("the upload {upload:?} is not in the uploads store ({e}); upload the bundle again"),
            )),
        };
        if let Err(e) = self.assets.uploads.delete(upload).await {
            tracing::debug!(upload, error = %e, "upload already gone");
        }
        outcome
    }

    /// Validates and stores a bundle read from `reader`.
    pub async fn store(
        &self,
        reader: impl AsyncRead + Unpin,
    ) -> Result<PutModuleOutcome, RemoteError> {
        let staged = self.stage(reader).await?;
        let Staged { file, digest, size } = staged;
        let (file, manifest) = tokio::task::spawn_blocking(move || {
            let mut file = file;
            file.rewind()?;
            let manifest = bundle::inspect(&mut file);
            file.rewind()?;
            Ok::<_, std::io::Error>((file, manifest))
        })
        .await
        .map_err(|e| internal("bundle check failed", e))?
        .map_err(|e| internal("cannot read the staged bundle", e))?;
        let manifest =
            manifest.map_err(|e| RemoteError::new(422, "invalid_bundle", e.to_string()))?;

        let key = module_index_key(&manifest.name, &manifest.version);
        if let Some(existing) = self.existing(&key).await? {
            let existing = self.sign_if_unsigned(&key, existing).await;
            return self.same_or_conflict(existing, &digest);
        }
        let mut record = ModuleRecord::new(manifest, digest.clone(), size);
        if let Some(signer) = &self.signer {
            signer.sign(&mut record);
        }
        self.put_object(file, &digest).await?;
        match self.assets.module_index.create(&key, encode(&record)).await {
            Ok(_) => {}
            Err(e) if e.kind() == kv::CreateErrorKind::AlreadyExists => {
                // Another repository instance stored this version meanwhile.
                let existing = self
                    .existing(&key)
                    .await?
                    .ok_or_else(|| internal("module index entry vanished", &key))?;
                return self.same_or_conflict(existing, &digest);
            }
            Err(e) => return Err(nats_error("cannot write the module index", e)),
        }
        tracing::info!(module = %record.name, version = %record.version, digest = %record.digest, size, "stored a new module version");
        let announce = self.names.module_announce(&record.name);
        if let Err(e) = self.client.publish(announce, encode(&record)).await {
            tracing::warn!(error = %e, "cannot announce the new module version");
        }
        Ok(PutModuleOutcome {
            v: PROTOCOL_VERSION,
            created: true,
            module: record,
        })
    }

    /// A version stored before this repository had a signing key gets its
    /// signature when its bytes come again (stock modules at start do).
    async fn sign_if_unsigned(&self, key: &str, mut record: ModuleRecord) -> ModuleRecord {
        let Some(signer) = &self.signer else {
            return record;
        };
        if record.signature.is_some() {
            return record;
        }
        signer.sign(&mut record);
        match self.assets.module_index.put(key, encode(&record)).await {
            Ok(_) => {
                tracing::info!(module = %record.name, version = %record.version, "signed a module version stored unsigned")
            }
            Err(e) => tracing::warn!(error = %e, "cannot sign an unsigned module version"),
        }
        record
    }

    fn same_or_conflict(
        &self,
        existing: ModuleRecord,
        digest: &str,
    ) -> Result<PutModuleOutcome, RemoteError> {
        if existing.digest == digest {
            return Ok(PutModuleOutcome {
                v: PROTOCOL_VERSION,
                created: false,
                module: existing,
            });
        }
        Err(RemoteError::new(
            409,
            "version_exists",
            format!(
                "module {} version {} already exists with digest {} (this bundle is {digest}); versions are immutable: raise the version in module.json",
                existing.name, existing.version, existing.digest
            ),
        ))
    }

    async fn existing(&self, key: &str) -> Result<Option<ModuleRecord>, RemoteError> {
        let entry = self
            .assets
            .module_index
            .get(key)
            .await
            .map_err(|e| nats_error("cannot read the module index", e))?;
        entry
            .map(|bytes| {
                decode::<ModuleRecord>(&bytes)
                    .map_err(|e| internal("unreadable module index entry", e))
            })
            .transpose()
    }

    /// Copies the bundle to a temporary file, computing its digest, refusing
    /// it past the size limit.
    async fn stage(&self, mut reader: impl AsyncRead + Unpin) -> Result<Staged, RemoteError> {
        let file =
            tempfile::tempfile().map_err(|e| internal("cannot create a temporary file", e))?;
        let mut out = tokio::fs::File::from_std(file);
        let mut digester = Digester::default();
        let mut size = 0u64;
        let mut buf = vec![0u8; 128 * 1024];
        loop {
            let n = reader
                .read(&mut buf)
                .await
                .map_err(|e| nats_error("cannot read the uploaded bundle", e))?;
            if n == 0 {
                break;
            }
            size += n as u64;
            if size > self.max_bundle_bytes {
                return Err(RemoteError::new(
                    413,
                    "bundle_too_large",
                    format!(
                        "the bundle is larger than the limit of {} bytes",
                        self.max_bundle_bytes
                    ),
                ));
            }
            digester.update(&buf[..n]);
            out.write_all(&buf[..n])
                .await
                .map_err(|e| internal("cannot write a temporary file", e))?;
        }
        out.flush()
            .await
            .map_err(|e| internal("cannot write a temporary file", e))?;
        Ok(Staged {
            file: out.into_std().await,
            digest: digester.finish(),
            size,
        })
    }

    async fn put_object(&self, file: std::fs::File, digest: &str) -> Result<(), RemoteError> {
        if let Ok(info) = self.assets.modules.info(digest).await {
            if !info.deleted {
                return Ok(());
            }
        }
        let mut file = tokio::fs::File::from_std(file);
        self.assets
            .modules
            .put(digest, &mut file)
            .await
            .map_err(|e| nats_error("cannot write the bundle to the object store", e))?;
        Ok(())
    }
}
