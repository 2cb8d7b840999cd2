//! The `upload_grants` table in PostgreSQL.
//!
//! Invariant: a use is taken by one conditional update of the grant's row, which locks it:
//! two nodes starting uploads with a single-use grant take turns, and the later one finds it
//! used up.

use async_trait::async_trait;
use deadpool_postgres::GenericClient;
use tokio_postgres::Row;

use super::users::LOCKED;
use super::{PgResult, Postgres};
use crate::ids::{FileId, GrantId, Timestamp, UserId};
use crate::meta::error::MetaError;
use crate::meta::grants::{Grant, GrantMatch, Grants, NewGrant, join_extensions, split_extensions};

fn as_i64(n: u64) -> i64 {
    i64::try_from(n).unwrap_or(i64::MAX)
}

/// The columns [`grant`] reads, in its order.
macro_rules! columns {
    () => {
        "id, expires_at, max_bytes, extensions, max_uploads, uses, file_expires_in, sha256, \
         created_at"
    };
}

fn grant(r: &Row) -> PgResult<Grant> {
    let max_bytes: i64 = r.try_get(2)?;
    let exts: String = r.try_get(3)?;
    let max_uploads: i64 = r.try_get(4)?;
    let uses: i64 = r.try_get(5)?;
    let file_expires_in: Option<i64> = r.try_get(6)?;
    Ok(Grant {
        id: r.try_get(0)?,
        expires_at: r.try_get(1)?,
        max_bytes: u64::try_from(max_bytes).unwrap_or(0),
        extensions: split_extensions(&exts),
        max_uploads: u32::try_from(max_uploads).unwrap_or(0),
        uses: u32::try_from(uses).unwrap_or(u32::MAX),
        file_expires_in: file_expires_in.and_then(|s| u64::try_from(s).ok()),
        sha256: r.try_get(7)?,
        created_at: r.try_get(8)?,
    })
}

async fn insert(c: &impl GenericClient, g: &NewGrant) -> PgResult<bool> {
    let st = c
        .prepare_cached(
            // The owner's row locked as a file insert locks it: ordered against the account's
            // lock for deletion on every node (before it, or refused after it).
            "WITH owner AS (
                 SELECT id FROM users WHERE id = $2 AND password_hash <> $11
                 FOR NO KEY UPDATE)
             INSERT INTO upload_grants (id, user_id, token_hash, created_at, expires_at,
                 max_bytes, extensions, max_uploads, uses, file_expires_in, sha256)
             SELECT $1, owner.id, $3, $4, $5, $6, $7, $8, 0, $9, $10 FROM owner",
        )
        .await?;
    let n = c
        .execute(
            &st,
            &[
                &g.grant.id,
                &g.owner,
                &&g.token_hash[..],
                &g.grant.created_at,
                &g.grant.expires_at,
                &as_i64(g.grant.max_bytes),
                &join_extensions(&g.grant.extensions),
                &i64::from(g.grant.max_uploads),
                &g.grant.file_expires_in.map(as_i64),
                &g.grant.sha256,
                &LOCKED,
            ],
        )
        .await?;
    Ok(n == 1)
}

async fn find(c: &impl GenericClient, hash: &[u8; 32]) -> PgResult<Option<GrantMatch>> {
    let st = c
        .prepare_cached(
            "SELECT g.id, g.expires_at, g.max_bytes, g.extensions, g.max_uploads, g.uses,
                    g.file_expires_in, g.sha256, g.created_at, g.user_id
             FROM upload_grants g JOIN users u ON u.id = g.user_id
             WHERE g.token_hash = $1 AND u.password_hash <> $2",
        )
        .await?;
    c.query_opt(&st, &[&&hash[..], &LOCKED])
        .await?
        .map(|r| {
            Ok(GrantMatch {
                grant: grant(&r)?,
                owner: r.try_get(9)?,
            })
        })
        .transpose()
}

async fn list(c: &impl GenericClient, owner: UserId) -> PgResult<Vec<Grant>> {
    let st = c
        .prepare_cached(concat!(
            "SELECT ",
            columns!(),
            " FROM upload_grants WHERE user_id = $1 ORDER BY created_at DESC, id DESC"
        ))
        .await?;
    c.query(&st, &[&owner]).await?.iter().map(grant).collect()
}

