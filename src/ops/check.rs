//! `coffer check [--deep] [--repair]`: prove the store is whole.
//!
//! Every row must have its blob with the expected length; with `--deep`, every blob is read
//! back, sealed ones authenticated segment by segment, and the plaintext's SHA-256 compared
//! with the row. Blobs without a row (orphans) and anything else inside the blob tree are
//! reported, and so is a broken audit hash chain. `--repair` removes orphans and rows whose
//! blob is gone.

use std::collections::BTreeMap;

use futures_util::StreamExt;
use sha2::{Digest, Sha256};

use std::time::{Duration, SystemTime};

use crate::blob::{BlobError, BlobKey, BlobStore, StoredBlob};
use crate::crypto::Keyring;
use crate::crypto::read::{self, ReadError};
use crate::events::{self, Kind};
use crate::ids::{FileId, Timestamp};
use crate::meta::files::StoredFile;
use crate::meta::{MetaStore, audit};
use crate::removal;

/// Rows read per page.
const PAGE: usize = 500;
/// How long a fresh orphan is given to gain its row before `--repair` removes it.
pub const REPAIR_GRACE: Duration = Duration::from_secs(5);

/// What a check found.
#[derive(Debug, Default)]
pub struct Report {
    /// Blobs with no row.
    pub orphans: Vec<StoredBlob>,
    /// Deletions that were queued but not finished (a crash, or a store that failed): the
    /// next start, the sweeper or `--repair` finishes them.
    pub deleting: Vec<String>,
    /// Rows whose blob is missing, with the blob they point at.
    pub missing: Vec<(FileId, BlobKey)>,
    /// Rows whose blob has the wrong length: `(file, expected, actual)`.
    pub size_mismatch: Vec<(FileId, u64, u64)>,
    /// Rows whose content fails its hash or authentication (`--deep`).
    pub corrupt: Vec<(FileId, String)>,
    /// Paths in the blob tree that are not blobs we write (symlinks, stray files).
    pub strays: Vec<String>,
    /// Audit chain problems.
    pub audit: Vec<String>,
    /// Rows checked.
    pub files: usize,
}

impl Report {
    /// Every problem, one line each.
    pub fn lines(&self) -> Vec<String> {
        let mut out = Vec::new();
        out.extend(
            self.orphans
                .iter()
                .map(|b| format!("orphan blob: {} (no database row)", b.key)),
        );
        out.extend(self.deleting.iter().map(|k| {
            format!("interrupted deletion: blob {k} (the next start, the sweeper or --repair finishes it)")
        }));
        out.extend(
            self.missing
                .iter()
                .map(|(id, _)| format!("missing blob: file {id} has no blob")),
        );
        out.extend(self.size_mismatch.iter().map(|(id, want, got)| {
            format!("size mismatch: file {id} blob is {got} bytes, expected {want}")
        }));
        out.extend(
            self.corrupt
                .iter()
                .map(|(id, why)| format!("corrupt: file {id}: {why}")),
        );
        out.extend(
            self.strays
                .iter()
                .map(|p| format!("stray path in storage: {p}")),
        );
        out.extend(self.audit.iter().cloned());
        out
    }

    /// Whether nothing is wrong.
    pub fn is_clean(&self) -> bool {
        self.lines().is_empty()
    }
}

/// Compare rows with blobs; with `deep` (the keys to open sealed blobs), also every content
/// with its hash. A sealed blob whose master key is not configured is reported, not passed.
pub async fn scan(
    meta: &MetaStore,
    blobs: &BlobStore,
    deep: Option<&Keyring>,
) -> anyhow::Result<Report> {
    let inventory = blobs.list().await?;
    let mut on_disk: BTreeMap<BlobKey, StoredBlob> = inventory
        .blobs
        .into_iter()
        .map(|b| (b.key.clone(), b))
        .collect();
    let mut report = Report {
        strays: inventory.strays,
        ..Report::default()
    };
    let mut after = None;
    loop {
        let rows = meta.files().scan(after, PAGE).await?;
        after = rows.last().map(|f| f.file.id);
        for f in &rows {
            report.files += 1;
            let Some(key) = BlobKey::parse(&f.blob_key) else {
                report
                    .corrupt
                    .push((f.file.id, "its blob key is malformed".into()));
                continue;
            };
            let Some(len) = on_disk.remove(&key).map(|b| b.len) else {
                report.missing.push((f.file.id, key));
                continue;
            };
            let want = f.source().stored_len();
            if len != want {
                report.size_mismatch.push((f.file.id, want, len));
                continue;
            }
            if let Some(keyring) = deep
                && let Err(why) = verify_content(blobs, keyring, f).await
            {
                report.corrupt.push((f.file.id, why));
            }
        }
        if rows.len() < PAGE {
            break;
        }
    }
    // Queued deletions are not orphans, whether or not their blob is still there.
    let queued = meta.files().queued_deletions(usize::MAX).await?;
    for key in &queued {
        if let Some(k) = BlobKey::parse(key) {
            on_disk.remove(&k);
        }
    }
    report.deleting = queued;
    // Staged chunks of unfinished resumable uploads are held by their rows, and the blobs of
    // uploads in flight by their reservations (a node may be about to commit the row, however
    // old the blob: a store's modification time can precede the row by seconds).
    for key in held_keys(meta).await? {
        if let Some(k) = BlobKey::parse(&key) {
            on_disk.remove(&k);
        }
    }
    // A listing may still show an object deleted a moment ago (Garage's does, for a short
    // while after its DeleteObject answered): an orphan is a blob that is really there.
    for blob in on_disk.into_values() {
        if !matches!(blobs.stat(&blob.key).await, Err(BlobError::NotFound)) {
            report.orphans.push(blob);
        }
    }
    Ok(report)
}

