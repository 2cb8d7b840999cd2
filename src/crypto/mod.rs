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

use aws_lc_rs::aead::{AES_256_GCM, Aad, LessSafeKey, Nonce, UnboundKey};
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
    /// The stored bytes could not be read, or the key could not be set up: not tampering.
    #[error("cannot read sealed content: {0}")]
    Io(#[from] std::io::Error),
}

/// An AES-256-GCM key ready to seal and open (AWS-LC: with VAES and AVX-512 where the CPU
/// has them, about four times what the RustCrypto crates reached on the bench machine).
pub(crate) fn aes_256_gcm(key: &[u8; 32]) -> Result<LessSafeKey, CryptoError> {
    // Fails only when AWS-LC cannot allocate its context (the key's length is right).
    UnboundKey::new(&AES_256_GCM, key)
        .map(LessSafeKey::new)
        .map_err(|_| CryptoError::Io(std::io::Error::other("cannot set up an AES-256-GCM key")))
}

/// A master key and its public id.
pub struct MasterKey {
    id: String,
    cipher: LessSafeKey,
}

impl MasterKey {
    /// From 32 key bytes.
    pub fn new(bytes: &[u8; 32]) -> Result<Self, CryptoError> {
        let mut h = Sha256::new();
        h.update(b"coffer master key id v1");
        h.update(bytes);
        let id = hex::encode(h.finalize().get(..8).unwrap_or_default());
        Ok(Self {
            id,
            cipher: aes_256_gcm(bytes)?,
        })
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

    fn cipher(&self) -> Result<LessSafeKey, CryptoError> {
        aes_256_gcm(&self.0)
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
    pub fn new(current: Option<[u8; 32]>, old: &[[u8; 32]]) -> Result<Self, CryptoError> {
        Ok(Self {
            current: current.as_ref().map(MasterKey::new).transpose()?,
            old: old.iter().map(MasterKey::new).collect::<Result<_, _>>()?,
        })
    }

    /// Whether new uploads are encrypted.
    pub fn enabled(&self) -> bool {
        self.current.is_some()
    }

    /// The current master key's id.
    pub fn current_id(&self) -> Option<&str> {
        self.current.as_ref().map(MasterKey::id)
    }

    /// Whether a key with this id is configured (current or earlier).
    pub fn knows(&self, id: &str) -> bool {
        self.find(id).is_some()
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
            .seal_in_place_separate_tag(
                Nonce::assume_unique_for_key(nonce),
                Aad::from(wrap_aad(file, &master.id)),
                &mut buf,
            )
            .ok()?;
        let mut wrapped = Vec::with_capacity(WRAP_NONCE + 32 + TAG);
        wrapped.extend_from_slice(&nonce);
        wrapped.extend_from_slice(&buf);
        wrapped.extend_from_slice(tag.as_ref());
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
        let nonce = Nonce::try_assume_unique_for_key(nonce).map_err(|_| KeyError::Corrupt)?;
        let mut key = Zeroizing::new([0u8; 32]);
        key.copy_from_slice(ct);
        master
            .cipher
            .open_in_place_separate_tag(
                nonce,
                Aad::from(wrap_aad(file, &sealing.key_id)),
                tag,
                key.as_mut_slice(),
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
    fn a_data_key_wrapped_elsewhere_unwraps() {
        // Wrapped by Python's `cryptography` (OpenSSL) under the master key [7; 32]: nonce,
        // ciphertext and tag; AAD "coffer dek v1", the file id and the master key's id.
        let keyring = Keyring::new(Some([7; 32]), &[]).unwrap();
        let file = FileId(uuid::Uuid::from_u128(
            0x0011_2233_4455_6677_8899_aabb_ccdd_eeff,
        ));
        let sealing = Sealing {
            key_id: "c85d6c6d978c0341".to_owned(),
            wrapped_key: hex::decode(
                "6465666768696a6b6c6d6e6fe4c8ea0e5ddd4690803304bee76f7b4800952de8\
                 091d096601b92e6e1afff7b832a6790a2208a34815d2330059365635",
            )
            .unwrap(),
        };
        assert_eq!(keyring.current_id(), Some("c85d6c6d978c0341"));
        let key = keyring.unwrap(file, &sealing).unwrap();
        assert_eq!(*key.0, std::array::from_fn::<u8, 32, _>(|i| i as u8));
    }

    #[test]
    fn wrap_unwrap_rotate() {
        let old = Keyring::new(Some([7; 32]), &[]).unwrap();
        let file = FileId::new();
        let dek = DataKey::generate();
        let sealed = old.wrap(file, &dek).unwrap();
        assert_eq!(*old.unwrap(file, &sealed).unwrap().0, *dek.0);
        // Bound to its file.
        assert!(old.unwrap(FileId::new(), &sealed).is_err());

        let rotated = Keyring::new(Some([9; 32]), &[[7; 32]]).unwrap();
        let rewrapped = rotated.rewrap(file, &sealed).unwrap().unwrap();
        assert_ne!(rewrapped.key_id, sealed.key_id);
        let only_new = Keyring::new(Some([9; 32]), &[]).unwrap();
        assert_eq!(*only_new.unwrap(file, &rewrapped).unwrap().0, *dek.0);
        assert!(matches!(
            only_new.unwrap(file, &sealed),
            Err(KeyError::UnknownKey(_))
        ));
    }
}
