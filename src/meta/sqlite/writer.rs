//! The single writer: one thread owns the read-write connection and commits writes in
//! groups.
//!
//! Writers hand their closure to the thread and wait. The thread takes everything queued (up
//! to [`MAX_GROUP`]), runs each closure inside its own `SAVEPOINT` within one `BEGIN
//! IMMEDIATE` transaction, and commits once: one fsync (with `synchronous = FULL`) for the
//! whole group. A closure that fails rolls back to its savepoint and fails alone; if the
//! commit fails, every closure of the group gets the error. No caller learns "committed"
//! before the commit is durable.
//!
//! A write may be queued as *lazy* ([`Writer::write_lazy`]): one whose loss in a power cut is
//! harmless (a webhook delivery's lease or recorded try: lost, the delivery is simply made
//! again, at least once as promised). A group made only of lazy writes commits with
//! `synchronous = NORMAL`: no fsync of its own (in WAL mode its frames become durable with the
//! next durable commit's fsync, which covers the whole log, in order). A group with any durable
//! write is committed as always.
//!
//! Invariant: writes are serialised in-process (200 concurrent writers queue here instead of
//! fighting for SQLite's lock, so none sees "database is locked"); `busy_timeout` covers the
//! other processes that may write (the CLI).

use std::sync::mpsc;

use rusqlite::Connection;
use tokio::sync::oneshot;
use tracing::Span;

use super::conn::classify;
use crate::meta::error::MetaError;

/// Most closures committed together.
const MAX_GROUP: usize = 128;

/// What a queued write produced, waiting for the group's commit.
struct Pending {
    ok: bool,
    deliver: Box<dyn FnOnce(Option<MetaError>) + Send>,
}

/// A queued write: given the connection (inside the group transaction), or the reason the
/// group could not start.
type Job = Box<dyn FnOnce(Result<&Connection, MetaError>) -> Pending + Send>;

enum Msg {
    /// Runs in the group transaction; `true` = durable (see the module's documentation).
    Write(Job, bool),
    /// Runs alone, outside any transaction (`PRAGMA wal_checkpoint`).
    Raw(Box<dyn FnOnce(&Connection) + Send>),
}

/// The handle writers send their closures through.
#[derive(Clone)]
pub(super) struct Writer {
    tx: mpsc::Sender<Msg>,
}

impl Writer {
    /// Start the writer thread on `conn`.
    pub(super) fn start(conn: Connection) -> std::io::Result<Self> {
        let (tx, rx) = mpsc::channel();
        std::thread::Builder::new()
            .name("coffer-sqlite-writer".into())
            .spawn(move || commit_in_groups(conn, rx))?;
        Ok(Self { tx })
    }

    /// Run `f` in a write transaction; `Ok` only once its group has committed durably.
    pub(super) async fn write<T, F>(&self, f: F) -> Result<T, MetaError>
    where
        F: FnOnce(&Connection) -> rusqlite::Result<T> + Send + 'static,
        T: Send + 'static,
    {
        self.queue(f, true).await
    }

    /// [`Writer::write`] for a write whose loss in a power cut is harmless: `Ok` once its
    /// group has committed, durably only if another write of the group needed it.
    pub(super) async fn write_lazy<T, F>(&self, f: F) -> Result<T, MetaError>
    where
        F: FnOnce(&Connection) -> rusqlite::Result<T> + Send + 'static,
        T: Send + 'static,
    {
        self.queue(f, false).await
    }

    async fn queue<T, F>(&self, f: F, durable: bool) -> Result<T, MetaError>
    where
        F: FnOnce(&Connection) -> rusqlite::Result<T> + Send + 'static,
        T: Send + 'static,
    {
        let (done, result) = oneshot::channel();
        let span = Span::current();
        let job: Job = Box::new(move |conn: Result<&Connection, MetaError>| {
            let conn = match conn {
                Ok(c) => c,
                Err(e) => {
                    let _ = done.send(Err(e));
                    return Pending {
                        ok: false,
                        deliver: Box::new(|_| {}),
                    };
                }
            };
            let r = span.in_scope(|| f(conn));
            Pending {
                ok: r.is_ok(),
                deliver: Box::new(move |commit_failed: Option<MetaError>| {
                    let _ = done.send(match commit_failed {
                        Some(e) => Err(e),
                        None => r.map_err(classify),
                    });
                }),
            }
        });
        self.tx
            .send(Msg::Write(job, durable))
            .map_err(|_| MetaError::Closed)?;
        result.await.map_err(|_| MetaError::Closed)?
    }

    /// Run `f` on the writer connection outside any transaction.
    pub(super) async fn raw<T, F>(&self, f: F) -> Result<T, MetaError>
    where
        F: FnOnce(&Connection) -> rusqlite::Result<T> + Send + 'static,
        T: Send + 'static,
    {
        let (done, result) = oneshot::channel();
        let job = Box::new(move |conn: &Connection| {
            let _ = done.send(f(conn).map_err(classify));
        });
        self.tx.send(Msg::Raw(job)).map_err(|_| MetaError::Closed)?;
        result.await.map_err(|_| MetaError::Closed)?
    }
}