async fn get(
    c: &impl GenericClient,
    owner: UserId,
    id: GrantId,
    now: Timestamp,
) -> PgResult<Option<(Grant, Vec<FileId>)>> {
    let st = c
        .prepare_cached(concat!(
            "SELECT ",
            columns!(),
            " FROM upload_grants WHERE id = $1 AND user_id = $2"
        ))
        .await?;
    let Some(row) = c.query_opt(&st, &[&id, &owner]).await? else {
        return Ok(None);
    };
    let g = grant(&row)?;
    let st = c
        .prepare_cached(
            "SELECT id FROM files WHERE grant_id = $1 AND owner_id = $2
               AND (expires_at IS NULL OR expires_at > $3)
             ORDER BY created_at, id",
        )
        .await?;
    let files = c
        .query(&st, &[&id, &owner, &now])
        .await?
        .iter()
        .map(|r| r.try_get(0))
        .collect::<PgResult<Vec<FileId>>>()?;
    Ok(Some((g, files)))
}

/// Take one use of a grant for an upload starting at `now`: `false` when it is gone (revoked),
/// expired or used up. Part of the reservation's transaction; the update locks the row.
pub async fn take_use(c: &impl GenericClient, id: GrantId, now: Timestamp) -> PgResult<bool> {
    let st = c
        .prepare_cached(
            "UPDATE upload_grants SET uses = uses + 1
             WHERE id = $1 AND expires_at > $2 AND uses < max_uploads",
        )
        .await?;
    Ok(c.execute(&st, &[&id, &now]).await? == 1)
}

/// Give a failed upload's use back (nothing when the grant was revoked meanwhile).
pub async fn give_back(c: &impl GenericClient, id: GrantId) -> PgResult<()> {
    let st = c
        .prepare_cached("UPDATE upload_grants SET uses = uses - 1 WHERE id = $1 AND uses > 0")
        .await?;
    c.execute(&st, &[&id]).await?;
    Ok(())
}

/// Whether the grant still exists (was not revoked). `FOR KEY SHARE`: a revocation waits for
/// the commit that checked it, or the commit sees it gone; uses taken meanwhile by other
/// uploads (which update no key) do not wait.
pub async fn exists(c: &impl GenericClient, id: GrantId) -> PgResult<bool> {
    let st = c
        .prepare_cached("SELECT 1 FROM upload_grants WHERE id = $1 FOR KEY SHARE")
        .await?;
    Ok(c.query_opt(&st, &[&id]).await?.is_some())
}

#[async_trait]
impl Grants for Postgres {
    async fn insert_grant(&self, g: NewGrant) -> Result<bool, MetaError> {
        self.one(g, |c, g| Box::pin(insert(c, g))).await
    }

    async fn find_grant(&self, token_hash: [u8; 32]) -> Result<Option<GrantMatch>, MetaError> {
        self.one(token_hash, |c, h| Box::pin(find(c, h))).await
    }

    async fn list_grants(&self, owner: UserId) -> Result<Vec<Grant>, MetaError> {
        self.one(owner, |c, &owner| Box::pin(list(c, owner))).await
    }

    async fn get_grant(
        &self,
        owner: UserId,
        id: GrantId,
        now: Timestamp,
    ) -> Result<Option<(Grant, Vec<FileId>)>, MetaError> {
        self.one((owner, id, now), |c, &(owner, id, now)| {
            Box::pin(get(c, owner, id, now))
        })
        .await
    }

    async fn delete_grant(&self, owner: UserId, id: GrantId) -> Result<bool, MetaError> {
        self.one((owner, id), |c, (owner, id)| {
            Box::pin(async move {
                let st = c
                    .prepare_cached("DELETE FROM upload_grants WHERE id = $1 AND user_id = $2")
                    .await?;
                Ok(c.execute(&st, &[id, owner]).await? == 1)
            })
        })
        .await
    }

    async fn prune_grants(&self, cutoff: Timestamp) -> Result<usize, MetaError> {
        self.one(cutoff, |c, cutoff| {
            Box::pin(async move {
                let st = c
                    .prepare_cached(
                        "DELETE FROM upload_grants WHERE expires_at < $1
                           AND NOT EXISTS (SELECT 1 FROM upload_reservations r
                                           WHERE r.grant_id = upload_grants.id)",
                    )
                    .await?;
                let n = c.execute(&st, &[cutoff]).await?;
                Ok(usize::try_from(n).unwrap_or(usize::MAX))
            })
        })
        .await
    }
}
