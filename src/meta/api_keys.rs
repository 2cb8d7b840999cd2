//! The `api_keys` table: a public prefix to find the row, and the SHA-256 of the whole key.
//!
//! Invariant: the key itself is never stored. Lookup is by the prefix, which is not secret;
//! the secret part is only ever compared as a hash, in constant time, by the caller.

use rusqlite::{Connection, OptionalExtension, params};
use serde::Serialize;
use utoipa::ToSchema;

use crate::ids::{ApiKeyId, Timestamp, UserId};
use crate::meta::is_unique_violation;
use crate::meta::users::{self, Role};

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

/// Insert; `false` when the prefix collided (the caller draws a new key).
pub fn insert(c: &Connection, k: &NewApiKey) -> rusqlite::Result<bool> {
    let res = c.execute(
        "INSERT INTO api_keys (id, user_id, name, prefix, hash, created_at, expires_at)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)",
        params![
            k.key.id,
            k.user_id,
            k.key.name,
            k.key.prefix,
            &k.hash[..],
            k.key.created_at,
            k.key.expires_at
        ],
    );
    match res {
        Ok(_) => Ok(true),
        Err(e) if is_unique_violation(&e) => Ok(false),
        Err(e) => Err(e),
    }
}

/// The key row and owner for a prefix; none when the owner is locked for deletion (even for
/// a key created after the lock by a request authenticated just before it).
pub fn find_by_prefix(c: &Connection, prefix: &str) -> rusqlite::Result<Option<KeyMatch>> {
    c.prepare_cached(
        "SELECT k.id, k.user_id, u.role, k.hash, k.expires_at
         FROM api_keys k JOIN users u ON u.id = k.user_id
         WHERE k.prefix = ?1 AND u.password_hash != ?2",
    )?
    .query_row(params![prefix, users::LOCKED], |r| {
        Ok(KeyMatch {
            id: r.get(0)?,
            user_id: r.get(1)?,
            role: r.get(2)?,
            hash: r.get(3)?,
            expires_at: r.get(4)?,
        })
    })
    .optional()
}

/// The user's keys, newest first.
pub fn list(c: &Connection, user: UserId) -> rusqlite::Result<Vec<ApiKey>> {
    c.prepare_cached(
        "SELECT id, name, prefix, created_at, expires_at FROM api_keys
         WHERE user_id = ?1 ORDER BY created_at DESC, id DESC",
    )?
    .query_map([user], |r| {
        Ok(ApiKey {
            id: r.get(0)?,
            name: r.get(1)?,
            prefix: r.get(2)?,
            created_at: r.get(3)?,
            expires_at: r.get(4)?,
        })
    })?
    .collect()
}

/// Delete one of the user's keys; `false` when there is no such key of theirs.
pub fn delete(c: &Connection, user: UserId, id: ApiKeyId) -> rusqlite::Result<bool> {
    Ok(c.execute(
        "DELETE FROM api_keys WHERE id = ?1 AND user_id = ?2",
        params![id, user],
    )? == 1)
}
