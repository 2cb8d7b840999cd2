//! The `files` table and the blob-deletion queue in PostgreSQL.
//!
//! Invariant: a file row is inserted in the statement that locks its owner's row and sees it
//! unlocked, so it is ordered against the account's lock on every node: committed before it,
//! or refused after it. A row deleted (or pointed at another blob) queues its old blob in the
//! same statement.

use async_trait::async_trait;
use deadpool_postgres::GenericClient;
use tokio_postgres::Row;

use super::users::LOCKED;
use super::{IsolationLevel, PgResult, Postgres, REVOCATIONS_CHANNEL};
use crate::crypto::Sealing;
use crate::ids::{FileId, Timestamp, UserId};
use crate::meta::error::MetaError;
use crate::meta::events::NewEvent;
use crate::meta::files::{FileObject, Files, Inserted, StoredFile};
use crate::meta::page::Page;
use crate::meta::revocations::Revoked;

/// The columns [`row`] reads, in its order.
macro_rules! columns {
    () => {
        "id, filename, size, content_type, sha256, created_at, expires_at, owner_id, blob_key, \
         enc_key_id, enc_wrapped_key, scanned_at, grant_id"
    };
}

fn row(r: &Row) -> PgResult<StoredFile> {
    row_at(r, 0)
}

/// A file from [`columns!`] starting at column `at` (a join puts other columns first).
pub(super) fn row_at(r: &Row, at: usize) -> PgResult<StoredFile> {
    let size: i64 = r.try_get(at + 2)?;
    let key_id: Option<String> = r.try_get(at + 9)?;
    let wrapped: Option<Vec<u8>> = r.try_get(at + 10)?;
    Ok(StoredFile {
        file: FileObject {
            id: r.try_get(at)?,
            filename: r.try_get(at + 1)?,
            size: u64::try_from(size).unwrap_or(0),
            content_type: r.try_get(at + 3)?,
            sha256: r.try_get(at + 4)?,
            created_at: r.try_get(at + 5)?,
            expires_at: r.try_get(at + 6)?,
            scanned_at: r.try_get(at + 11)?,
            grant_id: r.try_get(at + 12)?,
        },
        owner_id: r.try_get(at + 7)?,
        blob_key: r.try_get(at + 8)?,
        sealing: key_id.zip(wrapped).map(|(key_id, wrapped_key)| Sealing {
            key_id,
            wrapped_key,
        }),
    })
}

fn rows(rs: &[Row]) -> PgResult<Vec<StoredFile>> {
    rs.iter().map(row).collect()
}

fn count(n: usize) -> i64 {
    i64::try_from(n).unwrap_or(i64::MAX)
}

/// Insert a file row (usage grows by trigger), unless its owner is locked for deletion or
/// gone. The owner's row is locked in the same statement (`FOR NO KEY UPDATE`, the lock the
/// usage trigger takes anyway, so two uploads of one owner never deadlock upgrading): a
/// concurrent lock either committed first, and the re-checked row says `!locked`, or waits for
/// this insert to commit.
pub async fn insert(c: &impl GenericClient, f: &StoredFile) -> PgResult<Inserted> {
    let (key_id, wrapped) = match &f.sealing {
        Some(s) => (Some(s.key_id.as_str()), Some(s.wrapped_key.as_slice())),
        None => (None, None),
    };
    let st = c
        .prepare_cached(
            "WITH owner AS (
                 SELECT id FROM users WHERE id = $2 AND password_hash <> $12
                 FOR NO KEY UPDATE)
             INSERT INTO files (id, owner_id, filename, size, content_type, sha256, created_at,
                                expires_at, blob_key, enc_key_id, enc_wrapped_key, scanned_at,
                                grant_id)
             SELECT $1, owner.id, $3, $4, $5, $6, $7, $8, $9, $10, $11, $13, $14 FROM owner",
        )
        .await?;
    let n = c
        .execute(
            &st,
            &[
                &f.file.id,
                &f.owner_id,
                &f.file.filename,
                &i64::try_from(f.file.size).unwrap_or(i64::MAX),
                &f.file.content_type,
                &f.file.sha256,
                &f.file.created_at,
                &f.file.expires_at,
                &f.blob_key,
                &key_id,
                &wrapped,
                &LOCKED,
                &f.file.scanned_at,
                &f.file.grant_id,
            ],
        )
        .await?;
    Ok(if n == 1 {
        Inserted::Inserted
    } else {
        Inserted::OwnerGone
    })
}

