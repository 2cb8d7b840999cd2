//! What operating the store needs of an engine: liveness and a clean shutdown.

use async_trait::async_trait;

use crate::meta::error::MetaError;

/// Health and housekeeping.
#[async_trait]
pub trait Maintenance: Send + Sync {
    /// Whether the database answers a trivial query now (`/readyz`).
    async fn ping(&self) -> bool;

    /// Make everything committed durable in the main database file (clean shutdown, backups);
    /// a no-op where the engine needs none.
    async fn checkpoint(&self) -> Result<(), MetaError>;
}
