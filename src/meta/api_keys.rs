//! API keys: a public prefix to find the row, and the SHA-256 of the whole key.
//!
//! Invariant: the key itself is never stored. Lookup is by the prefix, which is not secret;
//! the secret part is only ever compared as a hash, in constant time, by the caller. A key of
//! an account locked for deletion is never found.

use async_trait::async_trait;
use serde::Serialize;
use utoipa::ToSchema;

use crate::ids::{ApiKeyId, Timestamp, UserId};
use crate::meta::error::MetaError;
use crate::meta::users::Role;

/// An API key as listed (no secret, no hash).
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct ApiKey {
    /// Its id (for deletion).
    pub id: ApiKeyId,
    /// The owner's label.
    pub name: String,
    /// The first 12 characters of the key, to recognise it.
    pub prefix: String,
    /// When it was made.
    pub created_at: Timestamp,
    /// When it stops working; null = never.
    pub expires_at: Option<Timestamp>,
}

/// A new key row.
#[derive(Debug, Clone)]
pub struct NewApiKey {
    /// The public part.
    pub key: ApiKey,
    /// Owner.
    pub user_id: UserId,
    /// SHA-256 of the full key.
    pub hash: [u8; 32],
}

/// The row found for a prefix, to be checked by the caller.
#[derive(Debug, Clone)]
pub struct KeyMatch {
    /// Key id.
    pub id: ApiKeyId,
    /// Owner.
    pub user_id: UserId,
    /// Owner's current role.
    pub role: Role,
    /// Stored hash.
    pub hash: Vec<u8>,
    /// Expiry.
    pub expires_at: Option<Timestamp>,
}

/// The `api_keys` table.
#[async_trait]
pub trait ApiKeys: Send + Sync {
    /// Insert; `false` when the prefix collided (the caller draws a new key).
    async fn insert(&self, key: NewApiKey) -> Result<bool, MetaError>;

    /// The key row and owner for a prefix; none when the owner is locked for deletion (even
    /// for a key created after the lock by a request authenticated just before it).
    async fn find_by_prefix(&self, prefix: &str) -> Result<Option<KeyMatch>, MetaError>;

    /// The user's keys, newest first.
    async fn list(&self, user: UserId) -> Result<Vec<ApiKey>, MetaError>;

    /// Delete one of the user's keys; `false` when there is no such key of theirs.
    async fn delete(&self, user: UserId, id: ApiKeyId) -> Result<bool, MetaError>;
}
