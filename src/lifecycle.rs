//! Removing files and accounts: shared by the delete routes, the retention sweeper, admin
//! account deletion and `coffer check --repair`.
//!
//! Invariant: a file is removed blob-first, in two steps: the blob moves to `trash/`, the row
//! is deleted, the trashed blob is purged. A crash at any point leaves either a row whose blob
//! sits in the trash (the deletion is finished at the next start or by `coffer check
//! --repair`) or nothing: never a row that silently points at nothing.
//!
//! An account is locked before anything else is removed: from that commit on, none of its
//! credentials works (the database refuses them, and the caller's `on_locked` empties its
//! credential cache) and no file row can be added to it (`files::insert` refuses a locked
//! owner), so its files only decrease and the deletion always ends.

use crate::blob::{BlobError, BlobKey, BlobStore};
use crate::ids::UserId;
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
    /// Files of a locked account were still there after every pass (never expected: a locked
    /// account gains no file).
    #[error("the account still owns files after {MAX_ROUNDS} passes")]
    FilesRemain,
}

impl From<RemoveError> for crate::error::AppError {
    fn from(e: RemoveError) -> Self {
        match e {
            RemoveError::Blob(b) => b.into(),
            RemoveError::Meta(m) => m.into(),
            RemoveError::LastAdmin => Self::Conflict("cannot delete the last administrator".into()),
            RemoveError::NoUser => Self::NotFound,
            e @ RemoveError::FilesRemain => Self::Internal(e.into()),
        }
    }
}

/// Remove one file. Returns `false` when its row was already gone.
pub async fn remove_file(
    meta: &MetaStore,
    blobs: &BlobStore,
    f: &StoredFile,
) -> Result<bool, RemoveError> {
    let key = BlobKey::parse(&f.blob_key);
    let trashed = match &key {
        Some(k) => match blobs.trash(k).await {
            Ok(()) => true,
            // Already gone (an operator, or a concurrent delete): the row still goes.
            Err(BlobError::NotFound) => false,
            Err(e) => return Err(e.into()),
        },
        None => false,
    };
    let id = f.file.id;
    let deleted = match meta.write(move |tx| files::delete(tx, id)).await {
        Ok(d) => d,
        Err(e) => {
            if let (true, Some(k)) = (trashed, &key)
                && let Err(re) = blobs.restore(k).await
            {
                tracing::error!(file.id = %id, error = %re, "cannot restore a trashed blob");
            }
            return Err(e.into());
        }
    };
    if let (true, Some(k)) = (trashed, &key)
        && let Err(e) = blobs.purge(k).await
    {
        // Harmless: the trash is emptied at the next start.
        tracing::warn!(file.id = %id, error = %e, "cannot purge a trashed blob");
    }
    Ok(deleted)
}

/// Passes over an account's files before giving up. Once the account is locked no file can be
/// added to it, so the first pass empties it; more only when another remover (the sweeper, a
/// second admin) holds one of its files at the same moment.
const MAX_ROUNDS: usize = 16;

/// Remove an account with all its files, links, keys and logins. Returns the number of files.
///
/// `on_locked` runs as soon as the lock has committed, before any file is removed: the place to
/// forget cached credentials, so that none outlives the lock in this process (a credential
/// check that began before it cannot re-cache the account either: see `auth::cache`).
pub async fn remove_user(
    meta: &MetaStore,
    blobs: &BlobStore,
    id: UserId,
    on_locked: impl FnOnce(),
) -> Result<usize, RemoveError> {
    // Lock first, in one transaction with the last-admin check: from here on the account
    // can do nothing (no login, no live token or key, no new file), and two admins deleting
    // each other at once cannot both succeed.
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
    on_locked();
    let mut removed = 0;
    for _ in 0..MAX_ROUNDS {
        // Read after the lock committed: every file the account will ever have is listed.
        let owned = meta.read(move |c| files::all_of_owner(c, id)).await?;
        for f in &owned {
            if remove_file(meta, blobs, f).await? {
                removed += 1;
            }
        }
        // The row goes only with no file left, checked in the same statement: never a
        // foreign-key failure, whatever happened meanwhile.
        match meta.write(move |tx| users::delete(tx, id)).await? {
            users::Deleted::Deleted => return Ok(removed),
            // A concurrent deletion of the same account finished first.
            users::Deleted::NoUser => return Err(RemoveError::NoUser),
            users::Deleted::OwnsFiles => {}
        }
    }
    Err(RemoveError::FilesRemain)
}

/// Finish deletions a crash interrupted: trashed blobs whose row still exists lose the row,
/// and every trashed blob is purged. Returns how many blobs were purged.
pub async fn finish_interrupted_deletes(
    meta: &MetaStore,
    blobs: &BlobStore,
) -> Result<usize, RemoveError> {
    let trash = blobs.inventory().await?.trash;
    for key in &trash {
        finish_delete(meta, blobs, key).await?;
    }
    Ok(trash.len())
}

/// Finish one interrupted deletion, whose blob `key` sits in the trash: the file's row goes
/// if it still points at this blob, then the trashed blob is purged. A blob that is live
/// again (a failed delete restored it) keeps its row. Start-up and `coffer check --repair`
/// both use it.
pub(crate) async fn finish_delete(
    meta: &MetaStore,
    blobs: &BlobStore,
    key: &BlobKey,
) -> Result<(), RemoveError> {
    // Only when the row still points at this blob (encrypt-existing trashes a file's old
    // plain blob while the row lives on with the sealed one).
    if let Some(id) = key.file_id() {
        match blobs.len(key).await {
            Err(BlobError::NotFound) => {
                let k = key.as_str().to_owned();
                meta.write(move |tx| files::delete_if_blob(tx, id, &k).map(|_| ()))
                    .await?;
            }
            Ok(_) => {}
            Err(e) => return Err(e.into()),
        }
    }
    blobs.purge(key).await?;
    Ok(())
}
