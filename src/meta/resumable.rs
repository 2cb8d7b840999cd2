//! Unfinished resumable (tus) uploads: `resumable_uploads` (one row per upload, its id the
//! future file's) and `resumable_chunks` (the staged bytes, one blob per chunk). The quota an
//! upload holds is a reservation in `upload_reservations` under the same id.
//!
//! Invariant: `upload_offset` counts only bytes whose chunk blob is durable: a chunk's row
//! and the new offset are written in one transaction, after the blob was committed, and only
//! by the holder of the upload's lock (a lease: `lock_holder` until `lock_until`, so a dead
//! node's lock expires). Removing an upload (terminated, expired) removes its rows, queues
//! every chunk blob for deletion and releases its reservation in one transaction.

use async_trait::async_trait;

use crate::crypto::Sealing;
use crate::ids::{FileId, GrantId, Timestamp, UploadId, UserId};
use crate::meta::error::MetaError;
use crate::meta::uploads::NewReservation;

/// An upload to create.
#[derive(Debug, Clone)]
pub struct NewResumable {
    /// The upload, and the file it becomes.
    pub id: FileId,
    /// Whose.
    pub owner: UserId,
    /// `Upload-Length`.
    pub length: u64,
    /// The raw `Upload-Metadata` header (echoed by HEAD).
    pub metadata: String,
    /// The client's filename, unsanitised (from the metadata).
    pub filename: String,
    /// When the finished file expires.
    pub file_expires_at: Option<Timestamp>,
    /// Now.
    pub now: Timestamp,
    /// When the upload expires unless a PATCH comes.
    pub expires_at: Timestamp,
    /// `uploads.max_pending_per_user`.
    pub max_pending: u64,
    /// The quota reservation for the whole length (its id is the upload's).
    pub reservation: NewReservation,
}

/// Who may see and continue an upload: the owner, through the same kind of credential that
/// created it (an upload made with an upload grant answers only to that grant; one made
/// with a token or key, never to a grant).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Creator {
    /// The owner.
    pub owner: UserId,
    /// The grant it was created with.
    pub grant: Option<GrantId>,
}

/// What creating an upload came to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Created {
    /// The row is in and the quota reserved.
    Created,
    /// The owner has `max_pending` unfinished uploads already.
    TooMany,
    /// The quota cannot hold the length.
    QuotaExceeded,
    /// The upload grant is revoked, expired or used up.
    GrantRefused,
}

/// An unfinished upload.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ResumableUpload {
    /// The upload (and future file).
    pub id: FileId,
    /// Whose.
    pub owner: UserId,
    /// `Upload-Length`.
    pub length: u64,
    /// Durable bytes.
    pub offset: u64,
    /// The raw `Upload-Metadata`.
    pub metadata: String,
    /// The client's filename.
    pub filename: String,
    /// When the finished file expires.
    pub file_expires_at: Option<Timestamp>,
    /// When the upload expires.
    pub expires_at: Timestamp,
    /// The upload grant it was created with.
    pub grant: Option<GrantId>,
}

/// A staged chunk: plaintext bytes `[start, start + len)` of the upload, in a blob of its own.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Chunk {
    /// Its first byte's offset in the upload.
    pub start: u64,
    /// Plaintext bytes.
    pub len: u64,
    /// Its blob.
    pub blob_key: String,
    /// How it is sealed, when encryption is on.
    pub sealing: Option<Sealing>,
}

/// Bytes of a PATCH made durable: the offset moves, and the chunks that hold them are
/// recorded, in one transaction.
#[derive(Debug, Clone)]
pub struct Append {
    /// The upload.
    pub id: FileId,
    /// The lock holder appending.
    pub holder: String,
    /// Where the bytes start: must be the current offset.
    pub start: u64,
    /// How many bytes the offset moves by.
    pub added: u64,
    /// A chunk of their own (its `start` is `start`).
    pub chunk: Option<Chunk>,
    /// The growing chunk (at offset 0, one blob appended in place) extended.
    pub grow: Option<Grow>,
    /// The staged tail replaced (its start): its row goes and its blob is queued for deletion.
    pub drop_tail: Option<u64>,
    /// The new staged tail (a chunk of its own after the growing chunk's whole segments).
    pub tail: Option<Chunk>,
    /// The chunk writer's own (zero-byte) reservation, ended here.
    pub chunk_reservation: Option<UploadId>,
    /// Give the lock up in the same transaction (the request is done with the upload).
    pub unlock: bool,
    /// Now.
    pub now: Timestamp,
    /// The upload's new expiry.
    pub expires_at: Timestamp,
}

