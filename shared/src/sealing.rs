//! Resource secrets at rest (SPEC §4): sealed with XChaCha20-Poly1305 under
//! the cluster's secrets key, bound to the resource id, so the resources
//! bucket never holds a secret in the clear. Management seals on write; only
//! the node that builds a driver's stdin opens them.

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
}

/// The cluster's secrets key. Debug output never shows it.
#[derive(Clone)]
pub struct SecretsKey(XChaCha20Poly1305);

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
            .map(Self)
            .map_err(|_| SealError::BadKey)
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
            .0
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

    pub fn open(
        &self,
        resource: &str,
        sealed: &str,
    ) -> Result<BTreeMap<String, String>, SealError> {
        let fail = || SealError::Open(resource.to_string());
        let bytes = hex::decode(sealed).map_err(|_| fail())?;
        if bytes.len() < NONCE_LEN {
            return Err(fail());
        }
        let (nonce, ciphertext) = bytes.split_at(NONCE_LEN);
        let plain = self
            .0
            .decrypt(
                XNonce::from_slice(nonce),
                Payload {
                    msg: ciphertext,
                    aad: resource.as_bytes(),
                },
            )
            .map_err(|_| fail())?;
        serde_json::from_slice(&plain).map_err(|_| fail())
    }
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
}

impl SecretsKeyArgs {
    /// The key, if one is given (an empty value counts as none).
    pub fn load(&self) -> Result<Option<SecretsKey>, SealError> {
        let inline = self.secrets_key.as_deref().filter(|k| !k.trim().is_empty());
        let file = self
            .secrets_key_file
            .as_deref()
            .filter(|f| !f.as_os_str().is_empty());
        SecretsKey::load(inline, file)
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
}
