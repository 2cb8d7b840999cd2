//! Resumable uploads in SQLite. The single writer serialises creation (count, reserve,
//! insert) and every lock and append, so each is exact.

use async_trait::async_trait;
use rusqlite::{Connection, OptionalExtension, Row, params};

use super::Sqlite;
use crate::crypto::Sealing;
use crate::ids::{FileId, GrantId, Timestamp, UserId};
use crate::meta::error::MetaError;
use crate::meta::resumable::{
    Append, Chunk, Created, Creator, Locked, NewResumable, ResumableUpload, Resumables,
    SealedChunk, reservation_of,
};
use crate::meta::uploads::Reserved;

fn as_i64(n: u64) -> i64 {
    i64::try_from(n).unwrap_or(i64::MAX)
}

fn as_u64(n: i64) -> u64 {
    u64::try_from(n).unwrap_or(0)
}

const COLUMNS: &str = "id, owner_id, length, upload_offset, metadata, filename, file_expires_at, expires_at, grant_id";

fn upload(r: &Row<'_>) -> rusqlite::Result<ResumableUpload> {
    Ok(ResumableUpload {
        id: r.get(0)?,
        owner: r.get(1)?,
        length: as_u64(r.get(2)?),
        offset: as_u64(r.get(3)?),
        metadata: r.get(4)?,
        filename: r.get(5)?,
        file_expires_at: r.get(6)?,
        expires_at: r.get(7)?,
        grant: r.get(8)?,
    })
}

fn get(
    c: &Connection,
    id: FileId,
    creator: Creator,
    now: Timestamp,
) -> rusqlite::Result<Option<ResumableUpload>> {
    c.prepare_cached(&format!(
        "SELECT {COLUMNS} FROM resumable_uploads
         WHERE id = ?1 AND owner_id = ?2 AND expires_at > ?3 AND grant_id IS ?4"
    ))?
    .query_row(params![id, creator.owner, now, creator.grant], upload)
    .optional()
}

fn create(c: &Connection, n: &NewResumable) -> rusqlite::Result<Created> {
    let pending: i64 = c
        .prepare_cached(
            "SELECT COUNT(*) FROM resumable_uploads WHERE owner_id = ?1 AND expires_at > ?2",
        )?
        .query_row(params![n.owner, n.now], |r| r.get(0))?;
    if as_u64(pending) >= n.max_pending {
        return Ok(Created::TooMany);
    }
    match super::uploads::reserve(c, &n.reservation)? {
        Reserved::Granted(_) => {}
        Reserved::Exceeded => return Ok(Created::QuotaExceeded),
        Reserved::GrantRefused => return Ok(Created::GrantRefused),
    }
    // Not abandoned while it waits for its next PATCH: the expiry sweep removes it first.
    c.prepare_cached("UPDATE upload_reservations SET touched_at = ?2 WHERE id = ?1")?
        .execute(params![reservation_of(n.id), n.expires_at])?;
    c.prepare_cached(
        "INSERT INTO resumable_uploads
             (id, owner_id, length, upload_offset, metadata, filename, file_expires_at,
              created_at, expires_at, lock_holder, lock_until, grant_id)
         VALUES (?1, ?2, ?3, 0, ?4, ?5, ?6, ?7, ?8, NULL, NULL, ?9)",
    )?
    .execute(params![
        n.id,
        n.owner,
        as_i64(n.length),
        n.metadata,
        n.filename,
        n.file_expires_at,
        n.now,
        n.expires_at,
        n.reservation.grant
    ])?;
    Ok(Created::Created)
}

fn lock(
    c: &Connection,
    id: FileId,
    creator: Creator,
    holder: &str,
    now: Timestamp,
    until: Timestamp,
) -> rusqlite::Result<Locked> {
    let Some(up) = get(c, id, creator, now)? else {
        return Ok(Locked::Missing);
    };
    let n = c
        .prepare_cached(
            "UPDATE resumable_uploads SET lock_holder = ?2, lock_until = ?3
             WHERE id = ?1 AND (lock_holder IS NULL OR lock_holder = ?2 OR lock_until <= ?4)",
        )?
        .execute(params![id, holder, until, now])?;
    Ok(if n == 1 {
        Locked::Held(up)
    } else {
        Locked::Busy
    })
}

