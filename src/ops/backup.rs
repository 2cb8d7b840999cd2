//! `coffer backup DEST`: a consistent online copy of the store, safe while the server runs.
//!
//! 1. The database is copied with SQLite's online backup API in a single step, so the copy
//!    is one consistent snapshot (WAL readers never block the server's writer).
//! 2. Every blob the snapshot references is hard-linked into `DEST/blobs` (blobs are
//!    immutable, so a link is a copy), or copied when DEST is on another filesystem.
//! 3. `DEST/manifest.jsonl` lists each file's blob, sizes and SHA-256.
//!
//! With the blobs in an object store, step 2 streams each blob into `DEST/blobs`
//! ([`run_from_store`]).
//!
//! With the metadata in PostgreSQL, only steps 2 and 3 run, over the rows as they are read
//! (page by page); the database itself is backed up with `pg_dump`, which takes a consistent
//! snapshot of it while the nodes keep writing.
//!
//! Invariant: DEST is itself a valid storage root that passes `coffer check` (SQLite): a file
//! deleted (or re-encrypted under a new blob) between the snapshot and the blob copy is
//! dropped from the copy's database too; with PostgreSQL it is left out of the manifest. DEST is never inside the storage root nor contains it, symlinks
//! resolved (a copy under `tmp/` would be wiped at the next start, one under `blobs/` would
//! fail `coffer check`). With `--no-blobs` only the database and manifest are
//! written; restoring then needs the blobs from elsewhere.

use std::io::Write as _;
use std::path::{Component, Path, PathBuf};

use crate::blob::fs::LocalFs;
use crate::blob::{BlobError, BlobKey, BlobStore};
use crate::blocking;
use crate::ids::{FileId, Timestamp};
use crate::meta::MetaStore;
use crate::meta::files::StoredFile;
use crate::meta::sqlite::snapshot::Snapshot;

/// What a backup did.
#[derive(Debug, Default)]
pub struct Summary {
    /// Files in the snapshot.
    pub files: usize,
    /// Blobs linked or copied.
    pub blobs: usize,
    /// Files deleted while the backup ran (dropped from the copy).
    pub vanished: usize,
}

/// Why a backup did not happen.
#[derive(Debug, thiserror::Error)]
pub enum BackupError {
    /// DEST is not a place a backup may go (an operator error).
    #[error(transparent)]
    Destination(#[from] DestError),
    /// Reading the store or writing the copy failed.
    #[error(transparent)]
    Failed(#[from] anyhow::Error),
}

/// A refused backup destination.
#[derive(Debug, thiserror::Error)]
pub enum DestError {
    /// DEST is the storage root or lies inside it.
    #[error(
        "backup destination {} (resolved: {}) is inside the storage root {}; \
         back up to a folder outside it",
        dest.display(), resolved.display(), root.display()
    )]
    InsideRoot {
        /// As given.
        dest: PathBuf,
        /// With symlinks resolved.
        resolved: PathBuf,
        /// The canonical storage root.
        root: PathBuf,
    },
    /// The storage root lies inside DEST.
    #[error(
        "backup destination {} (resolved: {}) contains the storage root {}; \
         back up to a folder outside it",
        dest.display(), resolved.display(), root.display()
    )]
    ContainsRoot {
        /// As given.
        dest: PathBuf,
        /// With symlinks resolved.
        resolved: PathBuf,
        /// The canonical storage root.
        root: PathBuf,
    },
    /// Where DEST leads cannot be told (a dangling symlink, an unreadable folder).
    #[error("backup destination {}: cannot resolve it: {source}", dest.display())]
    Unresolvable {
        /// As given.
        dest: PathBuf,
        /// Why.
        source: std::io::Error,
    },
}

/// Back up the store at `root` (canonical) into `dest`.
pub async fn create(root: &Path, dest: &Path, with_blobs: bool) -> Result<Summary, BackupError> {
    let (root, dest) = (root.to_path_buf(), dest.to_path_buf());
    blocking::run(move || {
        let target = destination(&root, &dest)?;
        Ok(backup(&root, &target, with_blobs)?)
    })
    .await
    .map_err(|e| BackupError::Failed(e.into()))?
}

