//! View URLs' first uses: what the rest of the crate may ask of the `view_uses` table,
//! whatever the engine.
//!
//! Invariant: a view token is named here only by a digest (never the token or its MAC), and
//! its first use is recorded by one insert that succeeds once across every node, so a token
//! gets at most one `file.view` audit entry. Each node asks only on the first use it sees
//! (remembered in memory), so this is one write per token and node, never one per request.

use async_trait::async_trait;

use crate::ids::Timestamp;
use crate::meta::error::MetaError;

/// The `view_uses` table.
#[async_trait]
pub trait Views: Send + Sync {
    /// Record the first use of the token named `key`, kept until `expires_at`: `true` only
    /// for the one call, on any node, that recorded it.
    async fn first_view(&self, key: Vec<u8>, expires_at: Timestamp) -> Result<bool, MetaError>;

    /// Forget uses of tokens that expired at or before `now`.
    async fn prune_views(&self, now: Timestamp) -> Result<usize, MetaError>;
}
