//! The `links` table in SQLite.

use async_trait::async_trait;
use rusqlite::{Connection, OptionalExtension, params};

use super::Sqlite;
use super::files;
use crate::ids::{FileId, LinkId, Timestamp, UserId};
use crate::meta::error::MetaError;
use crate::meta::events::NewEvent;
use crate::meta::links::{LinkState, Links, NewLink};

/// Insert a link.
pub fn insert(c: &Connection, l: &NewLink) -> rusqlite::Result<()> {
    c.execute(
        "INSERT INTO links (id, file_id, token_hash, created_at, expires_at, max_downloads)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
        params![
            l.id,
            l.file_id,
            &l.token_hash[..],
            l.created_at,
            l.expires_at,
            l.max_downloads
        ],
    )?;
    Ok(())
}

/// Look a token up without counting a download.
pub fn resolve(
    c: &Connection,
    token_hash: &[u8; 32],
    now: Timestamp,
) -> rusqlite::Result<LinkState> {
    let row = c
        .prepare_cached(
            "SELECT id, file_id, expires_at, max_downloads, downloads FROM links WHERE token_hash = ?1",
        )?
        .query_row([&token_hash[..]], |r| {
            Ok((
                r.get::<_, LinkId>(0)?,
                r.get::<_, FileId>(1)?,
                r.get::<_, Timestamp>(2)?,
                r.get::<_, Option<i64>>(3)?,
                r.get::<_, i64>(4)?,
            ))
        })
        .optional()?;
    let Some((id, file_id, expires_at, max, used)) = row else {
        return Ok(LinkState::Unknown);
    };
    // The file's own retention ends its links too.
    let Some(file) = files::get_visible(c, file_id, None, now)? else {
        return Ok(LinkState::Unknown);
    };
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
pub fn consume(c: &Connection, id: LinkId, now: Timestamp) -> rusqlite::Result<bool> {
    Ok(c.prepare_cached(
        "UPDATE links SET downloads = downloads + 1
         WHERE id = ?1 AND expires_at > ?2 AND (max_downloads IS NULL OR downloads < max_downloads)",
    )?
    .execute(params![id, now])?
        == 1)
}

/// Delete a link if `owner` owns its file; `None` = no such link of theirs, else its file.
pub fn delete_owned(c: &Connection, id: LinkId, owner: UserId) -> rusqlite::Result<Option<FileId>> {
    let file: Option<FileId> = c
        .query_row(
            "SELECT l.file_id FROM links l JOIN files f ON f.id = l.file_id
             WHERE l.id = ?1 AND f.owner_id = ?2",
            params![id, owner],
            |r| r.get(0),
        )
        .optional()?;
    if file.is_some() {
        c.execute("DELETE FROM links WHERE id = ?1", [id])?;
    }
    Ok(file)
}

/// Remove links that expired before `cutoff` (kept a while so clients see 410, not 404).
pub fn prune_expired(c: &Connection, cutoff: Timestamp) -> rusqlite::Result<usize> {
    c.execute("DELETE FROM links WHERE expires_at <= ?1", [cutoff])
}

#[async_trait]
impl Links for Sqlite {
    async fn insert_for_owner(
        &self,
        link: NewLink,
        owner: UserId,
        now: Timestamp,
    ) -> Result<bool, MetaError> {
        self.write(move |c| {
            if files::get_visible(c, link.file_id, Some(owner), now)?.is_none() {
                return Ok(false);
            }
            insert(c, &link).map(|()| true)
        })
        .await
    }

    async fn resolve(&self, token_hash: [u8; 32], now: Timestamp) -> Result<LinkState, MetaError> {
        self.read(move |c| resolve(c, &token_hash, now)).await
    }

    async fn consume_recording(
        &self,
        id: LinkId,
        now: Timestamp,
        events: Vec<NewEvent>,
    ) -> Result<bool, MetaError> {
        let (counted, n) = self
            .write(move |c| {
                let counted = consume(c, id, now)?;
                let n = if counted {
                    super::events::record(c, &events)?
                } else {
                    0
                };
                Ok((counted, n))
            })
            .await?;
        self.events_committed(n);
        Ok(counted)
    }

    async fn delete_owned(&self, id: LinkId, owner: UserId) -> Result<Option<FileId>, MetaError> {
        self.write(move |c| delete_owned(c, id, owner)).await
    }

    async fn prune_expired(&self, cutoff: Timestamp) -> Result<usize, MetaError> {
        self.write(move |c| prune_expired(c, cutoff)).await
    }
}
