//! Per-user storage quota with reservations for uploads in flight, kept in the database
//! (`meta::uploads`) so that every node sees what every other node has promised.
//!
//! Invariant: at every instant, `stored + reserved <= quota` for each user, across nodes. An
//! upload reserves its maximum size before reading the body, in one transaction that locks the
//! owner; its row is inserted in the same transaction that ends the reservation (moving bytes
//! from "reserved" to "stored"), so the sum never under-counts. An upload that fails releases
//! its reservation when its guard drops; one whose node died is found by the sweeper after
//! `uploads.abandoned_after_secs` without bytes ([`Reservation::touch`] keeps a live one
//! fresh, at a bounded rate).

use std::time::{Duration, Instant};

use crate::blob::BlobKey;
use crate::ids::{GrantId, Timestamp, UploadId, UserId};
use crate::meta::uploads::{NewReservation, Reserved};
use crate::meta::{MetaError, MetaStore};

/// The quota and where reservations live.
#[derive(Clone)]
pub struct Quota {
    limit: u64,
    meta: MetaStore,
    /// How often at most an upload records that bytes arrived.
    touch_every: Duration,
}

/// Why a reservation failed.
#[derive(Debug, thiserror::Error)]
pub enum QuotaError {
    /// Nothing (or not enough) is left.
    #[error("quota exceeded")]
    Exceeded,
    /// The upload grant is revoked, expired or used up.
    #[error("the upload grant is no longer valid")]
    GrantRefused,
    /// The database failed.
    #[error(transparent)]
    Meta(#[from] MetaError),
}

/// Bytes held for an upload in flight; released on drop unless the upload committed.
pub struct Reservation {
    id: UploadId,
    bytes: u64,
    meta: MetaStore,
    touch_every: Duration,
    touched: Instant,
    /// Ended in the database already (by the commit).
    settled: bool,
}

impl Reservation {
    /// The upload's id (its reservation row).
    pub fn id(&self) -> UploadId {
        self.id
    }

    /// How many bytes this upload may store.
    pub fn bytes(&self) -> u64 {
        self.bytes
    }

    /// Bytes arrived: tell the database the upload is alive, at most once per `touch_every`.
    /// A failure is only logged: the upload goes on, and is at worst taken for abandoned later.
    pub async fn touch(&mut self) {
        if self.touched.elapsed() < self.touch_every {
            return;
        }
        self.touched = Instant::now();
        if let Err(e) = self.meta.uploads().touch(self.id, Timestamp::now()).await {
            tracing::warn!(error = %e, "cannot record an upload's progress");
        }
    }

    /// Record what the writer staged, so a sweeper can abort it if this node dies.
    pub async fn staged(&self, staging_id: String) -> Result<(), MetaError> {
        self.meta.uploads().staged(self.id, staging_id).await
    }

    /// The reservation ended with the commit that inserted the row.
    pub fn settle(mut self) {
        self.settled = true;
    }

    /// The upload failed: end the reservation now (giving back its grant's use), so that
    /// whatever the client does next already sees it gone. If the database cannot be
    /// reached, the sweeper takes the row once it counts as abandoned.
    pub async fn release(mut self) {
        self.settled = true;
        // Its own task: a caller cancelled meanwhile (the client went away) does not cancel
        // the release, which would leave the use and the bytes held until the sweeper.
        let _ = spawn_release(self.meta.clone(), self.id).await;
    }
}

/// End reservation `id` in a task of its own; a failure is logged (the sweeper takes it).
fn spawn_release(meta: MetaStore, id: UploadId) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        if let Err(e) = meta.uploads().release(id).await {
            tracing::warn!(error = %e, upload.id = %id, "cannot release an upload's quota; the sweeper will");
        }
    })
}

impl Drop for Reservation {
    fn drop(&mut self) {
        if self.settled {
            return;
        }
        // Released off the caller's path; if the database cannot be reached now, the sweeper
        // takes the row once it counts as abandoned.
        if tokio::runtime::Handle::try_current().is_ok() {
            spawn_release(self.meta.clone(), self.id);
        }
    }
}

impl Quota {
    /// Reservations enforcing `limit` bytes per user (0 = unlimited, still recorded so that a
    /// dead node's upload can be cleaned up), touched at most every `touch_every`.
    pub fn new(limit: u64, meta: MetaStore, touch_every: Duration) -> Self {
        Self {
            limit,
            meta,
            touch_every,
        }
    }

    /// The guard of a reservation made earlier (by a resumable upload's creation, in the
    /// transaction that inserted its row): released on drop unless committed, as any other.
    pub fn adopt(&self, id: UploadId, bytes: u64) -> Reservation {
        Reservation {
            id,
            bytes,
            meta: self.meta.clone(),
            touch_every: self.touch_every,
            touched: Instant::now(),
            settled: false,
        }
    }

    /// The limit in bytes (0 = unlimited).
    pub fn limit(&self) -> u64 {
        self.limit
    }

    /// Reserve up to `want` bytes for the upload `id`, whose blob will be `blob_key`. With
    /// `exact`, anything less than `want` fails; otherwise (length unknown in advance) the
    /// reservation may be smaller, down to 1 byte. With `grant`, one of its uses is taken
    /// too (given back when the reservation is released).
    pub async fn reserve(
        &self,
        id: UploadId,
        user: UserId,
        want: u64,
        exact: bool,
        blob_key: &BlobKey,
        grant: Option<GrantId>,
    ) -> Result<Reservation, QuotaError> {
        // In a task of its own, run to completion: if the caller goes away after the database
        // granted the reservation, the guard is still made (and dropped), releasing it.
        let meta = self.meta.clone();
        let touch_every = self.touch_every;
        let limit = self.limit;
        let blob_key = blob_key.as_str().to_owned();
        tokio::spawn(async move {
            let granted = meta
                .uploads()
                .reserve(NewReservation {
                    id,
                    owner: user,
                    want,
                    exact,
                    quota: limit,
                    node: meta.node().to_owned(),
                    blob_key,
                    grant,
                    now: Timestamp::now(),
                })
                .await?;
            match granted {
                Reserved::Granted(bytes) => Ok(Reservation {
                    id,
                    bytes,
                    meta,
                    touch_every,
                    touched: Instant::now(),
                    settled: false,
                }),
                Reserved::Exceeded => Err(QuotaError::Exceeded),
                Reserved::GrantRefused => Err(QuotaError::GrantRefused),
            }
        })
        .await
        .map_err(|e| QuotaError::Meta(MetaError::Unavailable(format!("reservation task: {e}"))))?
    }
}
