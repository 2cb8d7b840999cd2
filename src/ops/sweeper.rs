//! The retention sweeper: every `retention.sweep_interval_secs` it deletes expired files (blob
//! and row, links with them), spent revocation entries and logins, long-expired links, and
//! audit entries older than `audit.retention_days`.
//!
//! Invariant: each expired file's deletion is audited (`file.expire`); a failure on one file
//! is logged and retried on the next sweep, never aborting the sweeper.

use std::time::Duration;

use crate::audit::{Event, Record};
use crate::ids::Timestamp;
use crate::removal;
use crate::state::AppState;

/// Files handled per batch.
const BATCH: usize = 256;
/// Expired links are kept this long so clients get 410 rather than 404.
const LINK_GRACE_SECS: u64 = 7 * 86_400;

/// Run forever (aborted at shutdown).
pub async fn sweeper(state: AppState) {
    let mut tick = tokio::time::interval(Duration::from_secs(
        state.config.retention.sweep_interval_secs,
    ));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        if let Err(e) = sweep(&state).await {
            tracing::warn!(error = %e, "retention sweep failed; retrying next interval");
        }
    }
}

/// One sweep. Returns the number of files removed.
pub async fn sweep(state: &AppState) -> anyhow::Result<usize> {
    // Blob deletions a failing store left queued; retried next time if it still fails.
    if let Err(e) = removal::purge_queued(&state.meta, &state.blobs).await {
        tracing::warn!(error = %e, "cannot finish queued blob deletions yet");
    }
    let now = Timestamp::now();
    let mut removed = 0;
    loop {
        let batch = state.meta.files().expired(now, BATCH).await?;
        let full = batch.len() == BATCH;
        let before = removed;
        for f in batch {
            match removal::remove_file(&state.meta, &state.blobs, &f).await {
                Ok(true) => {
                    removed += 1;
                    // A system action: no actor; the owner is in the detail.
                    state.audit.record(Record::new(Event::FileExpire).subject(f.file.id).detail(
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
    let audit_days = state.config.audit.retention_days;
    let meta = &state.meta;
    let mut pruned = meta.sessions().prune(now).await?;
    pruned += meta.links().prune_expired(link_cutoff).await?;
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
