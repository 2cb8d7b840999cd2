//! Resumable uploads in PostgreSQL. Creation locks the owner's `users` row (as every quota
//! reservation does), so two nodes creating uploads for one owner take turns on the pending
//! count and the quota; the lock and an append are single conditional updates, decided by
//! the row lock PostgreSQL takes for them.

use async_trait::async_trait;
use deadpool_postgres::GenericClient;
use tokio_postgres::Row;

use super::{IsolationLevel, PgResult, Postgres, Tx};
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

fn upload(r: &Row) -> PgResult<ResumableUpload> {
    Ok(ResumableUpload {
        id: r.try_get(0)?,
        owner: r.try_get(1)?,
        length: as_u64(r.try_get(2)?),
        offset: as_u64(r.try_get(3)?),
        metadata: r.try_get(4)?,
        filename: r.try_get(5)?,
        file_expires_at: r.try_get(6)?,
        expires_at: r.try_get(7)?,
        grant: r.try_get(8)?,
    })
}

async fn get(
    c: &impl GenericClient,
    id: FileId,
    creator: Creator,
    now: Timestamp,
) -> PgResult<Option<ResumableUpload>> {
    let st = c
        .prepare_cached(
            "SELECT id, owner_id, length, upload_offset, metadata, filename, file_expires_at,
                    expires_at, grant_id
             FROM resumable_uploads WHERE id = $1 AND owner_id = $2 AND expires_at > $3
               AND grant_id IS NOT DISTINCT FROM $4",
        )
        .await?;
    c.query_opt(&st, &[&id, &creator.owner, &now, &creator.grant])
        .await?
        .as_ref()
        .map(upload)
        .transpose()
}

async fn create(t: &Tx<'_>, n: &NewResumable) -> PgResult<Created> {
    // The owner first, so that the count below and the reservation are one decision.
    let st = t
        .prepare_cached("SELECT 1 FROM users WHERE id = $1 FOR UPDATE")
        .await?;
    t.query_opt(&st, &[&n.owner]).await?;
    let st = t
        .prepare_cached(
            "SELECT COUNT(*) FROM resumable_uploads WHERE owner_id = $1 AND expires_at > $2",
        )
        .await?;
    let pending: i64 = t.query_one(&st, &[&n.owner, &n.now]).await?.try_get(0)?;
    if as_u64(pending) >= n.max_pending {
        return Ok(Created::TooMany);
    }
    match super::uploads::reserve(t, &n.reservation).await? {
        Reserved::Granted(_) => {}
        Reserved::Exceeded => return Ok(Created::QuotaExceeded),
        Reserved::GrantRefused => return Ok(Created::GrantRefused),
    }
    t.execute(
        "UPDATE upload_reservations SET touched_at = $2 WHERE id = $1",
        &[&reservation_of(n.id), &n.expires_at],
    )
    .await?;
    t.execute(
        "INSERT INTO resumable_uploads
             (id, owner_id, length, upload_offset, metadata, filename, file_expires_at,
              created_at, expires_at, lock_holder, lock_until, grant_id)
         VALUES ($1, $2, $3, 0, $4, $5, $6, $7, $8, NULL, NULL, $9)",
        &[
            &n.id,
            &n.owner,
            &as_i64(n.length),
            &n.metadata,
            &n.filename,
            &n.file_expires_at,
            &n.now,
            &n.expires_at,
            &n.reservation.grant,
        ],
    )
    .await?;
    Ok(Created::Created)
}

async fn insert_chunk(t: &Tx<'_>, id: FileId, ch: &Chunk) -> PgResult<()> {
    t.execute(
        "INSERT INTO resumable_chunks
             (upload_id, start_offset, length, blob_key, enc_key_id, enc_wrapped_key)
         VALUES ($1, $2, $3, $4, $5, $6)",
        &[
            &id,
            &as_i64(ch.start),
            &as_i64(ch.len),
            &ch.blob_key,
            &ch.sealing.as_ref().map(|s| s.key_id.clone()),
            &ch.sealing.as_ref().map(|s| s.wrapped_key.clone()),
        ],
    )
    .await?;
    Ok(())
}