/// The growing chunk extended by `by` bytes (created with them when it has no row yet).
#[derive(Debug, Clone)]
pub struct Grow {
    /// Its blob.
    pub blob_key: String,
    /// Plaintext bytes added.
    pub by: u64,
    /// How it is sealed (when created).
    pub sealing: Option<Sealing>,
}

/// What taking an upload's lock came to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Locked {
    /// Held until the given time; the upload as it is now.
    Held(ResumableUpload),
    /// Another request holds it.
    Busy,
    /// No such upload for this owner (or expired).
    Missing,
}

/// The resumable-upload tables.
#[async_trait]
pub trait Resumables: Send + Sync {
    /// Create an upload: count the owner's unfinished ones, reserve the quota, insert the
    /// row, in one transaction (the owner locked, as for every reservation).
    async fn create(&self, new: NewResumable) -> Result<Created, MetaError>;

    /// The unexpired upload, if `creator` made it.
    async fn get(
        &self,
        id: FileId,
        creator: Creator,
        now: Timestamp,
    ) -> Result<Option<ResumableUpload>, MetaError>;

    /// Take (or renew) the upload's lock for `holder` until `until`. Committed without
    /// waiting for the database's log to reach the disk, which saves a PATCH a flush. A lock
    /// lost that way (a power cut; on PostgreSQL also the database's own crash or failover
    /// while its holder runs on) lets a second PATCH in, and that is safe because the lock
    /// is not what keeps two writers apart in the end: [`Resumables::append`] takes effect only
    /// for its holder and at the offset it started from, the local store's growing blob is
    /// held exclusively by its writer (`BlobError::Busy`), and on S3 every PATCH writes a chunk
    /// of its own. Keep those checks.
    async fn lock(
        &self,
        id: FileId,
        creator: Creator,
        holder: String,
        now: Timestamp,
        until: Timestamp,
    ) -> Result<Locked, MetaError>;

    /// Give the lock up, if `holder` still has it. May be committed without waiting for the
    /// disk (SQLite), like [`Resumables::lock`]: an unlock lost in a power cut leaves the lock
    /// to expire.
    async fn unlock(&self, id: FileId, holder: String) -> Result<(), MetaError>;

    /// Record a durable chunk (or extend the growing one) and move the offset past it, while
    /// `holder` holds the lock and the offset is the chunk's start; `false` otherwise (the
    /// caller deletes the blob, or cuts the growing one back).
    async fn append(&self, a: Append) -> Result<bool, MetaError>;

    /// The upload's chunks, in order.
    async fn chunks(&self, id: FileId) -> Result<Vec<Chunk>, MetaError>;

    /// Remove the upload: rows out, chunk blobs queued for deletion, its reservation released
    /// and its grant's use given back (if the reservation is left: a committed upload's ended
    /// with its file). `false` when it was already gone.
    async fn remove(&self, id: FileId, now: Timestamp) -> Result<bool, MetaError>;

    /// Remove every upload of `owner` (the account is being deleted), as [`Resumables::remove`]
    /// does, in one transaction. Returns how many.
    async fn remove_owned(&self, owner: UserId, now: Timestamp) -> Result<usize, MetaError>;

    /// The unfinished uploads created with a grant (to end them when it is revoked).
    async fn by_grant(&self, grant: GrantId) -> Result<Vec<FileId>, MetaError>;

    /// Uploads that expired before `now`, or whose grant was revoked (its uploads are ended
    /// with it; this catches those a failure left behind), up to `limit`.
    async fn expired(&self, now: Timestamp, limit: usize) -> Result<Vec<FileId>, MetaError>;

    /// Every staged chunk's blob key (not orphans, for `coffer check`).
    async fn staged_keys(&self) -> Result<Vec<String>, MetaError>;

    /// Every staged chunk sealed under a key other than `current` (for `coffer rotate-key`).
    async fn sealed_chunks(&self, current: String) -> Result<Vec<SealedChunk>, MetaError>;

    /// Replace a chunk's wrapped data key by `new`, if it is still `chunk.sealing` (false: the
    /// chunk is gone, or was re-wrapped meanwhile).
    async fn reseal_chunk(&self, chunk: SealedChunk, new: Sealing) -> Result<bool, MetaError>;
}

/// A staged chunk's data key, as `coffer rotate-key` re-wraps it.
#[derive(Debug, Clone)]
pub struct SealedChunk {
    /// The upload.
    pub upload: FileId,
    /// The chunk's first byte's offset.
    pub start: u64,
    /// Its blob (which tells what its key is bound to: `resumable::key_binding`).
    pub blob_key: String,
    /// Its data key, wrapped.
    pub sealing: Sealing,
}

/// The reservation id of an upload (the same UUID).
pub fn reservation_of(id: FileId) -> UploadId {
    UploadId(id.0)
}