/// Back up the blobs and manifest of a store whose metadata is in PostgreSQL (the database
/// itself is for `pg_dump`). `root` is the canonical storage root.
pub async fn run_without_database(
    meta: &MetaStore,
    root: &Path,
    dest: &Path,
    with_blobs: bool,
) -> Result<Summary, BackupError> {
    let (root, dest) = (root.to_path_buf(), dest.to_path_buf());
    let (r, d) = (root.clone(), dest.clone());
    let target = blocking::run(move || destination(&r, &d))
        .await
        .map_err(|e| BackupError::Failed(e.into()))??;
    let rows = all_rows(meta).await?;
    blocking::run(move || Ok(backup_without_database(&root, &target, &rows, with_blobs)?))
        .await
        .map_err(|e| BackupError::Failed(e.into()))?
}

/// Every file row, read page by page.
async fn all_rows(meta: &MetaStore) -> Result<Vec<StoredFile>, BackupError> {
    const PAGE: usize = 1000;
    let mut rows = Vec::new();
    let mut after = None;
    loop {
        let page = meta
            .files()
            .scan(after, PAGE)
            .await
            .map_err(|e| BackupError::Failed(e.into()))?;
        after = page.last().map(|f| f.file.id);
        let done = page.len() < PAGE;
        rows.extend(page);
        if done {
            return Ok(rows);
        }
    }
}

/// Back up a store whose blobs are in an object store (or any [`BlobStore`]): each blob is
/// streamed into `DEST/blobs` (the layout of a local storage root, checked for its length),
/// then the manifest is written; the database (PostgreSQL: `pg_dump`; SQLite beside an
/// object store: its file is copied with the online backup API first) as for the others.
pub async fn run_from_store(
    meta: &MetaStore,
    blobs: &BlobStore,
    root: &Path,
    dest: &Path,
    with_blobs: bool,
    sqlite: bool,
) -> Result<Summary, BackupError> {
    let fail = |e: anyhow::Error| BackupError::Failed(e);
    let (r, d) = (root.to_path_buf(), dest.to_path_buf());
    let target = blocking::run(move || destination(&r, &d))
        .await
        .map_err(|e| fail(e.into()))??;
    let t = target.clone();
    let local = blocking::run(move || -> anyhow::Result<LocalFs> {
        create_dest(&t)?;
        for name in ["manifest.jsonl", "coffer.db"] {
            if t.join(name).exists() {
                anyhow::bail!(
                    "{} already exists; back up into an empty folder",
                    t.join(name).display()
                );
            }
        }
        Ok(LocalFs::open(&t)?)
    })
    .await
    .map_err(|e| fail(e.into()))?
    .map_err(fail)?;
    let local = BlobStore::new(std::sync::Arc::new(local));
    let (database, rows, snapshot) = if sqlite {
        let (from, to) = (root.join("coffer.db"), target.join("coffer.db"));
        let (snapshot, rows) = blocking::run(move || -> anyhow::Result<_> {
            let snapshot = Snapshot::take(&from, &to)?;
            let rows = snapshot.files()?;
            Ok((snapshot, rows))
        })
        .await
        .map_err(|e| fail(e.into()))?
        .map_err(fail)?;
        (Some("coffer.db"), rows, Some(snapshot))
    } else {
        (None, all_rows(meta).await?, None)
    };
    let mut summary = Summary {
        files: rows.len(),
        ..Summary::default()
    };
    let mut vanished = Vec::new();
    if with_blobs {
        for f in &rows {
            let Some(key) = BlobKey::parse(&f.blob_key) else {
                continue;
            };
            match stream_blob(blobs, &local, &key, f.source().stored_len()).await {
                Ok(()) => summary.blobs += 1,
                Err(BlobError::NotFound) => vanished.push(f.file.id),
                Err(e) => return Err(fail(e.into())),
            }
        }
    }
    summary.vanished = vanished.len();
    blocking::run(move || -> anyhow::Result<()> {
        write_manifest(&target, &rows, &vanished, database)?;
        if let Some(snapshot) = snapshot {
            snapshot.forget(&vanished)?;
        }
        // The copy's tmp/ is empty: the local store made it; a restore recreates it.
        let _ = std::fs::remove_dir(target.join("tmp"));
        std::fs::File::open(&target)?.sync_all()?;
        Ok(())
    })
    .await
    .map_err(|e| fail(e.into()))?
    .map_err(fail)?;
    Ok(summary)
}

/// Copy one blob from `from` to `to`, checking its length.
async fn stream_blob(
    from: &BlobStore,
    to: &BlobStore,
    key: &BlobKey,
    len: u64,
) -> Result<(), BlobError> {
    use futures_util::StreamExt as _;
    let mut stream = from.get_range(key, 0, len).await?;
    let mut writer = to.put(key).await?;
    let mut n = 0u64;
    while let Some(chunk) = stream.next().await {
        let chunk = chunk?;
        n += chunk.len() as u64;
        writer.write(&chunk).await?;
    }
    if n != len {
        return Err(BlobError::Short);
    }
    writer.commit().await
}

