//! The `files` table and the blob-deletion queue in SQLite.

use async_trait::async_trait;
use rusqlite::{Connection, OptionalExtension, params};

use super::Sqlite;
use super::users::LOCKED;
use crate::crypto::Sealing;
use crate::ids::{FileId, Timestamp, UserId};
use crate::meta::error::MetaError;
use crate::meta::events::NewEvent;
use crate::meta::files::{AfterRead, FileObject, Files, Inserted, StoredFile};
use crate::meta::page::Page;
use crate::meta::revocations::Revoked;

const COLUMNS: &str = "id, filename, size, content_type, sha256, created_at, expires_at, owner_id, blob_key, enc_key_id, enc_wrapped_key, scanned_at, grant_id";

fn row(r: &rusqlite::Row<'_>) -> rusqlite::Result<StoredFile> {
    let size: i64 = r.get(2)?;
    let key_id: Option<String> = r.get(9)?;
    let wrapped: Option<Vec<u8>> = r.get(10)?;
    Ok(StoredFile {
        file: FileObject {
            id: r.get(0)?,
            filename: r.get(1)?,
            size: u64::try_from(size).unwrap_or(0),
            content_type: r.get(3)?,
            sha256: r.get(4)?,
            created_at: r.get(5)?,
            expires_at: r.get(6)?,
            scanned_at: r.get(11)?,
            grant_id: r.get(12)?,
        },
        owner_id: r.get(7)?,
        blob_key: r.get(8)?,
        sealing: key_id.zip(wrapped).map(|(key_id, wrapped_key)| Sealing {
            key_id,
            wrapped_key,
        }),
    })
}

/// Insert a file row (usage is added by trigger), unless its owner is locked for deletion or
/// gone. Checked in the insert itself, so an upload that passed authentication before its
/// owner was locked cannot add a file to an account being deleted: from the lock on, an
/// account's files can only decrease.
pub fn insert(c: &Connection, f: &StoredFile) -> rusqlite::Result<Inserted> {
    let (key_id, wrapped) = match &f.sealing {
        Some(s) => (Some(s.key_id.as_str()), Some(s.wrapped_key.as_slice())),
        None => (None, None),
    };
    let n = c
        .prepare_cached(
            "INSERT INTO files (id, owner_id, filename, size, content_type, sha256, created_at,
                            expires_at, blob_key, enc_key_id, enc_wrapped_key, scanned_at,
                            grant_id)
         SELECT ?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?13, ?14
         WHERE EXISTS (SELECT 1 FROM users WHERE id = ?2 AND password_hash != ?12)",
        )?
        .execute(params![
            f.file.id,
            f.owner_id,
            f.file.filename,
            i64::try_from(f.file.size).unwrap_or(i64::MAX),
            f.file.content_type,
            f.file.sha256,
            f.file.created_at,
            f.file.expires_at,
            f.blob_key,
            key_id,
            wrapped,
            LOCKED,
            f.file.scanned_at,
            f.file.grant_id,
        ])?;
    Ok(if n == 1 {
        Inserted::Inserted
    } else {
        Inserted::OwnerGone
    })
}

/// A live (unexpired) file, if `owner` may see it (`None` = any owner, for admins).
pub fn get_visible(
    c: &Connection,
    id: FileId,
    owner: Option<UserId>,
    now: Timestamp,
) -> rusqlite::Result<Option<StoredFile>> {
    c.prepare_cached(&format!(
        "SELECT {COLUMNS} FROM files WHERE id = ?1 AND (?2 IS NULL OR owner_id = ?2)
           AND (expires_at IS NULL OR expires_at > ?3)"
    ))?
    .query_row(params![id, owner, now], row)
    .optional()
}

/// The owner's live files, newest first, after the `(created_at, id)` cursor.
pub fn list_owned(
    c: &Connection,
    owner: UserId,
    after: Option<(Timestamp, FileId)>,
    limit: usize,
    now: Timestamp,
) -> rusqlite::Result<Page<FileObject>> {
    let fetch = i64::try_from(limit + 1).unwrap_or(i64::MAX);
    let (at, id) = match after {
        Some((at, id)) => (Some(at), Some(id)),
        None => (None, None),
    };
    let rows = c
        .prepare_cached(&format!(
            "SELECT {COLUMNS} FROM files
             WHERE owner_id = ?1 AND (expires_at IS NULL OR expires_at > ?2)
               AND (?3 IS NULL OR (created_at, id) < (?3, ?4))
             ORDER BY created_at DESC, id DESC LIMIT ?5"
        ))?
        .query_map(params![owner, now, at, id, fetch], |r| {
            row(r).map(|s| s.file)
        })?
        .collect::<rusqlite::Result<Vec<_>>>()?;
    Ok(Page::from_overfetch(rows, limit))
}

