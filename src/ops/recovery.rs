//! Start-up recovery: before anything is served, clean up what an interrupted run left.
//!
//! Invariant: temp files of interrupted uploads are removed, queued blob deletions finished,
//! and (when asked) blobs without a row removed, before the first request is accepted.

use std::time::Duration;

use crate::blob::BlobStore;
use crate::meta::MetaStore;
use crate::ops::check;
use crate::removal;

/// Crash recovery before serving.
pub async fn recover(meta: &MetaStore, blobs: &BlobStore, scan: bool) -> anyhow::Result<()> {
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
        // Nothing else runs on this root yet: no grace needed.
        let orphans = check::remove_orphans(meta, blobs, &report, Duration::ZERO).await?;
        if orphans > 0 {
            tracing::warn!(orphans, "removed blobs that had no database row");
        }
        for (missing, _) in &report.missing {
            tracing::error!(file.id = %missing, "a file row has no blob; run `coffer check`");
        }
    }
    Ok(())
}
