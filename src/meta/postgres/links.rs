//! The `links` table in PostgreSQL.
//!
//! Invariant: a download is counted by one conditional `UPDATE`. Two nodes counting the last
//! download of a link at once: the second waits for the first's row lock, and PostgreSQL then
//! checks the condition again on the row the first committed, so exactly one succeeds.

use async_trait::async_trait;
use deadpool_postgres::GenericClient;
use tokio_postgres::error::SqlState;

use super::{PgResult, Postgres, files};
use crate::ids::{FileId, LinkId, Timestamp, UserId};
use crate::meta::error::MetaError;
use crate::meta::events::NewEvent;
use crate::meta::links::{LinkState, Links, NewLink};

/// Insert a link, only while its file is live and `owner`'s (one statement). `false` when it
/// is not, also when the file is deleted while the statement runs (its foreign key refuses).
pub async fn insert_for_owner(
    c: &impl GenericClient,
    l: &NewLink,
    owner: UserId,
    now: Timestamp,
) -> PgResult<bool> {
    let st = c
        .prepare_cached(
            "INSERT INTO links (id, file_id, token_hash, created_at, expires_at, max_downloads)
             SELECT $1, f.id, $3, $4, $5, $6 FROM files f
             WHERE f.id = $2 AND f.owner_id = $7 AND (f.expires_at IS NULL OR f.expires_at > $8)",
        )
        .await?;
    let max = l.max_downloads.map(i64::from);
    let res = c
        .execute(
            &st,
            &[
                &l.id,
                &l.file_id,
                &&l.token_hash[..],
                &l.created_at,
                &l.expires_at,
                &max,
                &owner,
                &now,
            ],
        )
        .await;
    match res {
        Ok(n) => Ok(n == 1),
        Err(e) if e.code() == Some(&SqlState::FOREIGN_KEY_VIOLATION) => Ok(false),
        Err(e) => Err(e),
    }
}

/// Look a token up without counting a download: the link and its file in one statement.
pub async fn resolve(
    c: &impl GenericClient,
    token_hash: &[u8; 32],
    now: Timestamp,
) -> PgResult<LinkState> {
    let st = c
        .prepare_cached(
            // The file's columns in `files::row_at`'s order, after the link's four.
            "SELECT l.id, l.expires_at, l.max_downloads, l.downloads,
                    f.id, f.filename, f.size, f.content_type, f.sha256, f.created_at,
                    f.expires_at, f.owner_id, f.blob_key, f.enc_key_id, f.enc_wrapped_key,
                    f.scanned_at, f.grant_id
             FROM links l JOIN files f ON f.id = l.file_id
             WHERE l.token_hash = $1",
        )
        .await?;
    let Some(r) = c.query_opt(&st, &[&&token_hash[..]]).await? else {
        return Ok(LinkState::Unknown);
    };
    let id: LinkId = r.try_get(0)?;
    let expires_at: Timestamp = r.try_get(1)?;
    let max: Option<i64> = r.try_get(2)?;
    let used: i64 = r.try_get(3)?;
    let file = files::row_at(&r, 4)?;
    // The file's own retention ends its links too.
    if file.file.expires_at.is_some_and(|e| e <= now) {
        return Ok(LinkState::Unknown);
    }
    if expires_at <= now {
        return Ok(LinkState::Expired);
    }
    if max.is_some_and(|m| used >= m) {
        return Ok(LinkState::UsedUp);
    }
    Ok(LinkState::Live {
        id,
        file: Box::new(file),
    })
}

/// Count one download; `false` when the link expired or was used up in the meantime.
pub async fn consume(c: &impl GenericClient, id: LinkId, now: Timestamp) -> PgResult<bool> {
    let st = c
        .prepare_cached(
            "UPDATE links SET downloads = downloads + 1
             WHERE id = $1 AND expires_at > $2
               AND (max_downloads IS NULL OR downloads < max_downloads)",
        )
        .await?;
    Ok(c.execute(&st, &[&id, &now]).await? == 1)
}

/// Delete a link if `owner` owns its file; `None` = no such link of theirs, else its file.
pub async fn delete_owned(
    c: &impl GenericClient,
    id: LinkId,
    owner: UserId,
) -> PgResult<Option<FileId>> {
    let st = c
        .prepare_cached(
            "DELETE FROM links l USING files f
             WHERE l.id = $1 AND f.id = l.file_id AND f.owner_id = $2
             RETURNING l.file_id",
        )
        .await?;
    c.query_opt(&st, &[&id, &owner])
        .await?
        .map(|r| r.try_get(0))
        .transpose()
}

/// Remove links that expired before `cutoff` (kept a while so clients see 410, not 404).
pub async fn prune_expired(c: &impl GenericClient, cutoff: Timestamp) -> PgResult<usize> {
    let st = c
        .prepare_cached("DELETE FROM links WHERE expires_at <= $1")
        .await?;
    Ok(usize::try_from(c.execute(&st, &[&cutoff]).await?).unwrap_or(usize::MAX))
}

#[async_trait]
impl Links for Postgres {
    async fn insert_for_owner(
        &self,
        link: NewLink,
        owner: UserId,
        now: Timestamp,
    ) -> Result<bool, MetaError> {
        self.one((link, owner, now), |c, (link, owner, now)| {
            Box::pin(insert_for_owner(c, link, *owner, *now))
        })
        .await
    }

    async fn resolve(&self, token_hash: [u8; 32], now: Timestamp) -> Result<LinkState, MetaError> {
        self.one((token_hash, now), |c, (hash, now)| {
            Box::pin(resolve(c, hash, *now))
        })
        .await
    }

    async fn consume_recording(
        &self,
        id: LinkId,
        now: Timestamp,
        events: Vec<NewEvent>,
    ) -> Result<bool, MetaError> {
        let (counted, n) = self
            .tx(
                super::IsolationLevel::ReadCommitted,
                (id, now, events),
                |t, (id, now, events)| {
                    Box::pin(async move {
                        let counted = consume(t, *id, *now).await?;
                        let n = if counted {
                            super::events::record(t, events).await?
                        } else {
                            0
                        };
                        Ok((counted, n))
                    })
                },
            )
            .await?;
        self.events_committed(n);
        Ok(counted)
    }

    async fn delete_owned(&self, id: LinkId, owner: UserId) -> Result<Option<FileId>, MetaError> {
        self.one((id, owner), |c, &(id, owner)| {
            Box::pin(delete_owned(c, id, owner))
        })
        .await
    }

    async fn prune_expired(&self, cutoff: Timestamp) -> Result<usize, MetaError> {
        self.one(cutoff, |c, &cutoff| Box::pin(prune_expired(c, cutoff)))
            .await
    }
}
