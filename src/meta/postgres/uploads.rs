//! Quota reservations of uploads in flight in PostgreSQL.
//!
//! Invariant: a reservation is granted in a transaction that first locks its owner's `users`
//! row (`FOR UPDATE`), then reads usage and the reservations held; so two nodes reserving for
//! one owner take turns, and the later one sees what the earlier committed. A file row's
//! insert locks the same row, so a commit (row in, reservation out, one transaction) never
//! interleaves with a reservation's check either.

use async_trait::async_trait;
use deadpool_postgres::GenericClient;

use super::{IsolationLevel, PgResult, Postgres, Tx};
use crate::ids::{GrantId, Timestamp, UploadId, UserId};
use crate::meta::error::MetaError;
use crate::meta::events::NewEvent;
use crate::meta::files::StoredFile;
use crate::meta::uploads::{Abandoned, Committed, NewReservation, Reserved, Uploads};

fn as_i64(n: u64) -> i64 {
    i64::try_from(n).unwrap_or(i64::MAX)
}

/// Bytes the owner's uploads in flight hold.
pub async fn reserved_bytes(c: &impl GenericClient, owner: UserId) -> PgResult<u64> {
    let st = c
        .prepare_cached(
            "SELECT COALESCE(SUM(bytes), 0)::BIGINT FROM upload_reservations WHERE owner_id = $1",
        )
        .await?;
    let n: i64 = c.query_one(&st, &[&owner]).await?.try_get(0)?;
    Ok(u64::try_from(n).unwrap_or(0))
}

/// Lock the owner, grant what the quota leaves, record the reservation.
pub async fn reserve(t: &Tx<'_>, r: &NewReservation) -> PgResult<Reserved> {
    let bytes = if r.quota == 0 {
        r.want
    } else {
        let st = t
            .prepare_cached("SELECT used_bytes FROM users WHERE id = $1 FOR UPDATE")
            .await?;
        let used: i64 = match t.query_opt(&st, &[&r.owner]).await? {
            Some(row) => row.try_get(0)?,
            None => 0,
        };
        let held = reserved_bytes(t, r.owner).await?;
        match r.grant(u64::try_from(used).unwrap_or(0), held) {
            Some(b) => b,
            None => return Ok(Reserved::Exceeded),
        }
    };
    // The grant's use last: nothing is written when the quota refuses.
    if let Some(grant) = r.grant
        && !super::grants::take_use(t, grant, r.now).await?
    {
        return Ok(Reserved::GrantRefused);
    }
    let st = t
        .prepare_cached(
            "INSERT INTO upload_reservations
                 (id, owner_id, bytes, blob_key, staging_id, node, started_at, touched_at,
                  grant_id)
             VALUES ($1, $2, $3, $4, NULL, $5, $6, $6, $7)",
        )
        .await?;
    t.execute(
        &st,
        &[
            &r.id,
            &r.owner,
            &as_i64(bytes),
            &r.blob_key,
            &r.node,
            &r.now,
            &r.grant,
        ],
    )
    .await?;
    Ok(Reserved::Granted(bytes))
}

/// End a reservation: `None` when it was gone, else the grant it was made with.
async fn end(c: &impl GenericClient, id: UploadId) -> PgResult<Option<Option<GrantId>>> {
    let st = c
        .prepare_cached("DELETE FROM upload_reservations WHERE id = $1 RETURNING grant_id")
        .await?;
    c.query_opt(&st, &[&id])
        .await?
        .map(|r| r.try_get(0))
        .transpose()
}

/// End a failed upload's reservation and give its grant's use back (one transaction).
pub(super) async fn release(t: &Tx<'_>, id: UploadId) -> PgResult<bool> {
    let Some(grant) = end(t, id).await? else {
        return Ok(false);
    };
    if let Some(grant) = grant {
        super::grants::give_back(t, grant).await?;
    }
    Ok(true)
}

async fn abandoned(
    c: &impl GenericClient,
    before: Timestamp,
    limit: usize,
) -> PgResult<Vec<Abandoned>> {
    let st = c
        .prepare_cached(
            "SELECT id, owner_id, blob_key, staging_id, node FROM upload_reservations
             WHERE touched_at < $1 ORDER BY touched_at LIMIT $2",
        )
        .await?;
    c.query(&st, &[&before, &as_i64(limit as u64)])
        .await?
        .iter()
        .map(|r| {
            Ok(Abandoned {
                id: r.try_get(0)?,
                owner: r.try_get(1)?,
                blob_key: r.try_get(2)?,
                staging_id: r.try_get(3)?,
                node: r.try_get(4)?,
            })
        })
        .collect()
}