/// Delete a row (links cascade) and queue its blob for deletion. The blob's key, or `None`
/// when the row was already gone.
pub fn delete(c: &Connection, id: FileId, now: Timestamp) -> rusqlite::Result<Option<String>> {
    let key: Option<String> = c
        .prepare_cached("DELETE FROM files WHERE id = ?1 RETURNING blob_key")?
        .query_row([id], |r| r.get(0))
        .optional()?;
    if let Some(k) = &key {
        queue_blob_deletion(c, k, now)?;
    }
    Ok(key)
}

/// Delete a row only while it still points at `blob_key` (its blob is queued, in case it
/// reappears).
pub fn delete_if_blob(
    c: &Connection,
    id: FileId,
    blob_key: &str,
    now: Timestamp,
) -> rusqlite::Result<bool> {
    let gone = c.execute(
        "DELETE FROM files WHERE id = ?1 AND blob_key = ?2",
        params![id, blob_key],
    )? == 1;
    if gone {
        queue_blob_deletion(c, blob_key, now)?;
    }
    Ok(gone)
}

/// Queue a blob for deletion (once).
pub(crate) fn queue_blob_deletion(
    c: &Connection,
    blob_key: &str,
    now: Timestamp,
) -> rusqlite::Result<()> {
    c.prepare_cached(
        "INSERT INTO blob_deletions (blob_key, queued_at) VALUES (?1, ?2)
         ON CONFLICT (blob_key) DO NOTHING",
    )?
    .execute(params![blob_key, now])?;
    Ok(())
}

/// Blobs queued for deletion, oldest first.
pub fn queued_deletions(c: &Connection, limit: usize) -> rusqlite::Result<Vec<String>> {
    c.prepare_cached("SELECT blob_key FROM blob_deletions ORDER BY queued_at LIMIT ?1")?
        .query_map([i64::try_from(limit).unwrap_or(i64::MAX)], |r| r.get(0))?
        .collect()
}

/// A queued blob is gone.
pub fn deletion_done(c: &Connection, blob_key: &str) -> rusqlite::Result<()> {
    c.prepare_cached("DELETE FROM blob_deletions WHERE blob_key = ?1")?
        .execute([blob_key])?;
    Ok(())
}

/// Every file of a user (for account deletion).
pub fn all_of_owner(c: &Connection, owner: UserId) -> rusqlite::Result<Vec<StoredFile>> {
    c.prepare(&format!("SELECT {COLUMNS} FROM files WHERE owner_id = ?1"))?
        .query_map([owner], row)?
        .collect()
}

/// Files whose retention ran out, oldest expiry first.
pub fn expired(c: &Connection, now: Timestamp, limit: usize) -> rusqlite::Result<Vec<StoredFile>> {
    c.prepare(&format!(
        "SELECT {COLUMNS} FROM files WHERE expires_at IS NOT NULL AND expires_at <= ?1
         ORDER BY expires_at LIMIT ?2"
    ))?
    .query_map(params![now, i64::try_from(limit).unwrap_or(i64::MAX)], row)?
    .collect()
}

/// Every row, in id order, one page at a time (maintenance walks).
pub fn scan(
    c: &Connection,
    after: Option<FileId>,
    limit: usize,
) -> rusqlite::Result<Vec<StoredFile>> {
    c.prepare(&format!(
        "SELECT {COLUMNS} FROM files WHERE (?1 IS NULL OR id > ?1) ORDER BY id LIMIT ?2"
    ))?
    .query_map(
        params![after, i64::try_from(limit).unwrap_or(i64::MAX)],
        row,
    )?
    .collect()
}

/// Whether a blob key belongs to a row.
pub fn blob_key_exists(c: &Connection, key: &str) -> rusqlite::Result<bool> {
    // A resumable upload's staged chunk is held by its row as a file's blob is.
    c.prepare_cached(
        "SELECT 1 FROM files WHERE blob_key = ?1
         UNION ALL SELECT 1 FROM resumable_chunks WHERE blob_key = ?1 LIMIT 1",
    )?
    .query_row([key], |_| Ok(()))
    .optional()
    .map(|o| o.is_some())
}

/// Point a plaintext row at its new sealed blob (encrypt-existing), only while it still points
/// at `old_blob`, which is then queued for deletion.
pub fn seal_blob(
    c: &Connection,
    id: FileId,
    old_blob: &str,
    new_blob: &str,
    sealing: &Sealing,
    now: Timestamp,
) -> rusqlite::Result<bool> {
    let switched = c.execute(
        "UPDATE files SET blob_key = ?2, enc_key_id = ?3, enc_wrapped_key = ?4
         WHERE id = ?1 AND blob_key = ?5 AND enc_key_id IS NULL",
        params![id, new_blob, sealing.key_id, sealing.wrapped_key, old_blob],
    )? == 1;
    if switched {
        queue_blob_deletion(c, old_blob, now)?;
    }
    Ok(switched)
}

