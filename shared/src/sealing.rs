//! Resource secrets at rest (SPEC §4): sealed with XChaCha20-Poly1305 under
//! the cluster's secrets key, bound to the resource id, so the resources
//! bucket never holds a secret in the clear. Management seals on write; only
//! the node that builds a driver's stdin opens them.
//!
//! Rotation: the current key seals; previous keys (`--secrets-previous-keys`)
//! still open what they sealed, until management reseals every resource
//! under the current key.

use std::collections::BTreeMap;
use std::path::Path;

use chacha20poly1305::aead::{Aead, AeadCore, KeyInit, OsRng, Payload};
use chacha20poly1305::{XChaCha20Poly1305, XNonce};

const NONCE_LEN: usize = 24;

#[derive(Debug, thiserror::Error)]
pub enum SealError {
    #[error(
        "the secrets key must be 64 hex characters (32 bytes); make one with: openssl rand -hex 32"
    )]
    BadKey,
    #[error("cannot read the secrets key file {0}: {1}")]
    KeyFile(String, std::io::Error),
    #[error(
        "the sealed secrets of resource {0} do not open with this key (wrong key, or tampered)"
    )]
    Open(String),
    #[error("cannot seal the secrets of resource {0}")]
    Seal(String),
    #[error("previous secrets keys were given without a current one: set --secrets-key (or its file) to the new key")]
    PreviousWithoutCurrent,
}

/// The cluster's secrets key, with the previous keys it replaced. Debug
/// output never shows them.
#[derive(Clone)]
pub struct SecretsKey {
    current: XChaCha20Poly1305,
    previous: Vec<XChaCha20Poly1305>,
}

impl std::fmt::Debug for SecretsKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("SecretsKey(..)")
    }
}

impl SecretsKey {
    pub fn from_hex(text: &str) -> Result<Self, SealError> {
        let bytes = hex::decode(text.trim()).map_err(|_| SealError::BadKey)?;
        if bytes.len() != 32 {
            return Err(SealError::BadKey);
        }
        XChaCha20Poly1305::new_from_slice(&bytes)
            .map(|current| Self {
                current,
                previous: Vec::new(),
            })
            .map_err(|_| SealError::BadKey)
    }

    /// Adds keys that no longer seal but still open, e.g. `a,b` in hex.
    pub fn with_previous(mut self, keys: &str) -> Result<Self, SealError> {
        for key in keys
            .split([',', '\n'])
            .map(str::trim)
            .filter(|k| !k.is_empty())
        {
            self.previous.push(Self::from_hex(key)?.current);
        }
        Ok(self)
    }

    /// From `--secrets-key` text or `--secrets-key-file`; `None` when neither is given.
    pub fn load(inline: Option<&str>, file: Option<&Path>) -> Result<Option<Self>, SealError> {
        if let Some(text) = inline {
            return Self::from_hex(text).map(Some);
        }
        match file {
            Some(path) => {
                let text = std::fs::read_to_string(path)
                    .map_err(|e| SealError::KeyFile(path.display().to_string(), e))?;
                Self::from_hex(&text).map(Some)
            }
            None => Ok(None),
        }
    }

    /// Seals `secrets` for `resource`: hex of nonce followed by ciphertext.
    pub fn seal(
        &self,
        resource: &str,
        secrets: &BTreeMap<String, String>,
    ) -> Result<String, SealError> {
        let nonce = XChaCha20Poly1305::generate_nonce(&mut OsRng);
        let plain =
            serde_json::to_vec(secrets).map_err(|_| SealError::Seal(resource.to_string()))?;
        let sealed = self
            .current
            .encrypt(
                &nonce,
                Payload {
                    msg: &plain,
                    aad: resource.as_bytes(),
                },
            )
            .map_err(|_| SealError::Seal(resource.to_string()))?;
        let mut out = nonce.to_vec();
        out.extend(sealed);
        Ok(hex::encode(out))
    }

    /// Opens what this key or one of the previous keys sealed.
    pub fn open(
        &self,
        resource: &str,
        sealed: &str,
    ) -> Result<BTreeMap<String, String>, SealError> {
        std::iter::once(&self.current)
            .chain(&self.previous)
            .find_map(|key| open_with(key, resource, sealed))
            .ok_or_else(|| SealError::Open(resource.to_string()))
    }

    /// Seals again under the current key what a previous key sealed;
    /// `None` when the current key sealed it already.
    pub fn reseal(&self, resource: &str, sealed: &str) -> Result<Option<String>, SealError> {
        if open_with(&self.current, resource, sealed).is_some() {
            return Ok(None);
        }
        let secrets = self.open(resource, sealed)?;
        self.seal(resource, &secrets).map(Some)
    }
}

fn open_with(
    key: &XChaCha20Poly1305,
    resource: &str,
    sealed: &str,
) -> Option<BTreeMap<String, String>> {
    let bytes = hex::decode(sealed).ok()?;
    if bytes.len() < NONCE_LEN {
        return None;
    }
    let (nonce, ciphertext) = bytes.split_at(NONCE_LEN);
    let plain = key
        .decrypt(
            XNonce::from_slice(nonce),
            Payload {
                msg: ciphertext,
                aad: resource.as_bytes(),
            },
        )
        .ok()?;
    serde_json::from_slice(&plain).ok()
}

