//! Authentication: resolving credentials into a principal (`credentials`, `principal`),
//! sessions (`sessions`: register, login, refresh, logout), accounts, passwords, access and
//! refresh tokens, API keys, login throttling, and the cache of checked credentials.
//!
//! Invariant: secrets (passwords, tokens, keys) are only ever compared as hashes or through
//! constant-time MACs, never logged, and never stored in plaintext. Nothing here knows HTTP:
//! outcomes and `AuthError` say what happened, and the HTTP layer decides how to answer.

pub(crate) mod accounts;
pub mod api_key;
pub(crate) mod cache;
pub(crate) mod credentials;
pub(crate) mod grant;
pub mod jwt;
pub(crate) mod password;
pub(crate) mod principal;
pub(crate) mod profiles;
pub(crate) mod refresh;
pub(crate) mod sessions;
pub(crate) mod throttle;
pub(crate) mod view;

use sha2::{Digest, Sha256};

use crate::auth::jwt::TokenError;
use crate::auth::password::HashError;
use crate::meta::MetaError;

/// Why a request could not be authenticated or authorised, or why an authentication step
/// failed.
#[derive(Debug, thiserror::Error)]
pub(crate) enum AuthError {
    /// No credential was sent.
    #[error("no credentials")]
    Missing,
    /// A bearer token and an API key were both sent.
    #[error("two credentials")]
    TwoCredentials,
    /// Malformed, unknown, expired or revoked: one answer whatever the cause.
    #[error("invalid credentials")]
    Invalid,
    /// An administrators' route, and the caller is not one.
    #[error("not an administrator")]
    NotAdmin,
    /// An administrators' route reached with an administrator's API key.
    #[error("administration needs a login")]
    AdminNeedsLogin,
    /// A credential-management route reached with an API key.
    #[error("credential management needs a login")]
    NeedsLogin,
    /// The metadata store failed.
    #[error(transparent)]
    Meta(#[from] MetaError),
    /// Password hashing failed.
    #[error(transparent)]
    Hash(#[from] HashError),
    /// An access token could not be signed.
    #[error(transparent)]
    Token(#[from] TokenError),
}

/// SHA-256 of a high-entropy token (refresh tokens, link tokens, API keys). A fast hash is
/// right here: these are 256-bit random values, not guessable passwords.
pub(crate) fn token_hash(token: &str) -> [u8; 32] {
    Sha256::digest(token.as_bytes()).into()
}

/// A fresh URL-safe random token carrying `N` bytes of entropy.
pub(crate) fn random_token<const N: usize>() -> String {
    use base64::Engine as _;
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(crate::secrets::random_bytes::<N>())
}
