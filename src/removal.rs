//! Removing files and accounts: shared by the delete routes, the retention sweeper, admin
//! account deletion and `coffer check --repair`.
//!
//! Invariant: a file is removed row-first. Deleting its row queues its blob in the same
//! transaction (`blob_deletions`); the blob is deleted after the commit and then dequeued. A
//! crash, or a store that fails, at any point leaves a queued blob that the next start or
//! sweep deletes ([`purge_queued`]): never a row that silently points at nothing, never a
//! blob nobody will remove.
//!
//! An account is locked before anything else is removed: from that commit on, none of its
//! credentials works (the database refuses them, and the engine announces the lock to every
//! node's credential cache) and no file row can be added to it (`files::insert` refuses a locked
//! owner), so its files only decrease and the deletion always ends.

use crate::blob::{BlobError, BlobKey, BlobStore};
use crate::events::{self, Kind};
use crate::ids::{Timestamp, UserId};
use crate::meta::files::StoredFile;
use crate::meta::users::{Deleted, Locked};
use crate::meta::{MetaError, MetaStore};

/// Why a removal failed.
#[derive(Debug, thiserror::Error)]
pub(crate) enum RemoveError {
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

/// Remove one file, recording `why` (`file.deleted` or `file.expired`) in the same
/// transaction. Returns `false` when its row was already gone (and records nothing).
pub(crate) async fn remove_file(
    meta: &MetaStore,
    blobs: &BlobStore,
    f: &StoredFile,
    why: Kind,
) -> Result<bool, RemoveError> {
    let id = f.file.id;
    let event = events::file_event(why, f.owner_id, &f.file);
    let Some(key) = meta
        .files()
        .delete_recording(id, Timestamp::now(), vec![event])
        .await?
    else {
        return Ok(false);
    };
    // The file is gone for everyone now; its blob follows (a store that refused for a moment
    // is tried again before the answer, one that is down is not waited for), or a later sweep
    // takes it.
    let started = std::time::Instant::now();
    let mut attempt = 1;
    while let Err(e) = purge_blob(meta, blobs, &key).await {
        if attempt == PURGE_TRIES || started.elapsed() >= PURGE_WINDOW {
            tracing::warn!(file.id = %id, error = %e, "cannot delete a removed file's blob yet; queued");
            break;
        }
        tracing::warn!(file.id = %id, error = %e, attempt, "cannot delete a removed file's blob; trying again");
        tokio::time::sleep(PURGE_PAUSE * attempt).await;
        attempt += 1;
    }
    Ok(true)
}

/// Tries at deleting a removed file's blob before its removal returns...
const PURGE_TRIES: u32 = 3;
/// ...while no more than this has passed since the first (a store that hangs until a call's
/// deadline is down, not refusing for a moment: the sweep takes the blob when it is back).
const PURGE_WINDOW: std::time::Duration = std::time::Duration::from_secs(1);
/// The pause after the first failed try (doubled after the second).
const PURGE_PAUSE: std::time::Duration = std::time::Duration::from_millis(100);

/// Delete a queued blob and dequeue it. A blob already gone is fine.
pub(crate) async fn purge_blob(
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
    meta.files().deletion_done(stored.to_owned()).await?;
    Ok(())
}

/// Passes over an account's files before giving up. Once the account is locked no file can be
/// added to it, so the first pass empties it; more only when another remover (the sweeper, a
/// second admin) holds one of its files at the same moment.
const MAX_ROUNDS: usize = 16;

/// Remove an account with all its files, links, keys and logins. Returns the number of files.
/// Its credentials stop working everywhere when the lock commits (the engine announces it).
/// Its webhooks stay, retired, until the `file.deleted` events of the removal are delivered
/// or given up (`meta::events`).
pub(crate) async fn remove_user(
    meta: &MetaStore,
    blobs: &BlobStore,
    id: UserId,
) -> Result<usize, RemoveError> {
    // Lock first, in one transaction with the last-admin check: from here on the account
    // can do nothing (no login, no live token or key, no new file), and two admins deleting
    // each other at once cannot both succeed.
    match meta.users().lock(id).await? {
        Locked::Locked => {}
        Locked::LastAdmin => return Err(RemoveError::LastAdmin),
        Locked::NoUser => return Err(RemoveError::NoUser),
    }
    // Its unfinished resumable uploads: rows and reservations out, staged chunks queued (and
    // deleted by the purge below or the sweeper).
    if meta
        .resumables()
        .remove_owned(id, crate::ids::Timestamp::now())
        .await?
        > 0
        && let Err(e) = purge_queued(meta, blobs).await
    {
        tracing::warn!(error = %e, "cannot delete a deleted account's staged chunks yet");
    }
    let mut removed = 0;
    for _ in 0..MAX_ROUNDS {
        // Read after the lock committed: every file the account will ever have is listed.
        let owned = meta.files().all_of_owner(id).await?;
        for f in &owned {
            if remove_file(meta, blobs, f, Kind::FileDeleted).await? {
                removed += 1;
            }
        }
        // The row goes only with no file left, checked in the same statement: never a
        // foreign-key failure, whatever happened meanwhile.
        match meta.users().delete(id).await? {
            Deleted::Deleted => {
                // Its webhooks stayed (retired) for the events above; those with nothing left
                // to deliver go now, the others once their outbox drains.
                if let Err(e) = meta.outbox().prune_retired().await {
                    tracing::warn!(error = %e, "cannot remove a deleted account's idle webhooks yet; the sweeper will");
                }
                return Ok(removed);
            }
            // A concurrent deletion of the same account finished first.
            Deleted::NoUser => return Err(RemoveError::NoUser),
            Deleted::OwnsFiles => {}
        }
    }
    Err(RemoveError::FilesRemain)
}

/// Delete every queued blob: deletions a crash or a failing store interrupted. Returns how
/// many were finished; the first failure stops the pass (the next one retries).
pub(crate) async fn purge_queued(
    meta: &MetaStore,
    blobs: &BlobStore,
) -> Result<usize, RemoveError> {
    const BATCH: usize = 256;
    let mut done = 0;
    loop {
        let queued = meta.files().queued_deletions(BATCH).await?;
        for key in &queued {
            purge_blob(meta, blobs, key).await?;
            done += 1;
        }
        if queued.len() < BATCH {
            return Ok(done);
        }
    }
}