/// Where `dest` leads, refused when it is inside the storage root or contains it. The folder is
/// then created at the resolved path, so what was checked is what is written.
fn destination(root: &Path, dest: &Path) -> Result<PathBuf, DestError> {
    let resolved = resolve(dest).map_err(|source| DestError::Unresolvable {
        dest: dest.to_path_buf(),
        source,
    })?;
    let (dest, root) = (dest.to_path_buf(), root.to_path_buf());
    if resolved.starts_with(&root) {
        Err(DestError::InsideRoot {
            dest,
            resolved,
            root,
        })
    } else if root.starts_with(&resolved) {
        Err(DestError::ContainsRoot {
            dest,
            resolved,
            root,
        })
    } else {
        Ok(resolved)
    }
}

/// `path` made absolute with every symlink resolved, though it may not exist yet: its nearest
/// existing ancestor is canonicalised and the components still to be created are appended (a
/// `..` among those cancels the one before it, which will be a real folder we create).
fn resolve(path: &Path) -> std::io::Result<PathBuf> {
    let mut resolved = PathBuf::from("/");
    // How many trailing components of `resolved` do not exist yet.
    let mut missing = 0usize;
    for part in std::path::absolute(path)?.components() {
        match part {
            Component::Prefix(_) | Component::RootDir | Component::CurDir => {}
            Component::ParentDir => {
                resolved.pop();
                missing = missing.saturating_sub(1);
            }
            Component::Normal(name) if missing > 0 => {
                resolved.push(name);
                missing += 1;
            }
            Component::Normal(name) => {
                let next = resolved.join(name);
                match std::fs::symlink_metadata(&next) {
                    // A dangling symlink fails here (NotFound from canonicalize): refused.
                    Ok(_) => resolved = next.canonicalize()?,
                    Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                        resolved = next;
                        missing = 1;
                    }
                    Err(e) => return Err(e),
                }
            }
        }
    }
    Ok(resolved)
}

fn backup(root: &Path, dest: &Path, with_blobs: bool) -> anyhow::Result<Summary> {
    create_dest(dest)?;
    let db = dest.join("coffer.db");
    if db.exists() {
        anyhow::bail!(
            "{} already exists; back up into an empty folder",
            db.display()
        );
    }
    let snapshot = Snapshot::take(&root.join("coffer.db"), &db)?;
    let rows = snapshot.files()?;
    let (summary, vanished) = copy_and_list(root, dest, &rows, with_blobs, Some("coffer.db"))?;
    snapshot.forget(&vanished)?;
    drop(snapshot);
    // The copy is durable before we say it exists.
    std::fs::File::open(dest)?.sync_all()?;
    Ok(summary)
}

fn backup_without_database(
    root: &Path,
    dest: &Path,
    rows: &[StoredFile],
    with_blobs: bool,
) -> anyhow::Result<Summary> {
    create_dest(dest)?;
    let manifest = dest.join("manifest.jsonl");
    if manifest.exists() {
        anyhow::bail!(
            "{} already exists; back up into an empty folder",
            manifest.display()
        );
    }
    let (summary, _) = copy_and_list(root, dest, rows, with_blobs, None)?;
    std::fs::File::open(dest)?.sync_all()?;
    Ok(summary)
}

fn create_dest(dest: &Path) -> std::io::Result<()> {
    use std::os::unix::fs::DirBuilderExt as _;
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(dest)
}

/// Copy (or link) the blobs of `rows` into `dest` and write `manifest.jsonl`, whose first line
/// names the database file (`null`: not in the backup). The ids of rows whose blob vanished
/// meanwhile are returned; they are left out of the manifest.
fn copy_and_list(
    root: &Path,
    dest: &Path,
    rows: &[StoredFile],
    with_blobs: bool,
    database: Option<&str>,
) -> anyhow::Result<(Summary, Vec<FileId>)> {
    let mut blobs = 0;
    let mut vanished: Vec<FileId> = Vec::new();
    // Every directory an entry was made in, synced once before the manifest names them: a
    // linked or copied blob survives a power cut only once its directory entry does.
    let mut dirs = std::collections::BTreeSet::new();
    if with_blobs {
        for f in rows {
            let Some(key) = BlobKey::parse(&f.blob_key) else {
                continue;
            };
            match copy_blob(root, dest, &key) {
                Ok(()) => {
                    blobs += 1;
                    let (a, b, _) = key.parts();
                    dirs.insert(PathBuf::from("blobs").join(a).join(b));
                    dirs.insert(PathBuf::from("blobs").join(a));
                }
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => vanished.push(f.file.id),
                Err(e) => return Err(e.into()),
            }
        }
        if blobs > 0 {
            dirs.insert(PathBuf::from("blobs"));
        }
    }
    for dir in &dirs {
        std::fs::File::open(dest.join(dir))?.sync_all()?;
    }
    write_manifest(dest, rows, &vanished, database)?;
    Ok((
        Summary {
            files: rows.len(),
            blobs,
            vanished: vanished.len(),
        },
        vanished,
    ))
}