/// A live (unexpired) file, if `owner` may see it (`None` = any owner, for admins).
pub async fn get_visible(
    c: &impl GenericClient,
    id: FileId,
    owner: Option<UserId>,
    now: Timestamp,
) -> PgResult<Option<StoredFile>> {
    let st = c
        .prepare_cached(concat!(
            "SELECT ",
            columns!(),
            " FROM files WHERE id = $1 AND ($2::uuid IS NULL OR owner_id = $2)
               AND (expires_at IS NULL OR expires_at > $3)"
        ))
        .await?;
    c.query_opt(&st, &[&id, &owner, &now])
        .await?
        .as_ref()
        .map(row)
        .transpose()
}

/// The owner's live files, newest first, after the `(created_at, id)` cursor.
pub async fn list_owned(
    c: &impl GenericClient,
    owner: UserId,
    after: Option<(Timestamp, FileId)>,
    limit: usize,
    now: Timestamp,
) -> PgResult<Page<FileObject>> {
    let fetch = count(limit.saturating_add(1));
    let found = match after {
        None => {
            let st = c
                .prepare_cached(concat!(
                    "SELECT ",
                    columns!(),
                    " FROM files WHERE owner_id = $1 AND (expires_at IS NULL OR expires_at > $2)
                     ORDER BY created_at DESC, id DESC LIMIT $3"
                ))
                .await?;
            c.query(&st, &[&owner, &now, &fetch]).await?
        }
        Some((at, id)) => {
            let st = c
                .prepare_cached(concat!(
                    "SELECT ",
                    columns!(),
                    " FROM files WHERE owner_id = $1 AND (expires_at IS NULL OR expires_at > $2)
                       AND (created_at, id) < ($3, $4)
                     ORDER BY created_at DESC, id DESC LIMIT $5"
                ))
                .await?;
            c.query(&st, &[&owner, &now, &at, &id, &fetch]).await?
        }
    };
    let files = found
        .iter()
        .map(|r| row(r).map(|s| s.file))
        .collect::<PgResult<Vec<_>>>()?;
    Ok(Page::from_overfetch(files, limit))
}

/// Delete a row (links cascade) and queue its blob, in one statement that also announces the
/// deletion (`payload`, see `meta::revocations`) to the other nodes when its transaction
/// commits. The blob's key, or `None` when the row was already gone.
pub async fn delete(
    c: &impl GenericClient,
    id: FileId,
    now: Timestamp,
    payload: &str,
) -> PgResult<Option<String>> {
    let st = c
        .prepare_cached(
            "WITH gone AS (DELETE FROM files WHERE id = $1 RETURNING blob_key),
                  queued AS (
                      INSERT INTO blob_deletions (blob_key, queued_at)
                      SELECT blob_key, $2 FROM gone ON CONFLICT (blob_key) DO NOTHING)
             SELECT blob_key, pg_notify($3, $4)::text FROM gone",
        )
        .await?;
    c.query_opt(&st, &[&id, &now, &REVOCATIONS_CHANNEL, &payload])
        .await?
        .map(|r| r.try_get(0))
        .transpose()
}

/// Delete a row only while it still points at `blob_key` (queued, in case it reappears), and
/// announce it as [`delete`] does.
pub async fn delete_if_blob(
    c: &impl GenericClient,
    id: FileId,
    blob_key: &str,
    now: Timestamp,
    payload: &str,
) -> PgResult<bool> {
    let st = c
        .prepare_cached(
            "WITH gone AS (DELETE FROM files WHERE id = $1 AND blob_key = $2 RETURNING blob_key),
                  queued AS (
                      INSERT INTO blob_deletions (blob_key, queued_at)
                      SELECT blob_key, $3 FROM gone ON CONFLICT (blob_key) DO NOTHING)
             SELECT count(*) FROM (SELECT pg_notify($4, $5) FROM gone) told",
        )
        .await?;
    let n: i64 = c
        .query_one(&st, &[&id, &blob_key, &now, &REVOCATIONS_CHANNEL, &payload])
        .await?
        .try_get(0)?;
    Ok(n == 1)
}

/// Blobs queued for deletion, oldest first.
pub async fn queued_deletions(c: &impl GenericClient, limit: usize) -> PgResult<Vec<String>> {
    let st = c
        .prepare_cached("SELECT blob_key FROM blob_deletions ORDER BY queued_at LIMIT $1")
        .await?;
    c.query(&st, &[&count(limit)])
        .await?
        .iter()
        .map(|r| r.try_get(0))
        .collect()
}

