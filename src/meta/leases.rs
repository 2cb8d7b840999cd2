//! Leases: which node runs a piece of background work now (the retention sweeper), so that it
//! is done by one node at a time, and taken over by another once a dead holder's lease
//! expires.
//!
//! Invariant: at most one holder has an unexpired lease of a name, decided by the database in
//! one statement (an insert, or an update of an expired or own row). A holder that stalls past
//! its expiry may overlap with the next one for a moment: the work leased must stay correct
//! when that happens (each item is claimed by a row change that only one node can make), the
//! lease only keeps the nodes from doing it all twice.

use async_trait::async_trait;

use crate::ids::Timestamp;
use crate::meta::error::MetaError;

/// The `leases` table.
#[async_trait]
pub trait Leases: Send + Sync {
    /// Take the lease `name` for `holder` until `until`, or renew it, unless another holder's
    /// lease is still unexpired at `now`. Whether `holder` holds it now.
    async fn acquire(
        &self,
        name: &str,
        holder: &str,
        now: Timestamp,
        until: Timestamp,
    ) -> Result<bool, MetaError>;

    /// Give the lease up (if `holder` still has it), so another node need not wait for it to
    /// expire.
    async fn release(&self, name: &str, holder: &str) -> Result<(), MetaError>;
}