/// `dest/manifest.jsonl`: a header line, then one line per file of `rows` (those in `left_out`
/// excepted, and those whose blob key is malformed).
fn write_manifest(
    dest: &Path,
    rows: &[StoredFile],
    left_out: &[FileId],
    database: Option<&str>,
) -> anyhow::Result<()> {
    let mut manifest = std::io::BufWriter::new(std::fs::File::create(dest.join("manifest.jsonl"))?);
    writeln!(
        manifest,
        "{}",
        serde_json::json!({ "coffer_backup": 1, "created_at": Timestamp::now(), "database": database, "files": rows.len() })
    )?;
    for f in rows {
        if BlobKey::parse(&f.blob_key).is_none() || left_out.contains(&f.file.id) {
            continue;
        }
        writeln!(
            manifest,
            "{}",
            serde_json::json!({
                "id": f.file.id,
                "blob": f.blob_key,
                "size": f.file.size,
                "stored_size": f.source().stored_len(),
                "sha256": f.file.sha256,
                "sealed": f.sealing.is_some(),
            })
        )?;
    }
    manifest.flush()?;
    manifest.get_ref().sync_all()?;
    Ok(())
}

fn blob_path(root: &Path, key: &BlobKey) -> PathBuf {
    let (a, b, name) = key.parts();
    root.join("blobs").join(a).join(b).join(name)
}

fn copy_blob(root: &Path, dest: &Path, key: &BlobKey) -> std::io::Result<()> {
    use std::os::unix::fs::{DirBuilderExt as _, OpenOptionsExt as _};
    let from = blob_path(root, key);
    let to = blob_path(dest, key);
    if let Some(parent) = to.parent() {
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(parent)?;
    }
    // Never follow a symlink planted in the source tree: open without following, check it
    // is a regular file, then link (same filesystem) or copy from that very file.
    let source = std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(rustix::fs::OFlags::NOFOLLOW.bits() as i32)
        .open(&from)?;
    if !source.metadata()?.is_file() {
        return Err(std::io::Error::other(format!(
            "{} is not a regular file",
            from.display()
        )));
    }
    match std::fs::hard_link(&from, &to) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Err(e),
        Err(_) => {
            let mut out = std::fs::OpenOptions::new()
                .write(true)
                .create_new(true)
                .open(&to)?;
            std::io::copy(&mut &source, &mut out)?;
            out.sync_all()
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn destinations_inside_or_around_the_root_are_refused() {
        let tmp = tempfile::tempdir().unwrap();
        let base = tmp.path().canonicalize().unwrap();
        let root = base.join("storage");
        std::fs::create_dir_all(root.join("blobs")).unwrap();
        std::os::unix::fs::symlink(root.join("blobs"), base.join("into")).unwrap();
        std::os::unix::fs::symlink(base.join("nowhere"), base.join("dangling")).unwrap();
        let inside =
            |d: PathBuf| matches!(destination(&root, &d), Err(DestError::InsideRoot { .. }));
        assert!(inside(root.clone()));
        assert!(inside(root.join("tmp/new/deeper")));
        assert!(inside(base.join("into/x")));
        // A `..` after a folder still to be created, then a symlink: followed as mkdir would.
        assert!(inside(base.join("new/../into/x")));
        assert!(inside(base.join("storage/../storage/./x")));
        assert!(matches!(
            destination(&root, &base),
            Err(DestError::ContainsRoot { .. })
        ));
        assert!(matches!(
            destination(&root, Path::new("/")),
            Err(DestError::ContainsRoot { .. })
        ));
        assert!(matches!(
            destination(&root, &base.join("dangling/x")),
            Err(DestError::Unresolvable { .. })
        ));
        // A sibling whose name merely starts like the root's is fine.
        assert_eq!(
            destination(&root, &base.join("storage-backup/../storage2")).unwrap(),
            base.join("storage2")
        );
    }
}