fn insert_chunk(c: &Connection, id: FileId, ch: &Chunk) -> rusqlite::Result<()> {
    c.prepare_cached(
        "INSERT INTO resumable_chunks
             (upload_id, start_offset, length, blob_key, enc_key_id, enc_wrapped_key)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
    )?
    .execute(params![
        id,
        as_i64(ch.start),
        as_i64(ch.len),
        ch.blob_key,
        ch.sealing.as_ref().map(|s| s.key_id.clone()),
        ch.sealing.as_ref().map(|s| s.wrapped_key.clone()),
    ])?;
    Ok(())
}

fn append(c: &Connection, a: &Append) -> rusqlite::Result<bool> {
    let n = c
        .prepare_cached(
            "UPDATE resumable_uploads SET upload_offset = upload_offset + ?3, expires_at = ?4,
                 lock_holder = CASE WHEN ?6 THEN NULL ELSE lock_holder END,
                 lock_until = CASE WHEN ?6 THEN NULL ELSE lock_until END
             WHERE id = ?1 AND lock_holder = ?2 AND upload_offset = ?5
               AND upload_offset + ?3 <= length",
        )?
        .execute(params![
            a.id,
            a.holder,
            as_i64(a.added),
            a.expires_at,
            as_i64(a.start),
            a.unlock
        ])?;
    if n != 1 {
        return Ok(false);
    }
    if let Some(start) = a.drop_tail {
        let keys: Vec<String> = c
            .prepare_cached(
                "DELETE FROM resumable_chunks WHERE upload_id = ?1 AND start_offset = ?2
                 RETURNING blob_key",
            )?
            .query_map(params![a.id, as_i64(start)], |r| r.get(0))?
            .collect::<rusqlite::Result<_>>()?;
        for key in &keys {
            super::files::queue_blob_deletion(c, key, a.now)?;
        }
    }
    if let Some(g) = &a.grow {
        let grown = c
            .prepare_cached(
                "UPDATE resumable_chunks SET length = length + ?3
                 WHERE upload_id = ?1 AND blob_key = ?2 AND start_offset = 0",
            )?
            .execute(params![a.id, g.blob_key, as_i64(g.by)])?
            == 1;
        if !grown && g.by > 0 {
            let ch = Chunk {
                start: 0,
                len: g.by,
                blob_key: g.blob_key.clone(),
                sealing: g.sealing.clone(),
            };
            insert_chunk(c, a.id, &ch)?;
        }
    }
    for ch in a.chunk.iter().chain(&a.tail) {
        insert_chunk(c, a.id, ch)?;
    }
    if let Some(r) = a.chunk_reservation {
        c.prepare_cached("DELETE FROM upload_reservations WHERE id = ?1")?
            .execute([r])?;
    }
    c.prepare_cached("UPDATE upload_reservations SET touched_at = ?2 WHERE id = ?1")?
        .execute(params![reservation_of(a.id), a.expires_at])?;
    Ok(true)
}

fn chunks(c: &Connection, id: FileId) -> rusqlite::Result<Vec<Chunk>> {
    c.prepare_cached(
        "SELECT start_offset, length, blob_key, enc_key_id, enc_wrapped_key
         FROM resumable_chunks WHERE upload_id = ?1 ORDER BY start_offset",
    )?
    .query_map([id], |r| {
        let key_id: Option<String> = r.get(3)?;
        let wrapped: Option<Vec<u8>> = r.get(4)?;
        Ok(Chunk {
            start: as_u64(r.get(0)?),
            len: as_u64(r.get(1)?),
            blob_key: r.get(2)?,
            sealing: key_id.zip(wrapped).map(|(key_id, wrapped_key)| Sealing {
                key_id,
                wrapped_key,
            }),
        })
    })?
    .collect()
}

fn remove(c: &Connection, id: FileId, now: Timestamp) -> rusqlite::Result<bool> {
    let keys: Vec<String> = c
        .prepare_cached("DELETE FROM resumable_chunks WHERE upload_id = ?1 RETURNING blob_key")?
        .query_map([id], |r| r.get(0))?
        .collect::<rusqlite::Result<_>>()?;
    for key in &keys {
        super::files::queue_blob_deletion(c, key, now)?;
    }
    // Unfinished (a committed upload's reservation ended with its file): the grant's use back.
    super::uploads::release(c, reservation_of(id))?;
    Ok(
        c.prepare_cached("DELETE FROM resumable_uploads WHERE id = ?1")?
            .execute([id])?
            == 1,
    )
}

#[async_trait]
impl Resumables for Sqlite {
    async fn create(&self, new: NewResumable) -> Result<Created, MetaError> {
        self.write(move |c| create(c, &new)).await
    }

