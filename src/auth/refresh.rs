//! Refresh tokens: opaque 256-bit values, stored only as their SHA-256 (`meta::sessions`).
//!
//! A login's first refresh token is random; each rotation derives the next one from the token
//! presented: `next = HMAC-SHA256(subkey of COFFER_SECRET_KEY, presented)`. So the server can
//! answer a replay within `auth.refresh_reuse_grace_secs` with the same new token without
//! having stored it anywhere: it recomputes it.
//!
//! The access token answered with a rotated refresh token is fixed by it too: its id (`jti`)
//! is derived from the new refresh token ([`RefreshTokens::access_id`]) and it is issued at the
//! rotation's time, so a replay within the grace answers the same pair, byte for byte.
//!
//! Invariant: only someone holding both a refresh token and the secret can compute its
//! successor; the database holds hashes only, so a copy of it yields no usable token.

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use hmac::{Hmac, KeyInit, Mac};
use sha2::Sha256;
use zeroize::Zeroizing;

use crate::secrets::SecretKey;

/// The label of the subkey that derives refresh tokens.
const LABEL: &str = "coffer/refresh-rotation/v1";

/// Makes refresh tokens.
pub(crate) struct RefreshTokens {
    key: Zeroizing<[u8; 32]>,
}

impl RefreshTokens {
    /// Derive the subkey from the service secret.
    pub(crate) fn new(secret: &SecretKey) -> Self {
        Self {
            key: Zeroizing::new(secret.derive(LABEL)),
        }
    }

    /// The first refresh token of a login: 256 random bits.
    pub(crate) fn first(&self) -> String {
        crate::auth::random_token::<32>()
    }

    /// The token that rotating `presented` yields (same length and alphabet as the first).
    pub(crate) fn next(&self, presented: &str) -> String {
        URL_SAFE_NO_PAD.encode(self.mac(&[presented.as_bytes()]))
    }

    /// The id (`jti`) of the access token answered with `refresh` after a rotation: a UUID
    /// derived from it, so a replay re-issues the same token. (Domain-separated from
    /// [`Self::next`]: its input starts with a byte no token contains.)
    pub(crate) fn access_id(&self, refresh: &str) -> String {
        let mac = self.mac(&[b"\0access-id:", refresh.as_bytes()]);
        let mut id = [0u8; 16];
        id.copy_from_slice(&mac[..16]);
        uuid::Builder::from_random_bytes(id).into_uuid().to_string()
    }

    fn mac(&self, parts: &[&[u8]]) -> [u8; 32] {
        let mut mac = <Hmac<Sha256> as KeyInit>::new_from_slice(self.key.as_slice())
            .unwrap_or_else(|_| unreachable!("HMAC accepts keys of any length"));
        for part in parts {
            mac.update(part);
        }
        mac.finalize().into_bytes().into()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn secret() -> SecretKey {
        SecretKey::parse(&crate::secrets::generate_hex()).unwrap()
    }

    #[test]
    fn the_next_token_is_fixed_by_the_token_and_the_secret() {
        let (s1, s2) = (secret(), secret());
        let (a, b) = (RefreshTokens::new(&s1), RefreshTokens::new(&s2));
        let first = a.first();
        assert_eq!(first.len(), 43);
        assert_ne!(first, a.first(), "first tokens are random");
        let next = a.next(&first);
        assert_eq!(next.len(), 43);
        assert!(
            next.bytes()
                .all(|c| c.is_ascii_alphanumeric() || c == b'-' || c == b'_')
        );
        assert_eq!(next, RefreshTokens::new(&s1).next(&first), "recomputable");
        assert_ne!(next, b.next(&first), "only with the same secret");
        assert_ne!(a.next(&next), next);
    }

    #[test]
    fn the_access_id_is_a_uuid_fixed_by_the_refresh_token() {
        let a = RefreshTokens::new(&secret());
        let (t1, t2) = (a.first(), a.first());
        let id = a.access_id(&t1);
        assert!(uuid::Uuid::parse_str(&id).is_ok(), "{id}");
        assert_eq!(id, a.access_id(&t1), "recomputable");
        assert_ne!(id, a.access_id(&t2));
        assert_ne!(id, RefreshTokens::new(&secret()).access_id(&t1));
    }
}
