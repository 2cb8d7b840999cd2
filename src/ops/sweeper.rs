//! The retention sweeper: every `retention.sweep_interval_secs` it deletes expired files (blob
//! and row, links with them), spent revocation entries and logins, long-expired links, the
//! first uses of expired view URLs, and audit entries older than `audit.retention_days`.
//!
//! Invariant: each expired file's deletion is audited (`file.expire`); a failure on one file
//! is logged and retried on the next sweep, never aborting the sweeper.

use std::time::Duration;

use crate::audit::{AuditLog, Event, Record};
use crate::blob::BlobStore;
use crate::ids::Timestamp;
use crate::meta::MetaStore;
use crate::removal;

/// Files handled per batch.
const BATCH: usize = 256;
/// Expired links are kept this long so clients get 410 rather than 404.
const LINK_GRACE_SECS: u64 = 7 * 86_400;

/// What the sweeper works on, and how often.
#[derive(Clone)]
pub struct Sweeper {
    /// The metadata.
    pub meta: MetaStore,
    /// The blobs.
    pub blobs: BlobStore,
    /// Where each expiry is recorded.
    pub audit: AuditLog,
    /// `retention.sweep_interval_secs`.
    pub interval: Duration,
    /// `audit.retention_days` (0 = keep the trail forever).
    pub audit_retention_days: u64,
}

impl Sweeper {
    /// Sweep every `interval`, forever (aborted at shutdown).
    pub async fn sweep_periodically(self) {
        let mut tick = tokio::time::interval(self.interval);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tick.tick().await;
            if let Err(e) = self.sweep().await {
                tracing::warn!(error = %e, "retention sweep failed; retrying next interval");
            }
        }
    }

    /// One sweep. Returns the number of files removed.
    pub async fn sweep(&self) -> anyhow::Result<usize> {
        // Blob deletions a failing store left queued; retried next time if it still fails.
        if let Err(e) = removal::purge_queued(&self.meta, &self.blobs).await {
            tracing::warn!(error = %e, "cannot finish queued blob deletions yet");
        }
        let now = Timestamp::now();
        let mut removed = 0;
        loop {
            let batch = self.meta.files().expired(now, BATCH).await?;
            let full = batch.len() == BATCH;
            let before = removed;
            for f in batch {
                match removal::remove_file(&self.meta, &self.blobs, &f).await {
                    Ok(true) => {
                        removed += 1;
                        // A system action: no actor; the owner is in the detail.
                        self.audit.record(Record::new(Event::FileExpire).subject(f.file.id).detail(
                            serde_json::json!({ "owner": f.owner_id, "size": f.file.size, "expired_at": f.file.expires_at }),
                        ));
                    }
                    Ok(false) => {}
                    Err(e) => {
                        tracing::warn!(file.id = %f.file.id, error = %e, "cannot remove an expired file")
                    }
                }
            }
            // A full batch that removed nothing (every removal failing) would come back the same:
            // stop, and let the next sweep retry rather than spin.
            if !full || removed == before {
                break;
            }
        }
        let link_cutoff = Timestamp(
            now.0
                .saturating_sub(i64::try_from(LINK_GRACE_SECS * 1_000_000).unwrap_or(0)),
        );
        let audit_days = self.audit_retention_days;
        let meta = &self.meta;
        let mut pruned = meta.sessions().prune(now).await?;
        pruned += meta.links().prune_expired(link_cutoff).await?;
        pruned += meta.views().prune_views(now).await?;
        if audit_days > 0 {
            let cutoff = now.0.saturating_sub(
                i64::try_from(audit_days.saturating_mul(86_400_000_000)).unwrap_or(i64::MAX),
            );
            pruned += meta.audit().prune(Timestamp(cutoff)).await?;
        }
        if removed + pruned > 0 {
            tracing::info!(files = removed, rows = pruned, "retention sweep");
        }
        Ok(removed)
    }
}
