//! `coffer migrate --to CONFIG`: copy the whole store (rows and blobs) into the backends
//! another configuration names: SQLite and the local filesystem into PostgreSQL and S3, or
//! any other pair.
//!
//! 1. Rows the target holds and the source no longer does (deleted meanwhile) are deleted
//!    from the target, children first, with the blobs of deleted files.
//! 2. Tables are copied parents first, page by page, each row inserted or replaced by key,
//!    so a run that was interrupted continues where it stopped and never duplicates.
//! 3. A file's row is copied only once its blob is in the target: a blob already there with
//!    the right length was verified when it was copied and is skipped; any other is streamed
//!    from the source into the target while its plaintext (authenticated and decrypted, for
//!    sealed blobs: `crypto::read::open_whole`) is hashed, and committed only when the
//!    length and the SHA-256 match the row. Encrypted blobs are copied as they are.
//! 4. Users' byte counts are recounted from the copied files.
//!
//! Invariant: the target never holds a file row without its verified blob, and a blob that
//! fails verification (a corrupt source) is reported and left out, never copied. Memory is
//! bounded: a page of rows and, per blob in flight, a few chunks.

use std::time::{Duration, Instant};

use bytes::Bytes;
use futures_util::{StreamExt as _, stream};
use sha2::{Digest as _, Sha256};

use crate::blob::{BlobError, BlobKey, BlobStore, ByteStream};
use crate::crypto::read::{self, ReadError, Source};
use crate::crypto::{Keyring, Sealing};
use crate::ids::FileId;
use crate::meta::MetaStore;
use crate::meta::transfer::{Cell, FILES, Row, TABLES, Table, file_columns as col};

/// Rows per page.
const PAGE: usize = 500;
/// Blobs copied at once: enough to hide an object store's latency, few enough to keep
/// memory small.
const PARALLEL_BLOBS: usize = 4;
/// Chunks of one blob between the copy and the hash (a bound on memory per blob).
const TEE_DEPTH: usize = 4;
/// How often progress is printed at most.
const PROGRESS_EVERY: Duration = Duration::from_secs(2);

/// One end of a migration.
#[derive(Clone)]
pub struct Stores {
    /// Its metadata.
    pub meta: MetaStore,
    /// Its blobs.
    pub blobs: BlobStore,
}

