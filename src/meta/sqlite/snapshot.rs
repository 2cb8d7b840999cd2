//! A consistent copy of the SQLite database for `coffer backup`, taken with SQLite's online
//! backup API while the server keeps writing.
//!
//! Invariant: the copy is one read transaction of the source (all pages in one step), so it
//! is a state the database really was in; it never touches the source's write lock.

use std::path::Path;
use std::time::Duration;

use rusqlite::backup::Backup;
use rusqlite::{Connection, OpenFlags};

use super::files;
use crate::ids::{FileId, Timestamp};
use crate::meta::files::StoredFile;

/// A copy of the database, open for the backup to finish.
pub struct Snapshot {
    conn: Connection,
}

impl Snapshot {
    /// Copy the database at `source` into a new file `dest` (which must not exist). Blocking.
    pub fn take(source: &Path, dest: &Path) -> rusqlite::Result<Self> {
        let src = Connection::open_with_flags(source, OpenFlags::SQLITE_OPEN_READ_ONLY)?;
        src.busy_timeout(Duration::from_secs(30))?;
        let mut conn = Connection::open(dest)?;
        {
            let backup = Backup::new(&src, &mut conn)?;
            // -1: all pages in one step, i.e. one read transaction, i.e. one consistent
            // snapshot.
            backup.step(-1)?;
        }
        drop(src);
        conn.pragma_update(None, "journal_mode", "DELETE")?;
        // Forgetting a vanished file must take its links with it.
        conn.pragma_update(None, "foreign_keys", "ON")?;
        Ok(Self { conn })
    }

    /// Every file row of the copy, in id order.
    pub fn files(&self) -> rusqlite::Result<Vec<StoredFile>> {
        const PAGE: usize = 1000;
        let mut all = Vec::new();
        let mut after = None;
        loop {
            let page = files::scan(&self.conn, after, PAGE)?;
            after = page.last().map(|f| f.file.id);
            let done = page.len() < PAGE;
            all.extend(page);
            if done {
                return Ok(all);
            }
        }
    }

    /// Drop files from the copy (their blobs vanished while it was being taken) and empty the
    /// copy's deletion queue: the copy holds no blob it would need to delete.
    pub fn forget(&self, ids: &[FileId]) -> rusqlite::Result<()> {
        for id in ids {
            files::delete(&self.conn, *id, Timestamp::now())?;
        }
        self.conn.execute("DELETE FROM blob_deletions", [])?;
        Ok(())
    }
}
