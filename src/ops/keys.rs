//! `coffer rotate-key` (data keys and webhook secrets) and `coffer encrypt-existing`: key management that is safe while the
//! server runs.
//!
//! Invariant: a row is only ever switched by a conditional update that names what was read,
//! so a concurrent change (a delete, another rotation) is never overwritten; a new sealed blob
//! is durable before its row points at it, and the old blob is removed only after.

use futures_util::StreamExt;
use sha2::{Digest, Sha256};

use crate::blob::{BlobKey, BlobStore};
use crate::crypto::read;
use crate::crypto::segment::Sealer;
use crate::crypto::{DataKey, Keyring, Sealing};
use crate::ids::{FileId, Timestamp};
use crate::meta::MetaStore;
use crate::meta::events::SealedSecret;
use crate::meta::files::StoredFile;
use crate::removal;

const PAGE: usize = 500;

async fn each_file(
    meta: &MetaStore,
    mut f: impl AsyncFnMut(StoredFile) -> anyhow::Result<()>,
) -> anyhow::Result<()> {
    let mut after: Option<FileId> = None;
    loop {
        let rows = meta.files().scan(after, PAGE).await?;
        after = rows.last().map(|r| r.file.id);
        let done = rows.len() < PAGE;
        for row in rows {
            f(row).await?;
        }
        if done {
            return Ok(());
        }
    }
}

/// Re-wrap every data key under the current master key. Returns how many were re-wrapped.
pub async fn rotate(meta: &MetaStore, keyring: &Keyring) -> anyhow::Result<usize> {
    let current = keyring
        .current_id()
        .ok_or_else(|| anyhow::anyhow!("COFFER_ENCRYPTION_KEY is not set"))?
        .to_owned();
    let mut n = 0;
    each_file(meta, async |row| {
        let Some(old) = row.sealing.clone() else {
            return Ok(());
        };
        if old.key_id == current {
            return Ok(());
        }
        let new = keyring
            .rewrap(row.file.id, &old)
            .map_err(|e| anyhow::anyhow!("file {}: {e}", row.file.id))?
            .ok_or_else(|| anyhow::anyhow!("file {}: cannot re-wrap", row.file.id))?;
        let id = row.file.id;
        if meta.files().rewrap(id, old, new).await? {
            n += 1;
        }
        Ok(())
    })
    .await?;
    Ok(n)
}

/// Re-wrap the data key of every staged chunk of an unfinished resumable upload sealed under an
/// older key, so the upload can still be finished once the old key is removed. Returns how many
/// were re-wrapped.
pub async fn rotate_staged_chunks(meta: &MetaStore, keyring: &Keyring) -> anyhow::Result<usize> {
    let current = keyring
        .current_id()
        .ok_or_else(|| anyhow::anyhow!("COFFER_ENCRYPTION_KEY is not set"))?
        .to_owned();
    let mut n = 0;
    for chunk in meta.resumables().sealed_chunks(current).await? {
        let bound =
            crate::resumable::key_binding(chunk.upload, &chunk.blob_key).ok_or_else(|| {
                anyhow::anyhow!("upload {}: a chunk with a foreign key", chunk.upload)
            })?;
        let new = keyring
            .rewrap(bound, &chunk.sealing)
            .map_err(|e| anyhow::anyhow!("upload {}: {e}", chunk.upload))?
            .ok_or_else(|| anyhow::anyhow!("upload {}: cannot re-wrap", chunk.upload))?;
        // A chunk gone meanwhile (its upload finished or ended) is simply not counted.
        if meta.resumables().reseal_chunk(chunk, new).await? {
            n += 1;
        }
    }
    Ok(n)
}

/// What re-sealing webhook secrets did.
#[derive(Debug, Default)]
pub struct Resealed {
    /// Secrets re-wrapped under the current key (or sealed, when stored in the clear).
    pub done: usize,
    /// Secrets left as they were, one line each: sealed under a key not configured here, or
    /// not a secret at all. Webhooks whose secret no configured key opens wait to deliver.
    pub failed: Vec<String>,
}

/// Re-wrap every webhook signing secret sealed under an older key, and seal any stored as it
/// is (they are wrapped like a data key, bound to the webhook's id), so webhooks still sign
/// once the old key is removed. One that cannot be re-wrapped is reported and skipped.
pub async fn rotate_webhook_secrets(
    meta: &MetaStore,
    keyring: &Keyring,
) -> anyhow::Result<Resealed> {
    reseal_webhook_secrets(meta, keyring, false).await
}

/// Seal the webhook signing secrets stored as they are (by a version that sealed them only
/// with encryption at rest on), at start-up.
pub async fn seal_plain_webhook_secrets(
    meta: &MetaStore,
    keyring: &Keyring,
) -> anyhow::Result<Resealed> {
    reseal_webhook_secrets(meta, keyring, true).await
}

