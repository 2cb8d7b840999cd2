//! Authentication: passwords, access and refresh tokens, API keys, login throttling, and the
//! cache of checked credentials.
//!
//! Invariant: secrets (passwords, tokens, keys) are only ever compared as hashes or through
//! constant-time MACs, never logged, and never stored in plaintext.

pub mod accounts;
pub mod api_key;
pub mod cache;
pub mod jwt;
pub mod password;
pub mod refresh;
pub mod throttle;

use sha2::{Digest, Sha256};

/// SHA-256 of a high-entropy token (refresh tokens, link tokens, API keys). A fast hash is
/// right here: these are 256-bit random values, not guessable passwords.
pub fn token_hash(token: &str) -> [u8; 32] {
    Sha256::digest(token.as_bytes()).into()
}

/// A fresh URL-safe random token carrying `N` bytes of entropy.
pub fn random_token<const N: usize>() -> String {
    use base64::Engine as _;
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(crate::secrets::random_bytes::<N>())
}
