//! Uploads in flight: each holds its quota in the database (`upload_reservations`), so that
//! every node sees what every other node has promised, and a dead node's uploads can be
//! cleaned up by another.
//!
//! Invariant: for each owner, stored bytes plus reserved bytes never exceed the quota. A
//! reservation is granted in one transaction that first locks the owner (PostgreSQL: its
//! `users` row `FOR UPDATE`; SQLite: its single writer), so two uploads on two nodes cannot
//! both take the last bytes. It ends in the same transaction as its file row's insert, or is
//! released when the upload fails; one whose node died stays until a sweeper finds it
//! abandoned (not touched for `uploads.abandoned_after_secs`), aborts what it staged, deletes
//! a blob it may have committed without a row, and removes it.

use async_trait::async_trait;

use crate::ids::{GrantId, Timestamp, UploadId, UserId};
use crate::meta::error::MetaError;
use crate::meta::events::NewEvent;
use crate::meta::files::{Inserted, StoredFile};

impl From<Inserted> for Committed {
    fn from(i: Inserted) -> Self {
        match i {
            Inserted::Inserted => Self::Inserted,
            Inserted::OwnerGone => Self::OwnerGone,
        }
    }
}

/// A reservation to grant.
#[derive(Debug, Clone)]
pub struct NewReservation {
    /// The upload.
    pub id: UploadId,
    /// Whose quota.
    pub owner: UserId,
    /// The bytes wanted.
    pub want: u64,
    /// Whether anything less than `want` is useless (the length is known); otherwise the
    /// grant may be smaller, down to 1 byte.
    pub exact: bool,
    /// The owner's quota in bytes; 0 = unlimited (the row is still written, for clean-up).
    pub quota: u64,
    /// Where the blob will live.
    pub blob_key: String,
    /// The node running the upload.
    pub node: String,
    /// The upload grant it is made with: one of its uses is taken in the same transaction
    /// (and given back when the reservation is released, not when it commits).
    pub grant: Option<GrantId>,
    /// Now.
    pub now: Timestamp,
}

impl NewReservation {
    /// The bytes to grant when `used` are stored and `held` reserved: `want`, or with an
    /// inexact length what is left (at least 1 byte); `None` when that does not fit. The same
    /// rule on every engine.
    pub(crate) fn grant(&self, used: u64, held: u64) -> Option<u64> {
        let free = self.quota.saturating_sub(used).saturating_sub(held);
        let bytes = if self.exact {
            self.want
        } else {
            self.want.min(free)
        };
        (bytes <= free && !(bytes == 0 && self.want > 0)).then_some(bytes)
    }
}

/// What a reservation came to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Reserved {
    /// Held: this many bytes.
    Granted(u64),
    /// Not enough left.
    Exceeded,
    /// The grant is revoked, expired or used up: nothing was reserved.
    GrantRefused,
}

/// What committing an upload came to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Committed {
    /// The row is in and the reservation ended.
    Inserted,
    /// The owner is gone or locked for deletion: no row; the reservation ended.
    OwnerGone,
    /// The reservation was gone: a sweeper took the upload for abandoned and is cleaning up
    /// after it (or has). No row was written, and none will be for this upload.
    Swept,
    /// The upload's grant was revoked while it ran: no row; the reservation ended.
    GrantRevoked,
}

/// An upload nobody has touched for too long: its node died (or lost the database).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Abandoned {
    /// The upload.
    pub id: UploadId,
    /// Whose.
    pub owner: UserId,
    /// Where its blob was going.
    pub blob_key: Option<String>,
    /// What its writer had staged ([`crate::blob::BlobWriter::staging_id`]).
    pub staging_id: Option<String>,
    /// The node that ran it.
    pub node: String,
}

/// The `upload_reservations` table.
#[async_trait]
pub trait Uploads: Send + Sync {
    /// Reserve quota for an upload (one transaction, the owner locked).
    async fn reserve(&self, r: NewReservation) -> Result<Reserved, MetaError>;

    /// Record what the upload's writer staged (so it can be aborted after a crash).
    async fn staged(&self, id: UploadId, staging_id: String) -> Result<(), MetaError>;

    /// Bytes arrived: the upload is alive.
    async fn touch(&self, id: UploadId, now: Timestamp) -> Result<(), MetaError>;

    /// End the upload's reservation and insert its file row, in one transaction (the
    /// reservation ends whether or not the owner could take the row). Without the
    /// reservation (a sweeper claimed it) nothing is written: the sweeper may be deleting the
    /// blob, so no row may point at it.
    async fn commit(&self, id: UploadId, file: StoredFile) -> Result<Committed, MetaError> {
        self.commit_recording(id, file, Vec::new()).await
    }

    /// [`Uploads::commit`], recording `events` in the same transaction when the row went in.
    async fn commit_recording(
        &self,
        id: UploadId,
        file: StoredFile,
        events: Vec<NewEvent>,
    ) -> Result<Committed, MetaError>;

    /// End a reservation (the upload failed, or a sweeper claims it to clean up after it),
    /// giving its grant's use back; `false` when it was already gone. Whoever removes the
    /// row owns what comes next.
    async fn release(&self, id: UploadId) -> Result<bool, MetaError>;

    /// Claim an abandoned upload for clean-up, in one transaction: end its reservation (giving
    /// its grant's use back) and,
    /// unless a file row points at its blob key, queue that key for deletion (a blob its node
    /// committed before dying; the queue's worker deletes it, retrying until the store
    /// answers). `false` when the reservation was already gone (another sweeper, or the
    /// upload committed after all).
    async fn claim_abandoned(&self, id: UploadId, now: Timestamp) -> Result<bool, MetaError>;

    /// Bytes the owner's uploads in flight hold now.
    async fn reserved_bytes(&self, owner: UserId) -> Result<u64, MetaError>;

    /// The blob keys of the uploads in flight (on any node): not orphans, whatever their age,
    /// until their upload commits or a sweeper claims it.
    async fn reserved_keys(&self) -> Result<Vec<String>, MetaError>;

    /// Reservations last touched before `before`, oldest first.
    async fn abandoned(&self, before: Timestamp, limit: usize)
    -> Result<Vec<Abandoned>, MetaError>;
}
