//! The SQLite engine, the embedded default: the `meta` interfaces over one database file.
//!
//! No SQLite call runs on an async worker. Reads use a small pool of read-only connections on
//! the blocking pool (WAL lets them run beside the writer); writes go to one writer thread
//! that owns the read-write connection and commits them in groups ([`writer`]). Serialising
//! writers in-process is what keeps 200 concurrent writers from ever seeing "database is
//! locked": they queue instead of racing for SQLite's lock. `busy_timeout` covers the other
//! writers that may exist, the CLI beside the server.
//!
//! The table modules are plain functions over `&rusqlite::Connection`, tested in memory, and
//! each implements its `meta` interface for [`Sqlite`] by handing them to a connection.

pub mod api_keys;
pub mod audit;
mod conn;
pub mod events;
pub mod files;
pub mod grants;
mod leases;
pub mod links;
pub mod resumable;
pub mod sessions;
pub mod snapshot;
pub mod transfer;
pub mod uploads;
pub mod users;
pub mod views;
mod writer;

use std::path::{Path, PathBuf};
use std::sync::Mutex;

use async_trait::async_trait;
use rusqlite::Connection;
use tokio::sync::Semaphore;

use crate::blocking;
use crate::meta::error::MetaError;
use crate::meta::maintenance::{Cluster, Maintenance};
use crate::meta::migrations;
use crate::meta::revocations::{Hub, Revoked};
#[cfg(test)]
pub(crate) use conn::test_conn;
use conn::{classify, open_reader, open_writer};

/// The SQLite engine: a pool of readers and the one writer.
pub struct Sqlite {
    path: PathBuf,
    readers: Mutex<Vec<Connection>>,
    read_permits: Semaphore,
    writer: writer::Writer,
    /// Revocations are announced in-process only: one SQLite file, one node.
    hub: Hub,
    /// Whether opening it added the audit chain's head (its placeholder is ours to seal).
    added_heads: bool,
}

impl Sqlite {
    /// Open (creating and migrating when needed) the database at `path`.
    pub async fn open(path: &Path, readers: usize) -> Result<Self, MetaError> {
        let p = path.to_path_buf();
        let (writer, pool, applied) = blocking::run(move || -> Result<_, MetaError> {
            let mut writer = open_writer(&p).map_err(classify)?;
            let applied = migrations::run_sqlite(&mut writer).map_err(classify)?;
            let pool = (0..readers)
                .map(|_| open_reader(&p))
                .collect::<rusqlite::Result<Vec<_>>>()
                .map_err(classify)?;
            Ok((writer, pool, applied))
        })
        .await??;
        Ok(Self {
            path: path.to_path_buf(),
            readers: Mutex::new(pool),
            read_permits: Semaphore::new(readers),
            writer: writer::Writer::start(writer)?,
            hub: Hub::new(true),
            added_heads: applied.contains(&migrations::AUDIT_HEADS),
        })
    }

    /// Whether opening it added the audit chain's head.
    pub(crate) fn added_heads(&self) -> bool {
        self.added_heads
    }

    /// After a revoking write committed: tell this process's caches.
    pub(crate) fn announce(&self, what: Option<Revoked>) {
        if let Some(what) = what {
            self.hub.publish(what);
        }
    }

    /// After a write that recorded `n` deliveries committed: wake the delivery worker.
    pub(crate) fn events_committed(&self, n: usize) {
        if n > 0 {
            self.hub.events_committed();
        }
    }

    /// Run a read-only closure on a pooled connection.
    pub(crate) async fn read<T, F>(&self, f: F) -> Result<T, MetaError>
    where
        F: FnOnce(&Connection) -> rusqlite::Result<T> + Send + 'static,
        T: Send + 'static,
    {
        let _permit = self
            .read_permits
            .acquire()
            .await
            .map_err(|_| MetaError::Closed)?;
        let pooled = self.readers.lock().map_err(|_| MetaError::Closed)?.pop();
        let path = self.path.clone();
        let (conn, result) = blocking::run(move || {
            // A connection lost to a panic is replaced here, so the pool never shrinks.
            let conn = match pooled {
                Some(c) => c,
                None => match open_reader(&path) {
                    Ok(c) => c,
                    Err(e) => return (None, Err(e)),
                },
            };
            let r = f(&conn);
            (Some(conn), r)
        })
        .await?;
        if let Some(conn) = conn
            && let Ok(mut pool) = self.readers.lock()
        {
            pool.push(conn);
        }
        result.map_err(classify)
    }

    /// Run a closure inside a write transaction; `Ok` once it is durably committed (closures
    /// queued together share one commit, see [`writer`]). An `Err` from the closure undoes
    /// its own changes only.
    pub(crate) async fn write<T, F>(&self, f: F) -> Result<T, MetaError>
    where
        F: FnOnce(&Connection) -> rusqlite::Result<T> + Send + 'static,
        T: Send + 'static,
    {
        self.writer.write(f).await
    }

    /// [`Sqlite::write`] for a write whose loss in a power cut is harmless (a webhook
    /// delivery's lease or recorded try: the delivery is made again); see [`writer`].
    pub(crate) async fn write_lazy<T, F>(&self, f: F) -> Result<T, MetaError>
    where
        F: FnOnce(&Connection) -> rusqlite::Result<T> + Send + 'static,
        T: Send + 'static,
    {
        self.writer.write_lazy(f).await
    }
}

impl Cluster for Sqlite {
    fn hub(&self) -> &Hub {
        &self.hub
    }
}

#[async_trait]
impl Maintenance for Sqlite {
    async fn ping(&self) -> bool {
        self.read(|c| c.query_row("SELECT 1", [], |r| r.get::<_, i64>(0)))
            .await
            .is_ok()
    }

    async fn checkpoint(&self) -> Result<(), MetaError> {
        self.writer
            .raw(|c| c.execute_batch("PRAGMA wal_checkpoint(TRUNCATE);"))
            .await
    }
}
