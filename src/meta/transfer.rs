//! Copying a store's rows into another engine (`coffer migrate`): every table the schema
//! holds, row by row as the engines store them, so that a copy is the same store (ids, token
//! hashes, the audit chain's hashes) on another engine.
//!
//! Webhooks and their deliveries are copied too (pending ones are delivered by the target's
//! nodes once the source's leases run out).
//!
//! Rows travel as [`Cell`]s in the column order of [`TABLES`], which lists each copied table
//! with its key first, parents before children. Left out, on purpose: `users.used_bytes` (the
//! target's triggers count it as file rows arrive; [`Transfer::recount_usage`] settles it),
//! the generated `password_cost` and its `password_costs` tally (triggers keep them),
//! `blob_deletions` (the source's queue names the source's blobs, never copied), and what
//! lives only while nodes run: reservations of uploads in flight, unfinished resumable uploads
//! (their staged chunks are the source's blobs, and their quota is such a reservation; the
//! grant uses they hold are left out of the grants' counts, [`COMPUTED`]), leases,
//! login throttling
//! ([`LEFT_OUT`]). A test holds every column of the schema to one list or the other, so a
//! migration that adds a column cannot be forgotten here.
//!
//! Invariant: table and column names come from [`TABLES`] only (constants); every value is
//! bound, never formatted into a statement.

use async_trait::async_trait;

use crate::meta::error::MetaError;

/// How a column is stored: SQLite and PostgreSQL spell some types differently (a UUID is
/// `TEXT` in one and `UUID` in the other), so each engine reads and binds by kind.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// A UUID (`TEXT` on SQLite, `UUID` on PostgreSQL), carried as its hyphenated text.
    Uuid,
    /// Text.
    Text,
    /// A 64-bit integer.
    Int,
    /// Bytes (`BLOB`, `BYTEA`).
    Bytes,
}

/// One value of a row.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Cell {
    /// SQL `NULL`.
    Null,
    /// An integer.
    Int(i64),
    /// Text, or a UUID as text.
    Text(String),
    /// Bytes.
    Bytes(Vec<u8>),
}

/// A row, one cell per column of its [`Table`].
pub type Row = Vec<Cell>;

/// A copied table: its name and columns, the key (a single-column primary key) first.
#[derive(Debug)]
pub struct Table {
    /// The table's name.
    pub name: &'static str,
    /// Its copied columns, the primary key first.
    pub columns: &'static [(&'static str, Kind)],
}

impl Table {
    /// The key column's name.
    pub fn key(&self) -> &'static str {
        self.columns.first().map_or("", |c| c.0)
    }

    /// What is read for `column` when rows are exported: the column itself, or the expression
    /// [`COMPUTED`] gives for it.
    pub fn exported(&self, column: &'static str) -> &'static str {
        COMPUTED
            .iter()
            .find(|(t, c, _)| *t == self.name && *c == column)
            .map_or(column, |(_, _, expr)| expr)
    }
}

/// Columns exported as computed (one SQL expression both engines read alike), not as stored:
/// `(table, column, expression)`. A grant's `uses` leaves out the uses that uploads in flight
/// hold: their reservations are not copied, so nothing would ever give those uses back on the
/// target (a copied grant with 3 of 5 uses, one of them an unfinished upload, arrives with 2).
/// From a source that is serving, an upload that finishes between the export of the grants and
/// that of the files arrives with its file but not its use; the next run settles it.
pub const COMPUTED: &[(&str, &str, &str)] = &[(
    "upload_grants",
    "uses",
    "uses - (SELECT COUNT(*) FROM upload_reservations r WHERE r.grant_id = upload_grants.id)",
)];

use Kind::{Bytes, Int, Text, Uuid};

