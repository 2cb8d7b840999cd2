//! Share links, found by the SHA-256 of their token.
//!
//! Invariant: the token is never stored. A download is counted by one conditional update, so
//! two concurrent fetches of a one-use link cannot both pass, on any engine and any node.

use async_trait::async_trait;

use crate::ids::{FileId, LinkId, Timestamp, UserId};
use crate::meta::error::MetaError;
use crate::meta::events::NewEvent;
use crate::meta::files::StoredFile;

/// A new link.
#[derive(Debug, Clone)]
pub struct NewLink {
    /// Its id (not the token).
    pub id: LinkId,
    /// The shared file.
    pub file_id: FileId,
    /// SHA-256 of the token.
    pub token_hash: [u8; 32],
    /// Creation.
    pub created_at: Timestamp,
    /// Expiry.
    pub expires_at: Timestamp,
    /// Download budget; `None` = unlimited until expiry.
    pub max_downloads: Option<u32>,
}

/// Where a link stands.
#[derive(Debug, Clone)]
pub enum LinkState {
    /// Unknown token, revoked link, or its file is gone.
    Unknown,
    /// Past its expiry (410).
    Expired,
    /// Budget spent (410).
    UsedUp,
    /// Serveable.
    Live {
        /// The link.
        id: LinkId,
        /// The file to serve.
        file: Box<StoredFile>,
    },
}

/// The `links` table.
#[async_trait]
pub trait Links: Send + Sync {
    /// Insert a link, only while its file is live and `owner`'s (one transaction). `false`
    /// when it is not.
    async fn insert_for_owner(
        &self,
        link: NewLink,
        owner: UserId,
        now: Timestamp,
    ) -> Result<bool, MetaError>;

    /// Look a token up without counting a download.
    async fn resolve(&self, token_hash: [u8; 32], now: Timestamp) -> Result<LinkState, MetaError>;

    /// Count one download; `false` when the link expired or was used up meanwhile.
    async fn consume(&self, id: LinkId, now: Timestamp) -> Result<bool, MetaError> {
        self.consume_recording(id, now, Vec::new()).await
    }

    /// [`Links::consume`], recording `events` in the same transaction when it counted.
    async fn consume_recording(
        &self,
        id: LinkId,
        now: Timestamp,
        events: Vec<NewEvent>,
    ) -> Result<bool, MetaError>;

    /// Delete a link if `owner` owns its file; `None` = no such link of theirs, else its file.
    async fn delete_owned(&self, id: LinkId, owner: UserId) -> Result<Option<FileId>, MetaError>;

    /// Remove links that expired before `cutoff` (kept a while so clients see 410, not 404).
    async fn prune_expired(&self, cutoff: Timestamp) -> Result<usize, MetaError>;
}