/// Replace a wrapped data key (rotate-key); only if it is still the one that was read.
pub fn rewrap(c: &Connection, id: FileId, old: &Sealing, new: &Sealing) -> rusqlite::Result<bool> {
    Ok(c.execute(
        "UPDATE files SET enc_key_id = ?2, enc_wrapped_key = ?3
         WHERE id = ?1 AND enc_key_id = ?4 AND enc_wrapped_key = ?5",
        params![id, new.key_id, new.wrapped_key, old.key_id, old.wrapped_key],
    )? == 1)
}

#[async_trait]
impl Files for Sqlite {
    async fn insert(&self, file: StoredFile) -> Result<Inserted, MetaError> {
        self.write(move |c| insert(c, &file)).await
    }

    async fn get_visible(
        &self,
        id: FileId,
        owner: Option<UserId>,
        now: Timestamp,
    ) -> Result<Option<StoredFile>, MetaError> {
        self.read(move |c| get_visible(c, id, owner, now)).await
    }

    async fn get_visible_then(
        &self,
        id: FileId,
        owner: Option<UserId>,
        now: Timestamp,
        then: AfterRead,
    ) -> Result<Option<(StoredFile, Option<bytes::Bytes>)>, MetaError> {
        // On the reader's own blocking thread: one hop for row and bytes.
        self.read(move |c| {
            Ok(get_visible(c, id, owner, now)?.map(|f| {
                let extra = then(&f);
                (f, extra)
            }))
        })
        .await
    }

    async fn list_owned(
        &self,
        owner: UserId,
        after: Option<(Timestamp, FileId)>,
        limit: usize,
        now: Timestamp,
    ) -> Result<Page<FileObject>, MetaError> {
        self.read(move |c| list_owned(c, owner, after, limit, now))
            .await
    }

    async fn delete_recording(
        &self,
        id: FileId,
        now: Timestamp,
        events: Vec<NewEvent>,
    ) -> Result<Option<String>, MetaError> {
        let (key, n) = self
            .write(move |c| {
                let key = delete(c, id, now)?;
                let n = if key.is_some() {
                    super::events::record(c, &events)?
                } else {
                    0
                };
                Ok((key, n))
            })
            .await?;
        self.announce(key.is_some().then_some(Revoked::File(id)));
        self.events_committed(n);
        Ok(key)
    }

    async fn delete_if_blob_recording(
        &self,
        id: FileId,
        blob_key: String,
        now: Timestamp,
        events: Vec<NewEvent>,
    ) -> Result<bool, MetaError> {
        let (gone, n) = self
            .write(move |c| {
                let gone = delete_if_blob(c, id, &blob_key, now)?;
                let n = if gone {
                    super::events::record(c, &events)?
                } else {
                    0
                };
                Ok((gone, n))
            })
            .await?;
        self.announce(gone.then_some(Revoked::File(id)));
        self.events_committed(n);
        Ok(gone)
    }

    async fn queued_deletions(&self, limit: usize) -> Result<Vec<String>, MetaError> {
        self.read(move |c| queued_deletions(c, limit)).await
    }

    async fn deletion_done(&self, blob_key: String) -> Result<(), MetaError> {
        self.write(move |c| deletion_done(c, &blob_key)).await
    }

    async fn all_of_owner(&self, owner: UserId) -> Result<Vec<StoredFile>, MetaError> {
        self.read(move |c| all_of_owner(c, owner)).await
    }

    async fn expired(&self, now: Timestamp, limit: usize) -> Result<Vec<StoredFile>, MetaError> {
        self.read(move |c| expired(c, now, limit)).await
    }

    async fn scan(
        &self,
        after: Option<FileId>,
        limit: usize,
    ) -> Result<Vec<StoredFile>, MetaError> {
        self.read(move |c| scan(c, after, limit)).await
    }

    async fn blob_key_exists(&self, blob_key: String) -> Result<bool, MetaError> {
        self.read(move |c| blob_key_exists(c, &blob_key)).await
    }

    async fn seal_blob(
        &self,
        id: FileId,
        old_blob: String,
        new_blob: String,
        sealing: Sealing,
        now: Timestamp,
    ) -> Result<bool, MetaError> {
        self.write(move |c| seal_blob(c, id, &old_blob, &new_blob, &sealing, now))
            .await
    }

    async fn rewrap(&self, id: FileId, old: Sealing, new: Sealing) -> Result<bool, MetaError> {
        self.write(move |c| rewrap(c, id, &old, &new)).await
    }
}