/// What a migration did.
#[derive(Debug, Default)]
pub struct Summary {
    /// Rows written per table.
    pub rows: Vec<(&'static str, usize)>,
    /// Rows deleted from the target because the source no longer has them.
    pub removed: usize,
    /// Rows left out because their parent appeared after its table was copied (the source
    /// is serving): the next run copies them.
    pub dangling: usize,
    /// Files whose blob was copied (and verified) in this run.
    pub blobs_copied: usize,
    /// Files whose blob was already in the target (an earlier run).
    pub blobs_present: usize,
    /// Bytes of blobs copied in this run.
    pub bytes_copied: u64,
    /// Files deleted in the source while this run read them (left out).
    pub vanished: usize,
    /// Files not copied, with why (a blob that fails verification): each one line.
    pub problems: Vec<String>,
}

/// Copy `from` into `to`. `keys` opens sealed blobs for verification; `progress` receives
/// one line at a time.
pub async fn run(
    from: &Stores,
    to: &Stores,
    keys: &Keyring,
    progress: &mut (dyn FnMut(String) + Send),
) -> anyhow::Result<Summary> {
    let mut summary = Summary::default();
    for table in TABLES.iter().rev() {
        let removed = remove_absent(from, to, table).await?;
        if removed > 0 {
            progress(format!(
                "{}: removed {removed} rows the source no longer has",
                table.name
            ));
        }
        summary.removed += removed;
    }
    for table in TABLES {
        let written = if table.name == FILES.name {
            copy_files(from, to, keys, &mut summary, progress).await?
        } else {
            copy_table(from, to, table, &mut summary).await?
        };
        progress(format!("{}: {written} rows", table.name));
        summary.rows.push((table.name, written));
    }
    to.meta.transfer().recount_usage().await?;
    Ok(summary)
}

/// Whether the store holds no account and no file (a fit first target).
pub async fn is_empty(meta: &MetaStore) -> anyhow::Result<bool> {
    for table in TABLES
        .iter()
        .filter(|t| t.name == "users" || t.name == FILES.name)
    {
        if !meta
            .transfer()
            .export_rows(table, None, 1)
            .await?
            .is_empty()
        {
            return Ok(false);
        }
    }
    Ok(true)
}

fn key_of(row: &Row) -> Cell {
    row.first().cloned().unwrap_or(Cell::Null)
}

async fn copy_table(
    from: &Stores,
    to: &Stores,
    table: &'static Table,
    summary: &mut Summary,
) -> anyhow::Result<usize> {
    let mut after = None;
    let mut written = 0;
    loop {
        let rows = from.meta.transfer().export_rows(table, after, PAGE).await?;
        let full = rows.len() == PAGE;
        after = rows.last().map(key_of);
        let done = to.meta.transfer().import_rows(table, rows).await?;
        written += done.written;
        summary.dangling += done.dangling;
        if !full {
            return Ok(written);
        }
    }
}

/// Delete from the target the rows of `table` the source does not have; a file's blob goes
/// with its row.
async fn remove_absent(from: &Stores, to: &Stores, table: &'static Table) -> anyhow::Result<usize> {
    let mut after = None;
    let mut removed = 0;
    loop {
        let rows = to.meta.transfer().export_rows(table, after, PAGE).await?;
        let full = rows.len() == PAGE;
        after = rows.last().map(key_of);
        let keys: Vec<Cell> = rows.iter().map(key_of).collect();
        let kept = from.meta.transfer().present_keys(table, keys).await?;
        let gone: Vec<&Row> = rows.iter().filter(|r| !kept.contains(&key_of(r))).collect();
        if !gone.is_empty() {
            let keys = gone.iter().map(|r| key_of(r)).collect();
            to.meta.transfer().remove_rows(table, keys).await?;
            removed += gone.len();
            if table.name == FILES.name {
                for row in gone {
                    if let Some(Cell::Text(k)) = row.get(col::BLOB_KEY)
                        && let Some(key) = BlobKey::parse(k)
                    {
                        match to.blobs.delete(&key).await {
                            Ok(()) | Err(BlobError::NotFound) => {}
                            Err(e) => return Err(e.into()),
                        }
                    }
                }
            }
        }
        if !full {
            return Ok(removed);
        }
    }
}

/// A file row's facts, as the copy needs them.
struct FileFacts {
    id: FileId,
    size: u64,
    sha256: String,
    blob_key: String,
    sealing: Option<Sealing>,
}

impl FileFacts {
    fn of(row: &Row) -> Option<Self> {
        let text = |i: usize| match row.get(i) {
            Some(Cell::Text(s)) => Some(s.clone()),
            _ => None,
        };
        let sealing = match (row.get(col::ENC_KEY_ID), row.get(col::ENC_WRAPPED_KEY)) {
            (Some(Cell::Text(key_id)), Some(Cell::Bytes(wrapped))) => Some(Sealing {
                key_id: key_id.clone(),
                wrapped_key: wrapped.clone(),
            }),
            _ => None,
        };
        Some(Self {
            id: FileId::parse(&text(col::ID)?)?,
            size: match row.get(col::SIZE) {
                Some(Cell::Int(n)) => u64::try_from(*n).ok()?,
                _ => return None,
            },
            sha256: text(col::SHA256)?,
            blob_key: text(col::BLOB_KEY)?,
            sealing,
        })
    }

    fn source(&self) -> Source<'_> {
        Source {
            blob_key: &self.blob_key,
            file: self.id,
            size: self.size,
            sealing: self.sealing.as_ref(),
        }
    }
}

/// How one blob's copy ended.
enum Outcome {
    /// Streamed, verified and committed: this many bytes.
    Copied(u64),
    /// Already in the target with its length.
    Present,
    /// Gone from the source (the file was deleted meanwhile).
    Vanished,
    /// Not copied: the source blob fails verification.
    Refused(String),
}

async fn copy_files(
    from: &Stores,
    to: &Stores,
    keys: &Keyring,
    summary: &mut Summary,
    progress: &mut (dyn FnMut(String) + Send),
) -> anyhow::Result<usize> {
    let mut after = None;
    let mut written = 0;
    let mut last_note = Instant::now();
    loop {
        let rows = from
            .meta
            .transfer()
            .export_rows(&FILES, after, PAGE)
            .await?;
        let full = rows.len() == PAGE;
        after = rows.last().map(key_of);
        let outcomes: Vec<anyhow::Result<Outcome>> = stream::iter(rows.iter())
            .map(|row| async move {
                match FileFacts::of(row) {
                    Some(f) => copy_blob(&from.blobs, &to.blobs, keys, &f).await,
                    None => Ok(Outcome::Refused("its row is malformed".into())),
                }
            })
            .buffered(PARALLEL_BLOBS)
            .collect()
            .await;
        let mut ready = Vec::with_capacity(rows.len());
        for (row, outcome) in rows.into_iter().zip(outcomes) {
            match outcome? {
                Outcome::Copied(n) => {
                    summary.blobs_copied += 1;
                    summary.bytes_copied += n;
                    ready.push(row);
                }
                Outcome::Present => {
                    summary.blobs_present += 1;
                    ready.push(row);
                }
                Outcome::Vanished => summary.vanished += 1,
                Outcome::Refused(why) => {
                    let id = match row.first() {
                        Some(Cell::Text(id)) => id.clone(),
                        _ => "?".into(),
                    };
                    summary
                        .problems
                        .push(format!("not copied: file {id}: {why}"));
                }
            }
        }
        let done = to.meta.transfer().import_rows(&FILES, ready).await?;
        written += done.written;
        summary.dangling += done.dangling;
        if last_note.elapsed() >= PROGRESS_EVERY || !full {
            last_note = Instant::now();
            progress(format!(
                "files: {} blobs copied ({}), {} already in the target, {} problems",
                summary.blobs_copied,
                human_bytes(summary.bytes_copied),
                summary.blobs_present,
                summary.problems.len()
            ));
        }
        if !full {
            return Ok(written);
        }
    }
}