#[async_trait]
impl Uploads for Postgres {
    async fn reserve(&self, r: NewReservation) -> Result<Reserved, MetaError> {
        self.tx(IsolationLevel::ReadCommitted, r, |t, r| {
            Box::pin(reserve(t, r))
        })
        .await
    }

    async fn staged(&self, id: UploadId, staging_id: String) -> Result<(), MetaError> {
        self.one((id, staging_id), |c, (id, staging)| {
            Box::pin(async move {
                c.execute(
                    "UPDATE upload_reservations SET staging_id = $2 WHERE id = $1",
                    &[id, staging],
                )
                .await
                .map(|_| ())
            })
        })
        .await
    }

    async fn touch(&self, id: UploadId, now: Timestamp) -> Result<(), MetaError> {
        self.one((id, now), |c, (id, now)| {
            Box::pin(async move {
                let st = c
                    .prepare_cached("UPDATE upload_reservations SET touched_at = $2 WHERE id = $1")
                    .await?;
                c.execute(&st, &[id, now]).await.map(|_| ())
            })
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
            .tx(
                IsolationLevel::ReadCommitted,
                (id, file, events),
                |t, (id, f, events)| {
                    Box::pin(async move {
                        // The delete locks the reservation: a sweeper claiming it waits for
                        // this commit and then finds it gone (and the row in), or took it first.
                        let Some(grant) = end(t, *id).await? else {
                            return Ok((Committed::Swept, 0));
                        };
                        if let Some(grant) = grant
                            && !super::grants::exists(t, grant).await?
                        {
                            return Ok((Committed::GrantRevoked, 0));
                        }
                        let done: Committed = super::files::insert(t, f).await?.into();
                        let n = if done == Committed::Inserted {
                            super::events::record(t, events).await?
                        } else {
                            0
                        };
                        Ok((done, n))
                    })
                },
            )
            .await?;
        self.events_committed(n);
        Ok(done)
    }

    async fn release(&self, id: UploadId) -> Result<bool, MetaError> {
        self.tx(IsolationLevel::ReadCommitted, id, |t, &id| {
            Box::pin(release(t, id))
        })
        .await
    }

    async fn claim_abandoned(&self, id: UploadId, now: Timestamp) -> Result<bool, MetaError> {
        self.one((id, now), |c, (id, now)| {
            Box::pin(async move {
                // One statement: the delete locks the reservation (a stalled upload's commit
                // waits, then finds it gone), the key is queued unless a row holds it.
                let st = c
                    .prepare_cached(
                        "WITH gone AS (
                             DELETE FROM upload_reservations WHERE id = $1
                             RETURNING blob_key, grant_id),
                              given AS (
                             UPDATE upload_grants g SET uses = g.uses - 1 FROM gone
                             WHERE g.id = gone.grant_id AND g.uses > 0),
                              queued AS (
                             INSERT INTO blob_deletions (blob_key, queued_at)
                             SELECT blob_key, $2 FROM gone
                             WHERE blob_key IS NOT NULL
                               AND NOT EXISTS (SELECT 1 FROM files f WHERE f.blob_key = gone.blob_key)
                             ON CONFLICT (blob_key) DO NOTHING)
                         SELECT count(*) FROM gone",
                    )
                    .await?;
                let n: i64 = c.query_one(&st, &[id, now]).await?.try_get(0)?;
                Ok(n == 1)
            })
        })
        .await
    }

    async fn reserved_bytes(&self, owner: UserId) -> Result<u64, MetaError> {
        self.one(owner, |c, &owner| Box::pin(reserved_bytes(c, owner)))
            .await
    }

    async fn reserved_keys(&self) -> Result<Vec<String>, MetaError> {
        self.one((), |c, ()| {
            Box::pin(async move {
                let st = c
                    .prepare_cached(
                        "SELECT blob_key FROM upload_reservations WHERE blob_key IS NOT NULL",
                    )
                    .await?;
                c.query(&st, &[])
                    .await?
                    .iter()
                    .map(|r| r.try_get(0))
                    .collect()
            })
        })
        .await
    }

    async fn abandoned(
        &self,
        before: Timestamp,
        limit: usize,
    ) -> Result<Vec<Abandoned>, MetaError> {
        self.one((before, limit), |c, &(before, limit)| {
            Box::pin(abandoned(c, before, limit))
        })
        .await
    }
}
