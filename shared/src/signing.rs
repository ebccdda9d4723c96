//! Signed modules: the repository signs `(name, version, digest)` of every
//! module it stores with its ed25519 key; a node with trusted public keys
//! configured never unpacks or runs a bundle whose index entry does not carry
//! a signature from one of them.

use chacha20poly1305::aead::rand_core::RngCore;
use chacha20poly1305::aead::OsRng;
use ed25519_dalek::{Signature, Signer, SigningKey, Verifier, VerifyingKey};

use crate::protocol::ModuleRecord;

#[derive(Debug, thiserror::Error)]
pub enum SigningError {
    #[error(
        "{0} must be 64 hex characters (32 bytes); make a key pair with `zf-repository keygen`"
    )]
    BadKey(&'static str),
    #[error("cannot read {0}: {1}")]
    File(String, std::io::Error),
    #[error("module {name} {version} carries no signature; this node only runs modules signed by a trusted key")]
    Unsigned { name: String, version: String },
    #[error("the signature of module {name} {version} ({digest}) does not verify against any trusted key: refused, never unpacked or run")]
    Invalid {
        name: String,
        version: String,
        digest: String,
    },
}

/// What is signed: a fixed-format text, so signatures never depend on JSON layout.
fn signed_text(name: &str, version: &str, digest: &str) -> Vec<u8> {
    format!("zerofoot-module-v1\n{name}\n{version}\n{digest}").into_bytes()
}

fn key_bytes(text: &str, what: &'static str) -> Result<[u8; 32], SigningError> {
    hex::decode(text.trim())
        .ok()
        .and_then(|b| <[u8; 32]>::try_from(b).ok())
        .ok_or(SigningError::BadKey(what))
}

fn read(path: &std::path::Path) -> Result<String, SigningError> {
    std::fs::read_to_string(path).map_err(|e| SigningError::File(path.display().to_string(), e))
}

/// The repository's signing key. Debug output never shows it.
pub struct ModuleSigner(SigningKey);

impl std::fmt::Debug for ModuleSigner {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "ModuleSigner(public {})", self.public_hex())
    }
}

impl ModuleSigner {
    pub fn from_hex(text: &str) -> Result<Self, SigningError> {
        Ok(Self(SigningKey::from_bytes(&key_bytes(
            text,
            "the signing key",
        )?)))
    }

    pub fn load(
        inline: Option<&str>,
        file: Option<&std::path::Path>,
    ) -> Result<Option<Self>, SigningError> {
        match (inline.filter(|t| !t.trim().is_empty()), file) {
            (Some(text), _) => Self::from_hex(text).map(Some),
            (None, Some(path)) => Self::from_hex(&read(path)?).map(Some),
            (None, None) => Ok(None),
        }
    }

    /// A new key pair: (private key, public key), hex.
    pub fn generate() -> (String, String) {
        let mut seed = [0u8; 32];
        OsRng.fill_bytes(&mut seed);
        let key = SigningKey::from_bytes(&seed);
        (
            hex::encode(seed),
            hex::encode(key.verifying_key().as_bytes()),
        )
    }

    pub fn public_hex(&self) -> String {
        hex::encode(self.0.verifying_key().as_bytes())
    }

    pub fn sign(&self, record: &mut ModuleRecord) {
        let text = signed_text(&record.name, &record.version.to_string(), &record.digest);
        record.signature = Some(hex::encode(self.0.sign(&text).to_bytes()));
    }
}

/// Public keys a node trusts; empty means verification is off.
#[derive(Clone, Debug, Default)]
pub struct TrustedKeys(Vec<VerifyingKey>);

impl TrustedKeys {
    /// Keys from comma- or line-separated hex, and/or a file of them.
    pub fn load(
        inline: Option<&str>,
        file: Option<&std::path::Path>,
    ) -> Result<Self, SigningError> {
        let mut text = inline.unwrap_or_default().to_string();
        if let Some(path) = file {
            text.push('\n');
            text.push_str(&read(path)?);
        }
        let keys = text
            .split([',', '\n'])
            .map(str::trim)
            .filter(|k| !k.is_empty() && !k.starts_with('#'))
            .map(|k| {
                VerifyingKey::from_bytes(&key_bytes(k, "a trusted key")?)
                    .map_err(|_| SigningError::BadKey("a trusted key"))
            })
            .collect::<Result<Vec<_>, _>>()?;
        Ok(Self(keys))
    }

    pub fn is_on(&self) -> bool {
        !self.0.is_empty()
    }

    /// Checks that `record` is signed by a trusted key.
    pub fn verify(&self, record: &ModuleRecord) -> Result<(), SigningError> {
        let version = record.version.to_string();
        let Some(signature) = &record.signature else {
            return Err(SigningError::Unsigned {
                name: record.name.clone(),
                version,
            });
        };
        let invalid = || SigningError::Invalid {
            name: record.name.clone(),
            version: version.clone(),
            digest: record.digest.clone(),
        };
        let bytes = hex::decode(signature)
            .ok()
            .and_then(|b| <[u8; 64]>::try_from(b).ok())
            .ok_or_else(invalid)?;
        let signature = Signature::from_bytes(&bytes);
        let text = signed_text(&record.name, &version, &record.digest);
        if self
            .0
            .iter()
            .any(|key| key.verify(&text, &signature).is_ok())
        {
            Ok(())
        } else {
            Err(invalid())
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn record(digest: &str) -> ModuleRecord {
        let manifest = crate::protocol::Manifest::parse(
            br#"{"name":"m","version":"1.0.0","entrypoint":"run","operations":{"go":{"kind":"sync"}}}"#,
        )
        .expect("manifest");
        ModuleRecord::new(manifest, digest.into(), 10)
    }

    #[test]
    fn only_signatures_of_trusted_keys_over_the_same_digest_verify() {
        let (private, public) = ModuleSigner::generate();
        let signer = ModuleSigner::from_hex(&private).expect("signer");
        assert_eq!(signer.public_hex(), public);
        let trusted = TrustedKeys::load(Some(&public), None).expect("keys");
        assert!(trusted.is_on());

        let mut good = record("sha256:aa");
        assert!(matches!(
            trusted.verify(&good),
            Err(SigningError::Unsigned { .. })
        ));
        signer.sign(&mut good);
        trusted.verify(&good).expect("verifies");

        let mut swapped = good.clone();
        swapped.digest = "sha256:bb".into();
        assert!(
            matches!(trusted.verify(&swapped), Err(SigningError::Invalid { .. })),
            "signature moved to other bytes"
        );

        let (other_private, _) = ModuleSigner::generate();
        let mut foreign = record("sha256:aa");
        ModuleSigner::from_hex(&other_private)
            .expect("signer")
            .sign(&mut foreign);
        assert!(
            trusted.verify(&foreign).is_err(),
            "signed by an untrusted key"
        );
        assert!(!format!("{signer:?}").contains(&private));
        assert!(TrustedKeys::load(Some("zz"), None).is_err());
    }
}