/// Every copied table, parents before children (insert in this order, delete in reverse).
pub const TABLES: &[Table] = &[
    Table {
        name: "users",
        columns: &[
            ("id", Uuid),
            ("username", Text),
            ("email", Text),
            ("password_hash", Text),
            ("role", Text),
            ("created_at", Int),
            // Bound into every view URL: copied, or URLs revoked at the source would live again.
            ("view_generation", Int),
        ],
    },
    Table {
        name: "sessions",
        columns: &[
            ("id", Uuid),
            ("user_id", Uuid),
            ("created_at", Int),
            ("expires_at", Int),
            ("revoked_at", Int),
        ],
    },
    Table {
        name: "refresh_tokens",
        columns: &[
            ("hash", Bytes),
            ("session_id", Uuid),
            ("created_at", Int),
            ("expires_at", Int),
            ("used_at", Int),
        ],
    },
    Table {
        name: "revoked_tokens",
        columns: &[("jti", Text), ("expires_at", Int)],
    },
    Table {
        name: "api_keys",
        columns: &[
            ("id", Uuid),
            ("user_id", Uuid),
            ("name", Text),
            ("prefix", Text),
            ("hash", Bytes),
            ("created_at", Int),
            ("expires_at", Int),
        ],
    },
    Table {
        name: "upload_grants",
        columns: &[
            ("id", Uuid),
            ("user_id", Uuid),
            ("token_hash", Bytes),
            ("created_at", Int),
            ("expires_at", Int),
            ("max_bytes", Int),
            ("extensions", Text),
            ("max_uploads", Int),
            ("uses", Int),
            ("file_expires_in", Int),
            ("sha256", Text),
        ],
    },
    FILES,
    Table {
        name: "links",
        columns: &[
            ("id", Uuid),
            ("file_id", Uuid),
            ("token_hash", Bytes),
            ("created_at", Int),
            ("expires_at", Int),
            ("max_downloads", Int),
            ("downloads", Int),
        ],
    },
    Table {
        name: "audit",
        columns: &[
            ("seq", Int),
            ("id", Uuid),
            ("at", Int),
            ("event", Text),
            ("actor_id", Text),
            ("subject_id", Text),
            ("client_ip", Text),
            ("detail", Text),
            ("hash", Bytes),
            ("key_id", Text),
        ],
    },
    Table {
        name: "audit_anchor",
        columns: &[("id", Int), ("seq", Int), ("hash", Bytes)],
    },
    Table {
        name: "audit_head",
        columns: &[
            ("id", Int),
            ("seq", Int),
            ("hash", Bytes),
            ("key_id", Text),
            ("seal", Bytes),
        ],
    },
    Table {
        name: "view_uses",
        columns: &[("key", Bytes), ("expires_at", Int)],
    },
    Table {
        name: "webhooks",
        columns: &[
            ("id", Uuid),
            ("owner_id", Uuid),
            ("url", Text),
            ("events", Text),
            ("secret", Bytes),
            ("secret_key_id", Text),
            ("created_at", Int),
        ],
    },
    // Pending deliveries travel with their leases: a lease names a node of the source, and
    // runs out by itself, after which a node of the target takes the delivery.
    Table {
        name: "webhook_deliveries",
        columns: &[
            ("seq", Int),
            ("webhook_id", Uuid),
            ("event_id", Text),
            ("event_type", Text),
            ("file_id", Uuid),
            ("body", Text),
            ("created_at", Int),
            ("attempts", Int),
            ("next_attempt_at", Int),
            ("last_status", Int),
            ("last_error", Text),
            ("last_answer", Text),
            ("delivered_at", Int),
            ("lease_holder", Text),
            ("lease_until", Int),
        ],
    },
];

/// Tables, and columns of copied tables (`table.column`), left out on purpose (see the
/// module's documentation).
pub const LEFT_OUT: &[&str] = &[
    "users.used_bytes",
    "users.password_cost",
    "password_costs",
    "blob_deletions",
    // Uploads in flight: their grants' uses are left out with them (`COMPUTED`).
    "upload_reservations",
    "resumable_uploads",
    "resumable_chunks",
    "leases",
    "login_failures",
    "login_known",
    "login_budget",
];

/// The `files` table, whose rows are copied only once their blob is (see `ops::migrate`).
pub const FILES: Table = Table {
    name: "files",
    columns: &[
        ("id", Uuid),
        ("owner_id", Uuid),
        ("filename", Text),
        ("size", Int),
        ("content_type", Text),
        ("sha256", Text),
        ("created_at", Int),
        ("expires_at", Int),
        ("blob_key", Text),
        ("enc_key_id", Text),
        ("enc_wrapped_key", Bytes),
        ("scanned_at", Int),
        ("grant_id", Uuid),
    ],
};

/// The columns of [`FILES`] that `ops::migrate` reads, by position.
pub mod file_columns {
    /// `id`.
    pub const ID: usize = 0;
    /// `size` (plaintext bytes).
    pub const SIZE: usize = 3;
    /// `sha256` of the plaintext, lowercase hex.
    pub const SHA256: usize = 5;
    /// `blob_key`.
    pub const BLOB_KEY: usize = 8;
    /// `enc_key_id`.
    pub const ENC_KEY_ID: usize = 9;
    /// `enc_wrapped_key`.
    pub const ENC_WRAPPED_KEY: usize = 10;
}

/// What an import did.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Imported {
    /// Rows inserted or updated.
    pub written: usize,
    /// Rows left out because a row they refer to is not (yet) in the target: the source
    /// changed between reading the parent table and this one. A later run copies them.
    pub dangling: usize,
}

/// Reading and writing whole rows, for copying a store into another engine.
#[async_trait]
pub trait Transfer: Send + Sync {
    /// Up to `limit` rows of `table` whose key is greater than `after` (all from the first
    /// when `None`), in key order.
    async fn export_rows(
        &self,
        table: &'static Table,
        after: Option<Cell>,
        limit: usize,
    ) -> Result<Vec<Row>, MetaError>;

    /// Insert `rows`, replacing (column by column) a row with the same key; one transaction
    /// unless a row refers to a missing parent, which is then left out and counted.
    async fn import_rows(
        &self,
        table: &'static Table,
        rows: Vec<Row>,
    ) -> Result<Imported, MetaError>;

    /// Of `keys`, those that have a row in `table`.
    async fn present_keys(
        &self,
        table: &'static Table,
        keys: Vec<Cell>,
    ) -> Result<Vec<Cell>, MetaError>;

    /// Delete the rows of `table` with these keys (with what cascades from them).
    async fn remove_rows(&self, table: &'static Table, keys: Vec<Cell>) -> Result<(), MetaError>;

    /// Set every user's `used_bytes` to the sum of their files' sizes (and, where the engine
    /// numbers deliveries with a sequence, move it past the copied ones).
    async fn recount_usage(&self) -> Result<(), MetaError>;
}