/// Flags for the secrets key, flattened into the services that need it.
#[derive(clap::Args, Clone, Debug)]
pub struct SecretsKeyArgs {
    /// Cluster key sealing resource secrets at rest: 64 hex characters
    /// (`openssl rand -hex 32`). Without it, resources cannot hold secrets.
    #[arg(long, env = "ZF_SECRETS_KEY", hide_env_values = true)]
    pub secrets_key: Option<String>,

    /// A file holding the secrets key.
    #[arg(long, env = "ZF_SECRETS_KEY_FILE")]
    pub secrets_key_file: Option<std::path::PathBuf>,

    /// Keys the secrets key replaced, comma separated: they still open what
    /// they sealed until `POST /v1/admin/reseal-secrets` has run.
    #[arg(long, env = "ZF_SECRETS_PREVIOUS_KEYS", hide_env_values = true)]
    pub secrets_previous_keys: Option<String>,

    /// A file of previous keys, one per line.
    #[arg(long, env = "ZF_SECRETS_PREVIOUS_KEYS_FILE")]
    pub secrets_previous_keys_file: Option<std::path::PathBuf>,
}

impl SecretsKeyArgs {
    /// The key, if one is given (an empty value counts as none).
    pub fn load(&self) -> Result<Option<SecretsKey>, SealError> {
        let inline = self.secrets_key.as_deref().filter(|k| !k.trim().is_empty());
        let file = self
            .secrets_key_file
            .as_deref()
            .filter(|f| !f.as_os_str().is_empty());
        let key = SecretsKey::load(inline, file)?;
        let mut previous = self.secrets_previous_keys.clone().unwrap_or_default();
        if let Some(path) = self
            .secrets_previous_keys_file
            .as_deref()
            .filter(|f| !f.as_os_str().is_empty())
        {
            let text = std::fs::read_to_string(path)
                .map_err(|e| SealError::KeyFile(path.display().to_string(), e))?;
            previous.push('\n');
            previous.push_str(&text);
        }
        match key {
            Some(key) => key.with_previous(&previous).map(Some),
            None if previous.trim().is_empty() => Ok(None),
            None => Err(SealError::PreviousWithoutCurrent),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn secrets_round_trip_and_bind_to_their_resource() {
        let key = SecretsKey::from_hex(&"11".repeat(32)).expect("key");
        let secrets = BTreeMap::from([("password".to_string(), "hunter2-secret".to_string())]);
        let sealed = key.seal("web-1", &secrets).expect("seal");
        assert!(
            !sealed.contains("hunter2"),
            "sealed text holds no plain secret"
        );
        assert_ne!(
            sealed,
            key.seal("web-1", &secrets).expect("seal"),
            "a fresh nonce every time"
        );
        assert_eq!(key.open("web-1", &sealed).expect("open"), secrets);
        assert!(
            key.open("web-2", &sealed).is_err(),
            "moved to another resource"
        );
        let other = SecretsKey::from_hex(&"22".repeat(32)).expect("key");
        assert!(other.open("web-1", &sealed).is_err(), "another key");
        let mut tampered = sealed.clone();
        tampered.replace_range(60..62, if &sealed[60..62] == "00" { "01" } else { "00" });
        assert!(key.open("web-1", &tampered).is_err());
        assert!(SecretsKey::from_hex("abcd").is_err());
        assert!(!format!("{key:?}").contains("11"));
    }

    #[test]
    fn a_rotated_key_opens_old_secrets_and_reseals_them() {
        let old = SecretsKey::from_hex(&"11".repeat(32)).expect("key");
        let secrets = BTreeMap::from([("token".to_string(), "t0ken-value".to_string())]);
        let sealed_by_old = old.seal("r", &secrets).expect("seal");
        let rotated = SecretsKey::from_hex(&"22".repeat(32))
            .and_then(|k| k.with_previous(&"11".repeat(32)))
            .expect("keys");
        assert_eq!(rotated.open("r", &sealed_by_old).expect("open"), secrets);
        let resealed = rotated
            .reseal("r", &sealed_by_old)
            .expect("reseal")
            .expect("sealed by a previous key, so sealed again");
        assert!(
            old.open("r", &resealed).is_err(),
            "the old key no longer opens it"
        );
        let new_only = SecretsKey::from_hex(&"22".repeat(32)).expect("key");
        assert_eq!(new_only.open("r", &resealed).expect("open"), secrets);
        assert_eq!(rotated.reseal("r", &resealed).expect("reseal"), None);
        assert!(
            new_only.reseal("r", &sealed_by_old).is_err(),
            "no key opens it"
        );
        assert!(SecretsKey::from_hex(&"22".repeat(32))
            .and_then(|k| k.with_previous("zz"))
            .is_err());
    }
}
