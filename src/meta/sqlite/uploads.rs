//! Quota reservations of uploads in flight in SQLite. The single writer serialises every
//! reservation, so reading usage and reservations and inserting the new one in one write
//! transaction is exact.

use async_trait::async_trait;
use rusqlite::{Connection, OptionalExtension, params};

use super::Sqlite;
use crate::ids::{GrantId, Timestamp, UploadId, UserId};
use crate::meta::error::MetaError;
use crate::meta::events::NewEvent;
use crate::meta::files::StoredFile;
use crate::meta::uploads::{Abandoned, Committed, NewReservation, Reserved, Uploads};

fn as_i64(n: u64) -> i64 {
    i64::try_from(n).unwrap_or(i64::MAX)
}

/// Bytes the owner's uploads in flight hold.
pub fn reserved_bytes(c: &Connection, owner: UserId) -> rusqlite::Result<u64> {
    let n: i64 = c
        .prepare_cached(
            "SELECT COALESCE(SUM(bytes), 0) FROM upload_reservations WHERE owner_id = ?1",
        )?
        .query_row([owner], |r| r.get(0))?;
    Ok(u64::try_from(n).unwrap_or(0))
}

/// Grant what the quota leaves ([`NewReservation::grant`]) and record the reservation.
pub fn reserve(c: &Connection, r: &NewReservation) -> rusqlite::Result<Reserved> {
    let bytes = if r.quota == 0 {
        r.want
    } else {
        let used: i64 = c
            .prepare_cached("SELECT COALESCE(MAX(used_bytes), 0) FROM users WHERE id = ?1")?
            .query_row([r.owner], |row| row.get(0))?;
        let held = reserved_bytes(c, r.owner)?;
        match r.grant(u64::try_from(used).unwrap_or(0), held) {
            Some(b) => b,
            None => return Ok(Reserved::Exceeded),
        }
    };
    // The grant's use last: nothing is written when the quota refuses.
    if let Some(grant) = r.grant
        && !super::grants::take_use(c, grant, r.now)?
    {
        return Ok(Reserved::GrantRefused);
    }
    c.prepare_cached(
        "INSERT INTO upload_reservations
             (id, owner_id, bytes, blob_key, staging_id, node, started_at, touched_at, grant_id)
         VALUES (?1, ?2, ?3, ?4, NULL, ?5, ?6, ?6, ?7)",
    )?
    .execute(params![
        r.id,
        r.owner,
        as_i64(bytes),
        r.blob_key,
        r.node,
        r.now,
        r.grant
    ])?;
    Ok(Reserved::Granted(bytes))
}

fn abandoned(c: &Connection, before: Timestamp, limit: usize) -> rusqlite::Result<Vec<Abandoned>> {
    c.prepare_cached(
        "SELECT id, owner_id, blob_key, staging_id, node FROM upload_reservations
         WHERE touched_at < ?1 ORDER BY touched_at LIMIT ?2",
    )?
    .query_map(params![before, as_i64(limit as u64)], |r| {
        Ok(Abandoned {
            id: r.get(0)?,
            owner: r.get(1)?,
            blob_key: r.get(2)?,
            staging_id: r.get(3)?,
            node: r.get(4)?,
        })
    })?
    .collect()
}

/// End a reservation: `None` when it was gone, else the grant it was made with.
fn end(c: &Connection, id: UploadId) -> rusqlite::Result<Option<Option<GrantId>>> {
    c.prepare_cached("DELETE FROM upload_reservations WHERE id = ?1 RETURNING grant_id")?
        .query_row([id], |r| r.get(0))
        .optional()
}

/// End a failed upload's reservation and give its grant's use back.
pub(super) fn release(c: &Connection, id: UploadId) -> rusqlite::Result<bool> {
    let Some(grant) = end(c, id)? else {
        return Ok(false);
    };
    if let Some(grant) = grant {
        super::grants::give_back(c, grant)?;
    }
    Ok(true)
}

#[async_trait]
impl Uploads for Sqlite {
    async fn reserve(&self, r: NewReservation) -> Result<Reserved, MetaError> {
        self.write(move |c| reserve(c, &r)).await
    }

    async fn staged(&self, id: UploadId, staging_id: String) -> Result<(), MetaError> {
        self.write(move |c| {
            c.prepare_cached("UPDATE upload_reservations SET staging_id = ?2 WHERE id = ?1")?
                .execute(params![id, staging_id])
                .map(|_| ())
        })
        .await
    }

    async fn touch(&self, id: UploadId, now: Timestamp) -> Result<(), MetaError> {
        self.write(move |c| {
            c.prepare_cached("UPDATE upload_reservations SET touched_at = ?2 WHERE id = ?1")?
                .execute(params![id, now])
                .map(|_| ())
        })
        .await
    }

    async fn commit_recording(
        &self,
        id: UploadId,
        file: StoredFile,
        events: Vec<NewEvent>,
    ) -> Result<Committed, MetaError> {
        let (done, n) = self
            .write(move |c| {
                let Some(grant) = end(c, id)? else {
                    return Ok((Committed::Swept, 0));
                };
                if let Some(grant) = grant
                    && !super::grants::exists(c, grant)?
                {
                    return Ok((Committed::GrantRevoked, 0));
                }
                let done: Committed = super::files::insert(c, &file)?.into();
                let n = if done == Committed::Inserted {
                    super::events::record(c, &events)?
                } else {
                    0
                };
                Ok((done, n))
            })
            .await?;
        self.events_committed(n);
        Ok(done)
    }

    async fn release(&self, id: UploadId) -> Result<bool, MetaError> {
        self.write(move |c| release(c, id)).await
    }

    async fn claim_abandoned(&self, id: UploadId, now: Timestamp) -> Result<bool, MetaError> {
        self.write(move |c| {
            let gone: Option<(Option<String>, Option<GrantId>)> = c
                .prepare_cached(
                    "DELETE FROM upload_reservations WHERE id = ?1 RETURNING blob_key, grant_id",
                )?
                .query_row([id], |r| Ok((r.get(0)?, r.get(1)?)))
                .optional()?;
            let Some((key, grant)) = gone else {
                return Ok(false);
            };
            if let Some(grant) = grant {
                super::grants::give_back(c, grant)?;
            }
            if let Some(key) = key
                && !super::files::blob_key_exists(c, &key)?
            {
                super::files::queue_blob_deletion(c, &key, now)?;
            }
            Ok(true)
        })
        .await
    }

    async fn reserved_bytes(&self, owner: UserId) -> Result<u64, MetaError> {
        self.read(move |c| reserved_bytes(c, owner)).await
    }

    async fn reserved_keys(&self) -> Result<Vec<String>, MetaError> {
        self.read(|c| {
            c.prepare_cached("SELECT blob_key FROM upload_reservations WHERE blob_key IS NOT NULL")?
                .query_map([], |r| r.get(0))?
                .collect()
        })
        .await
    }

    async fn abandoned(
        &self,
        before: Timestamp,
        limit: usize,
    ) -> Result<Vec<Abandoned>, MetaError> {
        self.read(move |c| abandoned(c, before, limit)).await
    }
}
