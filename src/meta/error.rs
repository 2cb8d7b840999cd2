//! Failures of the metadata store, whatever the engine.
//!
//! Invariant: every variant says what the caller can do about it: `Busy` (a lock or a
//! conflict outlasted its bound) and `Unavailable` (the database cannot be reached: refused,
//! reset, timed out, restarting, no free connection) are worth a retry (503 with
//! `Retry-After`), `Full` is the volume (507), the rest are internal errors whose cause goes
//! to the log, never to a client.

use crate::blocking;

/// Failures of the metadata store.
#[derive(Debug, thiserror::Error)]
pub enum MetaError {
    /// SQLite reported an error.
    #[error("sqlite: {0}")]
    Sqlite(#[from] rusqlite::Error),
    /// PostgreSQL reported an error that is neither a conflict nor an outage.
    #[error("postgres: {}", describe(.0))]
    Postgres(tokio_postgres::Error),
    /// Another writer held the database lock for longer than the busy timeout.
    #[error("database busy")]
    Busy,
    /// The database cannot be reached now (a network engine down or restarting).
    #[error("database unavailable: {0}")]
    Unavailable(String),
    /// The volume holding the database is full.
    #[error("database disk full")]
    Full,
    /// A blocking task died.
    #[error(transparent)]
    Join(#[from] blocking::JoinError),
    /// The store is shutting down.
    #[error("metadata store closed")]
    Closed,
    /// The store could not start (a writer thread, a connection pool).
    #[error("cannot start the metadata store: {0}")]
    Start(#[from] std::io::Error),
    /// The database settings cannot work (a malformed URL, an unreadable root certificate).
    #[error("database settings: {0}")]
    Config(String),
    /// The database holds something this binary cannot read (a newer schema, a bad value).
    #[error("unexpected database content: {0}")]
    Corrupt(String),
}

/// An error with its causes, on one line (tokio-postgres puts what happened in the source).
pub(crate) fn describe(e: &dyn std::error::Error) -> String {
    let mut text = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        text.push_str(": ");
        text.push_str(&s.to_string());
        source = s.source();
    }
    text
}