async fn append(t: &Tx<'_>, a: &Append) -> PgResult<bool> {
    let n = t
        .execute(
            "UPDATE resumable_uploads SET upload_offset = upload_offset + $3, expires_at = $4,
                 lock_holder = CASE WHEN $6 THEN NULL ELSE lock_holder END,
                 lock_until = CASE WHEN $6 THEN NULL ELSE lock_until END
             WHERE id = $1 AND lock_holder = $2 AND upload_offset = $5
               AND upload_offset + $3 <= length",
            &[
                &a.id,
                &a.holder,
                &as_i64(a.added),
                &a.expires_at,
                &as_i64(a.start),
                &a.unlock,
            ],
        )
        .await?;
    if n != 1 {
        return Ok(false);
    }
    if let Some(start) = a.drop_tail {
        t.execute(
            "WITH gone AS (DELETE FROM resumable_chunks WHERE upload_id = $1 AND start_offset = $2
                           RETURNING blob_key)
             INSERT INTO blob_deletions (blob_key, queued_at) SELECT blob_key, $3 FROM gone
             ON CONFLICT (blob_key) DO NOTHING",
            &[&a.id, &as_i64(start), &a.now],
        )
        .await?;
    }
    if let Some(g) = &a.grow {
        let grown = t
            .execute(
                "UPDATE resumable_chunks SET length = length + $3
                 WHERE upload_id = $1 AND blob_key = $2 AND start_offset = 0",
                &[&a.id, &g.blob_key, &as_i64(g.by)],
            )
            .await?
            == 1;
        if !grown && g.by > 0 {
            let ch = Chunk {
                start: 0,
                len: g.by,
                blob_key: g.blob_key.clone(),
                sealing: g.sealing.clone(),
            };
            insert_chunk(t, a.id, &ch).await?;
        }
    }
    for ch in a.chunk.iter().chain(&a.tail) {
        insert_chunk(t, a.id, ch).await?;
    }
    if let Some(r) = &a.chunk_reservation {
        t.execute("DELETE FROM upload_reservations WHERE id = $1", &[r])
            .await?;
    }
    t.execute(
        "UPDATE upload_reservations SET touched_at = $2 WHERE id = $1",
        &[&reservation_of(a.id), &a.expires_at],
    )
    .await?;
    Ok(true)
}

async fn remove(t: &Tx<'_>, id: FileId, now: Timestamp) -> PgResult<bool> {
    t.execute(
        "WITH gone AS (DELETE FROM resumable_chunks WHERE upload_id = $1 RETURNING blob_key)
         INSERT INTO blob_deletions (blob_key, queued_at) SELECT blob_key, $2 FROM gone
         ON CONFLICT (blob_key) DO NOTHING",
        &[&id, &now],
    )
    .await?;
    // Unfinished (a committed upload's reservation ended with its file): the grant's use back.
    super::uploads::release(t, reservation_of(id)).await?;
    Ok(
        t.execute("DELETE FROM resumable_uploads WHERE id = $1", &[&id])
            .await?
            == 1,
    )
}

#[async_trait]
impl Resumables for Postgres {
    async fn create(&self, new: NewResumable) -> Result<Created, MetaError> {
        self.tx(IsolationLevel::ReadCommitted, new, |t, n| {
            Box::pin(create(t, n))
        })
        .await
    }

    async fn get(
        &self,
        id: FileId,
        creator: Creator,
        now: Timestamp,
    ) -> Result<Option<ResumableUpload>, MetaError> {
        self.one((id, creator, now), |c, &(id, creator, now)| {
            Box::pin(get(c, id, creator, now))
        })
        .await
    }

    async fn lock(
        &self,
        id: FileId,
        creator: Creator,
        holder: String,
        now: Timestamp,
        until: Timestamp,
    ) -> Result<Locked, MetaError> {
        self.tx(
            IsolationLevel::ReadCommitted,
            (id, creator, holder, now, until),
            |t, (id, creator, holder, now, until)| {
                Box::pin(async move {
                    // No need to wait for the log's flush (why: `Resumables::lock`).
                    t.batch_execute("SET LOCAL synchronous_commit = off")
                        .await?;
                    // The row as the lock is taken, in one statement: a separate read first
                    // could see the offset from before the previous holder's last append.
                    let st = t
                        .prepare_cached(
                            "UPDATE resumable_uploads SET lock_holder = $2, lock_until = $3
                             WHERE id = $1 AND owner_id = $5 AND expires_at > $4
                               AND grant_id IS NOT DISTINCT FROM $6
                               AND (lock_holder IS NULL OR lock_holder = $2 OR lock_until <= $4)
                             RETURNING id, owner_id, length, upload_offset, metadata, filename,
                                       file_expires_at, expires_at, grant_id",
                        )
                        .await?;
                    let taken = t
                        .query_opt(
                            &st,
                            &[id, holder, until, now, &creator.owner, &creator.grant],
                        )
                        .await?;
                    if let Some(row) = taken {
                        return Ok(Locked::Held(upload(&row)?));
                    }
                    Ok(if get(t, *id, *creator, *now).await?.is_some() {
                        Locked::Busy
                    } else {
                        Locked::Missing
                    })
                })
            },
        )
        .await
    }

    async fn unlock(&self, id: FileId, holder: String) -> Result<(), MetaError> {
        self.one((id, holder), |c, (id, holder)| {
            Box::pin(async move {
                c.execute(
                    "UPDATE resumable_uploads SET lock_holder = NULL, lock_until = NULL
                     WHERE id = $1 AND lock_holder = $2",
                    &[id, holder],
                )
                .await
                .map(|_| ())
            })
        })
        .await
    }

    async fn append(&self, a: Append) -> Result<bool, MetaError> {
        self.tx(IsolationLevel::ReadCommitted, a, |t, a| {
            Box::pin(append(t, a))
        })
        .await
    }