    async fn get(
        &self,
        id: FileId,
        creator: Creator,
        now: Timestamp,
    ) -> Result<Option<ResumableUpload>, MetaError> {
        self.read(move |c| get(c, id, creator, now)).await
    }

    async fn lock(
        &self,
        id: FileId,
        creator: Creator,
        holder: String,
        now: Timestamp,
        until: Timestamp,
    ) -> Result<Locked, MetaError> {
        self.write_lazy(move |c| lock(c, id, creator, &holder, now, until))
            .await
    }

    async fn unlock(&self, id: FileId, holder: String) -> Result<(), MetaError> {
        self.write_lazy(move |c| {
            c.prepare_cached(
                "UPDATE resumable_uploads SET lock_holder = NULL, lock_until = NULL
                 WHERE id = ?1 AND lock_holder = ?2",
            )?
            .execute(params![id, holder])
            .map(|_| ())
        })
        .await
    }

    async fn append(&self, a: Append) -> Result<bool, MetaError> {
        self.write(move |c| append(c, &a)).await
    }

    async fn chunks(&self, id: FileId) -> Result<Vec<Chunk>, MetaError> {
        self.read(move |c| chunks(c, id)).await
    }

    async fn remove(&self, id: FileId, now: Timestamp) -> Result<bool, MetaError> {
        self.write(move |c| remove(c, id, now)).await
    }

    async fn remove_owned(&self, owner: UserId, now: Timestamp) -> Result<usize, MetaError> {
        self.write(move |c| {
            let ids: Vec<FileId> = c
                .prepare_cached("SELECT id FROM resumable_uploads WHERE owner_id = ?1")?
                .query_map([owner], |r| r.get(0))?
                .collect::<rusqlite::Result<_>>()?;
            for id in &ids {
                remove(c, *id, now)?;
            }
            Ok(ids.len())
        })
        .await
    }

    async fn by_grant(&self, grant: GrantId) -> Result<Vec<FileId>, MetaError> {
        self.read(move |c| {
            c.prepare_cached("SELECT id FROM resumable_uploads WHERE grant_id = ?1")?
                .query_map([grant], |r| r.get(0))?
                .collect()
        })
        .await
    }

    async fn expired(&self, now: Timestamp, limit: usize) -> Result<Vec<FileId>, MetaError> {
        self.read(move |c| {
            c.prepare_cached(
                "SELECT id FROM resumable_uploads u
                 WHERE expires_at <= ?1
                    OR (grant_id IS NOT NULL
                        AND NOT EXISTS (SELECT 1 FROM upload_grants g WHERE g.id = u.grant_id))
                 ORDER BY expires_at LIMIT ?2",
            )?
            .query_map(params![now, as_i64(limit as u64)], |r| r.get(0))?
            .collect()
        })
        .await
    }

    async fn staged_keys(&self) -> Result<Vec<String>, MetaError> {
        self.read(|c| {
            c.prepare_cached("SELECT blob_key FROM resumable_chunks")?
                .query_map([], |r| r.get(0))?
                .collect()
        })
        .await
    }

    async fn sealed_chunks(&self, current: String) -> Result<Vec<SealedChunk>, MetaError> {
        self.read(move |c| {
            c.prepare_cached(
                "SELECT upload_id, start_offset, blob_key, enc_key_id, enc_wrapped_key
                 FROM resumable_chunks
                 WHERE enc_key_id IS NOT NULL AND enc_wrapped_key IS NOT NULL
                   AND enc_key_id <> ?1
                 ORDER BY upload_id, start_offset",
            )?
            .query_map([current], |r| {
                Ok(SealedChunk {
                    upload: r.get(0)?,
                    start: as_u64(r.get(1)?),
                    blob_key: r.get(2)?,
                    sealing: Sealing {
                        key_id: r.get(3)?,
                        wrapped_key: r.get(4)?,
                    },
                })
            })?
            .collect()
        })
        .await
    }

    async fn reseal_chunk(&self, chunk: SealedChunk, new: Sealing) -> Result<bool, MetaError> {
        self.write(move |c| {
            Ok(c.prepare_cached(
                "UPDATE resumable_chunks SET enc_key_id = ?3, enc_wrapped_key = ?4
                 WHERE upload_id = ?1 AND start_offset = ?2
                   AND enc_key_id = ?5 AND enc_wrapped_key = ?6",
            )?
            .execute(params![
                chunk.upload,
                as_i64(chunk.start),
                new.key_id,
                new.wrapped_key,
                chunk.sealing.key_id,
                chunk.sealing.wrapped_key
            ])? == 1)
        })
        .await
    }
}
