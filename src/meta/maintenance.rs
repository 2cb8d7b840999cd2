//! What operating the store needs of an engine: liveness, a clean shutdown, and what it does
//! for the other nodes ([`Cluster`]).

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

/// What an engine does for the nodes beside it: its revocation announcements, and the shared
/// tables only an engine several nodes can share keeps.
pub trait Cluster: Send + Sync {
    /// Where this engine announces revocations.
    fn hub(&self) -> &crate::meta::revocations::Hub;

    /// Start hearing other nodes' revocations, if there can be other nodes (idempotent).
    fn listen(&self) {}

    /// Login throttling shared by every node; `None` where there is one node.
    fn login_throttles(&self) -> Option<&dyn crate::meta::throttle::LoginThrottles> {
        None
    }
}
