//! Metadata: the only module that holds SQL.
//!
//! The rest of the crate sees [`MetaStore`] and the interfaces it hands out, one per table or
//! concern ([`users::Users`], [`sessions::Sessions`], [`api_keys::ApiKeys`],
//! [`files::Files`], [`links::Links`], [`views::Views`], [`audit::Audit`], [`uploads::Uploads`], [`resumable::Resumables`],
//! [`leases::Leases`], [`maintenance::Maintenance`],
//! [`transfer::Transfer`], [`events::Outbox`]: webhooks and the event outbox). Each
//! method is one transaction of the engine: a rule that needs several statements to hold (the
//! last administrator, a link for a file its owner still has, a row deleted with its blob
//! queued) is one method, never a sequence of calls. Engines live below: [`sqlite`], the
//! embedded default, and [`postgres`], which several nodes can share: every rule above holds
//! on it across nodes, enforced by the database. Schema changes are one ordered list
//! ([`migrations`]), written for both.
//!
//! What several nodes must agree on lives in the database, never only in one node's memory:
//! quota reservations of uploads in flight ([`uploads`]), who runs background work
//! ([`leases`]), login throttling ([`throttle`], PostgreSQL only: one SQLite node keeps it in
//! memory), and revocations, which each engine announces to every node's credential caches
//! ([`revocations`]).
//!
//! Invariant: nothing outside this module names an engine's types or writes SQL; every value
//! is bound, never formatted into a statement.

pub mod api_keys;
pub mod audit;
pub mod error;
pub mod events;
pub mod files;
pub mod grants;
pub mod leases;
pub mod links;
pub mod maintenance;
pub mod migrations;
pub mod page;
pub mod postgres;
pub mod resumable;
pub mod revocations;
pub mod sessions;
pub mod sqlite;
pub mod throttle;
pub mod transfer;
pub mod uploads;
pub mod users;
pub mod views;

use std::path::Path;
use std::sync::Arc;

pub use error::MetaError;
pub use page::Page;

use api_keys::ApiKeys;
use audit::Audit;
use events::Outbox;
use files::Files;
use grants::Grants;
use leases::Leases;
use links::Links;
use maintenance::{Cluster, Maintenance};
use resumable::Resumables;
use revocations::RevocationSink;
use sessions::Sessions;
use throttle::LoginThrottles;
use transfer::Transfer;
use uploads::Uploads;
use users::Users;
use views::Views;

/// Everything an engine implements.
pub trait Engine:
    Users
    + Sessions
    + ApiKeys
    + Files
    + Links
    + Views
    + Grants
    + Audit
    + Uploads
    + Resumables
    + Leases
    + Maintenance
    + Cluster
    + Transfer
    + Outbox
{
}

impl<
    T: Users
        + Sessions
        + ApiKeys
        + Files
        + Links
        + Views
        + Grants
        + Audit
        + Uploads
        + Resumables
        + Leases
        + Maintenance
        + Cluster
        + Transfer
        + Outbox,
> Engine for T
{
}

/// The metadata store handed to the rest of the crate. Cheap to clone.
#[derive(Clone)]
pub struct MetaStore(Arc<dyn Engine>);

impl MetaStore {
    /// Open (creating and migrating when needed) the SQLite database at `path`, with
    /// `readers` pooled read connections.
    pub async fn open_sqlite(path: &Path, readers: usize) -> Result<Self, MetaError> {
        Ok(Self(Arc::new(sqlite::Sqlite::open(path, readers).await?)))
    }

    /// Connect to PostgreSQL (migrating it when needed, once across nodes).
    pub async fn open_postgres(settings: &postgres::Settings) -> Result<Self, MetaError> {
        Ok(Self(Arc::new(postgres::Postgres::open(settings).await?)))
    }

    /// Accounts.
    pub fn users(&self) -> &dyn Users {
        &*self.0
    }

    /// Logins and revocations.
    pub fn sessions(&self) -> &dyn Sessions {
        &*self.0
    }

    /// API keys.
    pub fn api_keys(&self) -> &dyn ApiKeys {
        &*self.0
    }

    /// Files and the blob-deletion queue.
    pub fn files(&self) -> &dyn Files {
        &*self.0
    }

    /// Share links.
    pub fn links(&self) -> &dyn Links {
        &*self.0
    }

    /// First uses of view URLs.
    pub fn views(&self) -> &dyn Views {
        &*self.0
    }

    /// Upload grants.
    pub fn grants(&self) -> &dyn Grants {
        &*self.0
    }

    /// The audit trail.
    pub fn audit(&self) -> &dyn Audit {
        &*self.0
    }

    /// Quota reservations of uploads in flight.
    pub fn uploads(&self) -> &dyn Uploads {
        &*self.0
    }

    /// Unfinished resumable (tus) uploads and their staged chunks.
    pub fn resumables(&self) -> &dyn Resumables {
        &*self.0
    }

    /// Which node runs background work.
    pub fn leases(&self) -> &dyn Leases {
        &*self.0
    }

    /// Login throttling shared by every node, where the engine serves several
    /// (PostgreSQL); `None` for the embedded SQLite, whose one node keeps it in memory.
    pub fn login_throttles(&self) -> Option<&dyn LoginThrottles> {
        self.0.login_throttles()
    }

    /// This process's id among the nodes (reservations and leases name it).
    pub fn node(&self) -> &str {
        self.0.hub().node()
    }

    /// Have `sink` told of every revocation committed from now on, on this node or any other
    /// (PostgreSQL: this starts the node's listener), and of whether that feed is live.
    pub fn subscribe_revocations(&self, sink: std::sync::Arc<dyn RevocationSink>) {
        self.0.hub().subscribe(sink);
        self.0.listen();
    }

    /// Webhooks and the event outbox.
    pub fn outbox(&self) -> &dyn Outbox {
        &*self.0
    }

    /// What wakes the delivery worker when events were committed, on this node or (with
    /// PostgreSQL, once listening) on another.
    pub fn outbox_wakeup(&self) -> std::sync::Arc<tokio::sync::Notify> {
        self.0.hub().outbox()
    }

    /// Whole rows, for copying the store into another engine (`coffer migrate`).
    pub fn transfer(&self) -> &dyn Transfer {
        &*self.0
    }

    /// Whether the database answers now (`/readyz`).
    pub async fn ping(&self) -> bool {
        self.0.ping().await
    }

    /// Make everything committed durable in the main file (clean shutdown).
    pub async fn checkpoint(&self) -> Result<(), MetaError> {
        self.0.checkpoint().await
    }
}
