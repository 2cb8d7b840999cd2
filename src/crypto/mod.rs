//! Encryption at rest: envelope encryption with AES-256-GCM.
//!
//! Each file gets a random 256-bit data key; its content is sealed in fixed segments
//! ([`segment`]). The data key is stored in the file's row wrapped by a master key
//! (`COFFER_ENCRYPTION_KEY`) together with that master key's id, so rotating the master key
//! re-wraps 60 bytes per file and never rewrites a blob.
//!
//! Invariant: plaintext data keys exist only in memory, zeroised on drop; a wrapped key is
//! bound (as AAD) to its file id and master key id, so it cannot be moved to another row.
//! Nothing here knows where bytes are stored: [`read`] joins the blob store and the keys.

pub mod read;
pub mod segment;

use aes_gcm::aead::{AeadInOut, KeyInit};
use aes_gcm::{Aes256Gcm, Nonce};
use sha2::{Digest, Sha256};
use zeroize::Zeroizing;

use crate::ids::FileId;
use crate::secrets::random_bytes;

const WRAP_NONCE: usize = 12;
const TAG: usize = 16;

/// How a blob is sealed: the data key wrapped by a master key, and that key's id (stored in the
/// file's row).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Sealing {
    /// Id of the master key that wraps the data key.
    pub key_id: String,
    /// The wrapped data key.
    pub wrapped_key: Vec<u8>,
}

/// Sealed bytes could not be turned back into plaintext.
#[derive(Debug, thiserror::Error)]
pub enum CryptoError {
    /// The stored bytes failed authentication: flipped, truncated, reordered or moved.
    #[error("sealed content failed authentication")]
    Tampered,
    /// The stored bytes could not be read, or a decryption task was lost: not tampering.
    #[error("cannot read sealed content: {0}")]
    Io(#[from] std::io::Error),
}

/// A master key and its public id.
pub struct MasterKey {
    id: String,
    cipher: Aes256Gcm,
}

impl MasterKey {
    /// From 32 key bytes.
    pub fn new(bytes: &[u8; 32]) -> Self {
        let mut h = Sha256::new();
        h.update(b"coffer master key id v1");
        h.update(bytes);
        let id = hex::encode(h.finalize().get(..8).unwrap_or_default());
        Self {
            id,
            cipher: Aes256Gcm::new(bytes.into()),
        }
    }

    /// The key id stored next to every data key it wraps.
    pub fn id(&self) -> &str {
        &self.id
    }
}

/// A file's data key (zeroised on drop).
pub struct DataKey(Zeroizing<[u8; 32]>);

impl DataKey {
    /// A fresh random key.
    pub fn generate() -> Self {
        Self(Zeroizing::new(random_bytes::<32>()))
    }

    fn cipher(&self) -> Aes256Gcm {
        Aes256Gcm::new((&*self.0).into())
    }

    /// Other 32-byte secrets are wrapped like a data key (a webhook's signing secret).
    pub(crate) fn from_bytes(bytes: [u8; 32]) -> Self {
        Self(Zeroizing::new(bytes))
    }

    /// The key's bytes (to sign with a secret wrapped as a data key).
    pub(crate) fn bytes(&self) -> &[u8; 32] {
        &self.0
    }
}

/// Wrapping or unwrapping failed.
#[derive(Debug, thiserror::Error)]
pub enum KeyError {
    /// No configured master key has this id.
    #[error(
        "no master key with id {0} is configured (set COFFER_ENCRYPTION_KEY or COFFER_ENCRYPTION_OLD_KEYS)"
    )]
    UnknownKey(String),
    /// The wrapped key failed authentication.
    #[error("wrapped data key failed authentication")]
    Corrupt,
}

/// The configured master keys: the current one (for new files) and older ones (read only).
#[derive(Default)]
pub struct Keyring {
    current: Option<MasterKey>,
    old: Vec<MasterKey>,
}

impl Keyring {
    /// Build from key bytes.
    pub fn new(current: Option<[u8; 32]>, old: &[[u8; 32]]) -> Self {
        Self {
            current: current.as_ref().map(MasterKey::new),
            old: old.iter().map(MasterKey::new).collect(),
        }
    }

