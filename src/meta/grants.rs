//! Upload grants: what the rest of the crate may ask of the `upload_grants` table, whatever
//! the engine.
//!
//! Invariant: a grant's token is never stored, only its SHA-256. `uses` counts uploads that
//! started and did not fail: it is raised in the transaction that reserves an upload's quota
//! (never past `max_uploads`, never after the grant expired; `uploads::Uploads::reserve`) and
//! lowered in the one that releases a failed upload's reservation, so of two concurrent
//! uploads with a single-use grant exactly one starts, on any node. Revoking deletes the
//! row, which an upload under way finds missing when it commits: it is refused.

use async_trait::async_trait;
use serde::Serialize;
use utoipa::ToSchema;

use crate::ids::{FileId, GrantId, Timestamp, UserId};
use crate::meta::error::MetaError;

/// A grant as its owner sees it (never its token).
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct Grant {
    /// Its id.
    pub id: GrantId,
    /// When uploads can no longer start with it.
    pub expires_at: Timestamp,
    /// The largest file it lets through, in bytes.
    #[schema(minimum = 1)]
    pub max_bytes: u64,
    /// The extensions it allows (lowercase, without the dot).
    pub extensions: Vec<String>,
    /// How many uploads it allows.
    #[schema(minimum = 1, maximum = 1000)]
    pub max_uploads: u32,
    /// Uploads started with it and not failed (finished, or still under way).
    pub uses: u32,
    /// The retention of the files uploaded with it, in seconds; null = the service's
    /// (`retention.default_ttl_secs`).
    #[schema(minimum = 1)]
    pub file_expires_in: Option<u64>,
    /// The lowercase hex SHA-256 the (single) upload must have; null = any content.
    pub sha256: Option<String>,
    /// When it was minted.
    pub created_at: Timestamp,
}

/// A new grant row.
#[derive(Debug, Clone)]
pub struct NewGrant {
    /// The grant (`uses` 0).
    pub grant: Grant,
    /// Whose uploads it makes.
    pub owner: UserId,
    /// SHA-256 of the token.
    pub token_hash: [u8; 32],
}

/// A grant found by its token, with its owner.
#[derive(Debug, Clone)]
pub struct GrantMatch {
    /// The grant.
    pub grant: Grant,
    /// Whose uploads it makes.
    pub owner: UserId,
}

/// The `upload_grants` table.
#[async_trait]
pub trait Grants: Send + Sync {
    /// Insert, unless the owner is locked for deletion or gone (`false`).
    async fn insert_grant(&self, grant: NewGrant) -> Result<bool, MetaError>;

    /// The grant behind a token hash, its owner not locked for deletion: expired or used up
    /// too (an upload it started may still be continued; whether it may start one is the
    /// caller's check, and the reservation's, atomically).
    async fn find_grant(&self, token_hash: [u8; 32]) -> Result<Option<GrantMatch>, MetaError>;

    /// The owner's grants, newest first (expired ones until they are pruned).
    async fn list_grants(&self, owner: UserId) -> Result<Vec<Grant>, MetaError>;

    /// One of the owner's grants and the live files uploaded with it, oldest first.
    async fn get_grant(
        &self,
        owner: UserId,
        id: GrantId,
        now: Timestamp,
    ) -> Result<Option<(Grant, Vec<FileId>)>, MetaError>;

    /// Revoke (delete) one of the owner's grants; `false` when there is no such grant of
    /// theirs.
    async fn delete_grant(&self, owner: UserId, id: GrantId) -> Result<bool, MetaError>;

    /// Forget grants that expired before `cutoff` and no upload in flight still names.
    async fn prune_grants(&self, cutoff: Timestamp) -> Result<usize, MetaError>;
}

/// The stored form of a grant's extensions: comma-separated, lowercase (extensions are
/// alphanumeric, so no escaping is needed).
pub(crate) fn join_extensions(exts: &[String]) -> String {
    exts.join(",")
}

/// The extensions of their stored form.
pub(crate) fn split_extensions(stored: &str) -> Vec<String> {
    stored
        .split(',')
        .filter(|e| !e.is_empty())
        .map(str::to_owned)
        .collect()
}
