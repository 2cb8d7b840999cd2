//! The `upload_grants` table in SQLite.

use async_trait::async_trait;
use rusqlite::{Connection, OptionalExtension, params};

use super::Sqlite;
use super::users::LOCKED;
use crate::ids::{FileId, GrantId, Timestamp, UserId};
use crate::meta::error::MetaError;
use crate::meta::grants::{Grant, GrantMatch, Grants, NewGrant, join_extensions, split_extensions};

fn as_i64(n: u64) -> i64 {
    i64::try_from(n).unwrap_or(i64::MAX)
}

/// The columns [`grant`] reads, in its order.
const COLUMNS: &str = "id, expires_at, max_bytes, extensions, max_uploads, uses, \
                       file_expires_in, sha256, created_at";

fn grant(r: &rusqlite::Row<'_>) -> rusqlite::Result<Grant> {
    let max_bytes: i64 = r.get(2)?;
    let exts: String = r.get(3)?;
    let max_uploads: i64 = r.get(4)?;
    let uses: i64 = r.get(5)?;
    let file_expires_in: Option<i64> = r.get(6)?;
    Ok(Grant {
        id: r.get(0)?,
        expires_at: r.get(1)?,
        max_bytes: u64::try_from(max_bytes).unwrap_or(0),
        extensions: split_extensions(&exts),
        max_uploads: u32::try_from(max_uploads).unwrap_or(0),
        uses: u32::try_from(uses).unwrap_or(u32::MAX),
        file_expires_in: file_expires_in.and_then(|s| u64::try_from(s).ok()),
        sha256: r.get(7)?,
        created_at: r.get(8)?,
    })
}

fn insert(c: &Connection, g: &NewGrant) -> rusqlite::Result<bool> {
    let n = c
        .prepare_cached(
            "INSERT INTO upload_grants (id, user_id, token_hash, created_at, expires_at,
                 max_bytes, extensions, max_uploads, uses, file_expires_in, sha256)
             SELECT ?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, 0, ?9, ?10
             WHERE EXISTS (SELECT 1 FROM users WHERE id = ?2 AND password_hash != ?11)",
        )?
        .execute(params![
            g.grant.id,
            g.owner,
            &g.token_hash[..],
            g.grant.created_at,
            g.grant.expires_at,
            as_i64(g.grant.max_bytes),
            join_extensions(&g.grant.extensions),
            i64::from(g.grant.max_uploads),
            g.grant.file_expires_in.map(as_i64),
            g.grant.sha256,
            LOCKED,
        ])?;
    Ok(n == 1)
}

fn find(c: &Connection, hash: &[u8; 32]) -> rusqlite::Result<Option<GrantMatch>> {
    c.prepare_cached(
        "SELECT g.id, g.expires_at, g.max_bytes, g.extensions, g.max_uploads, g.uses,
                g.file_expires_in, g.sha256, g.created_at, g.user_id
         FROM upload_grants g JOIN users u ON u.id = g.user_id
         WHERE g.token_hash = ?1 AND u.password_hash != ?2",
    )?
    .query_row(params![&hash[..], LOCKED], |r| {
        Ok(GrantMatch {
            grant: grant(r)?,
            owner: r.get(9)?,
        })
    })
    .optional()
}

fn list(c: &Connection, owner: UserId) -> rusqlite::Result<Vec<Grant>> {
    c.prepare_cached(&format!(
        "SELECT {COLUMNS} FROM upload_grants WHERE user_id = ?1
         ORDER BY created_at DESC, id DESC"
    ))?
    .query_map([owner], grant)?
    .collect()
}

fn get(
    c: &Connection,
    owner: UserId,
    id: GrantId,
    now: Timestamp,
) -> rusqlite::Result<Option<(Grant, Vec<FileId>)>> {
    let Some(g) = c
        .prepare_cached(&format!(
            "SELECT {COLUMNS} FROM upload_grants WHERE id = ?1 AND user_id = ?2"
        ))?
        .query_row(params![id, owner], grant)
        .optional()?
    else {
        return Ok(None);
    };
    let files = c
        .prepare_cached(
            "SELECT id FROM files WHERE grant_id = ?1 AND owner_id = ?2
               AND (expires_at IS NULL OR expires_at > ?3)
             ORDER BY created_at, id",
        )?
        .query_map(params![id, owner, now], |r| r.get(0))?
        .collect::<rusqlite::Result<Vec<FileId>>>()?;
    Ok(Some((g, files)))
}

/// Take one use of a grant for an upload starting at `now`: `false` when it is gone (revoked),
/// expired or used up. Part of the reservation's transaction.
pub fn take_use(c: &Connection, id: GrantId, now: Timestamp) -> rusqlite::Result<bool> {
    Ok(c.prepare_cached(
        "UPDATE upload_grants SET uses = uses + 1
         WHERE id = ?1 AND expires_at > ?2 AND uses < max_uploads",
    )?
    .execute(params![id, now])?
        == 1)
}

/// Give a failed upload's use back (nothing when the grant was revoked meanwhile).
pub fn give_back(c: &Connection, id: GrantId) -> rusqlite::Result<()> {
    c.prepare_cached("UPDATE upload_grants SET uses = uses - 1 WHERE id = ?1 AND uses > 0")?
        .execute([id])?;
    Ok(())
}

/// Whether the grant still exists (was not revoked).
pub fn exists(c: &Connection, id: GrantId) -> rusqlite::Result<bool> {
    c.prepare_cached("SELECT EXISTS (SELECT 1 FROM upload_grants WHERE id = ?1)")?
        .query_row([id], |r| r.get(0))
}

#[async_trait]
impl Grants for Sqlite {
    async fn insert_grant(&self, g: NewGrant) -> Result<bool, MetaError> {
        self.write(move |c| insert(c, &g)).await
    }

    async fn find_grant(&self, token_hash: [u8; 32]) -> Result<Option<GrantMatch>, MetaError> {
        self.read(move |c| find(c, &token_hash)).await
    }

    async fn list_grants(&self, owner: UserId) -> Result<Vec<Grant>, MetaError> {
        self.read(move |c| list(c, owner)).await
    }

    async fn get_grant(
        &self,
        owner: UserId,
        id: GrantId,
        now: Timestamp,
    ) -> Result<Option<(Grant, Vec<FileId>)>, MetaError> {
        self.read(move |c| get(c, owner, id, now)).await
    }

    async fn delete_grant(&self, owner: UserId, id: GrantId) -> Result<bool, MetaError> {
        self.write(move |c| {
            Ok(
                c.prepare_cached("DELETE FROM upload_grants WHERE id = ?1 AND user_id = ?2")?
                    .execute(params![id, owner])?
                    == 1,
            )
        })
        .await
    }

    async fn prune_grants(&self, cutoff: Timestamp) -> Result<usize, MetaError> {
        self.write(move |c| {
            c.prepare_cached(
                "DELETE FROM upload_grants WHERE expires_at < ?1
                   AND NOT EXISTS (SELECT 1 FROM upload_reservations r
                                   WHERE r.grant_id = upload_grants.id)",
            )?
            .execute([cutoff])
        })
        .await
    }
}
