//! Files: what the rest of the crate may ask of the `files` table, whatever the engine.
//!
//! Invariant: a row is inserted only after its blob is durably in place; deleting a row (or
//! pointing it at another blob) queues its old blob in `blob_deletions` in the same
//! transaction, and the blob is deleted only after that commits. So every row has a blob
//! unless an operator removed it by hand, every blob without a row is queued or an orphan of a
//! crash, and `coffer check` can explain every difference. A row is never inserted for an
//! owner locked for deletion (or gone), so an account's files only decrease once it is
//! locked. An expired file is invisible to owners at once, before the sweeper removes it.

use async_trait::async_trait;
use bytes::Bytes;
use serde::Serialize;
use utoipa::ToSchema;

use crate::blocking;
use crate::crypto::Sealing;
use crate::crypto::read::Source;
use crate::ids::{FileId, GrantId, Timestamp, UserId};
use crate::meta::error::MetaError;
use crate::meta::events::NewEvent;
use crate::meta::page::Page;

/// A file as clients see it.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct FileObject {
    /// The id.
    pub id: FileId,
    /// The sanitised original name.
    pub filename: String,
    /// Bytes.
    pub size: u64,
    /// The type detected from the content.
    pub content_type: String,
    /// Lower-case hex SHA-256 of the content.
    pub sha256: String,
    /// Upload time.
    pub created_at: Timestamp,
    /// When the file will be deleted; null = kept.
    pub expires_at: Option<Timestamp>,
    /// When the virus scanner found the stored bytes clean; null when no scanner was
    /// configured or the file was stored unscanned (too large to scan, or the scanner down
    /// with `scan.fail_open`).
    pub scanned_at: Option<Timestamp>,
    /// The upload grant it was uploaded with; null when its owner uploaded it.
    pub grant_id: Option<GrantId>,
}

/// A file row with what serving it needs.
#[derive(Debug, Clone)]
pub struct StoredFile {
    /// The public part.
    pub file: FileObject,
    /// Owner.
    pub owner_id: UserId,
    /// Where the blob lives (from the id, never from input).
    pub blob_key: String,
    /// Encryption, if the blob is sealed.
    pub sealing: Option<Sealing>,
}

impl StoredFile {
    /// What reading its plaintext needs.
    pub fn source(&self) -> Source<'_> {
        Source {
            blob_key: &self.blob_key,
            file: self.file.id,
            size: self.file.size,
            sealing: self.sealing.as_ref(),
        }
    }
}

/// What an insert did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Inserted {
    /// The row is committed.
    Inserted,
    /// The owner is gone or locked for deletion: no row was written.
    OwnerGone,
}

/// Work on a row right after it is read, on the thread that read it: a small file's bytes
/// come with its row in one trip to the blocking pool, not two.
pub type AfterRead = Box<dyn FnOnce(&StoredFile) -> Option<Bytes> + Send>;

/// The `files` table and the blob-deletion queue.
#[async_trait]
pub trait Files: Send + Sync {
    /// Insert a row (the owner's usage grows with it), unless its owner is locked for
    /// deletion or gone: checked in the insert itself, so an upload authenticated before the
    /// lock cannot add a file to an account being deleted.
    async fn insert(&self, file: StoredFile) -> Result<Inserted, MetaError>;

    /// A live (unexpired) file, if `owner` may see it (`None` = any owner, for admins).
    async fn get_visible(
        &self,
        id: FileId,
        owner: Option<UserId>,
        now: Timestamp,
    ) -> Result<Option<StoredFile>, MetaError>;

    /// [`Files::get_visible`], then `then` on the row, on a blocking thread: the one that read
    /// the row where the engine reads on one.
    async fn get_visible_then(
        &self,
        id: FileId,
        owner: Option<UserId>,
        now: Timestamp,
        then: AfterRead,
    ) -> Result<Option<(StoredFile, Option<Bytes>)>, MetaError> {
        let Some(f) = self.get_visible(id, owner, now).await? else {
            return Ok(None);
        };
        Ok(Some(
            blocking::run(move || {
                let extra = then(&f);
                (f, extra)
            })
            .await?,
        ))
    }

    /// The owner's live files, newest first, keyset-paginated after `(created_at, id)`.
    async fn list_owned(
        &self,
        owner: UserId,
        after: Option<(Timestamp, FileId)>,
        limit: usize,
        now: Timestamp,
    ) -> Result<Page<FileObject>, MetaError>;

    /// Delete a row (its links go with it) and queue its blob for deletion, in one
    /// transaction. The blob's key, or `None` when the row was already gone.
    async fn delete(&self, id: FileId, now: Timestamp) -> Result<Option<String>, MetaError> {
        self.delete_recording(id, now, Vec::new()).await
    }

    /// [`Files::delete`], recording `events` in the same transaction when the row was there.
    async fn delete_recording(
        &self,
        id: FileId,
        now: Timestamp,
        events: Vec<NewEvent>,
    ) -> Result<Option<String>, MetaError>;

    /// Delete a row only while it still points at `blob_key` (which is queued too, in case
    /// it reappears). `false` when it did not.
    async fn delete_if_blob(
        &self,
        id: FileId,
        blob_key: String,
        now: Timestamp,
    ) -> Result<bool, MetaError> {
        self.delete_if_blob_recording(id, blob_key, now, Vec::new())
            .await
    }

    /// [`Files::delete_if_blob`], recording `events` in the same transaction when it deleted.
    async fn delete_if_blob_recording(
        &self,
        id: FileId,
        blob_key: String,
        now: Timestamp,
        events: Vec<NewEvent>,
    ) -> Result<bool, MetaError>;

    /// Blobs queued for deletion, oldest first.
    async fn queued_deletions(&self, limit: usize) -> Result<Vec<String>, MetaError>;

    /// A queued blob is gone: dequeue it.
    async fn deletion_done(&self, blob_key: String) -> Result<(), MetaError>;

    /// Every file of a user (account deletion).
    async fn all_of_owner(&self, owner: UserId) -> Result<Vec<StoredFile>, MetaError>;

    /// Files whose retention ran out, oldest expiry first.
    async fn expired(&self, now: Timestamp, limit: usize) -> Result<Vec<StoredFile>, MetaError>;

    /// Every row in id order, one page at a time (maintenance walks).
    async fn scan(&self, after: Option<FileId>, limit: usize)
    -> Result<Vec<StoredFile>, MetaError>;

    /// Whether a blob key belongs to a row.
    async fn blob_key_exists(&self, blob_key: String) -> Result<bool, MetaError>;

    /// Point a plaintext row at its new sealed blob (encrypt-existing), only while it still
    /// points at `old_blob`, which is then queued for deletion (one transaction).
    async fn seal_blob(
        &self,
        id: FileId,
        old_blob: String,
        new_blob: String,
        sealing: Sealing,
        now: Timestamp,
    ) -> Result<bool, MetaError>;

    /// Replace a wrapped data key (rotate-key), only if it is still the one that was read.
    async fn rewrap(&self, id: FileId, old: Sealing, new: Sealing) -> Result<bool, MetaError>;
}