/// A queued blob is gone.
pub async fn deletion_done(c: &impl GenericClient, blob_key: &str) -> PgResult<()> {
    let st = c
        .prepare_cached("DELETE FROM blob_deletions WHERE blob_key = $1")
        .await?;
    c.execute(&st, &[&blob_key]).await?;
    Ok(())
}

/// Every file of a user (for account deletion).
pub async fn all_of_owner(c: &impl GenericClient, owner: UserId) -> PgResult<Vec<StoredFile>> {
    let st = c
        .prepare_cached(concat!(
            "SELECT ",
            columns!(),
            " FROM files WHERE owner_id = $1"
        ))
        .await?;
    rows(&c.query(&st, &[&owner]).await?)
}

/// Files whose retention ran out, oldest expiry first.
pub async fn expired(
    c: &impl GenericClient,
    now: Timestamp,
    limit: usize,
) -> PgResult<Vec<StoredFile>> {
    let st = c
        .prepare_cached(concat!(
            "SELECT ",
            columns!(),
            " FROM files WHERE expires_at IS NOT NULL AND expires_at <= $1
             ORDER BY expires_at LIMIT $2"
        ))
        .await?;
    rows(&c.query(&st, &[&now, &count(limit)]).await?)
}

/// Every row, in id order, one page at a time (maintenance walks).
pub async fn scan(
    c: &impl GenericClient,
    after: Option<FileId>,
    limit: usize,
) -> PgResult<Vec<StoredFile>> {
    let found = match after {
        None => {
            let st = c
                .prepare_cached(concat!(
                    "SELECT ",
                    columns!(),
                    " FROM files ORDER BY id LIMIT $1"
                ))
                .await?;
            c.query(&st, &[&count(limit)]).await?
        }
        Some(after) => {
            let st = c
                .prepare_cached(concat!(
                    "SELECT ",
                    columns!(),
                    " FROM files WHERE id > $1 ORDER BY id LIMIT $2"
                ))
                .await?;
            c.query(&st, &[&after, &count(limit)]).await?
        }
    };
    rows(&found)
}

/// Whether a blob key belongs to a row.
pub async fn blob_key_exists(c: &impl GenericClient, key: &str) -> PgResult<bool> {
    let st = c
        // A resumable upload's staged chunk is held by its row as a file's blob is.
        .prepare_cached(
            "SELECT 1 FROM files WHERE blob_key = $1
             UNION ALL SELECT 1 FROM resumable_chunks WHERE blob_key = $1 LIMIT 1",
        )
        .await?;
    Ok(c.query_opt(&st, &[&key]).await?.is_some())
}

/// What [`seal_blob`] takes.
pub struct SealArgs {
    /// The row.
    pub id: FileId,
    /// The plaintext blob it must still point at (queued once switched).
    pub old_blob: String,
    /// The sealed blob.
    pub new_blob: String,
    /// How it is sealed.
    pub sealing: Sealing,
    /// Now.
    pub now: Timestamp,
}

/// Point a plaintext row at its new sealed blob, only while it still points at `old_blob`,
/// which is then queued for deletion (one statement).
pub async fn seal_blob(c: &impl GenericClient, a: &SealArgs) -> PgResult<bool> {
    let st = c
        .prepare_cached(
            "WITH switched AS (
                 UPDATE files SET blob_key = $2, enc_key_id = $3, enc_wrapped_key = $4
                 WHERE id = $1 AND blob_key = $5 AND enc_key_id IS NULL RETURNING 1),
                  queued AS (
                      INSERT INTO blob_deletions (blob_key, queued_at)
                      SELECT $5, $6 FROM switched ON CONFLICT (blob_key) DO NOTHING)
             SELECT count(*) FROM switched",
        )
        .await?;
    let n: i64 = c
        .query_one(
            &st,
            &[
                &a.id,
                &a.new_blob,
                &a.sealing.key_id,
                &a.sealing.wrapped_key,
                &a.old_blob,
                &a.now,
            ],
        )
        .await?
        .try_get(0)?;
    Ok(n == 1)
}

/// Replace a wrapped data key (rotate-key), only if it is still the one that was read.
pub async fn rewrap(
    c: &impl GenericClient,
    id: FileId,
    old: &Sealing,
    new: &Sealing,
) -> PgResult<bool> {
    let st = c
        .prepare_cached(
            "UPDATE files SET enc_key_id = $2, enc_wrapped_key = $3
             WHERE id = $1 AND enc_key_id = $4 AND enc_wrapped_key = $5",
        )
        .await?;
    Ok(c.execute(
        &st,
        &[
            &id,
            &new.key_id,
            &new.wrapped_key,
            &old.key_id,
            &old.wrapped_key,
        ],
    )
    .await?
        == 1)
}

