//! The `api_keys` table in PostgreSQL.

use async_trait::async_trait;
use deadpool_postgres::GenericClient;
use tokio_postgres::Row;
use tokio_postgres::error::SqlState;

use super::users::LOCKED;
use super::{PgResult, Postgres, REVOCATIONS_CHANNEL};
use crate::ids::{ApiKeyId, UserId};
use crate::meta::api_keys::{ApiKey, ApiKeys, KeyMatch, NewApiKey};
use crate::meta::error::MetaError;
use crate::meta::revocations::Revoked;

/// Insert; `false` when the prefix (or the id) collided: the caller draws a new key.
pub async fn insert(c: &impl GenericClient, k: &NewApiKey) -> PgResult<bool> {
    let st = c
        .prepare_cached(
            "INSERT INTO api_keys (id, user_id, name, prefix, hash, created_at, expires_at)
             VALUES ($1, $2, $3, $4, $5, $6, $7)",
        )
        .await?;
    let res = c
        .execute(
            &st,
            &[
                &k.key.id,
                &k.user_id,
                &k.key.name,
                &k.key.prefix,
                &&k.hash[..],
                &k.key.created_at,
                &k.key.expires_at,
            ],
        )
        .await;
    match res {
        Ok(_) => Ok(true),
        Err(e) if e.code() == Some(&SqlState::UNIQUE_VIOLATION) => Ok(false),
        Err(e) => Err(e),
    }
}

/// The key row and owner for a prefix; none when the owner is locked for deletion.
pub async fn find_by_prefix(c: &impl GenericClient, prefix: &str) -> PgResult<Option<KeyMatch>> {
    let st = c
        .prepare_cached(
            "SELECT k.id, k.user_id, u.role, k.hash, k.expires_at
             FROM api_keys k JOIN users u ON u.id = k.user_id
             WHERE k.prefix = $1 AND u.password_hash <> $2",
        )
        .await?;
    c.query_opt(&st, &[&prefix, &LOCKED])
        .await?
        .map(|r| {
            Ok(KeyMatch {
                id: r.try_get(0)?,
                user_id: r.try_get(1)?,
                role: r.try_get(2)?,
                hash: r.try_get(3)?,
                expires_at: r.try_get(4)?,
            })
        })
        .transpose()
}

fn key(r: &Row) -> PgResult<ApiKey> {
    Ok(ApiKey {
        id: r.try_get(0)?,
        name: r.try_get(1)?,
        prefix: r.try_get(2)?,
        created_at: r.try_get(3)?,
        expires_at: r.try_get(4)?,
    })
}

/// The user's keys, newest first.
pub async fn list(c: &impl GenericClient, user: UserId) -> PgResult<Vec<ApiKey>> {
    let st = c
        .prepare_cached(
            "SELECT id, name, prefix, created_at, expires_at FROM api_keys
             WHERE user_id = $1 ORDER BY created_at DESC, id DESC",
        )
        .await?;
    c.query(&st, &[&user]).await?.iter().map(key).collect()
}

/// Delete one of the user's keys; `false` when there is no such key of theirs.
pub async fn delete(
    c: &impl GenericClient,
    user: UserId,
    id: ApiKeyId,
    payload: &str,
) -> PgResult<bool> {
    let st = c
        .prepare_cached(
            "WITH gone AS (DELETE FROM api_keys WHERE id = $1 AND user_id = $2 RETURNING 1)
             SELECT pg_notify($3, $4) FROM gone",
        )
        .await?;
    Ok(
        c.execute(&st, &[&id, &user, &REVOCATIONS_CHANNEL, &payload])
            .await?
            == 1,
    )
}

#[async_trait]
impl ApiKeys for Postgres {
    async fn insert(&self, key: NewApiKey) -> Result<bool, MetaError> {
        self.one(key, |c, k| Box::pin(insert(c, k))).await
    }

    async fn find_by_prefix(&self, prefix: &str) -> Result<Option<KeyMatch>, MetaError> {
        self.one(prefix.to_owned(), |c, p| Box::pin(find_by_prefix(c, p)))
            .await
    }

    async fn list(&self, user: UserId) -> Result<Vec<ApiKey>, MetaError> {
        self.one(user, |c, &user| Box::pin(list(c, user))).await
    }

    async fn delete(&self, user: UserId, id: ApiKeyId) -> Result<bool, MetaError> {
        let echo = self.hub.echo();
        let payload = Self::payload(&echo, Revoked::ApiKey(id));
        let deleted = self
            .one((user, id, payload), |c, (user, id, p)| {
                Box::pin(delete(c, *user, *id, p))
            })
            .await?;
        self.announce(deleted.then_some(Revoked::ApiKey(id)), echo)
            .await;
        Ok(deleted)
    }
}
