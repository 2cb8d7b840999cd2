//! View tokens: a capability to read one file for a while, with no credentials, so a browser
//! page can put a private file into `<img>`, `<video>`, `<iframe>` or a download link.
//!
//! A token is `base64url(version || expiry || HMAC-SHA256(subkey, file || owner || expiry ||
//! generation))`, the subkey derived from `COFFER_SECRET_KEY`. The file comes from the URL,
//! the owner from the file's row and the generation from the owner's row, so checking a token
//! is two reads and no write, on any node.
//!
//! Invariant: a token works only for the file it was minted for, until its expiry, while its
//! file and its owner exist and the owner's view-key generation is the one it was minted
//! under (`POST /users/me/revoke-view-urls` moves it on: one write, seen by every node). MACs
//! are compared in constant time; tokens are never stored (their first use is remembered by
//! a digest of the MAC), logged or audited.

use std::collections::HashMap;
use std::sync::Mutex;

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use hmac::{Hmac, KeyInit, Mac};
use sha2::{Digest, Sha256};
use zeroize::Zeroizing;

use crate::ids::{FileId, Timestamp, UserId};
use crate::meta::MetaError;
use crate::meta::MetaStore;
use crate::meta::files::StoredFile;
use crate::secrets::SecretKey;

/// The label of the subkey that signs view tokens.
const LABEL: &str = "coffer/view-token/v1";
/// The first byte of every token of this format.
const VERSION: u8 = 1;
/// Version, expiry (Unix seconds, big-endian), MAC.
const RAW_LEN: usize = 1 + 8 + 32;
/// Longer than any token of this format: refused before decoding.
const MAX_TOKEN_CHARS: usize = 64;
/// Tokens this process remembers having seen before expired ones are dropped (a full table of
/// live ones is forgotten at once: at worst a token's first use is asked of the database
/// again, which still records it once).
const SEEN_CAPACITY: usize = 65_536;

/// A token as parsed, not yet checked against its file.
#[derive(Debug, Clone, Copy)]
pub(crate) struct ViewToken {
    expires: i64,
    mac: [u8; 32],
}

impl ViewToken {
    /// When it stops working.
    pub(crate) fn expires_at(&self) -> Timestamp {
        Timestamp::from_unix_secs(self.expires)
    }

    /// The name its uses are remembered by: a digest of its MAC (never the MAC, the secret
    /// part of the token, which a copy of the database must not yield).
    pub(crate) fn use_key(&self) -> [u8; 16] {
        let digest = Sha256::digest(self.mac);
        let mut key = [0u8; 16];
        for (k, d) in key.iter_mut().zip(digest.iter()) {
            *k = *d;
        }
        key
    }
}

/// Why a view token was refused. One answer (401) for all of them: which one is logged only
/// as this kind, never with the token.
#[derive(Debug, thiserror::Error)]
pub(crate) enum ViewError {
    /// Not a token of this format.
    #[error("malformed view token")]
    Malformed,
    /// Past its expiry.
    #[error("expired view token")]
    Expired,
    /// The file is gone (or expired), or its owner is gone or being deleted.
    #[error("the file or its owner is gone")]
    Gone,
    /// The MAC does not match: another file's token, a tampered expiry, or revoked.
    #[error("view token does not verify")]
    Mismatch,
    /// The metadata store failed.
    #[error(transparent)]
    Meta(#[from] MetaError),
}

/// Mints and checks view tokens; remembers which were already audited.
pub(crate) struct ViewKeys {
    key: Zeroizing<[u8; 32]>,
    /// [`ViewToken::use_key`] of each token seen -> its expiry (Unix seconds).
    seen: Mutex<HashMap<[u8; 16], i64>>,
}

impl ViewKeys {
    /// Derive the subkey from the service secret.
    pub(crate) fn new(secret: &SecretKey) -> Self {
        Self {
            key: Zeroizing::new(secret.derive(LABEL)),
            seen: Mutex::new(HashMap::new()),
        }
    }

    fn mac(&self, file: FileId, owner: UserId, expires: i64, generation: i64) -> Hmac<Sha256> {
        let mut mac = <Hmac<Sha256> as KeyInit>::new_from_slice(self.key.as_slice())
            .unwrap_or_else(|_| unreachable!("HMAC accepts keys of any length"));
        mac.update(file.0.as_bytes());
        mac.update(owner.0.as_bytes());
        mac.update(&expires.to_be_bytes());
        mac.update(&generation.to_be_bytes());
        mac
    }

    /// A token for `file` of `owner` until `expires_at` (whole seconds), under the owner's
    /// current `generation`.
    pub(crate) fn mint(
        &self,
        file: FileId,
        owner: UserId,
        expires_at: Timestamp,
        generation: i64,
    ) -> String {
        let expires = expires_at.unix_secs();
        let tag = self
            .mac(file, owner, expires, generation)
            .finalize()
            .into_bytes();
        let mut raw = Vec::with_capacity(RAW_LEN);
        raw.push(VERSION);
        raw.extend_from_slice(&expires.to_be_bytes());
        raw.extend_from_slice(&tag);
        URL_SAFE_NO_PAD.encode(raw)
    }