#[async_trait]
impl Files for Postgres {
    async fn insert(&self, file: StoredFile) -> Result<Inserted, MetaError> {
        self.one(file, |c, f| Box::pin(insert(c, f))).await
    }

    async fn get_visible(
        &self,
        id: FileId,
        owner: Option<UserId>,
        now: Timestamp,
    ) -> Result<Option<StoredFile>, MetaError> {
        self.one((id, owner, now), |c, &(id, owner, now)| {
            Box::pin(get_visible(c, id, owner, now))
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
        self.one(
            (owner, after, limit, now),
            |c, &(owner, after, limit, now)| Box::pin(list_owned(c, owner, after, limit, now)),
        )
        .await
    }

    async fn delete_recording(
        &self,
        id: FileId,
        now: Timestamp,
        events: Vec<NewEvent>,
    ) -> Result<Option<String>, MetaError> {
        let echo = self.hub.echo();
        let payload = Self::payload(&echo, Revoked::File(id));
        let (key, n) = self
            .tx(
                IsolationLevel::ReadCommitted,
                (id, now, events, payload),
                |t, (id, now, events, payload)| {
                    Box::pin(async move {
                        let key = delete(t, *id, *now, payload).await?;
                        let n = match key {
                            Some(_) => super::events::record(t, events).await?,
                            None => 0,
                        };
                        Ok((key, n))
                    })
                },
            )
            .await?;
        self.events_committed(n);
        self.announce(key.is_some().then_some(Revoked::File(id)), echo)
            .await;
        Ok(key)
    }

    async fn delete_if_blob_recording(
        &self,
        id: FileId,
        blob_key: String,
        now: Timestamp,
        events: Vec<NewEvent>,
    ) -> Result<bool, MetaError> {
        let echo = self.hub.echo();
        let payload = Self::payload(&echo, Revoked::File(id));
        let (gone, n) = self
            .tx(
                IsolationLevel::ReadCommitted,
                (id, blob_key, now, events, payload),
                |t, (id, key, now, events, payload)| {
                    Box::pin(async move {
                        let gone = delete_if_blob(t, *id, key, *now, payload).await?;
                        let n = if gone {
                            super::events::record(t, events).await?
                        } else {
                            0
                        };
                        Ok((gone, n))
                    })
                },
            )
            .await?;
        self.events_committed(n);
        self.announce(gone.then_some(Revoked::File(id)), echo).await;
        Ok(gone)
    }

    async fn queued_deletions(&self, limit: usize) -> Result<Vec<String>, MetaError> {
        self.one(limit, |c, &limit| Box::pin(queued_deletions(c, limit)))
            .await
    }

    async fn deletion_done(&self, blob_key: String) -> Result<(), MetaError> {
        self.one(blob_key, |c, key| Box::pin(deletion_done(c, key)))
            .await
    }

    async fn all_of_owner(&self, owner: UserId) -> Result<Vec<StoredFile>, MetaError> {
        self.one(owner, |c, &owner| Box::pin(all_of_owner(c, owner)))
            .await
    }

    async fn expired(&self, now: Timestamp, limit: usize) -> Result<Vec<StoredFile>, MetaError> {
        self.one((now, limit), |c, &(now, limit)| {
            Box::pin(expired(c, now, limit))
        })
        .await
    }

    async fn scan(
        &self,
        after: Option<FileId>,
        limit: usize,
    ) -> Result<Vec<StoredFile>, MetaError> {
        self.one((after, limit), |c, &(after, limit)| {
            Box::pin(scan(c, after, limit))
        })
        .await
    }

    async fn blob_key_exists(&self, blob_key: String) -> Result<bool, MetaError> {
        self.one(blob_key, |c, key| Box::pin(blob_key_exists(c, key)))
            .await
    }

    async fn seal_blob(
        &self,
        id: FileId,
        old_blob: String,
        new_blob: String,
        sealing: Sealing,
        now: Timestamp,
    ) -> Result<bool, MetaError> {
        let args = SealArgs {
            id,
            old_blob,
            new_blob,
            sealing,
            now,
        };
        self.one(args, |c, a| Box::pin(seal_blob(c, a))).await
    }

    async fn rewrap(&self, id: FileId, old: Sealing, new: Sealing) -> Result<bool, MetaError> {
        self.one((id, old, new), |c, (id, old, new)| {
            Box::pin(rewrap(c, *id, old, new))
        })
        .await
    }
}
