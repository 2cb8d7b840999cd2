//! Upload grants as credentials: minting their tokens and resolving a presented token into
//! the grant and its owner.
//!
//! Invariant: a grant token is 256 random bits (`cgr_` + URL-safe base64), shown once at
//! minting and stored only as its SHA-256, so a copy of the database yields no usable token.
//! A grant is a credential for uploading only: it never becomes a [`super::principal::Principal`],
//! so every other route refuses it as it refuses no credential at all. Every resolution reads
//! the database (no cache), so a revocation is seen by the next request on every node.

use crate::auth::{AuthError, random_token, token_hash};
use crate::ids::Timestamp;
use crate::meta::MetaStore;
use crate::meta::grants::{Grant, GrantMatch};

/// What every grant token starts with, so that leaked ones can be recognised (and scanned
/// for) as what they are.
const PREFIX: &str = "cgr_";
/// Longer than any token of this format: refused before hashing.
const MAX_TOKEN_CHARS: usize = 64;

/// A fresh token and the hash to store.
pub(crate) fn new_token() -> (String, [u8; 32]) {
    let token = format!("{PREFIX}{}", random_token::<32>());
    let hash = token_hash(&token);
    (token, hash)
}

/// The grant behind a token, its owner not being deleted (expired or used up too: see
/// [`may_start`]); [`AuthError::Invalid`] whatever is wrong with it.
pub(crate) async fn resolve(meta: &MetaStore, token: &str) -> Result<GrantMatch, AuthError> {
    let token = token.trim();
    if !token.starts_with(PREFIX) || token.len() > MAX_TOKEN_CHARS {
        return Err(AuthError::Invalid);
    }
    meta.grants()
        .find_grant(token_hash(token))
        .await?
        .ok_or(AuthError::Invalid)
}

/// Whether a grant may start an upload now: not expired, not used up. (An upload it started
/// before may be continued either way; the reservation checks this again, atomically.)
pub(crate) fn may_start(grant: &Grant, now: Timestamp) -> bool {
    grant.expires_at > now && grant.uses < grant.max_uploads
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokens_carry_256_bits_and_are_url_safe() {
        let (a, ha) = new_token();
        let (b, _) = new_token();
        assert_ne!(a, b);
        assert!(a.starts_with(PREFIX));
        // 32 bytes in unpadded base64: 43 characters.
        assert_eq!(a.len(), PREFIX.len() + 43);
        assert!(a.len() <= MAX_TOKEN_CHARS);
        assert!(
            a[PREFIX.len()..]
                .bytes()
                .all(|c| c.is_ascii_alphanumeric() || c == b'-' || c == b'_')
        );
        assert_eq!(ha, token_hash(&a));
    }
}
