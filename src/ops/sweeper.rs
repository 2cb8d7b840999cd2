//! The retention sweeper: every `retention.sweep_interval_secs` it finishes queued blob
//! deletions, cleans up after uploads whose node died, deletes expired files (blob and row,
//! links with them), spent revocation entries and logins, long-expired links, the first
//! uses of expired view URLs, stale login throttle rows, and audit entries older than `audit.retention_days`.
//!
//! With several nodes, one sweeps at a time: each tick a node takes (or renews) the `sweeper`
//! lease in the database and sweeps only while it holds it; a dead holder's lease expires
//! after [`Sweeper::lease_for`] and another node takes over. Every item is claimed by a row
//! change only one node can make (an expired file by the `DELETE` that returns it, a
//! reservation by its removal), so even two nodes overlapping after a stalled holder's lease
//! ran out never audit a file's expiry twice.
//!
//! Invariant: each expired file's deletion is audited (`file.expire`) exactly once; a failure
//! on one file is logged and retried on the next sweep, never aborting the sweeper.

use std::time::Duration;

use crate::audit::{AuditLog, Event, Record};
use crate::blob::{BlobKey, BlobStore};
use crate::events::Kind;
use crate::ids::Timestamp;
use crate::meta::MetaStore;
use crate::meta::throttle::ThrottleRules;
use crate::meta::uploads::Abandoned;
use crate::removal;

/// Days a settled webhook delivery (delivered or given up) stays in the delivery log.
pub const DELIVERY_LOG_DAYS: u64 = 30;

/// The lease the sweeping node holds.
pub const LEASE: &str = "sweeper";

/// Files handled per batch.
const BATCH: usize = 256;
/// Expired links are kept this long so clients get 410 rather than 404.
const LINK_GRACE_SECS: u64 = 7 * 86_400;
/// How long an expired upload grant stays listed before it is forgotten: 7 days.
const GRANT_GRACE_SECS: i64 = 7 * 86_400;

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
    /// `uploads.abandoned_after_secs`.
    pub abandoned_after: Duration,
    /// The shared login throttle's rules, to prune its rows (PostgreSQL).
    pub throttle: ThrottleRules,
}

impl Sweeper {
    /// How long a lease lasts: two intervals (renewed every tick) and at least 10 s, so that a
    /// slow sweep or a late tick does not hand the work over while its holder lives.
    pub fn lease_for(&self) -> Duration {
        (self.interval * 2).max(Duration::from_secs(10))
    }

    /// Sweep every `interval` while this node holds the lease, forever (aborted at shutdown).
    pub async fn sweep_periodically(self) {
        let mut tick = tokio::time::interval(self.interval);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let node = self.meta.node().to_owned();
        loop {
            tick.tick().await;
            let now = Timestamp::now();
            let until = now.plus_secs(self.lease_for().as_secs());
            match self.meta.leases().acquire(LEASE, &node, now, until).await {
                Ok(true) => {}
                Ok(false) => continue,
                Err(e) => {
                    tracing::warn!(error = %e, "cannot take the sweeper lease; retrying next interval");
                    continue;
                }
            }
            if let Err(e) = self.sweep().await {
                tracing::warn!(error = %e, "retention sweep failed; retrying next interval");
            }
        }
    }

    /// One sweep (whether or not this node holds the lease: the caller decides). Returns the
    /// number of files removed.
    pub async fn sweep(&self) -> anyhow::Result<usize> {
        // Blob deletions a failing store left queued; retried next time if it still fails.
        if let Err(e) = removal::purge_queued(&self.meta, &self.blobs).await {
            tracing::warn!(error = %e, "cannot finish queued blob deletions yet");
        }
        match self.clean_abandoned_uploads().await {
            Ok(0) => {}
            Ok(n) => tracing::info!(uploads = n, "cleaned up after abandoned uploads"),
            Err(e) => tracing::warn!(error = %e, "cannot clean up abandoned uploads yet"),
        }
        match crate::resumable::sweep_expired(&self.meta, &self.blobs).await {
            Ok(0) => {}
            Ok(n) => tracing::info!(uploads = n, "removed expired resumable uploads"),
            Err(e) => tracing::warn!(error = %e, "cannot remove expired resumable uploads yet"),
        }
        let now = Timestamp::now();
        let mut removed = 0;
        loop {
            let batch = self.meta.files().expired(now, BATCH).await?;
            let full = batch.len() == BATCH;
            let before = removed;
            for f in batch {
                match removal::remove_file(&self.meta, &self.blobs, &f, Kind::FileExpired).await {
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
        // Expired grants stay listed (with their files) for a while, for the backend that
        // minted them.
        let grant_cutoff = Timestamp(now.0.saturating_sub(GRANT_GRACE_SECS * 1_000_000));
        pruned += meta.grants().prune_grants(grant_cutoff).await?;
        pruned += meta
            .outbox()
            .prune_settled(now.minus_secs(DELIVERY_LOG_DAYS * 86_400))
            .await?;
        if audit_days > 0 {
            let cutoff = now.0.saturating_sub(
                i64::try_from(audit_days.saturating_mul(86_400_000_000)).unwrap_or(i64::MAX),
            );
            pruned += meta.audit().prune(Timestamp(cutoff)).await?;
        }
        if let Some(t) = meta.login_throttles() {
            pruned += t.prune(now, self.throttle).await?;
        }
        if removed + pruned > 0 {
            tracing::info!(files = removed, rows = pruned, "retention sweep");
        }
        Ok(removed)
    }

    /// Uploads not touched for `abandoned_after` (their node died mid-upload): abort what they
    /// staged, delete a blob one committed without getting its row in, release the quota.
    /// Returns how many were cleaned up; the first failure stops the pass (retried next time).
    pub async fn clean_abandoned_uploads(&self) -> anyhow::Result<usize> {
        let before = Timestamp::now().minus_secs(self.abandoned_after.as_secs());
        let mut done = 0;
        loop {
            let batch = self.meta.uploads().abandoned(before, BATCH).await?;
            for upload in &batch {
                self.clean_up(upload).await?;
                done += 1;
            }
            if batch.len() < BATCH {
                return Ok(done);
            }
        }
    }

    async fn clean_up(&self, upload: &Abandoned) -> anyhow::Result<()> {
        let key = upload.blob_key.as_deref().and_then(BlobKey::parse);
        // What it staged first (harmless when already gone): while this fails the reservation
        // stays, and the next sweep tries again.
        if let (Some(key), Some(staging)) = (&key, &upload.staging_id) {
            self.blobs.abort_staged(key, staging).await?;
        }
        // Then claim it: whoever removes the reservation owns the clean-up, and from then on
        // the upload's own commit (were its node alive but stalled) writes no row. A blob it
        // committed without a row is queued for deletion in the same transaction.
        if !self
            .meta
            .uploads()
            .claim_abandoned(upload.id, Timestamp::now())
            .await?
        {
            return Ok(());
        }
        if let Some(key) = &key
            && let Err(e) = removal::purge_blob(&self.meta, &self.blobs, key.as_str()).await
        {
            tracing::warn!(error = %e, upload.id = %upload.id, "cannot delete an abandoned upload's blob yet; it stays queued");
        }
        tracing::info!(upload.id = %upload.id, owner = %upload.owner, node = %upload.node, "cleaned up an abandoned upload");
        Ok(())
    }
}