/// The writer thread: writes that arrive together are committed in one transaction (at most
/// `MAX_GROUP`), a raw job runs alone after everything queued before it; it ends when every
/// sender is gone.
fn commit_in_groups(conn: Connection, rx: mpsc::Receiver<Msg>) {
    // The writer is the only thread here; SQLite's own lock still guards against the CLI.
    let mut group = Vec::with_capacity(MAX_GROUP);
    // Whether a write of the group must be durable; whether the connection is set lazy.
    let mut durable = false;
    let mut normal = false;
    while let Ok(first) = rx.recv() {
        let mut next = Some(first);
        while let Some(msg) = next.take() {
            match msg {
                Msg::Write(job, d) => {
                    group.push(job);
                    durable |= d;
                }
                Msg::Raw(job) => {
                    // Keep order: commit what is queued before it, then run it alone.
                    commit_group(&conn, &mut group, std::mem::take(&mut durable), &mut normal);
                    job(&conn);
                }
            }
            if group.len() < MAX_GROUP {
                next = rx.try_recv().ok();
            }
        }
        commit_group(&conn, &mut group, std::mem::take(&mut durable), &mut normal);
    }
}

/// Commit a group: with `synchronous = FULL` if any write of it is durable, else `NORMAL`
/// (`normal` tracks the connection's setting, switched only when it must change).
fn commit_group(conn: &Connection, group: &mut Vec<Job>, durable: bool, normal: &mut bool) {
    if group.is_empty() {
        return;
    }
    if durable && *normal {
        // Never commit a durable write under the lazy setting: fail the group instead.
        if let Err(e) = conn.execute_batch("PRAGMA synchronous = FULL") {
            let err = classify(e);
            for job in group.drain(..) {
                job(Err(err_copy(&err)));
            }
            return;
        }
        *normal = false;
    } else if !durable && !*normal && conn.execute_batch("PRAGMA synchronous = NORMAL").is_ok() {
        *normal = true;
    }
    commit_jobs(conn, group);
}

fn commit_jobs(conn: &Connection, group: &mut Vec<Job>) {
    if let Err(e) = conn.execute_batch("BEGIN IMMEDIATE") {
        let err = classify(e);
        for job in group.drain(..) {
            job(Err(err_copy(&err)));
        }
        return;
    }
    let mut pendings = Vec::with_capacity(group.len());
    let mut jobs = group.drain(..);
    while let Some(job) = jobs.next() {
        if let Err(e) = conn.execute_batch("SAVEPOINT w") {
            job(Err(classify(e)));
            continue;
        }
        match std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| job(Ok(conn)))) {
            Ok(p) => {
                let sql = if p.ok {
                    "RELEASE w"
                } else {
                    "ROLLBACK TO w; RELEASE w"
                };
                if let Err(e) = conn.execute_batch(sql) {
                    tracing::error!(error = %e, "savepoint handling failed");
                }
                pendings.push(p);
            }
            // A panicking closure's changes are undone; its caller sees the store closed.
            Err(_) => {
                let _ = conn.execute_batch("ROLLBACK TO w; RELEASE w");
            }
        }
        if conn.is_autocommit() {
            // SQLite rolled the whole transaction back by itself (disk full, I/O error): none
            // of the group is committed, and the rest must not run outside a transaction.
            let err = MetaError::Sqlite(rusqlite::Error::SqliteFailure(
                rusqlite::ffi::Error::new(rusqlite::ffi::SQLITE_ABORT),
                Some("the write transaction was rolled back".into()),
            ));
            for job in jobs.by_ref() {
                job(Err(err_copy(&err)));
            }
            pendings
                .into_iter()
                .for_each(|p| (p.deliver)(Some(err_copy(&err))));
            return;
        }
    }
    match conn.execute_batch("COMMIT") {
        Ok(()) => pendings.into_iter().for_each(|p| (p.deliver)(None)),
        Err(e) => {
            let _ = conn.execute_batch("ROLLBACK");
            let err = classify(e);
            pendings
                .into_iter()
                .for_each(|p| (p.deliver)(Some(err_copy(&err))));
        }
    }
}

/// `MetaError` is not `Clone` (it wraps `rusqlite::Error`); each waiter gets an equivalent.
fn err_copy(e: &MetaError) -> MetaError {
    match e {
        MetaError::Busy => MetaError::Busy,
        MetaError::Full => MetaError::Full,
        MetaError::Closed => MetaError::Closed,
        other => MetaError::Sqlite(rusqlite::Error::SqliteFailure(
            rusqlite::ffi::Error::new(rusqlite::ffi::SQLITE_ERROR),
            Some(other.to_string()),
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn synchronous(c: &Connection) -> rusqlite::Result<i64> {
        c.query_row("PRAGMA synchronous", [], |r| r.get(0))
    }

    /// A group of lazy writes only commits with `synchronous = NORMAL`; any durable write
    /// brings `FULL` back before its group commits, and both kinds are committed.
    #[tokio::test]
    async fn lazy_groups_skip_the_fsync_and_durable_ones_never_do() {
        let dir = tempfile::tempdir().unwrap();
        let conn = Connection::open(dir.path().join("w.db")).unwrap();
        conn.pragma_update(None, "journal_mode", "WAL").unwrap();
        conn.execute_batch("PRAGMA synchronous = FULL; CREATE TABLE t (v INTEGER);")
            .unwrap();
        let w = Writer::start(conn).unwrap();
        w.write_lazy(|c| c.execute("INSERT INTO t VALUES (1)", []))
            .await
            .unwrap();
        assert_eq!(
            w.raw(synchronous).await.unwrap(),
            1,
            "NORMAL after a lazy group"
        );
        w.write(|c| {
            // Inside the durable group, already switched back.
            assert_eq!(synchronous(c)?, 2);
            c.execute("INSERT INTO t VALUES (2)", [])
        })
        .await
        .unwrap();
        assert_eq!(
            w.raw(synchronous).await.unwrap(),
            2,
            "FULL after a durable group"
        );
        let n: i64 = w
            .raw(|c| c.query_row("SELECT sum(v) FROM t", [], |r| r.get(0)))
            .await
            .unwrap();
        assert_eq!(n, 3);
    }
}
