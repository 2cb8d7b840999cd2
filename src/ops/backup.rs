//! `coffer backup DEST`: a consistent online copy of the store, safe while the server runs.
//!
//! 1. The database is copied with SQLite's online backup API in a single step, so the copy
//!    is one consistent snapshot (WAL readers never block the server's writer).
//! 2. Every blob the snapshot references is hard-linked into `DEST/blobs` (blobs are
//!    immutable, so a link is a copy), or copied when DEST is on another filesystem.
//! 3. `DEST/manifest.jsonl` lists each file's blob, sizes and SHA-256.
//!
//! Invariant: DEST is itself a valid storage root that passes `coffer check`: a file deleted
//! (or re-encrypted under a new blob) between the snapshot and the blob copy is dropped from
//! the copy's database too. With `--no-blobs` only the database and manifest are written;
//! restoring then needs the blobs from elsewhere.

use std::io::Write as _;
use std::path::{Path, PathBuf};

use rusqlite::backup::Backup;
use rusqlite::{Connection, OpenFlags};

use crate::blob::BlobKey;
use crate::blocking;
use crate::ids::{FileId, Timestamp};
use crate::meta::files;

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

/// Back up the store at `root` into `dest`.
pub async fn run(root: &Path, dest: &Path, with_blobs: bool) -> anyhow::Result<Summary> {
    let (root, dest) = (root.to_path_buf(), dest.to_path_buf());
    blocking::run(move || backup(&root, &dest, with_blobs)).await?
}

fn backup(root: &Path, dest: &Path, with_blobs: bool) -> anyhow::Result<Summary> {
    use std::os::unix::fs::DirBuilderExt as _;
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(dest)?;
    let db = dest.join("coffer.db");
    if db.exists() {
        anyhow::bail!(
            "{} already exists; back up into an empty folder",
            db.display()
        );
    }
    let src =
        Connection::open_with_flags(root.join("coffer.db"), OpenFlags::SQLITE_OPEN_READ_ONLY)?;
    src.busy_timeout(std::time::Duration::from_secs(30))?;
    let mut dst = Connection::open(&db)?;
    {
        let backup = Backup::new(&src, &mut dst)?;
        // -1: all pages in one step, i.e. one read transaction, i.e. one consistent snapshot.
        backup.step(-1)?;
    }
    drop(src);
    dst.pragma_update(None, "journal_mode", "DELETE")?;
    // Deleting a vanished file below must take its links with it.
    dst.pragma_update(None, "foreign_keys", "ON")?;

    let rows = {
        let mut all = Vec::new();
        let mut after = None;
        loop {
            let page = files::scan(&dst, after, 1000)?;
            after = page.last().map(|f| f.file.id);
            let done = page.len() < 1000;
            all.extend(page);
            if done {
                break;
            }
        }
        all
    };
    let mut summary = Summary {
        files: rows.len(),
        ..Summary::default()
    };
    let mut manifest = std::io::BufWriter::new(std::fs::File::create(dest.join("manifest.jsonl"))?);
    writeln!(
        manifest,
        "{}",
        serde_json::json!({ "coffer_backup": 1, "created_at": Timestamp::now(), "database": "coffer.db", "files": rows.len() })
    )?;
    let mut vanished: Vec<FileId> = Vec::new();
    for f in &rows {
        let Some(key) = BlobKey::parse(&f.blob_key) else {
            continue;
        };
        if with_blobs {
            match copy_blob(root, dest, &key) {
                Ok(()) => summary.blobs += 1,
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                    vanished.push(f.file.id);
                    continue;
                }
                Err(e) => return Err(e.into()),
            }
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
    for id in &vanished {
        files::delete(&dst, *id, Timestamp::now())?;
    }
    drop(dst);
    // The copy is durable before we say it exists.
    std::fs::File::open(dest)?.sync_all()?;
    summary.vanished = vanished.len();
    Ok(summary)
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
