//! The `api_keys` table in SQLite.

use async_trait::async_trait;
use rusqlite::{Connection, OptionalExtension, params};

use super::Sqlite;
use super::conn::is_unique_violation;
use super::users::LOCKED;
use crate::ids::{ApiKeyId, UserId};
use crate::meta::api_keys::{ApiKey, ApiKeys, KeyMatch, NewApiKey};
use crate::meta::error::MetaError;
use crate::meta::revocations::Revoked;

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
    .query_row(params![prefix, LOCKED], |r| {
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

#[async_trait]
impl ApiKeys for Sqlite {
    async fn insert(&self, key: NewApiKey) -> Result<bool, MetaError> {
        self.write(move |c| insert(c, &key)).await
    }

    async fn find_by_prefix(&self, prefix: &str) -> Result<Option<KeyMatch>, MetaError> {
        let prefix = prefix.to_owned();
        self.read(move |c| find_by_prefix(c, &prefix)).await
    }

    async fn list(&self, user: UserId) -> Result<Vec<ApiKey>, MetaError> {
        self.read(move |c| list(c, user)).await
    }

    async fn delete(&self, user: UserId, id: ApiKeyId) -> Result<bool, MetaError> {
        let deleted = self.write(move |c| delete(c, user, id)).await?;
        self.announce(deleted.then_some(Revoked::ApiKey(id)));
        Ok(deleted)
    }
}