    /// Whether new uploads are encrypted.
    pub fn enabled(&self) -> bool {
        self.current.is_some()
    }

    /// The current master key's id.
    pub fn current_id(&self) -> Option<&str> {
        self.current.as_ref().map(MasterKey::id)
    }

    fn find(&self, id: &str) -> Option<&MasterKey> {
        self.current.iter().chain(&self.old).find(|k| k.id == id)
    }

    /// Wrap a data key for `file` under the current master key.
    pub fn wrap(&self, file: FileId, key: &DataKey) -> Option<Sealing> {
        let master = self.current.as_ref()?;
        let nonce = random_bytes::<WRAP_NONCE>();
        let mut buf = key.0.to_vec();
        let tag = master
            .cipher
            .encrypt_inout_detached(
                &Nonce::from(nonce),
                &wrap_aad(file, &master.id),
                buf.as_mut_slice().into(),
            )
            .ok()?;
        let mut wrapped = Vec::with_capacity(WRAP_NONCE + 32 + TAG);
        wrapped.extend_from_slice(&nonce);
        wrapped.extend_from_slice(&buf);
        wrapped.extend_from_slice(&tag);
        Some(Sealing {
            key_id: master.id.clone(),
            wrapped_key: wrapped,
        })
    }

    /// Recover a file's data key.
    pub fn unwrap(&self, file: FileId, sealing: &Sealing) -> Result<DataKey, KeyError> {
        let master = self
            .find(&sealing.key_id)
            .ok_or_else(|| KeyError::UnknownKey(sealing.key_id.clone()))?;
        let w = &sealing.wrapped_key;
        if w.len() != WRAP_NONCE + 32 + TAG {
            return Err(KeyError::Corrupt);
        }
        let (nonce, rest) = w.split_at(WRAP_NONCE);
        let (ct, tag) = rest.split_at(32);
        let nonce = <[u8; WRAP_NONCE]>::try_from(nonce).map_err(|_| KeyError::Corrupt)?;
        let tag = <[u8; TAG]>::try_from(tag).map_err(|_| KeyError::Corrupt)?;
        let mut key = Zeroizing::new([0u8; 32]);
        key.copy_from_slice(ct);
        master
            .cipher
            .decrypt_inout_detached(
                &Nonce::from(nonce),
                &wrap_aad(file, &sealing.key_id),
                key.as_mut_slice().into(),
                &tag.into(),
            )
            .map_err(|_| KeyError::Corrupt)?;
        Ok(DataKey(key))
    }

    /// Re-wrap under the current key (`None` when it already is, or no current key).
    pub fn rewrap(&self, file: FileId, sealing: &Sealing) -> Result<Option<Sealing>, KeyError> {
        match self.current_id() {
            Some(id) if id != sealing.key_id => {
                let key = self.unwrap(file, sealing)?;
                Ok(self.wrap(file, &key))
            }
            _ => Ok(None),
        }
    }
}

fn wrap_aad(file: FileId, key_id: &str) -> Vec<u8> {
    let mut aad = b"coffer dek v1".to_vec();
    aad.extend_from_slice(file.0.as_bytes());
    aad.extend_from_slice(key_id.as_bytes());
    aad
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn wrap_unwrap_rotate() {
        let old = Keyring::new(Some([7; 32]), &[]);
        let file = FileId::new();
        let dek = DataKey::generate();
        let sealed = old.wrap(file, &dek).unwrap();
        assert_eq!(*old.unwrap(file, &sealed).unwrap().0, *dek.0);
        // Bound to its file.
        assert!(old.unwrap(FileId::new(), &sealed).is_err());

        let rotated = Keyring::new(Some([9; 32]), &[[7; 32]]);
        let rewrapped = rotated.rewrap(file, &sealed).unwrap().unwrap();
        assert_ne!(rewrapped.key_id, sealed.key_id);
        let only_new = Keyring::new(Some([9; 32]), &[]);
        assert_eq!(*only_new.unwrap(file, &rewrapped).unwrap().0, *dek.0);
        assert!(matches!(
            only_new.unwrap(file, &sealed),
            Err(KeyError::UnknownKey(_))
        ));
    }
}
