//! Removing files and accounts: shared by the delete routes, the retention sweeper, admin
//! account deletion and `coffer check --repair`.
//!
//! Invariant: a file is removed row-first. Deleting its row queues its blob in the same
//! transaction (`blob_deletions`); the blob is deleted after the commit and then dequeued. A
//! crash, or a store that fails, at any point leaves a queued blob that the next start or
//! sweep deletes ([`purge_queued`]): never a row that silently points at nothing, never a
//! blob nobody will remove.

use crate::blob::{BlobError, BlobKey, BlobStore};
use crate::ids::{Timestamp, UserId};
use crate::meta::files::{self, StoredFile};
use crate::meta::users::{self, Role};
use crate::meta::{MetaError, MetaStore};

/// Why a removal failed.
#[derive(Debug, thiserror::Error)]
pub enum RemoveError {
    /// Blob storage failed.
    #[error(transparent)]
    Blob(#[from] BlobError),
    /// The database failed.
    #[error(transparent)]
    Meta(#[from] MetaError),
    /// The account is the last administrator.
    #[error("cannot delete the last administrator")]
    LastAdmin,
    /// No such account.
    #[error("no such user")]
    NoUser,
}

impl From<RemoveError> for crate::error::AppError {
    fn from(e: RemoveError) -> Self {
        match e {
            RemoveError::Blob(b) => b.into(),
            RemoveError::Meta(m) => m.into(),
            RemoveError::LastAdmin => Self::Conflict("cannot delete the last administrator".into()),
            RemoveError::NoUser => Self::NotFound,
        }
    }
}

/// Remove one file. Returns `false` when its row was already gone.
pub async fn remove_file(
    meta: &MetaStore,
    blobs: &BlobStore,
    f: &StoredFile,
) -> Result<bool, RemoveError> {
    let id = f.file.id;
    let Some(key) = meta
        .write(move |tx| files::delete(tx, id, Timestamp::now()))
        .await?
    else {
        return Ok(false);
    };
    // The file is gone for everyone now; its blob follows, or a later sweep takes it.
    if let Err(e) = purge_blob(meta, blobs, &key).await {
        tracing::warn!(file.id = %id, error = %e, "cannot delete a removed file's blob yet; queued");
    }
    Ok(true)
}

/// Delete a queued blob and dequeue it. A blob already gone is fine.
pub async fn purge_blob(
    meta: &MetaStore,
    blobs: &BlobStore,
    stored: &str,
) -> Result<(), RemoveError> {
    // A key that is not one we make cannot be deleted safely; it only leaves the queue.
    if let Some(key) = BlobKey::parse(stored) {
        match blobs.delete(&key).await {
            Ok(()) | Err(BlobError::NotFound) => {}
            Err(e) => return Err(e.into()),
        }
    }
    let k = stored.to_owned();
    meta.write(move |tx| files::deletion_done(tx, &k)).await?;
    Ok(())
}

/// Remove an account with all its files, links, keys and logins. Returns the number of files.
pub async fn remove_user(
    meta: &MetaStore,
    blobs: &BlobStore,
    id: UserId,
) -> Result<usize, RemoveError> {
    // Lock first, in one transaction with the last-admin check: from here on the account
    // can do nothing (no login, no live token or key), and two admins deleting each other
    // at once cannot both succeed.
    let locked = meta
        .write(move |tx| {
            let Some(target) = users::get(tx, id)? else {
                return Ok(Err(RemoveError::NoUser));
            };
            if target.role == Role::Admin && users::count_admins(tx)? <= 1 {
                return Ok(Err(RemoveError::LastAdmin));
            }
            users::lock(tx, id)?;
            Ok(Ok(()))
        })
        .await?;
    locked?;
    let mut removed = 0;
    // An upload already past its checks may still land: repeat until nothing is left.
    for _ in 0..8 {
        let owned = meta.read(move |c| files::all_of_owner(c, id)).await?;
        if owned.is_empty() {
            break;
        }
        for f in &owned {
            if remove_file(meta, blobs, f).await? {
                removed += 1;
            }
        }
    }
    // Fails on the foreign key if a file still slipped in: nothing is lost, retry the delete.
    if meta.write(move |tx| users::delete(tx, id)).await? {
        Ok(removed)
    } else {
        Err(RemoveError::NoUser)
    }
}

/// Delete every queued blob: deletions a crash or a failing store interrupted. Returns how
/// many were finished; the first failure stops the pass (the next one retries).
pub async fn purge_queued(meta: &MetaStore, blobs: &BlobStore) -> Result<usize, RemoveError> {
    const BATCH: usize = 256;
    let mut done = 0;
    loop {
        let queued = meta
            .read(move |c| files::queued_deletions(c, BATCH))
            .await?;
        for key in &queued {
            purge_blob(meta, blobs, key).await?;
            done += 1;
        }
        if queued.len() < BATCH {
            return Ok(done);
        }
    }
}
