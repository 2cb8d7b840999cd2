//! Start-up recovery: before anything is served, clean up what an interrupted run left.
//!
//! Invariant: temp files of interrupted uploads are removed, queued blob deletions finished,
//! and (when asked) blobs without a row removed, before the first request is accepted. A blob
//! store that does not answer yet is no reason not to start: the node serves, unready (503),
//! until it answers; the sweeper then finishes queued deletions, and orphans wait for the
//! next start or `coffer check --repair`.

use std::time::Duration;

use crate::blob::{BlobError, BlobStore};
use crate::meta::MetaStore;
use crate::ops::check;
use crate::removal::{self, RemoveError};

/// Crash recovery before serving. `scan` looks for blobs without a row too; `grace` is how
/// old such a blob must be before it counts as an orphan (zero when nothing else can be
/// writing to the store).
pub async fn recover(
    meta: &MetaStore,
    blobs: &BlobStore,
    scan: bool,
    grace: Duration,
) -> anyhow::Result<()> {
    match recover_blobs(meta, blobs, scan, grace).await {
        Err(e) if blobs_unavailable(&e) => {
            tracing::warn!(error = %e, "the blob store does not answer; starting without crash recovery");
            Ok(())
        }
        other => other,
    }
}

fn blobs_unavailable(e: &anyhow::Error) -> bool {
    e.chain().any(|cause| {
        matches!(
            cause.downcast_ref::<BlobError>(),
            Some(BlobError::Unavailable(_))
        ) || matches!(
            cause.downcast_ref::<RemoveError>(),
            Some(RemoveError::Blob(BlobError::Unavailable(_)))
        )
    })
}

async fn recover_blobs(
    meta: &MetaStore,
    blobs: &BlobStore,
    scan: bool,
    grace: Duration,
) -> anyhow::Result<()> {
    let temp = blobs.clear_staging().await?;
    let trashed = removal::purge_queued(meta, blobs).await?;
    if temp + trashed > 0 {
        tracing::info!(
            temp_files = temp,
            deletions = trashed,
            "cleaned up after an interrupted run"
        );
    }
    if scan {
        let report = check::scan(meta, blobs, None).await?;
        let orphans = check::remove_orphans(meta, blobs, &report, grace).await?;
        if orphans > 0 {
            tracing::warn!(orphans, "removed blobs that had no database row");
        }
        for (missing, _) in &report.missing {
            tracing::error!(file.id = %missing, "a file row has no blob; run `coffer check`");
        }
    }
    Ok(())
}