    async fn chunks(&self, id: FileId) -> Result<Vec<Chunk>, MetaError> {
        self.one(id, |c, id| {
            Box::pin(async move {
                let rows = c
                    .query(
                        "SELECT start_offset, length, blob_key, enc_key_id, enc_wrapped_key
                         FROM resumable_chunks WHERE upload_id = $1 ORDER BY start_offset",
                        &[id],
                    )
                    .await?;
                rows.iter()
                    .map(|r| {
                        let key_id: Option<String> = r.try_get(3)?;
                        let wrapped: Option<Vec<u8>> = r.try_get(4)?;
                        Ok(Chunk {
                            start: as_u64(r.try_get(0)?),
                            len: as_u64(r.try_get(1)?),
                            blob_key: r.try_get(2)?,
                            sealing: key_id.zip(wrapped).map(|(key_id, wrapped_key)| Sealing {
                                key_id,
                                wrapped_key,
                            }),
                        })
                    })
                    .collect()
            })
        })
        .await
    }

    async fn remove(&self, id: FileId, now: Timestamp) -> Result<bool, MetaError> {
        self.tx(IsolationLevel::ReadCommitted, (id, now), |t, &(id, now)| {
            Box::pin(remove(t, id, now))
        })
        .await
    }

    async fn remove_owned(&self, owner: UserId, now: Timestamp) -> Result<usize, MetaError> {
        self.tx(
            IsolationLevel::ReadCommitted,
            (owner, now),
            |t, &(owner, now)| {
                Box::pin(async move {
                    let rows = t
                        .query(
                            "SELECT id FROM resumable_uploads WHERE owner_id = $1 FOR UPDATE",
                            &[&owner],
                        )
                        .await?;
                    let ids: Vec<FileId> =
                        rows.iter().map(|r| r.try_get(0)).collect::<PgResult<_>>()?;
                    for id in &ids {
                        remove(t, *id, now).await?;
                    }
                    Ok(ids.len())
                })
            },
        )
        .await
    }

    async fn by_grant(&self, grant: GrantId) -> Result<Vec<FileId>, MetaError> {
        self.one(grant, |c, grant| {
            Box::pin(async move {
                let rows = c
                    .query(
                        "SELECT id FROM resumable_uploads WHERE grant_id = $1",
                        &[grant],
                    )
                    .await?;
                rows.iter().map(|r| r.try_get(0)).collect()
            })
        })
        .await
    }

    async fn expired(&self, now: Timestamp, limit: usize) -> Result<Vec<FileId>, MetaError> {
        self.one((now, limit), |c, &(now, limit)| {
            Box::pin(async move {
                let rows = c
                    .query(
                        "SELECT id FROM resumable_uploads u
                         WHERE expires_at <= $1
                            OR (grant_id IS NOT NULL AND NOT EXISTS
                                (SELECT 1 FROM upload_grants g WHERE g.id = u.grant_id))
                         ORDER BY expires_at LIMIT $2",
                        &[&now, &as_i64(limit as u64)],
                    )
                    .await?;
                rows.iter().map(|r| r.try_get(0)).collect()
            })
        })
        .await
    }

    async fn staged_keys(&self) -> Result<Vec<String>, MetaError> {
        self.one((), |c, ()| {
            Box::pin(async move {
                let rows = c
                    .query("SELECT blob_key FROM resumable_chunks", &[])
                    .await?;
                rows.iter().map(|r| r.try_get(0)).collect()
            })
        })
        .await
    }

    async fn sealed_chunks(&self, current: String) -> Result<Vec<SealedChunk>, MetaError> {
        self.one(current, |c, current| {
            Box::pin(async move {
                let rows = c
                    .query(
                        "SELECT upload_id, start_offset, blob_key, enc_key_id, enc_wrapped_key
                         FROM resumable_chunks
                         WHERE enc_key_id IS NOT NULL AND enc_wrapped_key IS NOT NULL
                           AND enc_key_id <> $1
                         ORDER BY upload_id, start_offset",
                        &[current],
                    )
                    .await?;
                rows.iter()
                    .map(|r| {
                        Ok(SealedChunk {
                            upload: r.try_get(0)?,
                            start: as_u64(r.try_get(1)?),
                            blob_key: r.try_get(2)?,
                            sealing: Sealing {
                                key_id: r.try_get(3)?,
                                wrapped_key: r.try_get(4)?,
                            },
                        })
                    })
                    .collect()
            })
        })
        .await
    }

    async fn reseal_chunk(&self, chunk: SealedChunk, new: Sealing) -> Result<bool, MetaError> {
        self.one((chunk, new), |c, (chunk, new)| {
            Box::pin(async move {
                let n = c
                    .execute(
                        "UPDATE resumable_chunks SET enc_key_id = $3, enc_wrapped_key = $4
                         WHERE upload_id = $1 AND start_offset = $2
                           AND enc_key_id = $5 AND enc_wrapped_key = $6",
                        &[
                            &chunk.upload,
                            &as_i64(chunk.start),
                            &new.key_id,
                            &new.wrapped_key,
                            &chunk.sealing.key_id,
                            &chunk.sealing.wrapped_key,
                        ],
                    )
                    .await?;
                Ok(n == 1)
            })
        })
        .await
    }
}