async fn verify_content(
    blobs: &BlobStore,
    keyring: &Keyring,
    f: &StoredFile,
) -> Result<(), String> {
    let mut stream = read::read(blobs, keyring, &f.source(), 0, f.file.size)
        .await
        .map_err(describe)?;
    let mut hasher = Sha256::new();
    while let Some(chunk) = stream.next().await {
        hasher.update(chunk.map_err(describe)?);
    }
    if hex::encode(hasher.finalize()) == f.file.sha256 {
        Ok(())
    } else {
        Err("its content does not match its sha256".into())
    }
}

fn describe(e: ReadError) -> String {
    match e {
        ReadError::Tampered => "its blob failed authentication (tampered or truncated)".into(),
        other => format!("cannot read it: {other}"),
    }
}

/// Add the audit chain's problems to a report; each entry is checked with the key (the
/// current secret's or an earlier one's) that signed it.
pub async fn check_audit(
    meta: &MetaStore,
    keys: &audit::ChainKeys,
    report: &mut Report,
) -> anyhow::Result<()> {
    report.audit = meta.audit().verify_chain_with(keys).await?;
    Ok(())
}

/// A warning when the newest audit entry was signed with a key none of `keys` is (the
/// service secret changed without the old one in `COFFER_SECRET_OLD_KEYS`): the chain goes on
/// under the current key, but `coffer check` cannot verify what came before.
pub async fn unverifiable_tail(
    meta: &MetaStore,
    keys: &audit::ChainKeys,
) -> anyhow::Result<Option<String>> {
    Ok(match meta.audit().tail_key(keys).await? {
        Some((id, false)) => Some(format!(
            "the stored audit chain was signed with another key (fingerprint {id}) than \
             COFFER_SECRET_KEY: new entries continue the chain under the current key, but \
             `coffer check` can verify the earlier ones only with that secret in \
             COFFER_SECRET_OLD_KEYS"
        )),
        _ => None,
    })
}

/// Blob keys that no file row names but that are not orphans: staged chunks of unfinished
/// resumable uploads, and the blobs of uploads in flight.
async fn held_keys(meta: &MetaStore) -> anyhow::Result<Vec<String>> {
    let mut keys = meta.resumables().staged_keys().await?;
    keys.extend(meta.uploads().reserved_keys().await?);
    Ok(keys)
}

/// Remove the orphans of a report. A blob renamed into place moments ago may belong to an
/// upload about to commit its row (a server may be running beside us): orphans younger than
/// `grace` are given that long, then every orphan is re-checked against the database just
/// before it goes. Returns how many were removed.
pub async fn remove_orphans(
    meta: &MetaStore,
    blobs: &BlobStore,
    report: &Report,
    grace: Duration,
) -> anyhow::Result<usize> {
    let youngest = report
        .orphans
        .iter()
        .filter_map(|b| SystemTime::now().duration_since(b.changed_at).ok())
        .min();
    if let Some(age) = youngest.filter(|age| *age < grace) {
        tokio::time::sleep(grace - age).await;
    }
    // Chunks of unfinished tus uploads recorded meanwhile, and uploads started meanwhile, are
    // held too.
    let staged: std::collections::HashSet<String> = held_keys(meta).await?.into_iter().collect();
    let mut n = 0;
    for orphan in &report.orphans {
        let k = orphan.key.as_str().to_owned();
        if staged.contains(&k) || meta.files().blob_key_exists(k).await? {
            continue;
        }
        // A blob being written in place (a tus upload's first PATCH) is not an orphan yet.
        match blobs.delete_unless_held(&orphan.key).await {
            Ok(true) => n += 1,
            Ok(false) | Err(BlobError::NotFound) => {}
            Err(e) => return Err(e.into()),
        }
    }
    Ok(n)
}

/// `--repair`: remove orphans, remove rows whose blob is gone (with their links), each
/// re-checked just before, and finish interrupted deletions (as start-up does). Size
/// mismatches and corrupt contents are left for an operator: deleting them would destroy the
/// only evidence.
pub async fn repair(meta: &MetaStore, blobs: &BlobStore, report: &Report) -> anyhow::Result<()> {
    remove_orphans(meta, blobs, report, REPAIR_GRACE).await?;
    for (id, key) in &report.missing {
        // Still gone? (The inventory was taken before the rows were read.)
        match blobs.stat(key).await {
            Err(BlobError::NotFound) => {}
            _ => continue,
        }
        let (id, k) = (*id, key.as_str().to_owned());
        let now = Timestamp::now();
        // The owner hears of it like any deletion (an expired row is past telling).
        let deleted = meta
            .files()
            .get_visible(id, None, now)
            .await?
            .map(|f| vec![events::file_event(Kind::FileDeleted, f.owner_id, &f.file)])
            .unwrap_or_default();
        meta.files()
            .delete_if_blob_recording(id, k, now, deleted)
            .await?;
    }
    // Last: removing a row above queued its (already missing) blob.
    removal::purge_queued(meta, blobs).await?;
    Ok(())
}