    /// Parse a token and check its expiry (no MAC check yet: that needs the rows).
    pub(crate) fn parse(token: &str, now: Timestamp) -> Result<ViewToken, ViewError> {
        if token.len() > MAX_TOKEN_CHARS {
            return Err(ViewError::Malformed);
        }
        let raw = URL_SAFE_NO_PAD
            .decode(token)
            .map_err(|_| ViewError::Malformed)?;
        let (Some(&VERSION), Some(exp), Some(mac)) =
            (raw.first(), raw.get(1..9), raw.get(9..RAW_LEN))
        else {
            return Err(ViewError::Malformed);
        };
        if raw.len() != RAW_LEN {
            return Err(ViewError::Malformed);
        }
        let mut e = [0u8; 8];
        e.copy_from_slice(exp);
        let mut m = [0u8; 32];
        m.copy_from_slice(mac);
        let t = ViewToken {
            expires: i64::from_be_bytes(e),
            mac: m,
        };
        if t.expires <= now.unix_secs() {
            return Err(ViewError::Expired);
        }
        Ok(t)
    }

    /// The file a token opens: it must verify against the file's row and its owner's current
    /// view-key generation. Reads only.
    pub(crate) async fn resolve(
        &self,
        meta: &MetaStore,
        token: &ViewToken,
        file: FileId,
        now: Timestamp,
    ) -> Result<StoredFile, ViewError> {
        let f = meta
            .files()
            .get_visible(file, None, now)
            .await?
            .ok_or(ViewError::Gone)?;
        let generation = meta
            .users()
            .view_generation(f.owner_id)
            .await?
            .ok_or(ViewError::Gone)?;
        // Constant-time comparison (`verify_slice`), so the MAC cannot be learnt byte by byte.
        self.mac(file, f.owner_id, token.expires, generation)
            .verify_slice(&token.mac)
            .map_err(|_| ViewError::Mismatch)?;
        Ok(f)
    }

    /// Whether this is the first use of the token this process has seen: only then is the
    /// database asked whether it is the first use anywhere (`meta::views`), so there is no
    /// database write per request.
    pub(crate) fn first_use(&self, token: &ViewToken, now: Timestamp) -> bool {
        let key = token.use_key();
        let mut seen = self.seen.lock().unwrap_or_else(|p| p.into_inner());
        if seen.contains_key(&key) {
            return false;
        }
        if seen.len() >= SEEN_CAPACITY {
            let now = now.unix_secs();
            seen.retain(|_, exp| *exp > now);
            if seen.len() >= SEEN_CAPACITY {
                seen.clear();
            }
        }
        seen.insert(key, token.expires);
        true
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn keys() -> ViewKeys {
        ViewKeys::new(&SecretKey::parse(&crate::secrets::generate_hex()).unwrap())
    }

    #[test]
    fn tokens_parse_and_refuse_what_is_not_one() {
        let k = keys();
        let now = Timestamp::now();
        let t = k.mint(FileId::new(), UserId::new(), now.plus_secs(60), 0);
        assert_eq!(t.len(), 55);
        let parsed = ViewKeys::parse(&t, now).unwrap();
        assert_eq!(parsed.expires, now.plus_secs(60).unix_secs());
        assert!(matches!(
            ViewKeys::parse(&t, now.plus_secs(61)),
            Err(ViewError::Expired)
        ));
        for bad in ["", "x", &t[..54], &format!("{t}A"), &"A".repeat(200), "!!!"] {
            assert!(
                matches!(ViewKeys::parse(bad, now), Err(ViewError::Malformed)),
                "{bad}"
            );
        }
    }

    #[test]
    fn the_mac_binds_file_owner_expiry_and_generation() {
        let k = keys();
        let (f, o) = (FileId::new(), UserId::new());
        let exp = Timestamp::now().plus_secs(60);
        let t = ViewKeys::parse(&k.mint(f, o, exp, 3), Timestamp::now()).unwrap();
        let ok = |f, o, e, g| k.mac(f, o, e, g).verify_slice(&t.mac).is_ok();
        assert!(ok(f, o, exp.unix_secs(), 3));
        assert!(!ok(FileId::new(), o, exp.unix_secs(), 3));
        assert!(!ok(f, UserId::new(), exp.unix_secs(), 3));
        assert!(!ok(f, o, exp.unix_secs() + 1, 3));
        assert!(!ok(f, o, exp.unix_secs(), 4));
        let other_secret = keys().mac(f, o, exp.unix_secs(), 3).verify_slice(&t.mac);
        assert!(other_secret.is_err());
    }

    #[test]
    fn a_token_is_first_used_once() {
        let k = keys();
        let now = Timestamp::now();
        let t = ViewKeys::parse(
            &k.mint(FileId::new(), UserId::new(), now.plus_secs(60), 0),
            now,
        )
        .unwrap();
        assert!(k.first_use(&t, now));
        assert!(!k.first_use(&t, now));
    }
}