/// Copy one file's blob, verifying its length and plaintext SHA-256 before it is committed.
async fn copy_blob(
    from: &BlobStore,
    to: &BlobStore,
    keys: &Keyring,
    f: &FileFacts,
) -> anyhow::Result<Outcome> {
    let src = f.source();
    let Some(key) = BlobKey::parse(&f.blob_key) else {
        return Ok(Outcome::Refused("its blob key is malformed".into()));
    };
    let want = src.stored_len();
    match to.stat(&key).await {
        Ok(n) if n == want => return Ok(Outcome::Present),
        // A blob of another length under this key cannot be ours: replace it.
        Ok(_) => to.delete(&key).await?,
        Err(BlobError::NotFound) => {}
        Err(e) => return Err(e.into()),
    }
    let mut stored = match from.get_range(&key, 0, want).await {
        Ok(s) => s,
        Err(BlobError::NotFound) => return Ok(Outcome::Vanished),
        Err(BlobError::Short) => return Ok(Outcome::Refused(short(want))),
        Err(e) => return Err(e.into()),
    };
    // The bytes go to the target writer and, through a short channel, to the plaintext view
    // that authenticates and hashes them: both sides see the same chunks, once.
    let (tx, rx) = tokio::sync::mpsc::channel::<Result<Bytes, BlobError>>(TEE_DEPTH);
    let tee: ByteStream = Box::pin(stream::unfold(rx, |mut rx| async move {
        rx.recv().await.map(|item| (item, rx))
    }));
    let mut plain = match read::open_whole(keys, &src, tee) {
        Ok(p) => p,
        Err(e) => return Ok(Outcome::Refused(describe(e))),
    };
    let mut writer = to.put(&key).await?;
    let copy = async move {
        let mut n = 0u64;
        while let Some(chunk) = stored.next().await {
            let chunk = chunk?;
            n += chunk.len() as u64;
            writer.write(&chunk).await?;
            if tx.send(Ok(chunk)).await.is_err() {
                // The hash side stopped: it failed, and says why.
                break;
            }
        }
        Ok::<_, BlobError>((n, writer))
    };
    let hash = async move {
        let mut h = Sha256::new();
        while let Some(chunk) = plain.next().await {
            h.update(chunk?);
        }
        Ok::<_, ReadError>(hex::encode(h.finalize()))
    };
    let (copied, hashed) = tokio::join!(copy, hash);
    let (n, writer) = match copied {
        Ok(v) => v,
        Err(BlobError::Short) => return Ok(Outcome::Refused(short(want))),
        Err(BlobError::NotFound) => return Ok(Outcome::Vanished),
        Err(e) => return Err(e.into()),
    };
    let digest = match hashed {
        Ok(d) => d,
        Err(e @ (ReadError::Tampered | ReadError::Key(_))) => {
            return Ok(Outcome::Refused(describe(e)));
        }
        Err(e) => return Err(e.into()),
    };
    if n != want {
        return Ok(Outcome::Refused(format!(
            "its blob is {n} bytes, its row says {want}"
        )));
    }
    if digest != f.sha256 {
        return Ok(Outcome::Refused(
            "its content does not match its sha256".into(),
        ));
    }
    writer.commit().await?;
    Ok(Outcome::Copied(n))
}

fn short(want: u64) -> String {
    format!("its blob is shorter than the {want} bytes its row says")
}

fn describe(e: ReadError) -> String {
    match e {
        ReadError::Tampered => "its blob failed authentication (tampered or truncated)".into(),
        ReadError::Key(k) => format!("cannot open it: {k}"),
        ReadError::Blob(b) => format!("cannot read it: {b}"),
    }
}

/// `1.5 MiB`.
pub fn human_bytes(n: u64) -> String {
    const UNITS: [&str; 5] = ["B", "KiB", "MiB", "GiB", "TiB"];
    #[expect(clippy::cast_precision_loss, reason = "a progress figure")]
    let mut v = n as f64;
    let mut unit = 0;
    while v >= 1024.0 && unit + 1 < UNITS.len() {
        v /= 1024.0;
        unit += 1;
    }
    if unit == 0 {
        format!("{n} B")
    } else {
        format!("{v:.1} {}", UNITS.get(unit).unwrap_or(&"B"))
    }
}