/// The webhook secrets sealed under a key `keyring` does not have: their webhooks cannot sign
/// here (each such line names the webhook and the key id).
pub async fn unopenable_webhook_secrets(
    meta: &MetaStore,
    keyring: &Keyring,
) -> anyhow::Result<Vec<String>> {
    Ok(meta
        .outbox()
        .stored_secrets(false)
        .await?
        .into_iter()
        .filter_map(|s| {
            let key = s.key_id?;
            (!keyring.knows(&key)).then(|| format!("webhook {} (key {key})", s.id))
        })
        .collect())
}

async fn reseal_webhook_secrets(
    meta: &MetaStore,
    keyring: &Keyring,
    only_plain: bool,
) -> anyhow::Result<Resealed> {
    let current = keyring
        .current_id()
        .ok_or_else(|| anyhow::anyhow!("COFFER_ENCRYPTION_KEY is not set"))?
        .to_owned();
    let mut out = Resealed::default();
    for old in meta.outbox().stored_secrets(only_plain).await? {
        let id = FileId(old.id.0);
        let new = match &old.key_id {
            Some(key_id) if *key_id == current => continue,
            Some(key_id) => {
                let sealing = Sealing {
                    key_id: key_id.clone(),
                    wrapped_key: old.secret.clone(),
                };
                keyring.rewrap(id, &sealing).map_err(|e| e.to_string())
            }
            None => <[u8; 32]>::try_from(old.secret.as_slice())
                .map_err(|_| "the stored secret is not 32 bytes".to_owned())
                .map(|plain| keyring.wrap(id, &DataKey::from_bytes(plain))),
        };
        let new = match new {
            Ok(Some(new)) => new,
            Ok(None) => {
                out.failed
                    .push(format!("webhook {}: cannot re-wrap", old.id));
                continue;
            }
            Err(why) => {
                out.failed.push(format!("webhook {}: {why}", old.id));
                continue;
            }
        };
        let new = SealedSecret {
            id: old.id,
            secret: new.wrapped_key,
            key_id: Some(new.key_id),
        };
        // A webhook deleted meanwhile is simply not counted.
        if meta.outbox().reseal_secret(old, new).await? {
            out.done += 1;
        }
    }
    Ok(out)
}

/// Seal every plaintext blob under the current key. Returns `(converted, skipped)`; a file is
/// skipped when its content does not match its hash (left for `coffer check` to report).
pub async fn encrypt_existing(
    meta: &MetaStore,
    blobs: &BlobStore,
    keyring: &Keyring,
) -> anyhow::Result<(usize, usize)> {
    if !keyring.enabled() {
        anyhow::bail!("COFFER_ENCRYPTION_KEY is not set");
    }
    let (mut converted, mut skipped) = (0, 0);
    each_file(meta, async |row| {
        if row.sealing.is_some() {
            return Ok(());
        }
        match seal_one(meta, blobs, keyring, &row).await? {
            true => converted += 1,
            false => skipped += 1,
        }
        Ok(())
    })
    .await?;
    Ok((converted, skipped))
}

async fn seal_one(
    meta: &MetaStore,
    blobs: &BlobStore,
    keyring: &Keyring,
    row: &StoredFile,
) -> anyhow::Result<bool> {
    let id = row.file.id;
    let data_key = DataKey::generate();
    let sealing = keyring
        .wrap(id, &data_key)
        .ok_or_else(|| anyhow::anyhow!("cannot wrap a data key"))?;
    let mut sealer = Sealer::new(&data_key, id)?;
    let new_key = BlobKey::for_file(id, true);
    // A sealed blob an earlier run committed before it could switch the row (it crashed)
    // names nothing: it goes, so this run's blob can take its name.
    if !meta
        .files()
        .blob_key_exists(new_key.as_str().to_owned())
        .await?
    {
        match blobs.delete(&new_key).await {
            Ok(()) | Err(crate::blob::BlobError::NotFound) => {}
            Err(e) => return Err(e.into()),
        }
    }
    let mut writer = blobs.put(&new_key).await?;
    let mut hasher = Sha256::new();
    let mut plain = read::read(blobs, keyring, &row.source(), 0, row.file.size).await?;
    while let Some(chunk) = plain.next().await {
        let chunk = chunk?;
        hasher.update(&chunk);
        writer.write(&sealer.update(&chunk)?).await?;
    }
    if hex::encode(hasher.finalize()) != row.file.sha256 {
        tracing::warn!(file.id = %id, "content does not match its hash; left unencrypted");
        return Ok(false);
    }
    writer.write(&sealer.finish()?).await?;
    writer.commit().await?;
    let switched = meta
        .files()
        .seal_blob(
            id,
            row.blob_key.clone(),
            new_key.as_str().to_owned(),
            sealing,
            Timestamp::now(),
        )
        .await?;
    // Whichever blob is no longer referenced goes: the old one (queued with the switch), or
    // ours if the row moved on meanwhile (never referenced: a crash here leaves an orphan).
    if switched {
        removal::purge_blob(meta, blobs, &row.blob_key).await?;
    } else {
        match blobs.delete(&new_key).await {
            Ok(()) | Err(crate::blob::BlobError::NotFound) => {}
            Err(e) => return Err(e.into()),
        }
    }
    Ok(switched)
}
